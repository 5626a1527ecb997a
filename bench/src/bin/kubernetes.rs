//! Kubernetes start latency: how long Hangar's kubernetes driver takes from
//! "create this replica" to the replica answering HTTP, measured against a
//! plain `kubectl apply` of an equivalent pod and against Hangar's sandbox
//! driver, in the same run.
//!
//! Issue 18 asks for create → first byte on a kubernetes cloud next to the
//! sandbox driver and next to what anyone gets from the cluster without
//! Hangar. The kubectl row is the floor the cluster itself sets (API server,
//! scheduler, kubelet, pause container, CNI): the ratio against it is what
//! Hangar's driver adds on top; the ratio against the sandbox driver is what
//! a user pays for choosing a kubernetes cloud over a local one.
//!
//! What runs (as root, on a node of the cluster, since replicas are reached
//! at their pod IP; everything is removed at the end, also on errors):
//! 1. One directory: a statically linked busybox and `www/index.html` holding
//!    a token unique to this run. The server is `/app/busybox httpd -f -p
//!    8080 -h /app/www` everywhere: it starts in about a millisecond, so the
//!    numbers are the platforms' own cost.
//! 2. An image built from that directory `FROM scratch` with the docker CLI
//!    (busybox and the page in two layers, so a run adds only its page to
//!    the registry), pushed to `--registry` and run by digest. The first
//!    (untimed) round leaves it on the node; `IfNotPresent` then never pulls.
//! 3. Hangar's kubernetes driver: [`KubernetesDriver::create`] of a replica
//!    of that image in namespace `--namespace` (made if missing, deleted at
//!    the end if this run made it), 100m CPU requested, 128 MiB of memory,
//!    then HTTP to [`ReplicaInfo::address`](hangar_runtime::driver::ReplicaInfo)
//!    (the pod IP). `create` makes the replica's Secret, then its pod, then
//!    reads the pod until its container runs; [`Driver::remove`] deletes
//!    both with no grace and waits for the pod to leave the API.
//! 4. `kubectl apply -f` of a pod written by the benchmark with what the
//!    driver's pod has (image by digest, command, working directory,
//!    requests and limits, the non-root read-only security context, the
//!    `/tmp` emptyDir, `restartPolicy: Never`, a shared process namespace,
//!    no service-account token, no service links), but no Secret, no owner
//!    reference and no labels of Hangar's. A `kubectl` user has to learn the
//!    pod's IP from the API: the benchmark watches the pod through the API
//!    (kube-rs, a watch opened before the clock starts) rather than polling
//!    `kubectl get pod -o jsonpath={.status.podIP}`, because each `kubectl`
//!    process costs some 100 ms of start-up on this kind of machine and
//!    would measure kubectl's start-up, not the cluster. The watch delivers
//!    the kubelet's status update the moment the API server has it: the
//!    best any client can do. `kubectl delete pod --grace-period=0 --force`
//!    (which waits for the pod to leave the API) is timed separately.
//! 5. Hangar's sandbox driver: [`SandboxDriver::create`] of the same server
//!    with the directory as its artifact at `/app`, in its own network
//!    namespace on Hangar's CNI bridge, as `bench/src/bin/sandbox.rs` does
//!    (each replica is a `hangar shim run` process: the `hangar` binary next
//!    to this one, or `--hangar`).
//!
//! A start is timed from just before the create call (`create`, spawning
//! `kubectl apply`) to the first byte of the answer to `GET /index.html`,
//! polled every 2 ms once the address is known; the whole answer (status
//! 200 and this run's token) is checked off the clock. For both pod rows a
//! watch on the pod records when the API server had it, when it was
//! scheduled, when it had an IP and when its container ran; on a
//! dockershim node the engine's own timestamps (read with `docker inspect`
//! off the clock) add when the pause container and the server's container
//! were created and started. Together they show where the time goes. After
//! each removal the benchmark waits, off the
//! clock, until the node's Docker engine runs no container of the pod (on a
//! dockershim node; elsewhere it cannot tell and does not wait), so a
//! kubelet still tearing one pod down does not slow the next start. The
//! three take turns in a rotating order, one replica at a time, after
//! `--warmup` untimed rounds.
//!
//! Not measured: deploy → running through Hangar's API on a kubernetes
//! cloud (a build, a push, the controller): only the driver and the
//! cluster are timed here.
//!
//! Results are p50, p90 and max in ms and the ratios of medians, printed as
//! Markdown tables, with the CPU steal and the load average while timing.
//! The binary exits 0 after a run whatever the figures: it is a
//! measurement, not a test.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use futures_util::StreamExt as _;
use hangar_bench::host::{hangar_binary, output, require_root, version, TempDir};
use hangar_bench::probe::{check_busybox, first_byte, server_rootfs};
use hangar_bench::{
    cpu_count, cpu_ticks, find_program, kernel_release, load_average, print_conditions, ratio,
    steal_percent, Stats,
};
use hangar_runtime::driver::{labels, ReplicaSpec};
use hangar_runtime::kubernetes::{Cluster, ClusterConfig};
use hangar_runtime::{Driver, KubernetesDriver, SandboxDriver, SandboxDriverConfig};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, WatchEvent, WatchParams};

/// How long a start may take before the benchmark gives up (the first one
/// may pull the image).
const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long the kubelet may take to stop a deleted pod's containers.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// The port the server listens on in its pod or namespace.
const CONTAINER_PORT: u16 = 8080;
/// Memory limit (and, on the cluster, request) of every replica, in bytes.
const MEMORY_LIMIT: u64 = 128 << 20;
/// CPU request of every replica, in millicores: small, so the pod fits on a
/// two-core node beside whatever else runs there.
const CPU_MILLIS: u64 = 100;
/// Pids limit of the sandbox replicas (a pod's is the node's).
const PIDS_LIMIT: i64 = 128;
/// Who the server runs as everywhere (`nobody`, the drivers' default).
const NOBODY: u32 = 65_534;
/// The cloud id the kubernetes driver's replicas are labelled with.
const CLOUD: &str = "bench";
/// The server, the same in every row.
const SERVER: [&str; 7] = [
    "/app/busybox",
    "httpd",
    "-f",
    "-p",
    "8080",
    "-h",
    "/app/www",
];

/// Measures create → first HTTP byte of Hangar's kubernetes driver against
/// `kubectl apply` of an equivalent pod and Hangar's sandbox driver. Needs
/// root, `$KUBECONFIG` for a cluster this host is a node of, a registry the
/// cluster pulls from, and the docker and kubectl CLIs.
#[derive(Debug, Parser)]
#[command(name = "kubernetes")]
struct Args {
    /// Timed starts of each of the three.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Untimed rounds (a start of each) before timing; the first also puts
    /// the image on the node.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// The namespace the pods run in (made if missing; deleted at the end
    /// if this run made it).
    #[arg(long, default_value = "hangar-bench")]
    namespace: String,
    /// Where the image is pushed and the cluster pulls it from (`host:port`).
    #[arg(long, default_value = "127.0.0.1:5000")]
    registry: String,
    /// The `hangar` binary whose `shim` runs each sandbox replica (default:
    /// `hangar` in the directory of this binary).
    #[arg(long)]
    hangar: Option<PathBuf>,
    /// A statically linked busybox with the `httpd` applet (Debian:
    /// busybox-static).
    #[arg(long, default_value = "/usr/bin/busybox")]
    busybox: PathBuf,
}

/// The three compared, in the order of the table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Kubernetes,
    Kubectl,
    Sandbox,
}

const RUNTIMES: [Runtime; 3] = [Runtime::Kubernetes, Runtime::Kubectl, Runtime::Sandbox];

impl Runtime {
    fn index(self) -> usize {
        self as usize
    }

    /// Its part of replica ids and pod names.
    fn short(self) -> &'static str {
        match self {
            Runtime::Kubernetes => "k",
            Runtime::Kubectl => "a",
            Runtime::Sandbox => "s",
        }
    }
}

/// The server's image in the registry; removed from the local engine and
/// the registry on drop (the registry keeps the blobs until its garbage
/// collection runs).
struct Image {
    /// `registry/repository:tag`, in the local engine.
    tag: Option<String>,
    /// `registry/repository@sha256:…`, what the pods run.
    by_digest: String,
}

impl Image {
    /// Builds the image from `rootfs` and pushes it to `registry`.
    fn push(tmp: &Path, rootfs: &Path, registry: &str, run: &str) -> Result<Self> {
        let dockerfile = tmp.join("Dockerfile");
        // Two layers: busybox is the same blob every run, the page is new.
        fs::write(
            &dockerfile,
            "FROM scratch\nCOPY busybox /app/busybox\nCOPY www /app/www\n",
        )?;
        let tag = format!("{registry}/hangar-bench-httpd:{run}");
        let mut image = Image {
            tag: None,
            by_digest: String::new(),
        };
        let built = output(
            Command::new("docker")
                .args(["build", "--quiet", "--tag", &tag, "--file"])
                .arg(&dockerfile)
                .arg(rootfs),
        )?;
        ensure!(
            built.status.success(),
            "docker build failed: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        );
        image.tag = Some(tag.clone());
        let pushed = output(Command::new("docker").args(["push", &tag]))?;
        ensure!(
            pushed.status.success(),
            "docker push {tag} failed (is the registry at {registry} up, and does the engine \
             push to it without TLS?): {}",
            String::from_utf8_lossy(&pushed.stderr).trim()
        );
        let digests = output(Command::new("docker").args([
            "image",
            "inspect",
            "--format",
            "{{range .RepoDigests}}{{println .}}{{end}}",
            &tag,
        ]))?;
        let prefix = format!("{registry}/hangar-bench-httpd@");
        image.by_digest = String::from_utf8_lossy(&digests.stdout)
            .lines()
            .find(|line| line.starts_with(&prefix))
            .with_context(|| format!("docker knows no digest of {tag} in {registry}"))?
            .to_owned();
        Ok(image)
    }

    /// Deletes the manifest from the registry (its API, plain HTTP).
    fn delete_manifest(&self) -> Result<()> {
        let (host, rest) = self
            .by_digest
            .split_once('/')
            .context("no registry in the image reference")?;
        let (repository, digest) = rest.split_once('@').context("no digest")?;
        let address = host
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "DELETE /v2/{repository}/manifests/{digest} HTTP/1.0\r\nHost: {host}\r\n\r\n"
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer);
        let status = text.lines().next().unwrap_or_default();
        ensure!(
            status.split_whitespace().nth(1) == Some("202"),
            "the registry answered {status:?} (is deletion enabled?)"
        );
        Ok(())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.by_digest.is_empty() {
            if let Err(err) = self.delete_manifest() {
                eprintln!(
                    "warning: cannot delete {} from the registry: {err:#}",
                    self.by_digest
                );
            }
        }
        if let Some(tag) = self.tag.take() {
            match output(Command::new("docker").args(["rmi", "--force", &tag])) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "warning: cannot remove image {tag}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(err) => eprintln!("warning: cannot remove image {tag}: {err:#}"),
            }
        }
    }
}

/// When a watch on one pod first saw it reach each stage, and its name.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: Option<String>,
    /// The API server had the pod.
    created: Option<Instant>,
    /// The scheduler had bound it to a node.
    scheduled: Option<Instant>,
    /// The kubelet had reported its IP (the pause container and CNI done).
    ip: Option<(Instant, IpAddr)>,
    /// The kubelet had reported its container running.
    running: Option<Instant>,
}

impl Seen {
    fn update(&mut self, pod: &Pod, now: Instant) {
        if self.name.is_none() {
            self.name.clone_from(&pod.metadata.name);
        }
        self.created.get_or_insert(now);
        if self.scheduled.is_none()
            && pod
                .spec
                .as_ref()
                .is_some_and(|spec| spec.node_name.is_some())
        {
            self.scheduled = Some(now);
        }
        let status = pod.status.as_ref();
        if self.ip.is_none() {
            if let Some(ip) = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok())
            {
                self.ip = Some((now, ip));
            }
        }
        let running = status
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|all| {
                all.iter()
                    .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            });
        if self.running.is_none() && running {
            self.running = Some(now);
        }
    }
}

/// A watch on one pod, recording [`Seen`] in a task of its own so that the
/// stages are stamped when they arrive, whatever the main thread is doing.
struct PodWatch {
    seen: tokio::sync::watch::Receiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl PodWatch {
    /// Opens the watch (it is established when this returns) on the pods
    /// `params` select.
    async fn open(pods: &Api<Pod>, params: &WatchParams) -> Result<Self> {
        let stream = pods.watch(params, "0").await.context("watching the pod")?;
        let (tx, seen) = tokio::sync::watch::channel(Seen::default());
        let task = tokio::spawn(async move {
            let mut stream = Box::pin(stream);
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                match event {
                    Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => {
                        tx.send_modify(|seen| seen.update(&pod, now));
                        if tx.borrow().running.is_some() {
                            break;
                        }
                    }
                    Ok(WatchEvent::Bookmark(_)) => {}
                    Ok(WatchEvent::Deleted(_) | WatchEvent::Error(_)) | Err(_) => break,
                }
            }
        });
        Ok(Self { seen, task })
    }

    /// Waits until the pod has an IP.
    async fn ip(&mut self) -> Result<IpAddr> {
        let seen =
            tokio::time::timeout(START_DEADLINE, self.seen.wait_for(|seen| seen.ip.is_some()))
                .await
                .with_context(|| {
                    format!("the pod had no IP within {} s", START_DEADLINE.as_secs())
                })?
                .context("the watch ended before the pod had an IP")?;
        seen.ip.map(|(_, ip)| ip).context("no IP")
    }

    /// What was seen, ending the watch.
    fn finish(self) -> Seen {
        self.task.abort();
        self.seen.borrow().clone()
    }
}

/// How long after the start each stage of a pod was reached: as a watch on
/// the pod saw it, and as the node's Docker engine recorded it.
#[derive(Debug, Clone, Copy, Default)]
struct Stages {
    created: Option<Duration>,
    scheduled: Option<Duration>,
    ip: Option<Duration>,
    running: Option<Duration>,
    engine: Engine,
}

impl Stages {
    fn since(t0: Instant, seen: &Seen, engine: Engine) -> Self {
        let after = |at: Option<Instant>| at.and_then(|at| at.checked_duration_since(t0));
        Self {
            created: after(seen.created),
            scheduled: after(seen.scheduled),
            ip: after(seen.ip.map(|(at, _)| at)),
            running: after(seen.running),
            engine,
        }
    }
}

/// When the node's Docker engine created and started a pod's containers
/// (dockershim nodes), from the start; all `None` elsewhere.
#[derive(Debug, Clone, Copy, Default)]
struct Engine {
    pause_created: Option<Duration>,
    pause_started: Option<Duration>,
    created: Option<Duration>,
    started: Option<Duration>,
}

impl Engine {
    /// Reads the engine's records of the containers of pod `name` in
    /// `namespace`; `wall0` is the start by the wall clock, which the
    /// engine's timestamps are in.
    fn read(namespace: &str, name: &str, wall0: SystemTime) -> Self {
        let mut engine = Engine::default();
        let Ok(listed) = output(Command::new("docker").args([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label=io.kubernetes.pod.name={name}"),
            "--filter",
            &format!("label=io.kubernetes.pod.namespace={namespace}"),
        ])) else {
            return engine;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            return engine;
        }
        let Ok(inspected) = output(
            Command::new("docker")
                .args([
                    "inspect",
                    "--format",
                    "{{index .Config.Labels \"io.kubernetes.container.name\"}} {{.Created}} {{.State.StartedAt}}",
                ])
                .args(&ids),
        ) else {
            return engine;
        };
        let wall0: chrono::DateTime<chrono::Utc> = wall0.into();
        let after = |stamp: &str| {
            let at = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
            (at.with_timezone(&chrono::Utc) - wall0).to_std().ok()
        };
        for line in String::from_utf8_lossy(&inspected.stdout).lines() {
            let mut fields = line.split_whitespace();
            let (Some(container), Some(created), Some(started)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            // The pause container holds the pod's namespaces (dockershim
            // names it POD); the other is the server's.
            let (c, s) = if container == "POD" {
                (&mut engine.pause_created, &mut engine.pause_started)
            } else {
                (&mut engine.created, &mut engine.started)
            };
            *c = after(created);
            *s = after(started);
        }
        engine
    }
}

/// One timed start.
struct Start {
    /// The create call (or `kubectl apply`) returned.
    call: Duration,
    /// The first HTTP byte arrived.
    ready: Duration,
    /// What a watch saw of the pod; none for sandboxes.
    stages: Option<Stages>,
    /// Its pod's name.
    pod: Option<String>,
}

/// Everything one run holds; cleaned up on drop (replicas and pods, then
/// the namespace if this run made it), before the image and the temporary
/// directory (later fields).
struct Bench {
    rt: tokio::runtime::Runtime,
    kubernetes: KubernetesDriver,
    sandbox: SandboxDriver,
    pods: Api<Pod>,
    namespaces: Api<Namespace>,
    namespace: String,
    /// Whether this run made the namespace (and so deletes it).
    made_namespace: bool,
    kubectl: PathBuf,
    docker: bool,
    /// Replicas and pods that may exist, by who made them.
    live: Vec<(Runtime, String)>,
    marker: String,
    image: Image,
    rootfs: PathBuf,
    tmp: TempDir,
}

impl Bench {
    fn kubernetes_spec(&self, id: &str) -> ReplicaSpec {
        let mut spec = self.sandbox_spec(id);
        spec.labels
            .insert(labels::CLOUD.to_owned(), CLOUD.to_owned());
        spec.app = None;
        spec.image = Some(self.image.by_digest.clone());
        spec
    }

    fn sandbox_spec(&self, id: &str) -> ReplicaSpec {
        ReplicaSpec {
            id: id.to_owned(),
            labels: BTreeMap::from([(labels::INSTANCE.to_owned(), "bench".to_owned())]),
            argv: SERVER.iter().map(|&arg| arg.to_owned()).collect(),
            env: Vec::new(),
            cwd: "/app".to_owned(),
            app: Some(self.rootfs.clone()),
            app_writable: false,
            port: Some(CONTAINER_PORT),
            stdin: false,
            cpu_millis: CPU_MILLIS,
            cpu_limit_millis: None,
            memory_limit_bytes: Some(MEMORY_LIMIT),
            pids_limit: PIDS_LIMIT,
            rootfs: None,
            user: None,
            image: None,
            image_auth: None,
            network: Default::default(),
        }
    }

    /// The pod `kubectl apply` makes: the driver's pod without Hangar's
    /// Secret, owner reference and labels (see the module docs).
    fn pod_yaml(&self, name: &str) -> String {
        let command = SERVER
            .iter()
            .map(|arg| format!("\"{arg}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    hangar-bench: kubectl
spec:
  restartPolicy: Never
  shareProcessNamespace: true
  automountServiceAccountToken: false
  enableServiceLinks: false
  securityContext:
    fsGroup: {NOBODY}
  volumes:
    - name: tmp
      emptyDir: {{}}
  containers:
    - name: replica
      image: \"{image}\"
      imagePullPolicy: IfNotPresent
      command: [{command}]
      workingDir: /app
      stdin: false
      tty: false
      resources:
        requests:
          cpu: {CPU_MILLIS}m
          memory: \"{MEMORY_LIMIT}\"
        limits:
          memory: \"{MEMORY_LIMIT}\"
      securityContext:
        runAsNonRoot: true
        runAsUser: {NOBODY}
        runAsGroup: {NOBODY}
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities:
          drop: [\"ALL\"]
      volumeMounts:
        - name: tmp
          mountPath: /tmp
",
            namespace = self.namespace,
            image = self.image.by_digest,
        )
    }

    fn start(&mut self, runtime: Runtime, id: &str) -> Result<Start> {
        match runtime {
            Runtime::Kubernetes => self.start_kubernetes(id),
            Runtime::Kubectl => self.start_kubectl(id),
            Runtime::Sandbox => self.start_sandbox(id),
        }
    }

    fn start_kubernetes(&mut self, id: &str) -> Result<Start> {
        let spec = self.kubernetes_spec(id);
        // The driver labels its pods with the replica id when it fits.
        let params = WatchParams::default()
            .labels(&format!("hangar.replica={id}"))
            .timeout(290);
        let watch = self.rt.block_on(PodWatch::open(&self.pods, &params))?;
        self.live.push((Runtime::Kubernetes, id.to_owned()));
        let wall0 = SystemTime::now();
        let (t0, call, ready) =
            self.create_and_probe(&self.kubernetes, &spec, "kubernetes driver")?;
        let seen = watch.finish();
        let engine = self.engine(seen.name.as_deref(), wall0);
        Ok(Start {
            call,
            ready,
            stages: Some(Stages::since(t0, &seen, engine)),
            pod: seen.name,
        })
    }

    /// Creates a replica through `driver` and probes it; returns when the
    /// clock started (just before the create call), how long the call took
    /// and how long until the first HTTP byte.
    fn create_and_probe(
        &self,
        driver: &dyn Driver,
        spec: &ReplicaSpec,
        what: &str,
    ) -> Result<(Instant, Duration, Duration)> {
        let id = &spec.id;
        let t0 = Instant::now();
        let info = self
            .rt
            .block_on(driver.create(spec))
            .with_context(|| format!("{what}: creating replica {id}"))?;
        let call = t0.elapsed();
        let address = info
            .address
            .with_context(|| format!("{what}: replica {id} has no address"))?;
        let ready =
            first_byte(address, t0, &self.marker, START_DEADLINE).context(what.to_owned())?;
        Ok((t0, call, ready))
    }

    fn start_kubectl(&mut self, name: &str) -> Result<Start> {
        let file = self.tmp.0.join(format!("{name}.yaml"));
        fs::write(&file, self.pod_yaml(name))?;
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(290);
        let mut watch = self.rt.block_on(PodWatch::open(&self.pods, &params))?;
        self.live.push((Runtime::Kubectl, name.to_owned()));
        let wall0 = SystemTime::now();
        let t0 = Instant::now();
        let applied = output(
            Command::new(&self.kubectl)
                .arg("apply")
                .arg("-f")
                .arg(&file),
        )?;
        let call = t0.elapsed();
        ensure!(
            applied.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&applied.stderr).trim()
        );
        let ip = self
            .rt
            .block_on(watch.ip())
            .with_context(|| format!("kubectl: pod {name}"))?;
        let ready = first_byte(
            SocketAddr::new(ip, CONTAINER_PORT),
            t0,
            &self.marker,
            START_DEADLINE,
        )
        .context("kubectl")?;
        let seen = watch.finish();
        let engine = self.engine(Some(name), wall0);
        Ok(Start {
            call,
            ready,
            stages: Some(Stages::since(t0, &seen, engine)),
            pod: Some(name.to_owned()),
        })
    }

    fn start_sandbox(&mut self, id: &str) -> Result<Start> {
        let spec = self.sandbox_spec(id);
        self.live.push((Runtime::Sandbox, id.to_owned()));
        let (_, call, ready) = self.create_and_probe(&self.sandbox, &spec, "sandbox driver")?;
        Ok(Start {
            call,
            ready,
            stages: None,
            pod: None,
        })
    }

    /// Removes what [`Bench::start`] made; returns how long that took.
    fn remove(&mut self, runtime: Runtime, id: &str) -> Result<Duration> {
        let t0 = Instant::now();
        match runtime {
            Runtime::Kubernetes => self
                .rt
                .block_on(self.kubernetes.remove(id))
                .with_context(|| format!("kubernetes driver: removing replica {id}"))?,
            Runtime::Kubectl => {
                let out = output(Command::new(&self.kubectl).args([
                    "delete",
                    "pod",
                    id,
                    "--namespace",
                    &self.namespace,
                    "--grace-period=0",
                    "--force",
                ]))?;
                ensure!(
                    out.status.success(),
                    "kubectl delete pod {id} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Runtime::Sandbox => self
                .rt
                .block_on(self.sandbox.remove(id))
                .with_context(|| format!("sandbox driver: removing replica {id}"))?,
        }
        let took = t0.elapsed();
        self.live.retain(|(r, live)| !(*r == runtime && live == id));
        Ok(took)
    }

    /// The engine's record of pod `name`'s containers (off the clock).
    fn engine(&self, name: Option<&str>, wall0: SystemTime) -> Engine {
        match name {
            Some(name) if self.docker => Engine::read(&self.namespace, name, wall0),
            _ => Engine::default(),
        }
    }

    /// Waits (off the clock) until the node's Docker engine runs no
    /// container of pod `name` any more: a pod deleted with no grace leaves
    /// the API at once, while the kubelet stops its containers afterwards.
    fn settle(&self, name: &str) {
        if !self.docker {
            return;
        }
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let listed = output(Command::new("docker").args([
                "ps",
                "--quiet",
                "--filter",
                &format!("label=io.kubernetes.pod.name={name}"),
                "--filter",
                &format!("label=io.kubernetes.pod.namespace={}", self.namespace),
            ]));
            match listed {
                Ok(out) if out.status.success() && out.stdout.trim_ascii().is_empty() => return,
                Ok(out) if out.status.success() => {}
                _ => return,
            }
            if Instant::now() > deadline {
                eprintln!(
                    "warning: pod {name}'s containers still run {} s after its deletion",
                    SETTLE_DEADLINE.as_secs()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts and removes each runtime's server `warmup + n` times, in
    /// rotating order; the first `warmup` rounds are not kept.
    fn measure(&mut self, warmup: usize, n: usize) -> Result<Samples> {
        let pid = std::process::id();
        let mut samples = Samples::default();
        let started = Instant::now();
        for round in 0..warmup + n {
            let timed = round >= warmup;
            for k in 0..RUNTIMES.len() {
                let runtime = RUNTIMES[(round + k) % RUNTIMES.len()];
                let id = format!("hb-{pid}-{}-{round}", runtime.short());
                let start = self.start(runtime, &id)?;
                let remove = self.remove(runtime, &id)?;
                if let Some(pod) = &start.pod {
                    self.settle(pod);
                }
                if timed {
                    let i = runtime.index();
                    samples.call[i].push(start.call);
                    samples.ready[i].push(start.ready);
                    samples.remove[i].push(remove);
                    if let Some(stages) = start.stages {
                        samples.stages[i].push(stages);
                    }
                }
            }
            println!(
                "  round {}/{} done ({:.1} s){}",
                round + 1,
                warmup + n,
                started.elapsed().as_secs_f64(),
                if timed { "" } else { ", untimed" }
            );
        }
        Ok(samples)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for (runtime, id) in self.live.clone() {
            if let Err(err) = self.remove(runtime, &id) {
                eprintln!("warning: cannot remove {runtime:?} replica {id}: {err:#}");
            }
        }
        if self.made_namespace {
            let namespace = self.namespace.clone();
            let deleted = self.rt.block_on(async {
                match self
                    .namespaces
                    .delete(&namespace, &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
                    Err(err) => return Err(anyhow::Error::from(err)),
                }
                // Gone, so the next run does not meet it terminating.
                let deadline = Instant::now() + SETTLE_DEADLINE;
                while self.namespaces.get_opt(&namespace).await?.is_some() {
                    ensure!(
                        Instant::now() < deadline,
                        "still terminating after {} s",
                        SETTLE_DEADLINE.as_secs()
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(())
            });
            if let Err(err) = deleted {
                eprintln!("warning: cannot delete namespace {namespace}: {err:#}");
            }
        }
    }
}

/// Timed samples, by runtime ([`Runtime::index`]).
#[derive(Default)]
struct Samples {
    /// Create call → first HTTP byte.
    ready: [Vec<Duration>; 3],
    /// The create call (or `kubectl apply`) alone.
    call: [Vec<Duration>; 3],
    /// Removal.
    remove: [Vec<Duration>; 3],
    /// What the watches saw of the pods.
    stages: [Vec<Stages>; 3],
}

/// Prints one row per runtime with ratios of medians against kubectl and
/// the sandbox driver.
fn print_group(names: [&str; 3], samples: &[Vec<Duration>; 3]) {
    let stats: Vec<Option<Stats>> = samples.iter().map(|s| Stats::of(s)).collect();
    let kubectl = stats[Runtime::Kubectl.index()].as_ref();
    let sandbox = stats[Runtime::Sandbox.index()].as_ref();
    for (i, (name, stats)) in names.iter().zip(&stats).enumerate() {
        let Some(s) = stats else {
            println!("| {name} | not measured | | | | |");
            continue;
        };
        let vs_kubectl = if i == Runtime::Kubectl.index() {
            "—".to_owned()
        } else {
            ratio(s, kubectl)
        };
        let vs_sandbox = if i == Runtime::Sandbox.index() {
            "—".to_owned()
        } else {
            ratio(s, sandbox)
        };
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {vs_kubectl} | {vs_sandbox} |",
            s.p50, s.p90, s.max
        );
    }
}

/// Which stage of [`Stages`] a row shows.
type Stage = fn(&Stages) -> Option<Duration>;

/// Prints, for the two pod rows, the median time from the start until
/// each stage was seen.
fn print_stages(samples: &Samples) {
    let cell = |runtime: Runtime, pick: Stage| -> String {
        let times: Vec<Duration> = samples.stages[runtime.index()]
            .iter()
            .filter_map(pick)
            .collect();
        match Stats::of(&times) {
            Some(s) if times.len() == samples.stages[runtime.index()].len() => {
                format!("{:.1}", s.p50)
            }
            Some(s) => format!(
                "{:.1} ({} of {} seen)",
                s.p50,
                times.len(),
                samples.stages[runtime.index()].len()
            ),
            None => "—".to_owned(),
        }
    };
    let median = |runtime: Runtime, all: &[Vec<Duration>; 3]| -> String {
        Stats::of(&all[runtime.index()]).map_or_else(|| "—".to_owned(), |s| format!("{:.1}", s.p50))
    };
    println!("| stage (median ms from the start; watch: seen by a watch on the pod; engine: recorded by the node's Docker engine) | kubernetes driver | kubectl apply |");
    println!("|---|---:|---:|");
    let rows: [(&str, Stage); 8] = [
        ("watch: the API server has the pod", |s| s.created),
        ("watch: the scheduler has bound it to the node", |s| {
            s.scheduled
        }),
        ("engine: the pause container created", |s| {
            s.engine.pause_created
        }),
        (
            "engine: the pause container started (CNI ADD follows)",
            |s| s.engine.pause_started,
        ),
        ("engine: the server's container created", |s| {
            s.engine.created
        }),
        ("engine: the server's container started", |s| {
            s.engine.started
        }),
        ("watch: the kubelet reports the pod's IP", |s| s.ip),
        ("watch: the kubelet reports the container running", |s| {
            s.running
        }),
    ];
    for (name, pick) in rows {
        println!(
            "| {name} | {} | {} |",
            cell(Runtime::Kubernetes, pick),
            cell(Runtime::Kubectl, pick)
        );
    }
    println!(
        "| `create` / `kubectl apply` returned | {} | {} |",
        median(Runtime::Kubernetes, &samples.call),
        median(Runtime::Kubectl, &samples.call)
    );
    println!(
        "| first HTTP byte | {} | {} |",
        median(Runtime::Kubernetes, &samples.ready),
        median(Runtime::Kubectl, &samples.ready)
    );
}

/// Prints the tables and the ratios.
fn report(samples: &Samples, args: &Args, steal: Option<f64>, load: (String, String)) {
    println!();
    println!(
        "{} timed starts of each, after {} untimed rounds; one replica at a time, in rotating \
         order. Times in ms; ratios are of medians.",
        args.iterations, args.warmup
    );
    print_conditions(steal, &load);
    println!();
    println!("| measurement | p50 ms | p90 ms | max ms | p50 ÷ kubectl p50 | p50 ÷ sandbox p50 |");
    println!("|---|---:|---:|---:|---:|---:|");
    print_group(
        [
            "kubernetes driver: `KubernetesDriver::create` → first HTTP byte",
            "kubectl: `kubectl apply -f pod.yaml` → first HTTP byte at the pod IP",
            "sandbox driver: `SandboxDriver::create` → first HTTP byte",
        ],
        &samples.ready,
    );
    print_group(
        [
            "kubernetes driver: `create` returned",
            "kubectl: `kubectl apply` returned",
            "sandbox driver: `create` returned",
        ],
        &samples.call,
    );
    print_group(
        [
            "kubernetes driver: `remove`",
            "kubectl: `kubectl delete pod --grace-period=0 --force`",
            "sandbox driver: `remove`",
        ],
        &samples.remove,
    );
    println!();
    print_stages(samples);
    let ready: Vec<Option<Stats>> = samples.ready.iter().map(|s| Stats::of(s)).collect();
    let (k, a, s) = (
        ready[Runtime::Kubernetes.index()].as_ref(),
        ready[Runtime::Kubectl.index()].as_ref(),
        ready[Runtime::Sandbox.index()].as_ref(),
    );
    println!();
    println!("Create → first HTTP byte, ratios of medians:");
    if let (Some(k), Some(a)) = (k, a) {
        println!(
            "- kubernetes driver ÷ kubectl apply: {:.1} ms ÷ {:.1} ms = {:.2}×",
            k.p50,
            a.p50,
            k.p50 / a.p50
        );
    }
    if let (Some(k), Some(s)) = (k, s) {
        println!(
            "- kubernetes driver ÷ sandbox driver: {:.1} ms ÷ {:.1} ms = {:.1}×",
            k.p50,
            s.p50,
            k.p50 / s.p50
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.iterations >= 1, "--iterations must be at least 1");
    require_root("the sandbox driver's namespaces, cgroups and mounts")?;
    let hangar_bin = hangar_binary(args.hangar.as_deref())?;
    let kubectl = find_program("kubectl").context(
        "kubectl is not in PATH (the baseline is `kubectl apply`; see BENCHMARKS.md for a cluster)",
    )?;
    ensure!(
        find_program("docker").is_some(),
        "the docker CLI is not installed: it builds and pushes the server's image"
    );
    check_busybox(&args.busybox, "the image holds nothing but busybox")?;

    // --- Set up -------------------------------------------------------------------
    let tmp = TempDir::new("k8s")?;
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let marker = format!("hangar-bench-kubernetes {pid} {nanos}");
    let rootfs = tmp.0.join("rootfs");
    server_rootfs(&rootfs, &args.busybox, &marker, &[])?;
    let image = Image::push(&tmp.0, &rootfs, &args.registry, &format!("{pid}-{nanos}"))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building a runtime")?;
    let (cluster, namespaces, made_namespace) = rt.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes cluster: set KUBECONFIG (see BENCHMARKS.md)")?;
        let namespaces: Api<Namespace> = Api::all(client);
        let existed = namespaces.get_opt(&args.namespace).await?.is_some();
        let cluster = Cluster::connect(&ClusterConfig {
            namespace: args.namespace.clone(),
            ..ClusterConfig::default()
        })
        .await
        .context("connecting the kubernetes driver to the cluster")?;
        anyhow::Ok((cluster, namespaces, !existed))
    })?;
    let pods: Api<Pod> = rt.block_on(async {
        let client = kube::Client::try_default().await?;
        anyhow::Ok(Api::namespaced(client, &args.namespace))
    })?;
    let api_version = cluster.version().to_owned();
    let kubernetes = KubernetesDriver::new(&format!("hb{pid}"))?;
    kubernetes.add_cloud(CLOUD, cluster);
    let sandbox = SandboxDriver::new(SandboxDriverConfig {
        shim_program: hangar_bin.clone(),
        state_dir: tmp.0.join("sandbox"),
        host_network: false,
    })
    .context("starting the sandbox driver")?;
    let bridged = sandbox.bridged();
    let docker =
        output(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default();

    println!(
        "Cluster: Kubernetes {api_version}, namespace {}{}",
        args.namespace,
        if made_namespace {
            " (made by this run)"
        } else {
            ""
        }
    );
    println!(
        "kubectl: {} ({})",
        kubectl.display(),
        version(&kubectl, &["version", "--client", "--short"])
    );
    println!("Image: {} (docker {docker})", image.by_digest);
    println!(
        "Hangar: {} (shim: `hangar shim run`), sandbox network: {}",
        hangar_bin.display(),
        if bridged {
            "own namespace on the CNI bridge"
        } else {
            "THE HOST'S (the bridge is unavailable; see the driver's requirements)"
        }
    );
    println!(
        "Server: {} httpd -f; kernel {}, {} CPUs",
        version(&args.busybox, &[]),
        kernel_release(),
        cpu_count()
    );

    let mut bench = Bench {
        rt,
        kubernetes,
        sandbox,
        pods,
        namespaces,
        namespace: args.namespace.clone(),
        made_namespace,
        kubectl,
        docker: !docker.is_empty(),
        live: Vec::new(),
        marker,
        image,
        rootfs,
        tmp,
    };

    // --- Measure ------------------------------------------------------------------
    let ticks = cpu_ticks();
    let load_before = load_average();
    let samples = bench.measure(args.warmup, args.iterations)?;
    let steal = steal_percent(ticks, cpu_ticks());
    let load_after = load_average();
    drop(bench);
    report(&samples, &args, steal, (load_before, load_after));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStatus, PodSpec, PodStatus,
    };

    #[test]
    fn each_stage_is_stamped_when_first_seen() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".to_owned());
        let mut seen = Seen::default();
        seen.update(&pod, at(1));
        pod.spec = Some(PodSpec {
            node_name: Some("node".to_owned()),
            ..PodSpec::default()
        });
        seen.update(&pod, at(2));
        pod.status = Some(PodStatus {
            pod_ip: Some("10.244.0.7".to_owned()),
            container_statuses: Some(vec![ContainerStatus {
                name: "replica".to_owned(),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        seen.update(&pod, at(5));
        seen.update(&pod, at(9));
        let stages = Stages::since(t0, &seen, Engine::default());
        assert_eq!(seen.name.as_deref(), Some("p"));
        assert_eq!(stages.created, Some(Duration::from_millis(1)));
        assert_eq!(stages.scheduled, Some(Duration::from_millis(2)));
        assert_eq!(stages.ip, Some(Duration::from_millis(5)));
        assert_eq!(stages.running, Some(Duration::from_millis(5)));
        assert_eq!(
            seen.ip.map(|(_, ip)| ip.to_string()).as_deref(),
            Some("10.244.0.7")
        );
    }
}
