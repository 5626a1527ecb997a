//! Hangar on Kubernetes for real: `deploy/kubernetes/hangar.yaml` applied to
//! the cluster of `$KUBECONFIG` (`.ci/run` brings it up), with the images
//! `deploy/kubernetes/build-image.sh` makes from this build's `hangar` and
//! the host's PostgreSQL, pushed to the registry beside the cluster. Its
//! three servers become ready on one PostgreSQL; through their Service a
//! kubernetes cloud is added (the in-cluster service account and the
//! manifest's Role), an agent from an image is deployed, its replicas run
//! as pods, and it answers.
//!
//! The manifest is applied as a user would, with three changes a test
//! needs: its namespaces get this run's names, its images the pushed
//! references, and the servers' pods a relay to the registry. That registry
//! serves on the node's loopback (the only address the node's Docker pulls
//! from without TLS), which a server in a pod must also reach to resolve an
//! image's digest: a sidecar in each server's pod listens on the registry's
//! port on the pod's loopback and relays to this test, which relays to the
//! registry. A real cluster's registry has one name for nodes and pods
//! alike, and needs neither relay. PostgreSQL's claim is given a `hostPath`
//! volume, the cluster having no provisioner.
//!
//! Needs root, a cluster, its registry and Docker (`cargo test -p hangar
//! --test k8s_deploy`); without them the test skips, saying why, except
//! with `CI=true`, where it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use kube::api::{Api, ListParams};
use serde_json::{json, Value};

mod common;

use common::kubernetes::{cluster_or_skip, registry};
use common::*;

/// The pods' label of the servers, as the manifest sets it.
const SERVERS: &str = "app.kubernetes.io/name=hangar";
/// The manifest's own namespaces.
const NAMESPACE: &str = "hangar";
const AGENTS_NAMESPACE: &str = "hangar-agents";

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// Runs `command`, which must succeed; its stdout.
fn run(command: &mut Command) -> String {
    let out = command.output().expect("runs");
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl(args: &[&str]) -> String {
    run(Command::new("kubectl").args(args))
}

/// `kubectl apply -f -` of `objects`.
fn apply(objects: &[Value]) {
    use std::io::Write as _;
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let mut child = Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(list.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This run's namespaces and volume, deleted when dropped (after the
/// deployment's own pods have had their grace period elsewhere: the
/// deletion is not waited for).
struct Deployment {
    namespace: String,
    agents: String,
    volume_dir: PathBuf,
}

impl Deployment {
    fn new() -> Self {
        let namespace = format!("hangar-deploy-{}", std::process::id());
        Self {
            agents: format!("{namespace}-agents"),
            volume_dir: temp("k8s-deploy").join("postgres"),
            namespace,
        }
    }

    /// The manifest's name for a namespace → this run's.
    fn rename(&self, name: &str) -> Option<String> {
        match name {
            NAMESPACE => Some(self.namespace.clone()),
            AGENTS_NAMESPACE => Some(self.agents.clone()),
            _ => None,
        }
    }

    /// What `kubectl` and the servers' pods say, for a failure's message.
    fn state(&self) -> String {
        let mut said = String::new();
        for args in [
            vec![
                "get",
                "pods,pvc,endpoints",
                "-o",
                "wide",
                "-n",
                &self.namespace,
            ],
            vec!["get", "pods", "-o", "wide", "-n", &self.agents],
            vec!["get", "events", "-n", &self.namespace],
            vec![
                "logs",
                "-n",
                &self.namespace,
                "-l",
                SERVERS,
                "--all-containers",
                "--tail=20",
            ],
        ] {
            if let Ok(out) = Command::new("kubectl").args(&args).output() {
                said.push_str(&String::from_utf8_lossy(&out.stdout));
                said.push_str(&String::from_utf8_lossy(&out.stderr));
            }
        }
        said
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.namespace, &self.agents])
            .args(["--wait=false"])
            .output();
        let _ = Command::new("kubectl")
            .args([
                "delete",
                "persistentvolume",
                &self.namespace,
                "--wait=false",
            ])
            .output();
        if let Some(parent) = self.volume_dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// `hangar=REF` and `postgres=REF` from `build-image.sh`.
fn build_images() -> (String, String) {
    let printed = run(Command::new(manifest_dir().join("build-image.sh"))
        .arg(format!("{}/hangar-deploy-test", registry()))
        .env("HANGAR_BINARY", env!("CARGO_BIN_EXE_hangar")));
    let image = |name: &str| {
        printed
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("build-image.sh printed no {name}=: {printed}"))
            .to_owned()
    };
    (image("hangar"), image("postgres"))
}

/// The HTTP test agent as an image (the Python base image of the tests
/// with `tests/agents/http`), in the registry, by content.
async fn agent_image(test: &str) -> String {
    use sha2::Digest as _;
    common::docker::driver_or_skip(test, &common::docker::owner(test))
        .await
        .expect("the base image is made on the local Docker engine");
    let main = Path::new(&agent_dir("http")).join("main.py");
    let dockerfile = format!(
        "FROM {}\nCOPY main.py /app/main.py\nWORKDIR /app\nCMD [\"python3\", \"-u\", \"/app/main.py\"]\n",
        common::docker::BASE_IMAGE
    );
    let mut hash = sha2::Sha256::new();
    hash.update(dockerfile.as_bytes());
    hash.update(std::fs::read(&main).expect("main.py"));
    let key: String = hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let image = format!("{}/hangar-deploy-test/agent:{key}", registry());
    let context = temp(test).join("agent");
    std::fs::create_dir_all(&context).expect("context");
    std::fs::copy(&main, context.join("main.py")).expect("main.py");
    std::fs::write(context.join("Dockerfile"), dockerfile).expect("Dockerfile");
    run(Command::new("docker")
        .args(["build", "-q", "-t", &image])
        .arg(&context));
    run(Command::new("docker").args(["push", &image]));
    image
}

/// The manifest's objects with this run's namespaces and images, the
/// servers' pods given a relay to the registry at `relay` (see the module
/// docs), and a volume for PostgreSQL's claim.
fn objects(
    deployment: &Deployment,
    hangar_image: &str,
    postgres_image: &str,
    relay_port: u16,
) -> Vec<Value> {
    let text = kubectl(&[
        "create",
        "--dry-run=client",
        "-o",
        "json",
        "-f",
        manifest_dir().join("hangar.yaml").to_str().expect("utf-8"),
    ]);
    let mut objects: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("kubectl's JSON");
    let registry_port = registry()
        .rsplit_once(':')
        .map_or("5000".to_owned(), |(_, port)| port.to_owned());
    // Read with `get`/`pointer`: indexing a `Value` mutably would add the
    // fields it looks for.
    let rename = |value: &mut Value| {
        if let Some(renamed) = value.as_str().and_then(|name| deployment.rename(name)) {
            *value = json!(renamed);
        }
    };
    for object in &mut objects {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        if kind == "Namespace" {
            object.pointer_mut("/metadata/name").map(rename);
        }
        object.pointer_mut("/metadata/namespace").map(rename);
        for list in ["subjects", "rules"] {
            let Some(entries) = object.get_mut(list).and_then(Value::as_array_mut) else {
                continue;
            };
            for entry in entries {
                entry.get_mut("namespace").map(rename);
                if let Some(names) = entry.get_mut("resourceNames").and_then(Value::as_array_mut) {
                    names.iter_mut().for_each(rename);
                }
            }
        }
        let Some(containers) = object
            .pointer_mut("/spec/template/spec/containers")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        match kind.as_str() {
            "StatefulSet" => containers[0]["image"] = json!(postgres_image),
            "Deployment" => {
                containers[0]["image"] = json!(hangar_image);
                // busybox's nc, under a shell that ends on SIGTERM (a PID 1
                // without a handler would hold the pod for its grace period).
                let relay = format!(
                    "trap 'exit 0' TERM; /bin/busybox nc -ll -p {registry_port} \
                     -e /bin/busybox nc \"$HOST_IP\" {relay_port} & wait"
                );
                containers.push(json!({
                    "name": "registry-relay",
                    "image": hangar_image,
                    "command": ["/bin/busybox", "sh", "-c", relay],
                    "env": [{"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
                }));
            }
            _ => {}
        }
    }
    let volume_dir = deployment.volume_dir.to_str().expect("utf-8");
    objects.insert(
        0,
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": deployment.namespace},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "claimRef": {"namespace": deployment.namespace, "name": "data-hangar-postgres-0"},
                "hostPath": {"path": volume_dir, "type": "Directory"},
            },
        }),
    );
    objects
}

/// Relays connections at a port of `address` to `to` until dropped.
struct Relay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(address: &str, to: String) -> Self {
        let listener = tokio::net::TcpListener::bind((address, 0))
            .await
            .expect("a relay port");
        let port = listener.local_addr().expect("address").port();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = to.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn client() -> kube::Client {
    kube::Client::try_default().await.expect("a client")
}

/// The node's address, where its pods reach it.
async fn node_address() -> String {
    let nodes: Api<Node> = Api::all(client().await);
    let nodes = nodes.list(&ListParams::default()).await.expect("nodes");
    nodes
        .items
        .iter()
        .flat_map(|n| n.status.iter().flat_map(|s| s.addresses.iter().flatten()))
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .expect("a node with an InternalIP")
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pods of `namespace` with `labels`.
async fn pods(namespace: &str, labels: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client().await, namespace);
    api.list(&ListParams::default().labels(labels))
        .await
        .expect("pods")
        .items
}

/// Calls the API through the Service, on a connection of its own (so the
/// Service picks a server for each call).
async fn call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let mut request = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the Service answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(json!({"text": text})),
    )
}

// Several threads: the relay serves the servers' pods while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_from_the_manifest_run_an_agent_as_pods_behind_their_service() {
    let test = "k8s-deploy";
    if !root_or_skip(test) || cluster_or_skip(test).await.is_none() {
        return;
    }
    let agent_image = agent_image(test).await;
    let (hangar_image, postgres_image) = build_images();
    let deployment = Deployment::new();
    std::fs::create_dir_all(&deployment.volume_dir).expect("volume dir");
    // The image's PostgreSQL user; a hostPath volume is not given fsGroup.
    nix::unistd::chown(
        &deployment.volume_dir,
        Some(nix::unistd::Uid::from_raw(999)),
        Some(nix::unistd::Gid::from_raw(999)),
    )
    .expect("chown");
    let relay = Relay::start(&node_address().await, registry()).await;

    // The Secret as the manifest's comments make it, then the manifest.
    kubectl(&["create", "namespace", &deployment.namespace]);
    let secret_key: [u8; 32] = rand_bytes();
    kubectl(&[
        "-n",
        &deployment.namespace,
        "create",
        "secret",
        "generic",
        "hangar",
        &format!("--from-literal=secret-key={}", hex::encode(secret_key)),
        &format!(
            "--from-literal=postgres-password={}",
            hex::encode(rand_bytes::<24>())
        ),
        &format!("--from-literal=admin-key={KEY}"),
    ]);
    let applied = Instant::now();
    apply(&objects(
        &deployment,
        &hangar_image,
        &postgres_image,
        relay.port,
    ));

    // Three servers ready (they restart until PostgreSQL is up).
    let deadline = Instant::now() + Duration::from_secs(300);
    let servers = loop {
        let servers: Vec<Pod> = pods(&deployment.namespace, SERVERS)
            .await
            .into_iter()
            .filter(ready)
            .collect();
        if servers.len() == 3 {
            break servers;
        }
        assert!(
            Instant::now() < deadline,
            "the servers never all became ready:\n{}",
            deployment.state()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "k8s_deploy: three servers ready {:.1} s after the apply",
        applied.elapsed().as_secs_f64()
    );
    let services: Api<Service> = Api::namespaced(client().await, &deployment.namespace);
    let service = services.get("hangar").await.expect("the Service");
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    let base = format!("http://{cluster_ip}:7070");

    // One Hangar: every server is a ready node of the one database, at its
    // pod's address.
    let (status, nodes) = call(&base, reqwest::Method::GET, "/v1/nodes", None).await;
    assert_eq!(status, 200, "{nodes}");
    let ready_nodes: BTreeSet<String> = nodes["data"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["status"] == "ready")
        .filter_map(|n| n["address"].as_str().map(str::to_owned))
        .collect();
    let pod_addresses: BTreeSet<String> = servers
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .map(|ip| format!("http://{ip}:7070"))
        .collect();
    assert_eq!(ready_nodes, pod_addresses, "{nodes}");

    // A kubernetes cloud on the servers' own cluster: no kubeconfig, the
    // pods' service account.
    let (status, cloud) = call(
        &base,
        reqwest::Method::POST,
        "/v1/clouds",
        Some(json!({"name": "cluster", "driver": "kubernetes",
                    "config": {"namespace": deployment.agents}})),
    )
    .await;
    assert_eq!(status, 201, "{cloud}\n{}", deployment.state());

    // An agent from an image, two replicas: pods in the agents' namespace.
    let (status, created) = call(
        &base,
        reqwest::Method::POST,
        "/v1/agents",
        Some(json!({"name": "echo", "cloud_id": "cluster",
                    "source": {"type": "docker", "image": agent_image},
                    "scaling": {"min_instances": 2, "max_instances": 2}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let agent = created["data"]["id"].as_str().expect("id").to_owned();
    let deployed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    let instance = loop {
        let (status, view) = call(
            &base,
            reqwest::Method::GET,
            &format!("/v1/agents/{agent}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{view}");
        if let (true, Some(instance)) = (
            view["data"]["status"] == "running",
            view["data"]["instance_id"].as_str(),
        ) {
            if replicas(&deployment, instance).await.len() == 2 {
                break instance.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent never ran as two pods: {view}\n{}",
            deployment.state()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    eprintln!(
        "k8s_deploy: the agent ran as two pods {:.1} s after it was created",
        deployed.elapsed().as_secs_f64()
    );
    // Invoked through the Service, it answers from its pods.
    let unavailable = answers(&base, &deployment, &agent, &instance).await;
    eprintln!(
        "k8s_deploy: 3 answers through the Service, {unavailable} 503 AGENT_UNAVAILABLE from servers without the instance's lease"
    );

    // Every server replaced, one at a time: each drains, hands its instances
    // to a ready server and records its clean stop within the pod's grace
    // period (a server killed at its end would stay `ready`, then be
    // `dead`); the agent answers from the servers that took it over.
    let before = node_ids(&base, "ready").await;
    assert_eq!(before.len(), 3, "{before:?}");
    let restarted = Instant::now();
    kubectl(&[
        "-n",
        &deployment.namespace,
        "rollout",
        "restart",
        "deployment/hangar",
    ]);
    let rolled = Command::new("kubectl")
        .args(["-n", &deployment.namespace, "rollout", "status"])
        .args(["deployment/hangar", "--timeout=300s"])
        .output()
        .expect("kubectl");
    assert!(
        rolled.status.success(),
        "the rolling restart did not finish: {}\n{}",
        String::from_utf8_lossy(&rolled.stderr),
        deployment.state()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stopped = node_ids(&base, "stopped").await;
        if before.is_subset(&stopped) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replaced servers {before:?} did not all record a clean stop: {stopped:?}\n{}",
            deployment.state()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "k8s_deploy: every server replaced and stopped cleanly {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    let after = node_ids(&base, "ready").await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.is_disjoint(&before), "{after:?} {before:?}");
    let unavailable = answers(&base, &deployment, &agent, &instance).await;
    eprintln!(
        "k8s_deploy: after a rolling restart, 3 answers through the Service, {unavailable} 503 AGENT_UNAVAILABLE"
    );
    // The servers that stopped removed their replicas' pods and Secrets as
    // they handed the instance over, but for one a server was still making
    // while it stopped (a race in the controller's hand-over, reported, not
    // this manifest's): only the new replicas' should be left.
    let deadline = Instant::now() + Duration::from_secs(120);
    let current = loop {
        let current = replicas(&deployment, &instance).await;
        if current.len() == 2 {
            break current;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never ran as two pods again: {current:?}\n{}",
            deployment.state()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let secrets: Api<Secret> = Api::namespaced(client().await, &deployment.agents);
    let mut left: Vec<String> = secrets
        .list(&ListParams::default())
        .await
        .expect("secrets")
        .items
        .into_iter()
        .filter(|s| s.type_.as_deref() != Some("kubernetes.io/service-account-token"))
        .filter_map(|s| s.metadata.labels?.get("hangar.replica").cloned())
        .collect();
    left.extend(
        pods(&deployment.agents, "")
            .await
            .into_iter()
            .filter_map(|p| p.metadata.labels?.get("hangar.replica").cloned()),
    );
    left.retain(|replica| !current.contains(replica));
    left.sort();
    left.dedup();
    assert!(
        left.is_empty(),
        "replicas left by the replaced servers (a pod or its Secret): {left:?}"
    );
    drop(relay);
}

/// The IDs of the nodes in `status`.
async fn node_ids(base: &str, status: &str) -> BTreeSet<String> {
    let (code, nodes) = call(base, reqwest::Method::GET, "/v1/nodes", None).await;
    assert_eq!(code, 200, "{nodes}");
    nodes["data"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["status"] == status)
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect()
}

/// The replica IDs of the instance's ready pods.
async fn replicas(deployment: &Deployment, instance: &str) -> BTreeSet<String> {
    pods(&deployment.agents, &format!("hangar.instance={instance}"))
        .await
        .iter()
        .filter(|p| ready(p))
        .filter_map(|p| p.metadata.labels.as_ref()?.get("hangar.replica").cloned())
        .collect()
}

/// Invokes the agent through the Service until it has answered three
/// times, each answer from one of the instance's pods; returns how many
/// calls answered 503 AGENT_UNAVAILABLE. A server that does not hold the
/// instance's lease answers that until servers forward to each other (and
/// so does the one taking an instance over, until its replicas are up):
/// those are tried again; any other answer fails.
async fn answers(base: &str, deployment: &Deployment, agent: &str, instance: &str) -> u32 {
    let mut answered = 0;
    let mut unavailable = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    for n in 0.. {
        if answered == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{answered} answers and {unavailable} 503s in 180 s\n{}",
            deployment.state()
        );
        let (status, answer) = call(
            base,
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"n": n}})),
        )
        .await;
        match status {
            200 => {
                assert_eq!(
                    answer["data"]["output"]["echo"],
                    json!({"n": n}),
                    "{answer}"
                );
                assert_eq!(answer["meta"]["instance_id"], instance, "{answer}");
                let replica = answer["data"]["output"]["replica"]
                    .as_str()
                    .unwrap_or_default();
                let pods = replicas(deployment, instance).await;
                assert!(
                    pods.contains(replica),
                    "answered by {replica}, not one of the pods {pods:?}: {answer}"
                );
                answered += 1;
            }
            503 if answer["error"]["code"] == "AGENT_UNAVAILABLE" => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("invoke through the Service: {status} {answer}"),
        }
    }
    unavailable
}

/// `N` random bytes from the kernel.
fn rand_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read as _;
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes
}
