//! Deploy → running through Hangar's API: how long from `POST /v1/agents`
//! of an image to the agent answering through its instance URL, on a
//! kubernetes cloud and on the built-in local (sandbox) cloud, measured
//! against a plain `kubectl apply` of an equivalent pod, in the same run.
//!
//! Issue 18 asks for deploy → running on a kubernetes cloud next to the
//! sandbox driver and next to `kubectl apply`. `bench/src/bin/kubernetes.rs`
//! times the drivers alone (create → first byte); this one times the whole
//! path a user takes: the API, the build of a `docker` source (resolving the
//! image's manifest), the controller, the driver and the gateway.
//!
//! What runs (as root, on a node of the cluster, since `hangar serve` and
//! the kubectl row reach pods at their IPs; everything is removed at the
//! end, also on errors):
//! 1. An image `FROM scratch`: a statically linked busybox at `/busybox`,
//!    `/www/health` and `/www/index.html` (a token unique to this run), `CMD
//!    ["/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]`, built with the
//!    docker CLI off the clock, pushed to `--registry` and referenced by
//!    digest everywhere. Hangar itself uses no docker; the benchmark does.
//! 2. `hangar serve --listen 127.0.0.1:0` (the `hangar` binary next to this
//!    one, or `--hangar`) in a fresh temporary directory, inheriting
//!    `$KUBECONFIG`, with one kubernetes cloud (`POST /v1/clouds`, namespace
//!    `--namespace`) beside the built-in `local` cloud.
//! 3. A cloud row: the clock starts just before `POST /v1/agents` of a
//!    `docker` source (the image by digest, port 8080, health path
//!    `/health`, 100m CPU, 128 MiB); `GET /v1/agents/{id}` every 5 ms until
//!    it is `running` (the "running" column); then `GET /instances/{id}`
//!    for the instance's URL and `GET /index.html` to `hangar serve` with
//!    that URL's `Host` every 5 ms until an answer's head arrives with status
//!    200 (the "first byte" column). The body (this run's token) is checked
//!    off the clock. The agent is then deleted off the clock and the
//!    benchmark waits until its pod has left the API and the node's engine
//!    (kubernetes) or its sandbox is gone (local).
//! 4. The kubectl row: `kubectl apply -f` of a pod with what the kubernetes
//!    driver's pod has (see `pod_yaml`), the clock from spawning kubectl to
//!    the first byte of `GET /index.html` at the pod's IP, polled every 5 ms;
//!    the IP comes from a kube-rs watch opened before the clock starts, as in
//!    `bench/src/bin/kubernetes.rs` (whose reasons apply: a `kubectl get`
//!    loop would time kubectl's start-up, not the cluster).
//!
//! The three take turns in a rotating order, one at a time, after
//! `--warmup` untimed rounds; the first of those leaves the image on the
//! node (for the pods) and as an unpacked artifact in `hangar serve`'s data
//! directory (for the local cloud), so no pull is timed.
//!
//! Results are p50, p90 and max in ms and the ratios of medians, with the
//! CPU steal and the load average while timing. The binary exits 0 after a
//! run whatever the figures: it is a measurement, not a test.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use futures_util::StreamExt as _;
use hangar_bench::host::{hangar_binary, is_dynamic, output, require_root, TempDir};
use hangar_bench::probe::first_byte_every;
use hangar_bench::serve::Serve;
use hangar_bench::{
    cpu_count, cpu_ticks, find_program, kernel_release, load_average, print_conditions, ratio,
    steal_percent, Stats,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, WatchEvent, WatchParams};
use serde_json::json;

/// The admin key `hangar serve` is started with.
const KEY: &str = "hgr_benchdeploy0000000000000000000000000000000";
/// How often a starting agent or pod is polled.
const POLL: Duration = Duration::from_millis(5);
/// How long a deploy may take before the benchmark gives up (the first one
/// pulls the image).
const START_DEADLINE: Duration = Duration::from_secs(180);
/// How long a deleted agent's or pod's remains may take to go.
const SETTLE_DEADLINE: Duration = Duration::from_secs(90);
/// The port the server listens on.
const PORT: u16 = 8080;
/// Who the server runs as in a pod (`nobody`, the kubernetes driver's
/// default for an image without a numeric user).
const NOBODY: u32 = 65_534;
/// The name of the kubernetes cloud.
const CLOUD: &str = "k8s";

/// Measures deploy → running → first byte of an image agent on a kubernetes
/// cloud and on the local cloud against `kubectl apply` of an equivalent
/// pod. Needs root, `$KUBECONFIG` for a cluster this host is a node of, a
/// registry the cluster pulls from, and the docker and kubectl CLIs.
#[derive(Debug, Parser)]
#[command(name = "deploy")]
struct Args {
    /// Timed deploys of each of the three.
    #[arg(long, default_value_t = 8)]
    iterations: usize,
    /// Untimed rounds (a deploy of each) before timing; the first also puts
    /// the image on the node and in the local cloud's artifacts.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// The namespace of the kubernetes cloud and the kubectl pods (made if
    /// missing; deleted at the end if this run made it).
    #[arg(long, default_value = "hangar-bench-deploy")]
    namespace: String,
    /// Where the image is pushed and pulled from (`host:port`).
    #[arg(long, default_value = "127.0.0.1:5000")]
    registry: String,
    /// The `hangar` binary (default: `hangar` in the directory of this one).
    #[arg(long)]
    hangar: Option<PathBuf>,
    /// A statically linked busybox with the `httpd` applet (Debian:
    /// busybox-static).
    #[arg(long, default_value = "/usr/bin/busybox")]
    busybox: PathBuf,
}

/// The three compared, in the order of the table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path3 {
    Kubernetes,
    Kubectl,
    Local,
}

const PATHS: [Path3; 3] = [Path3::Kubernetes, Path3::Kubectl, Path3::Local];

impl Path3 {
    fn index(self) -> usize {
        self as usize
    }

    fn short(self) -> &'static str {
        match self {
            Path3::Kubernetes => "k",
            Path3::Kubectl => "a",
            Path3::Local => "l",
        }
    }
}

/// The agent's image in the registry; removed from the local engine and the
/// registry on drop (the registry keeps the blobs until its garbage
/// collection). Mirrors `Image` in `bench/src/bin/kubernetes.rs`.
struct Image {
    tag: Option<String>,
    by_digest: String,
}

impl Image {
    fn push(context: &Path, registry: &str, run: &str) -> Result<Self> {
        // Two layers: busybox is the same blob every run, the pages are new.
        fs::write(
            context.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /busybox\nCOPY www /www\n\
             CMD [\"/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        )?;
        let tag = format!("{registry}/hangar-bench-deploy:{run}");
        let mut image = Image {
            tag: None,
            by_digest: String::new(),
        };
        let built = output(
            Command::new("docker")
                .args(["build", "--quiet", "--tag", &tag])
                .arg(context),
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
            "docker push {tag} failed (is the registry at {registry} up?): {}",
            String::from_utf8_lossy(&pushed.stderr).trim()
        );
        let digests = output(Command::new("docker").args([
            "image",
            "inspect",
            "--format",
            "{{range .RepoDigests}}{{println .}}{{end}}",
            &tag,
        ]))?;
        let prefix = format!("{registry}/hangar-bench-deploy@");
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

/// One timed deploy.
struct Deploy {
    /// The agent was `running` (cloud rows) or the pod had an IP (kubectl).
    running: Duration,
    /// The first byte of the page arrived.
    ready: Duration,
}

/// Timed samples, by path ([`Path3::index`]).
#[derive(Default)]
struct Samples {
    running: [Vec<Duration>; 3],
    ready: [Vec<Duration>; 3],
}

/// Everything one run holds. Dropped in order: agents and pods first
/// (through the still-running server and the cluster), then the server,
/// then the namespace if this run made it; the image and the temporary
/// directory are dropped by `main` afterwards.
struct Bench {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    serve: Option<Serve>,
    pods: Api<Pod>,
    namespaces: Api<Namespace>,
    namespace: String,
    made_namespace: bool,
    kubectl: PathBuf,
    image: String,
    marker: String,
    yaml_dir: PathBuf,
    /// Agents (by id) and kubectl pods (by name) that may exist.
    agents: Vec<String>,
    kubectl_pods: Vec<String>,
}

impl Bench {
    fn serve(&self) -> Result<&Serve> {
        self.serve.as_ref().context("hangar serve is stopped")
    }

    /// Deploys an agent of the image on `cloud`, until its first byte.
    fn deploy_agent(&mut self, cloud: &str, name: &str) -> Result<(Deploy, String, String)> {
        let serve = self.serve()?;
        let body = json!({
            "name": name,
            "cloud_id": cloud,
            "source": {"type": "docker", "image": self.image},
            "resources": {"cpu": "100m", "memory": "128Mi", "memory_limit": "128Mi"},
            "config": {"port": PORT, "health_path": "/health"},
        });
        let http = &self.http;
        let marker = &self.marker;
        let mut created_id = None;
        let result = self.rt.block_on(async {
            let t0 = Instant::now();
            let (status, created, _) = serve
                .call(http, reqwest::Method::POST, "/v1/agents", Some(body))
                .await?;
            ensure!(status == 201, "POST /v1/agents: {status} {created}");
            let agent = created["data"]["id"].as_str().context("no id")?.to_owned();
            created_id = Some(agent.clone());
            let deadline = t0 + START_DEADLINE;
            let view = loop {
                let (_, view, _) = serve
                    .call(
                        http,
                        reqwest::Method::GET,
                        &format!("/v1/agents/{agent}"),
                        None,
                    )
                    .await?;
                match view["data"]["status"].as_str() {
                    Some("running") => break view,
                    Some("failed") => bail!("agent {name} failed: {view}"),
                    _ => {}
                }
                ensure!(Instant::now() < deadline, "{name} never running: {view}");
                tokio::time::sleep(POLL).await;
            };
            let running = t0.elapsed();
            let instance = view["data"]["instance_id"]
                .as_str()
                .with_context(|| format!("a running agent without an instance: {view}"))?
                .to_owned();
            let (status, inst, _) = serve
                .call(
                    http,
                    reqwest::Method::GET,
                    &format!("/instances/{instance}"),
                    None,
                )
                .await?;
            ensure!(status == 200, "GET /instances/{instance}: {status} {inst}");
            // The Lifecycle API answers the object itself, not an envelope.
            let host = inst["deployment"]["url"]
                .as_str()
                .and_then(|url| url.strip_prefix("http://"))
                .with_context(|| format!("no instance URL: {inst}"))?
                .trim_end_matches('/')
                .to_owned();
            let (ready, answer) = loop {
                let res = http
                    .get(format!("{}/index.html", serve.url))
                    .header("host", &host)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                // `send` returns once the answer's head is in: its first byte.
                let at = t0.elapsed();
                if let Ok(res) = res {
                    if res.status() == 200 {
                        break (at, res.text().await?);
                    }
                }
                ensure!(Instant::now() < deadline, "{name} never answered at {host}");
                tokio::time::sleep(POLL).await;
            };
            ensure!(
                answer.contains(marker.as_str()),
                "{name} answered without this run's token: {answer:?}"
            );
            Ok((Deploy { running, ready }, agent, instance))
        });
        if let Some(agent) = created_id {
            self.agents.push(agent);
        }
        result
    }

    /// Deletes an agent and waits until its replica is gone: its pods have
    /// left the API and the node's engine (kubernetes) or its sandboxes are
    /// removed (local).
    fn delete_agent(&mut self, agent: &str, instance: Option<&str>) -> Result<()> {
        let serve = self.serve()?;
        self.rt.block_on(async {
            let (status, body, _) = serve
                .call(
                    &self.http,
                    reqwest::Method::DELETE,
                    &format!("/v1/agents/{agent}"),
                    None,
                )
                .await?;
            ensure!(
                status == 200 || status == 204 || status == 404,
                "DELETE /v1/agents/{agent}: {status} {body}"
            );
            let deadline = Instant::now() + SETTLE_DEADLINE;
            loop {
                let pods = match instance {
                    Some(instance) => {
                        self.pods
                            .list(
                                &ListParams::default()
                                    .labels(&format!("hangar.instance={instance}")),
                            )
                            .await?
                            .items
                    }
                    None => Vec::new(),
                };
                if pods.is_empty() && serve.shims().is_empty() {
                    break;
                }
                ensure!(Instant::now() < deadline, "agent {agent} left replicas");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        })?;
        if instance.is_some() {
            settle(&self.namespace, None);
        }
        self.agents.retain(|a| a != agent);
        Ok(())
    }

    /// The pod `kubectl apply` makes: what the kubernetes driver's pod has
    /// for this agent (`pod` in the runtime's `kubernetes/pod.rs`): the
    /// image by digest and its own command, the requests and limits, the
    /// non-root read-only security context, the `/tmp` emptyDir,
    /// `restartPolicy: Never`, a shared process namespace, no service-account
    /// token and no service links; but none of Hangar's Secret, environment,
    /// owner reference or labels.
    fn pod_yaml(&self, name: &str) -> String {
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
      resources:
        requests:
          cpu: 100m
          memory: \"134217728\"
        limits:
          memory: \"134217728\"
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
            image = self.image,
        )
    }

    /// `kubectl apply` of the pod, until its first byte at the pod's IP.
    fn deploy_kubectl(&mut self, name: &str) -> Result<Deploy> {
        let file = self.yaml_dir.join(format!("{name}.yaml"));
        fs::write(&file, self.pod_yaml(name))?;
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(290);
        let mut ip = self.rt.block_on(watch_ip(&self.pods, &params))?;
        self.kubectl_pods.push(name.to_owned());
        let t0 = Instant::now();
        let applied = output(
            Command::new(&self.kubectl)
                .arg("apply")
                .arg("-f")
                .arg(&file),
        )?;
        ensure!(
            applied.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&applied.stderr).trim()
        );
        let address = self
            .rt
            .block_on(async {
                tokio::time::timeout(START_DEADLINE, ip.wait_for(Option::is_some))
                    .await
                    .context("the pod had no IP in time")?
                    .context("the watch ended before the pod had an IP")
                    .map(|ip| *ip)
            })?
            .context("no IP")?;
        let running = t0.elapsed();
        // Every [`POLL`], not the probe's finer period: this benchmark's
        // rows all poll alike.
        let ready = first_byte_every(
            SocketAddr::new(address, PORT),
            t0,
            &self.marker,
            START_DEADLINE,
            POLL,
        )?;
        Ok(Deploy { running, ready })
    }

    /// Deletes a kubectl pod (no grace) and waits until it has left the API
    /// and the node's engine.
    fn delete_pod(&mut self, name: &str) -> Result<()> {
        self.rt.block_on(async {
            match self
                .pods
                .delete(name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(err) => return Err(anyhow::Error::from(err)),
            }
            let deadline = Instant::now() + SETTLE_DEADLINE;
            while self.pods.get_opt(name).await?.is_some() {
                ensure!(Instant::now() < deadline, "pod {name} never left");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        })?;
        settle(&self.namespace, Some(name));
        self.kubectl_pods.retain(|p| p != name);
        Ok(())
    }

    /// Deploys and removes each path `warmup + n` times, in rotating order;
    /// the first `warmup` rounds are not kept.
    fn measure(&mut self, warmup: usize, n: usize) -> Result<Samples> {
        let pid = std::process::id();
        let mut samples = Samples::default();
        let started = Instant::now();
        for round in 0..warmup + n {
            for k in 0..PATHS.len() {
                let path = PATHS[(round + k) % PATHS.len()];
                let name = format!("hb-{pid}-{}-{round}", path.short());
                let deploy = match path {
                    Path3::Kubernetes | Path3::Local => {
                        let cloud = if path == Path3::Kubernetes {
                            CLOUD
                        } else {
                            "local"
                        };
                        let (deploy, agent, instance) = self.deploy_agent(cloud, &name)?;
                        let pods = (path == Path3::Kubernetes).then_some(instance.as_str());
                        self.delete_agent(&agent, pods)?;
                        deploy
                    }
                    Path3::Kubectl => {
                        let deploy = self.deploy_kubectl(&name)?;
                        self.delete_pod(&name)?;
                        deploy
                    }
                };
                if round >= warmup {
                    samples.running[path.index()].push(deploy.running);
                    samples.ready[path.index()].push(deploy.ready);
                }
            }
            println!(
                "  round {}/{} done ({:.1} s){}",
                round + 1,
                warmup + n,
                started.elapsed().as_secs_f64(),
                if round >= warmup { "" } else { ", untimed" }
            );
        }
        Ok(samples)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for agent in self.agents.clone() {
            if let Err(err) = self.delete_agent(&agent, None) {
                eprintln!("warning: cannot delete agent {agent}: {err:#}");
            }
        }
        for pod in self.kubectl_pods.clone() {
            if let Err(err) = self.delete_pod(&pod) {
                eprintln!("warning: cannot delete pod {pod}: {err:#}");
            }
        }
        // The server goes before the namespace, so it deletes no more pods
        // into a namespace being deleted (and re-creates none).
        drop(self.serve.take());
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
                let deadline = Instant::now() + SETTLE_DEADLINE;
                while self.namespaces.get_opt(&namespace).await?.is_some() {
                    ensure!(Instant::now() < deadline, "still terminating");
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

/// Opens a watch on the pods `params` select (established when this
/// returns) and hands over the first pod IP it sees.
async fn watch_ip(
    pods: &Api<Pod>,
    params: &WatchParams,
) -> Result<tokio::sync::watch::Receiver<Option<IpAddr>>> {
    let stream = pods.watch(params, "0").await.context("watching the pod")?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let mut stream = Box::pin(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => {
                    let ip = pod
                        .status
                        .and_then(|s| s.pod_ip)
                        .and_then(|ip| ip.parse::<IpAddr>().ok());
                    if let Some(ip) = ip {
                        let _ = tx.send(Some(ip));
                        break;
                    }
                }
                Ok(WatchEvent::Bookmark(_)) => {}
                Ok(WatchEvent::Deleted(_) | WatchEvent::Error(_)) | Err(_) => break,
            }
        }
    });
    Ok(rx)
}

/// Waits (off the clock) until the node's Docker engine runs no container
/// of pod `pod` (all of `namespace`'s when `None`: one pod runs at a time): a
/// pod that left the API may still be stopping on the node, which would
/// slow the next start. On a node without Docker it does not wait.
fn settle(namespace: &str, pod: Option<&str>) {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let mut filters = vec![
        "--filter".to_owned(),
        format!("label=io.kubernetes.pod.namespace={namespace}"),
    ];
    if let Some(pod) = pod {
        filters.push("--filter".to_owned());
        filters.push(format!("label=io.kubernetes.pod.name={pod}"));
    }
    loop {
        let listed = output(
            Command::new("docker")
                .args(["ps", "--quiet"])
                .args(&filters),
        );
        match listed {
            Ok(out) if out.status.success() && out.stdout.trim_ascii().is_empty() => return,
            Ok(out) if out.status.success() => {}
            _ => return,
        }
        if Instant::now() > deadline {
            eprintln!(
                "warning: containers of {} still run {} s after deletion",
                pod.unwrap_or(namespace),
                SETTLE_DEADLINE.as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn report(samples: &Samples, args: &Args, steal: Option<f64>, load: (String, String)) {
    println!();
    println!(
        "{} timed deploys of each, after {} untimed rounds; one at a time, in rotating order. \
         Times in ms; ratios are of medians.",
        args.iterations, args.warmup
    );
    print_conditions(steal, &load);
    println!();
    println!(
        "| measurement | p50 ms | p90 ms | max ms | p50 ÷ kubectl p50 | p50 ÷ local cloud p50 |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let k = Path3::Kubernetes.index();
    let a = Path3::Kubectl.index();
    let l = Path3::Local.index();
    let rows: [(&str, &[Vec<Duration>; 3], usize); 6] = [
        (
            "kubernetes cloud: `POST /v1/agents` → first byte through the instance URL",
            &samples.ready,
            k,
        ),
        (
            "kubectl: `kubectl apply -f pod.yaml` → first byte at the pod IP",
            &samples.ready,
            a,
        ),
        (
            "local cloud (sandbox driver): `POST /v1/agents` → first byte through the instance URL",
            &samples.ready,
            l,
        ),
        (
            "kubernetes cloud: `POST /v1/agents` → agent `running`",
            &samples.running,
            k,
        ),
        (
            "kubectl: `kubectl apply` → the pod's IP seen by a watch",
            &samples.running,
            a,
        ),
        (
            "local cloud: `POST /v1/agents` → agent `running`",
            &samples.running,
            l,
        ),
    ];
    for (name, all, i) in rows {
        let Some(this) = Stats::of(&all[i]) else {
            println!("| {name} | not measured | | | | |");
            continue;
        };
        let vs_kubectl = if i == a {
            "—".to_owned()
        } else {
            ratio(&this, Stats::of(&all[a]).as_ref())
        };
        let vs_local = if i == l {
            "—".to_owned()
        } else {
            ratio(&this, Stats::of(&all[l]).as_ref())
        };
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {vs_kubectl} | {vs_local} |",
            this.p50, this.p90, this.max
        );
    }
    println!();
    println!("Deploy → first byte, ratios of medians:");
    if let (Some(kk), Some(aa), Some(ll)) = (
        Stats::of(&samples.ready[k]),
        Stats::of(&samples.ready[a]),
        Stats::of(&samples.ready[l]),
    ) {
        println!(
            "- kubernetes cloud ÷ kubectl apply: {:.1} ms ÷ {:.1} ms = {:.2}×",
            kk.p50,
            aa.p50,
            kk.p50 / aa.p50
        );
        println!(
            "- kubernetes cloud ÷ local cloud: {:.1} ms ÷ {:.1} ms = {:.2}×",
            kk.p50,
            ll.p50,
            kk.p50 / ll.p50
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.iterations >= 1, "--iterations must be at least 1");
    require_root("hangar serve runs the local cloud's sandboxes")?;
    let hangar_bin = hangar_binary(args.hangar.as_deref())?;
    let kubectl = find_program("kubectl").context(
        "kubectl is not in PATH (the baseline is `kubectl apply`; see BENCHMARKS.md for a cluster)",
    )?;
    ensure!(
        find_program("docker").is_some(),
        "the docker CLI is not installed: it builds and pushes the agent's image"
    );
    ensure!(
        args.busybox.is_file() && !is_dynamic(&args.busybox)?,
        "{} is missing or dynamically linked (Debian: apt-get install busybox-static, or pass \
         --busybox)",
        args.busybox.display()
    );

    // --- Set up, off the clock -----------------------------------------------
    let tmp = TempDir::new("dep")?;
    let pid = std::process::id();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let marker = format!("hangar-bench-deploy {pid} {nanos}");
    let context = tmp.0.join("image");
    let www = context.join("www");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&www)?;
    for dir in [&context, &www] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    fs::copy(&args.busybox, context.join("busybox")).context("copying busybox")?;
    fs::set_permissions(context.join("busybox"), fs::Permissions::from_mode(0o755))?;
    fs::write(www.join("health"), "ok\n")?;
    fs::write(
        www.join("index.html"),
        format!("<!doctype html><p>{marker}</p>\n"),
    )?;
    for page in ["health", "index.html"] {
        fs::set_permissions(www.join(page), fs::Permissions::from_mode(0o644))?;
    }
    let image = Image::push(&context, &args.registry, &format!("{pid}-{nanos}"))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building a runtime")?;
    let (pods, namespaces, made_namespace, version) = rt.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("no Kubernetes cluster: set KUBECONFIG (see BENCHMARKS.md)")?;
        let version = client.apiserver_version().await?.git_version;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let existed = namespaces.get_opt(&args.namespace).await?.is_some();
        anyhow::Ok((
            Api::<Pod>::namespaced(client, &args.namespace),
            namespaces,
            !existed,
            version,
        ))
    })?;
    let serve = Serve::start(&hangar_bin, "deps", KEY, &[])?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(4)
        .build()?;
    let mut bench = Bench {
        rt,
        http,
        serve: Some(serve),
        pods,
        namespaces,
        namespace: args.namespace.clone(),
        made_namespace,
        kubectl: kubectl.clone(),
        image: image.by_digest.clone(),
        marker,
        yaml_dir: tmp.0.clone(),
        agents: Vec::new(),
        kubectl_pods: Vec::new(),
    };
    let (status, cloud, _) = bench.rt.block_on(bench.serve()?.call(
        &bench.http,
        reqwest::Method::POST,
        "/v1/clouds",
        Some(json!({"name": CLOUD, "driver": "kubernetes",
            "config": {"namespace": args.namespace}})),
    ))?;
    ensure!(status == 201, "POST /v1/clouds: {status} {cloud}");

    println!(
        "Cluster: Kubernetes {version}, namespace {}{}",
        args.namespace,
        if made_namespace {
            " (made by this run)"
        } else {
            ""
        }
    );
    println!("Image: {}", image.by_digest);
    println!(
        "Hangar: {} serve at {}; kernel {}, {} CPUs",
        hangar_bin.display(),
        bench.serve()?.url,
        kernel_release(),
        cpu_count()
    );

    // --- Measure -------------------------------------------------------------
    let ticks = cpu_ticks();
    let load_before = load_average();
    let samples = bench.measure(args.warmup, args.iterations);
    let steal = steal_percent(ticks, cpu_ticks());
    let load_after = load_average();
    drop(bench);
    drop(image);
    drop(tmp);
    report(&samples?, &args, steal, (load_before, load_after));
    Ok(())
}
