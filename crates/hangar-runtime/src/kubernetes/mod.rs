//! The kubernetes driver: replicas as pods on a cluster, through `kube`,
//! answering the same [`Driver`] calls as the sandbox and docker drivers.
//!
//! * **Clusters.** One driver serves every kubernetes cloud of this Hangar:
//!   each cloud is a [`Cluster`] (a client, a namespace, a placement),
//!   connected and checked when the cloud is created or the server starts
//!   ([`KubernetesDriver::add_cloud`]). A spec goes to the cluster of its
//!   [`labels::CLOUD`](crate::driver::labels::CLOUD). A cloud the driver
//!   was not told of (one added through another server on the same
//!   database) is looked up in its [`CloudSource`] and connected then; one
//!   nowhere to be found is refused, never run elsewhere.
//! * **Objects.** A replica is a Secret (its record and its environment)
//!   and a Pod owned by it (see `pod`), both labelled
//!   `hangar.owner=<owner>` (a value each Hangar data dir keeps) so several
//!   Hangars share a namespace without adopting each other's pods. Deleting
//!   the Secret deletes the pod.
//! * **Restarts are Hangar's**: `restartPolicy: Never`, so restart counts,
//!   backoff and events are the controller's, as with sandboxes. Stopping
//!   deletes the pod with the grace period asked for (SIGTERM, then
//!   SIGKILL) and records its exit on the Secret; a pod deleted behind
//!   Hangar's back reads as killed (signal 9), so the controller replaces
//!   it and counts the restart.
//! * **Reaching replicas**: at the pod's IP and the spec's port when this
//!   host is on the cluster's pod network (Hangar inside the cluster, or on
//!   a node), else through the API server's port-forward from a local port
//!   per replica ([`Reach`]). The cloud's config may say which; otherwise
//!   the first pod tells: a connection made or refused at its IP means the
//!   pod network is here.
//! * **Output** is the pod's log, read from its start with the kubelet's
//!   timestamps and numbered from 1, so [`Driver::follow`] resumes after any
//!   line. Kubernetes' log API does not say which stream a line came from:
//!   every line counts as stdout.
//! * **Exec** and **stdin** go through the API server's websocket
//!   subresources (`exec`, `attach`). Kubernetes' exec has no kill: a
//!   command past its time limit is left to end on its own.
//! * **Stats** come from the kubelet's summary (`/stats/summary`, through
//!   the API server's node proxy): CPU, memory working set, network bytes.
//! * **Hardening**: non-root, every capability dropped, no privilege
//!   escalation, a read-only root with an `emptyDir` at `/tmp` and — for a
//!   spec with [`ReplicaSpec::app_writable`] — a writable copy of the
//!   image's `/app` (an init container copies it), no service account
//!   token, no service links.
//! * **Not enforced here**, and refused rather than ignored: egress rules,
//!   reach between instances and host ports ([`crate::network`]). A pods
//!   limit is the node's (`--pod-max-pids`), not the spec's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status as MetaStatus;
use kube::api::{
    Api, AttachParams, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::driver::{
    labels, now_ms, valid_id, Driver, DriverError, ExecResult, Exit, OutputEvent, OutputLine,
    OutputStream, ReplicaInfo, ReplicaSpec, ReplicaStats, StdinWait, FOLLOW_QUEUE, MAX_LINE_BYTES,
};

mod pod;

pub use pod::Placement;

/// The most of each of stdout and stderr [`Driver::exec`] keeps.
const EXEC_OUTPUT_LIMIT: usize = 1 << 20;
/// How long a new pod may take to run its program (an image pull
/// included) before its creation fails.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// The grace period pods get when deleted by others, unless told.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// How long a cluster may take to answer when a cloud is checked.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a kubernetes cloud's replicas run.
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// A kubeconfig file; `None`: in-cluster, then `$KUBECONFIG`.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig's context; `None`: its current one.
    pub context: Option<String>,
    /// The namespace (made if missing).
    pub namespace: String,
    /// How pods are placed.
    pub placement: Placement,
    /// How replicas are reached; `None`: found out at the first pod.
    pub reach: Option<Reach>,
}

/// How this server reaches a cluster's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// At the pod's IP: this server is on the cluster's pod network (in the
    /// cluster, or on a node).
    PodIp,
    /// Through the API server's port-forward, from a local port per replica.
    PortForward,
}

impl std::fmt::Display for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reach::PodIp => "at their pod IPs",
            Reach::PortForward => "through the API server's port-forward",
        })
    }
}

impl ClusterConfig {
    /// The cluster a kubernetes cloud's config names.
    #[must_use]
    pub fn from_cloud(config: &hangar_core::kubernetes::KubernetesCloudConfig) -> Self {
        Self {
            kubeconfig: config.kubeconfig.as_ref().map(Into::into),
            context: config.context.clone(),
            namespace: config.namespace().to_owned(),
            placement: Placement {
                runtime_class: config.runtime_class.clone(),
                node_selector: config.node_selector.clone(),
                image_pull_secrets: config.image_pull_secret.iter().cloned().collect(),
            },
            reach: config.port_forward.map(|forward| {
                if forward {
                    Reach::PortForward
                } else {
                    Reach::PodIp
                }
            }),
        }
    }
}

/// Where the driver finds the settings of a cloud it was not told of: the
/// clouds servers sharing a database add through each other.
#[async_trait::async_trait]
pub trait CloudSource: Send + Sync {
    /// Cloud `cloud_id`'s cluster, if it is a kubernetes cloud; an error
    /// says why it cannot be read.
    async fn cluster_config(&self, cloud_id: &str) -> Result<Option<ClusterConfig>, String>;
}

/// A connected, checked cluster: the client, the namespace, the placement.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    namespace: String,
    placement: Placement,
    /// The API server's version, for logs.
    version: String,
    /// How its pods are reached, once known.
    reach: Arc<tokio::sync::OnceCell<Reach>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn failed(what: &str, err: &kube::Error) -> DriverError {
    DriverError::Failed(format!("kubernetes: {what}: {}", api_message(err)))
}

/// The API server's own sentence where it sent one.
fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.is_not_found())
}

impl Cluster {
    /// Connects to the cluster `config` names and checks that it answers
    /// and that the namespace is there (making it if missing).
    pub async fn connect(config: &ClusterConfig) -> Result<Self, DriverError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_now(config))
            .await
            .unwrap_or_else(|_| {
                Err(DriverError::Failed(format!(
                    "kubernetes: the cluster did not answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            })
    }

    async fn connect_now(config: &ClusterConfig) -> Result<Self, DriverError> {
        let options = KubeConfigOptions {
            context: config.context.clone(),
            ..KubeConfigOptions::default()
        };
        let client_config = match &config.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|err| {
                    DriverError::Failed(format!(
                        "kubernetes: cannot read the kubeconfig {}: {err}",
                        path.display()
                    ))
                })?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|err| {
                        DriverError::Failed(format!("kubernetes: unusable kubeconfig: {err}"))
                    })?
            }
            None if config.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|err| {
                    DriverError::Failed(format!("kubernetes: unusable kubeconfig: {err}"))
                })?,
            None => kube::Config::infer().await.map_err(|err| {
                DriverError::Failed(format!(
                    "kubernetes: no cluster configured (not in a cluster, no usable $KUBECONFIG): {err}"
                ))
            })?,
        };
        let client = Client::try_from(client_config)
            .map_err(|err| failed("cannot set up a client", &err))?;
        let version = client
            .apiserver_version()
            .await
            .map_err(|err| failed("the API server does not answer", &err))?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        match namespaces.get_opt(&config.namespace).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let namespace = Namespace {
                    metadata: kube::api::ObjectMeta {
                        name: Some(config.namespace.clone()),
                        ..Default::default()
                    },
                    ..Namespace::default()
                };
                match namespaces.create(&PostParams::default(), &namespace).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                    Err(err) => {
                        return Err(failed(
                            &format!("cannot make namespace {}", config.namespace),
                            &err,
                        ))
                    }
                }
            }
            Err(err) => {
                return Err(failed(
                    &format!("cannot read namespace {}", config.namespace),
                    &err,
                ))
            }
        }
        // Pods need the namespace's default service account, which the
        // cluster makes a moment after the namespace.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &config.namespace);
        let mut tries = 0;
        loop {
            match accounts.get_opt("default").await {
                Ok(Some(_)) => break,
                Ok(None) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(None) => {
                    return Err(DriverError::Failed(format!(
                        "kubernetes: namespace {} has no default service account (is the controller manager running?)",
                        config.namespace
                    )))
                }
                Err(err) => {
                    return Err(failed(
                        &format!("cannot read namespace {}'s service accounts", config.namespace),
                        &err,
                    ))
                }
            }
        }
        // Can this account make what a replica is made of?
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
        secrets
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|err| {
                failed(
                    &format!("cannot list Secrets in namespace {}", config.namespace),
                    &err,
                )
            })?;
        Ok(Self {
            client,
            namespace: config.namespace.clone(),
            placement: config.placement.clone(),
            version: format!(
                "{}.{} ({})",
                version.major, version.minor, version.git_version
            ),
            reach: Arc::new(match config.reach {
                Some(reach) => tokio::sync::OnceCell::new_with(Some(reach)),
                None => tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// The API server's version.
    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The namespace.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// How its pods are reached, if known yet.
    #[must_use]
    pub fn reach(&self) -> Option<Reach> {
        self.reach.get().copied()
    }

    /// How pods are reached, found out on the first one at `address`: a
    /// connection made or refused there means this server is on the pod
    /// network; no answer, port-forward.
    async fn reach_for(&self, address: std::net::SocketAddr) -> Reach {
        *self
            .reach
            .get_or_init(|| async move {
                let attempt = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::TcpStream::connect(address),
                )
                .await;
                let reach = match attempt {
                    Ok(Ok(_)) => Reach::PodIp,
                    Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                        Reach::PodIp
                    }
                    _ => Reach::PortForward,
                };
                tracing::info!(namespace = %self.namespace, "kubernetes: replicas are reached {reach}");
                reach
            })
            .await
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct KubernetesDriver {
    owner: String,
    /// Cloud id → its cluster.
    clusters: Arc<RwLock<BTreeMap<String, Cluster>>>,
    /// Clouds whose cluster did not answer when added: tried again when a
    /// replica is made for them.
    unreachable: Arc<Mutex<BTreeMap<String, ClusterConfig>>>,
    /// Where clouds added through other servers are found.
    source: Option<Arc<dyn CloudSource>>,
    /// Replica id → cloud id, as learned from `create` and `list`.
    homes: Arc<Mutex<HashMap<String, String>>>,
    /// One stdin exchange per replica at a time.
    stdin_turns: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Replica id → the local address forwarding to its pod, where pods are
    /// reached through port-forward.
    forwards: Arc<Mutex<HashMap<String, Forward>>>,
    /// The grace period a pod gets when something else deletes it (a
    /// drain, `kubectl delete`): the controller's own for a stop.
    grace: Duration,
}

/// A local listener whose connections go to a pod through port-forward.
struct Forward {
    address: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for KubernetesDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesDriver")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// A replica's objects on its cluster.
struct Found {
    cluster: Cluster,
    name: String,
    secret: Secret,
    pod: Option<Pod>,
}

impl KubernetesDriver {
    /// A driver with no clusters yet, marking its objects with `owner`
    /// (`[a-z0-9]`, 1 to 16 characters).
    pub fn new(owner: &str) -> Result<Self, DriverError> {
        if owner.is_empty()
            || owner.len() > 16
            || !owner
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(DriverError::Invalid(format!(
                "kubernetes owner {owner:?} must be 1 to 16 of [a-z0-9]"
            )));
        }
        Ok(Self {
            owner: owner.to_owned(),
            clusters: Arc::default(),
            unreachable: Arc::default(),
            source: None,
            homes: Arc::default(),
            stdin_turns: Arc::default(),
            forwards: Arc::default(),
            grace: DEFAULT_GRACE,
        })
    }

    /// Pods get `grace` to end after SIGTERM when something other than
    /// [`Driver::stop`] deletes them.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Clouds this driver was not told of are looked up in `source` when a
    /// replica is made for them.
    #[must_use]
    pub fn with_cloud_source(mut self, source: Arc<dyn CloudSource>) -> Self {
        self.source = Some(source);
        self
    }

    /// Replicas labelled with cloud `cloud_id` run on `cluster` from now on.
    pub fn add_cloud(&self, cloud_id: &str, cluster: Cluster) {
        self.clusters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cloud_id.to_owned(), cluster);
    }

    /// Cloud `cloud_id`'s cluster did not answer: the next replica made
    /// for it connects again (and fails with the reason if it still cannot).
    pub fn add_unreachable_cloud(&self, cloud_id: &str, config: ClusterConfig) {
        self.unreachable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cloud_id.to_owned(), config);
    }

    /// The cluster of `cloud_id`, connecting to it again if it did not
    /// answer before, or for the first time if it was added through
    /// another server.
    async fn cluster_for_create(&self, cloud_id: &str) -> Result<Cluster, DriverError> {
        if let Some(cluster) = self.cluster(cloud_id) {
            return Ok(cluster);
        }
        let config = self
            .unreachable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cloud_id)
            .cloned();
        let config = match (config, &self.source) {
            (Some(config), _) => Some(config),
            (None, Some(source)) => source.cluster_config(cloud_id).await.map_err(|why| {
                DriverError::Failed(format!("kubernetes: cannot read cloud {cloud_id}: {why}"))
            })?,
            (None, None) => None,
        };
        let Some(config) = config else {
            return Err(DriverError::Failed(format!(
                "kubernetes: cloud {cloud_id} has no cluster on this server"
            )));
        };
        let cluster = Cluster::connect(&config).await?;
        self.unreachable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cloud_id);
        self.add_cloud(cloud_id, cluster.clone());
        Ok(cluster)
    }

    /// Whether cloud `cloud_id` has a cluster here.
    #[must_use]
    pub fn has_cloud(&self, cloud_id: &str) -> bool {
        self.clusters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(cloud_id)
    }

    fn cluster(&self, cloud_id: &str) -> Option<Cluster> {
        self.clusters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cloud_id)
            .cloned()
    }

    fn all_clusters(&self) -> Vec<(String, Cluster)> {
        self.clusters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, cluster)| (id.clone(), cluster.clone()))
            .collect()
    }

    fn remember(&self, id: &str, cloud: &str) {
        self.homes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), cloud.to_owned());
    }

    fn forget(&self, id: &str) {
        self.homes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// The replica's Secret and pod: on its remembered cluster, else looked
    /// for on each.
    async fn find(&self, id: &str) -> Result<Found, DriverError> {
        if !valid_id(id) {
            return Err(DriverError::NotFound(id.to_owned()));
        }
        let name = pod::object_name(&self.owner, id);
        let home = self
            .homes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        let candidates: Vec<(String, Cluster)> = match home.and_then(|cloud| {
            let cluster = self.cluster(&cloud)?;
            Some((cloud, cluster))
        }) {
            Some(home) => vec![home],
            None => self.all_clusters(),
        };
        for (cloud, cluster) in candidates {
            let secret = cluster
                .secrets()
                .get_opt(&name)
                .await
                .map_err(|err| failed("cannot read a replica", &err))?;
            let Some(secret) = secret.filter(|s| pod::replica_id(s) == Some(id)) else {
                continue;
            };
            let pod = cluster
                .pods()
                .get_opt(&name)
                .await
                .map_err(|err| failed("cannot read a replica's pod", &err))?;
            self.remember(id, &cloud);
            return Ok(Found {
                cluster,
                name,
                secret,
                pod,
            });
        }
        Err(DriverError::NotFound(id.to_owned()))
    }

    async fn running_pod(&self, id: &str) -> Result<Found, DriverError> {
        let found = self.find(id).await?;
        let running = found.pod.as_ref().is_some_and(pod::running)
            && pod::recorded_exit(&found.secret).is_none();
        if running {
            Ok(found)
        } else {
            Err(DriverError::NotRunning(id.to_owned()))
        }
    }

    /// Waits for the pod to run its program (or end, or fail to start).
    async fn wait_started(&self, cluster: &Cluster, name: &str) -> Result<Pod, DriverError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        // The kubelet tells a pod runs on its once-a-second status report:
        // look often at first, so the report is seen when it lands, then
        // less (an image pull may take minutes).
        let often_until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pod = cluster
                .pods()
                .get(name)
                .await
                .map_err(|err| failed("cannot read the new pod", &err))?;
            if pod::running(&pod) || pod::pod_exit(&pod).is_some() {
                return Ok(pod);
            }
            if let Some(why) = pod::stuck(&pod) {
                return Err(DriverError::Failed(format!(
                    "kubernetes: the pod cannot start: {why}"
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.status != "True"))
                    .map(|c| {
                        format!(
                            "{} {}",
                            c.reason.as_deref().unwrap_or(&c.type_),
                            c.message.as_deref().unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "no reason given".to_owned());
                return Err(DriverError::Failed(format!(
                    "kubernetes: the pod did not start within {} s: {phase}",
                    START_TIMEOUT.as_secs()
                )));
            }
            let pause = if tokio::time::Instant::now() < often_until {
                Duration::from_millis(25)
            } else {
                Duration::from_millis(500)
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// `info` with the address this server reaches the replica at: its pod
    /// IP, or a local port forwarding to it.
    async fn routed(&self, cluster: &Cluster, name: &str, mut info: ReplicaInfo) -> ReplicaInfo {
        let Some(address) = info.address else {
            return info;
        };
        if cluster.reach_for(address).await == Reach::PodIp {
            return info;
        }
        info.address = self
            .forward(cluster, &info.id, name, address.port())
            .await
            .ok();
        info
    }

    /// The local address forwarding to replica `id`'s pod `name`, made on
    /// first use.
    async fn forward(
        &self,
        cluster: &Cluster,
        id: &str,
        name: &str,
        port: u16,
    ) -> Result<std::net::SocketAddr, DriverError> {
        if let Some(forward) = self
            .forwards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            return Ok(forward.address);
        }
        let local = |err: std::io::Error| {
            DriverError::Failed(format!("kubernetes: a local port for port-forward: {err}"))
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(local)?;
        let address = listener.local_addr().map_err(local)?;
        let pods = cluster.pods();
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let pods = pods.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let Ok(mut forwarder) = pods.portforward(&name, &[port]).await else {
                        return;
                    };
                    if let Some(mut upstream) = forwarder.take_stream(port) {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    }
                    forwarder.abort();
                });
            }
        });
        let mut forwards = self.forwards.lock().unwrap_or_else(PoisonError::into_inner);
        // Another call made one meanwhile: keep the first.
        let forward = forwards
            .entry(id.to_owned())
            .or_insert(Forward { address, task });
        Ok(forward.address)
    }

    /// Records `exit` on the replica's Secret, so it outlives the pod.
    async fn record_exit(&self, found: &Found, exit: &Exit) -> Result<(), DriverError> {
        let patch = serde_json::json!({
            "metadata": {"annotations": {pod::EXIT_ANNOTATION: serde_json::to_string(exit).unwrap_or_default()}}
        });
        found
            .cluster
            .secrets()
            .patch(&found.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|err| failed("cannot record a replica's exit", &err))?;
        Ok(())
    }

    /// Deletes the pod with `grace` and waits for its end, returning how it
    /// ended (as last seen before it went).
    async fn end_pod(&self, found: &Found, grace: Duration) -> Result<Exit, DriverError> {
        let pods = found.cluster.pods();
        let seconds = u32::try_from(grace.as_secs()).unwrap_or(u32::MAX);
        let params = DeleteParams {
            grace_period_seconds: Some(seconds),
            ..DeleteParams::default()
        };
        match pods.delete(&found.name, &params).await {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => return Err(failed("cannot delete a replica's pod", &err)),
        }
        // The kubelet reports the container's end on the pod, then the pod
        // goes: watch for the first.
        let mut last_exit = None;
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(60);
        loop {
            match pods.get_opt(&found.name).await {
                Ok(Some(pod)) => {
                    if let Some(exit) = pod::pod_exit(&pod) {
                        last_exit = Some(exit);
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => return Err(failed("cannot read a replica's pod", &err)),
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let exit = last_exit.unwrap_or(Exit {
            code: None,
            signal: Some(if grace.is_zero() { 9 } else { 15 }),
            oom_killed: false,
            at_ms: now_ms(),
        });
        Ok(exit)
    }
}

#[async_trait::async_trait]
impl Driver for KubernetesDriver {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn create(&self, spec: &ReplicaSpec) -> Result<ReplicaInfo, DriverError> {
        if !valid_id(&spec.id) {
            return Err(DriverError::Invalid(format!(
                "replica id {:?} must be 1 to 64 of [a-z0-9_-]",
                spec.id
            )));
        }
        let image = pod::check(spec)?;
        let cloud = spec.labels.get(labels::CLOUD).ok_or_else(|| {
            DriverError::Invalid(
                "a kubernetes replica needs its cloud (label hangar.cloud)".to_owned(),
            )
        })?;
        let cluster = self.cluster_for_create(cloud).await?;
        let name = pod::object_name(&self.owner, &spec.id);
        let secret = pod::secret(&self.owner, spec);
        let secret = match cluster
            .secrets()
            .create(&PostParams::default(), &secret)
            .await
        {
            Ok(secret) => secret,
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                return Err(DriverError::Invalid(format!(
                    "replica {} already exists",
                    spec.id
                )))
            }
            Err(err) => return Err(failed("cannot make the replica's Secret", &err)),
        };
        self.remember(&spec.id, cloud);
        let pulled_with = match pod::pull_secret(&self.owner, spec, &secret) {
            Some(pull) => cluster
                .secrets()
                .create(&PostParams::default(), &pull)
                .await
                .map(|_| ())
                .map_err(|err| failed("cannot make the replica's image pull Secret", &err)),
            None => Ok(()),
        };
        let made = pod::pod(
            &self.owner,
            spec,
            image,
            &secret,
            &cluster.placement,
            self.grace,
        );
        let started = match pulled_with {
            Ok(()) => match cluster.pods().create(&PostParams::default(), &made).await {
                Ok(_) => self.wait_started(&cluster, &name).await,
                Err(err) => Err(failed("cannot make the replica's pod", &err)),
            },
            Err(err) => Err(err),
        };
        let pod = match started {
            Ok(pod) => pod,
            Err(err) => {
                let _ = self.remove(&spec.id).await;
                return Err(err);
            }
        };
        let info = pod::info(&secret, Some(&pod)).ok_or_else(|| {
            DriverError::Failed("kubernetes: the replica's record is unreadable".to_owned())
        })?;
        Ok(self.routed(&cluster, &name, info).await)
    }

    async fn list(&self) -> Result<Vec<ReplicaInfo>, DriverError> {
        let selector = format!("{}={}", pod::OWNER_LABEL, self.owner);
        let mut all = Vec::new();
        for (cloud, cluster) in self.all_clusters() {
            let params = ListParams::default().labels(&selector);
            let secrets =
                cluster.secrets().list(&params).await.map_err(|err| {
                    failed(&format!("cannot list replicas of cloud {cloud}"), &err)
                })?;
            let pods = cluster
                .pods()
                .list(&params)
                .await
                .map_err(|err| failed(&format!("cannot list pods of cloud {cloud}"), &err))?;
            let pods: HashMap<String, Pod> = pods
                .items
                .into_iter()
                .filter_map(|p| Some((p.metadata.name.clone()?, p)))
                .collect();
            for secret in secrets.items {
                let name = secret.metadata.name.clone().unwrap_or_default();
                if let Some(info) = pod::info(&secret, pods.get(&name)) {
                    self.remember(&info.id, &cloud);
                    all.push(self.routed(&cluster, &name, info).await);
                }
            }
        }
        Ok(all)
    }

    async fn inspect(&self, id: &str) -> Result<ReplicaInfo, DriverError> {
        let found = self.find(id).await?;
        let info = pod::info(&found.secret, found.pod.as_ref())
            .ok_or_else(|| DriverError::NotFound(id.to_owned()))?;
        Ok(self.routed(&found.cluster, &found.name, info).await)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Exit, DriverError> {
        let found = self.find(id).await?;
        if let Some(exit) = pod::recorded_exit(&found.secret) {
            return Ok(exit);
        }
        let exit = match found.pod.as_ref() {
            // Ended on its own: its pod stays (with its log) until removed.
            Some(pod) if pod::pod_exit(pod).is_some() => {
                pod::pod_exit(pod).unwrap_or_else(unreachable_exit)
            }
            Some(_) => self.end_pod(&found, grace).await?,
            None => pod::info(&found.secret, None)
                .and_then(|info| info.exit)
                .unwrap_or_else(unreachable_exit),
        };
        self.record_exit(&found, &exit).await?;
        Ok(exit)
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        let found = match self.find(id).await {
            Ok(found) => found,
            Err(DriverError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        };
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match found.cluster.pods().delete(&found.name, &now).await {
            Ok(_) => {}
            Err(err) if is_not_found(&err) => {}
            Err(err) => return Err(failed("cannot delete a replica's pod", &err)),
        }
        for secret in [pod::pull_secret_name(&found.name), found.name.clone()] {
            match found.cluster.secrets().delete(&secret, &now).await {
                Ok(_) => {}
                Err(err) if is_not_found(&err) => {}
                Err(err) => return Err(failed("cannot delete a replica's Secret", &err)),
            }
        }
        // Gone means gone: wait for the pod to leave the API.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            match found.cluster.pods().get_opt(&found.name).await {
                Ok(None) => break,
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(err) => return Err(failed("cannot read a replica's pod", &err)),
            }
        }
        self.forget(id);
        self.forwards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        self.stdin_turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecResult, DriverError> {
        if argv.first().is_none_or(String::is_empty) {
            return Err(DriverError::Invalid("exec needs a program".to_owned()));
        }
        let found = self.running_pod(id).await?;
        // Exec has no environment of its own: `env` puts it in place.
        let command: Vec<String> = if env.is_empty() {
            argv.to_vec()
        } else {
            std::iter::once("env".to_owned())
                .chain(env.iter().map(|(k, v)| format!("{k}={v}")))
                .chain(argv.iter().cloned())
                .collect()
        };
        let params = AttachParams::default()
            .container(pod::CONTAINER)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut process = found
            .cluster
            .pods()
            .exec(&found.name, command, &params)
            .await
            .map_err(|err| failed("cannot exec in the replica", &err))?;
        let stdout = process.stdout();
        let stderr = process.stderr();
        let status = process.take_status();
        let run = async move {
            let (out, err) = tokio::join!(read_capped(stdout), read_capped(stderr));
            let status = match status {
                Some(status) => status.await,
                None => None,
            };
            (out, err, status)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(((stdout, out_cut), (stderr, err_cut), status)) => Ok(ExecResult {
                stdout,
                stderr,
                truncated: out_cut || err_cut,
                code: status.as_ref().and_then(exit_code),
                timed_out: false,
            }),
            Err(_) => {
                process.abort();
                Ok(ExecResult {
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    truncated: false,
                    code: None,
                    timed_out: true,
                })
            }
        }
    }

    async fn stdin(&self, id: &str, input: &[u8], wait: StdinWait) -> Result<String, DriverError> {
        let found = self.find(id).await?;
        if !pod::takes_stdin(&found.secret) {
            return Err(DriverError::NoStdin(id.to_owned()));
        }
        if !found.pod.as_ref().is_some_and(pod::running) {
            return Err(DriverError::NotRunning(id.to_owned()));
        }
        let turn = self
            .stdin_turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone();
        let _turn = turn.lock().await;
        let params = AttachParams::default()
            .container(pod::CONTAINER)
            .stdin(true)
            .stdout(true)
            .stderr(false);
        let mut process = found
            .cluster
            .pods()
            .attach(&found.name, &params)
            .await
            .map_err(|err| failed("cannot attach to the replica", &err))?;
        let mut writer = process
            .stdin()
            .ok_or_else(|| DriverError::Failed("kubernetes: attach gave no stdin".to_owned()))?;
        let mut reader = process
            .stdout()
            .ok_or_else(|| DriverError::Failed("kubernetes: attach gave no stdout".to_owned()))?;
        writer
            .write_all(input)
            .await
            .map_err(|err| DriverError::Failed(format!("kubernetes: writing stdin: {err}")))?;
        writer
            .flush()
            .await
            .map_err(|err| DriverError::Failed(format!("kubernetes: writing stdin: {err}")))?;
        let mut collected = Vec::new();
        let deadline = tokio::time::Instant::now() + wait.timeout;
        let mut buf = [0u8; 8192];
        loop {
            let until = if collected.is_empty() {
                deadline
            } else {
                (tokio::time::Instant::now() + wait.quiet).min(deadline)
            };
            match tokio::time::timeout_at(until, reader.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => collected.extend_from_slice(&buf[..n]),
                Ok(Err(err)) => {
                    return Err(DriverError::Failed(format!(
                        "kubernetes: reading the replica's output: {err}"
                    )))
                }
            }
            if collected.len() > EXEC_OUTPUT_LIMIT {
                break;
            }
        }
        process.abort();
        // Whole lines only, as the other drivers answer.
        let text = String::from_utf8_lossy(&collected).into_owned();
        let lines: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .collect();
        Ok(lines.concat())
    }

    async fn follow(
        &self,
        id: &str,
        after: u64,
    ) -> Result<mpsc::Receiver<OutputEvent>, DriverError> {
        let found = self.find(id).await?;
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
        let driver = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            driver.follow_to_end(found, &id, after, tx).await;
        });
        Ok(rx)
    }

    async fn stats(&self, id: &str) -> Result<ReplicaStats, DriverError> {
        let found = self.find(id).await?;
        let pod = found
            .pod
            .as_ref()
            .filter(|p| pod::running(p))
            .ok_or_else(|| DriverError::NotRunning(id.to_owned()))?;
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or_else(|| DriverError::NotRunning(id.to_owned()))?;
        let request = http::Request::get(format!("/api/v1/nodes/{node}/proxy/stats/summary"))
            .body(Vec::new())
            .map_err(|err| DriverError::Failed(format!("kubernetes: {err}")))?;
        let summary: serde_json::Value = found
            .cluster
            .client
            .request(request)
            .await
            .map_err(|err| failed("cannot read the kubelet's stats", &err))?;
        let entry = summary["pods"]
            .as_array()
            .and_then(|pods| {
                pods.iter().find(|p| {
                    p["podRef"]["name"] == found.name.as_str()
                        && p["podRef"]["namespace"] == found.cluster.namespace.as_str()
                })
            })
            .ok_or_else(|| {
                DriverError::Failed(
                    "kubernetes: the kubelet has no stats for the replica yet".to_owned(),
                )
            })?;
        let container = entry["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == pod::CONTAINER))
            .unwrap_or(&serde_json::Value::Null);
        let number = |value: &serde_json::Value| value.as_u64().unwrap_or(0);
        let pick = |field: &str, key: &str| {
            let own = number(&container[field][key]);
            if own > 0 {
                own
            } else {
                number(&entry[field][key])
            }
        };
        Ok(ReplicaStats {
            cpu_ns: pick("cpu", "usageCoreNanoSeconds"),
            memory_bytes: pick("memory", "workingSetBytes"),
            rx_bytes: number(&entry["network"]["rxBytes"]),
            tx_bytes: number(&entry["network"]["txBytes"]),
            pids: number(&entry["process_stats"]["process_count"]),
            // When the kubelet sampled the counters: they lag by its
            // housekeeping interval.
            at_ms: container["cpu"]["time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or_else(now_ms, |t| t.timestamp_millis()),
        })
    }
}

/// Never reached: a pod with an exit has one. A kill, to be safe.
fn unreachable_exit() -> Exit {
    Exit {
        code: None,
        signal: Some(9),
        oom_killed: false,
        at_ms: now_ms(),
    }
}

/// An exec's exit code from the status the API server sends at its end.
fn exit_code(status: &MetaStatus) -> Option<i32> {
    if status.status.as_deref() == Some("Success") {
        return Some(0);
    }
    status
        .details
        .as_ref()?
        .causes
        .as_ref()?
        .iter()
        .find(|cause| cause.reason.as_deref() == Some("ExitCode"))?
        .message
        .as_deref()?
        .parse()
        .ok()
}

/// Everything a stream gives, up to [`EXEC_OUTPUT_LIMIT`] (the rest is
/// read and dropped); and whether it was cut.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(reader: Option<R>) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = EXEC_OUTPUT_LIMIT.saturating_sub(kept.len());
                if n > room {
                    cut = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, cut)
}

impl KubernetesDriver {
    /// Sends the replica's log lines after `after`, live, then its end.
    async fn follow_to_end(
        &self,
        found: Found,
        id: &str,
        after: u64,
        tx: mpsc::Sender<OutputEvent>,
    ) {
        let mut seq = 0u64;
        let pods = found.cluster.pods();
        loop {
            let pod_now = match pods.get_opt(&found.name).await {
                Ok(pod) => pod,
                Err(_) => return,
            };
            let Some(pod_now) = pod_now else {
                break;
            };
            let waiting = !pod::running(&pod_now) && pod::pod_exit(&pod_now).is_none();
            if waiting {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let params = LogParams {
                container: Some(pod::CONTAINER.to_owned()),
                follow: true,
                timestamps: true,
                ..LogParams::default()
            };
            let Ok(stream) = pods.log_stream(&found.name, &params).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            // Each reading starts at the log's first line: lines already
            // sent are counted and skipped.
            let mut seen = 0u64;
            let mut lines = stream.lines();
            while let Some(line) = lines.next().await {
                let Ok(line) = line else { break };
                let (at_ms, text) = split_timestamp(&line);
                for piece in split_long(text) {
                    seen += 1;
                    if seen <= seq {
                        continue;
                    }
                    seq = seen;
                    if seq <= after {
                        continue;
                    }
                    let event = OutputEvent::Line(OutputLine {
                        seq,
                        at_ms,
                        stream: OutputStream::Stdout,
                        text: piece.to_owned(),
                    });
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
            // The stream ended: the program did, or the connection broke.
            match pods.get_opt(&found.name).await {
                Ok(Some(pod)) if pod::pod_exit(&pod).is_some() => break,
                Ok(None) => break,
                Ok(Some(_)) => {}
                Err(_) => return,
            }
        }
        // Its exit: on the pod, or recorded when it was stopped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let Ok(found) = self.find(id).await else {
                return;
            };
            let exit = match (pod::recorded_exit(&found.secret), found.pod.as_ref()) {
                (Some(recorded), _) => Some(recorded),
                (None, Some(pod)) => pod::pod_exit(pod),
                // Gone without a record: a stop under way records the exit it
                // saw; wait for it, so every reader is told the same.
                (None, None) => None,
            };
            if let Some(exit) = exit {
                let _ = tx.send(OutputEvent::End(exit)).await;
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `2026-12-07T12:00:00.123456789Z text` → (ms, text).
fn split_timestamp(line: &str) -> (i64, &str) {
    let line = line.strip_suffix('\r').unwrap_or(line);
    match line.split_once(' ') {
        Some((stamp, text)) => match chrono::DateTime::parse_from_rfc3339(stamp) {
            Ok(at) => (at.timestamp_millis(), text),
            Err(_) => (now_ms(), line),
        },
        None => match chrono::DateTime::parse_from_rfc3339(line) {
            Ok(at) => (at.timestamp_millis(), ""),
            Err(_) => (now_ms(), line),
        },
    }
}

/// A line cut into pieces of at most [`MAX_LINE_BYTES`], at char boundaries.
fn split_long(text: &str) -> Vec<&str> {
    if text.len() <= MAX_LINE_BYTES {
        return vec![text];
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    pieces.push(rest);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    #[test]
    fn log_lines_lose_their_timestamps() {
        let (at, text) = split_timestamp("2026-12-07T12:00:00.123456789Z INFO listening on 8080");
        assert_eq!(text, "INFO listening on 8080");
        assert_eq!(at % 1000, 123);
        assert_eq!(split_timestamp("2026-12-07T12:00:00Z").1, "");
        assert_eq!(split_timestamp("no stamp here").1, "no stamp here");
    }

    #[test]
    fn long_lines_are_cut() {
        let long = "é".repeat(MAX_LINE_BYTES);
        let pieces = split_long(&long);
        assert!(pieces.iter().all(|p| p.len() <= MAX_LINE_BYTES));
        assert_eq!(pieces.concat(), long);
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        let status = MetaStatus {
            status: Some("Failure".to_owned()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".to_owned()),
                    message: Some("7".to_owned()),
                    field: None,
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(exit_code(&status), Some(7));
        let success = MetaStatus {
            status: Some("Success".to_owned()),
            ..Default::default()
        };
        assert_eq!(exit_code(&success), Some(0));
    }

    /// A cloud source that answers `answer` and records what it was asked.
    struct FakeSource {
        answer: Result<Option<ClusterConfig>, String>,
        asked: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl CloudSource for FakeSource {
        async fn cluster_config(&self, cloud_id: &str) -> Result<Option<ClusterConfig>, String> {
            self.asked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(cloud_id.to_owned());
            self.answer.clone()
        }
    }

    fn source(answer: Result<Option<ClusterConfig>, String>) -> Arc<FakeSource> {
        Arc::new(FakeSource {
            answer,
            asked: Mutex::default(),
        })
    }

    fn failure(result: Result<Cluster, DriverError>) -> String {
        match result {
            Ok(cluster) => panic!("connected to {cluster:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[tokio::test]
    async fn clouds_added_through_other_servers_are_looked_up() {
        // Without a source, an unknown cloud is refused.
        let alone = KubernetesDriver::new("abc123").expect("owner");
        let why = failure(alone.cluster_for_create("cloud_other").await);
        assert!(why.contains("no cluster on this server"), "{why}");

        // With one, its cluster is connected: here a kubeconfig that is not
        // there, so the connection's own failure shows it was tried.
        let config = ClusterConfig {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            namespace: "agents".to_owned(),
            ..ClusterConfig::default()
        };
        let found = source(Ok(Some(config)));
        let driver = KubernetesDriver::new("abc123")
            .expect("owner")
            .with_cloud_source(found.clone());
        let why = failure(driver.cluster_for_create("cloud_other").await);
        assert!(why.contains("cannot read the kubeconfig"), "{why}");
        assert_eq!(*found.asked.lock().expect("asked"), ["cloud_other"]);

        // A cloud the source does not have, or cannot read, is refused.
        let missing = KubernetesDriver::new("abc123")
            .expect("owner")
            .with_cloud_source(source(Ok(None)));
        let why = failure(missing.cluster_for_create("cloud_gone").await);
        assert!(why.contains("no cluster on this server"), "{why}");
        let broken = KubernetesDriver::new("abc123")
            .expect("owner")
            .with_cloud_source(source(Err("the database is down".to_owned())));
        let why = failure(broken.cluster_for_create("cloud_x").await);
        assert!(
            why.contains("cannot read cloud cloud_x: the database is down"),
            "{why}"
        );
    }

    #[test]
    fn owners_are_checked() {
        assert!(KubernetesDriver::new("abc123").is_ok());
        assert!(KubernetesDriver::new("ABC").is_err());
        assert!(KubernetesDriver::new("").is_err());
    }
}
