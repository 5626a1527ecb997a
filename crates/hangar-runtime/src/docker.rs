//! The docker driver: replicas as containers on a Docker engine, through
//! `bollard`, answering the same [`Driver`] calls as the sandbox driver.
//!
//! Debian's `docker.io` speaks API 1.41; the client negotiates the version
//! down at connect and sends no field newer than that.
//!
//! * **Owner.** Every container and network this driver makes carries the
//!   label `hangar.docker.owner` (a random value each Hangar data dir
//!   keeps), and
//!   [`Driver::list`] sees only those: several Hangars, or test runs, share
//!   an engine without adopting each other's replicas. The container's name
//!   is `hangar-<owner>-<replica id>`.
//! * **Network.** One user-defined bridge network per cloud (the spec's
//!   [`labels::CLOUD`]), made on first use and removed with its last
//!   replica: replicas of one cloud reach each other, other clouds' not. A
//!   replica is reached at its own IP on that network and its
//!   [`ReplicaSpec::port`].
//! * **Restarts are Hangar's**: no Docker restart policy, so restart counts,
//!   backoff and events are the controller's, as with sandboxes.
//! * **Limits**: `cpu` → CPU shares, `cpu_limit` → `NanoCpus`, memory limit
//!   with no swap on top, pids limit, every capability dropped,
//!   `no-new-privileges`, a tmpfs `/tmp`. It runs as the spec's user, else
//!   the image's when that is not root, else 65534. Image builds get a
//!   build step's memory and CPU ([`BuildLimits`]).
//! * **Output** comes from the container's log (json-file), numbered from 1
//!   by reading it from the start, so [`Driver::follow`] resumes after any
//!   line, also from a new process. The engine's timestamps are the lines'.
//! * **Exit**: the engine's exit code, where 128 + n is read as signal n
//!   (how the engine reports a process killed by a signal), and its
//!   `OOMKilled`.
//! * **Images**: a spec's [`ReplicaSpec::image`], else the driver's default
//!   image. [`DockerDriver::build_image`] and [`DockerDriver::pull_image`]
//!   make images ahead of time, for the builder; an unpacked root
//!   filesystem ([`ReplicaSpec::rootfs`]) is refused.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ExecConfig, HostConfig, NetworkCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, BuildImageOptions, CreateContainerOptions, CreateImageOptions,
    KillContainerOptions, ListContainersOptions, ListNetworksOptions, LogsOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions, TagImageOptions,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::driver::{
    labels, now_ms, Driver, DriverError, ExecResult, Exit, OutputEvent, OutputLine, OutputStream,
    ReplicaInfo, ReplicaSpec, ReplicaStats, StdinWait, MAX_LINE_BYTES,
};

/// What the containers of an image build's steps may use: the limits of a
/// sandboxed build step. The engine's classic builder applies them to each
/// `RUN`; there is no process limit for builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// Memory, with no swap on top, in bytes.
    pub memory_bytes: u64,
    /// CPU weight, millicores.
    pub cpu_millis: u64,
    /// CPU hard limit, millicores.
    pub cpu_limit_millis: Option<u64>,
}

/// The CFS period of CPU limits, µs.
const CFS_PERIOD_US: i32 = 100_000;

impl BuildLimits {
    /// The memory limit as the build API carries it (a 32-bit number of
    /// bytes in the client's types): a limit from 2 GiB up is not sent,
    /// and the step runs with the engine's memory.
    fn memory(&self) -> Option<i32> {
        i32::try_from(self.memory_bytes).ok()
    }

    /// CPU shares: 1024 a core, at least the kernel's 2.
    fn cpu_shares(&self) -> i32 {
        i32::try_from(self.cpu_millis.saturating_mul(1024) / 1000)
            .unwrap_or(i32::MAX)
            .max(2)
    }

    /// The CFS quota per [`CFS_PERIOD_US`], from the CPU limit.
    fn cpu_quota(&self) -> Option<i32> {
        let millis = self.cpu_limit_millis?;
        Some(
            i32::try_from(millis.saturating_mul(100))
                .unwrap_or(i32::MAX)
                .max(1000),
        )
    }
}

/// Labels of the driver's own, kept out of [`ReplicaInfo::labels`].
const OWNER_LABEL: &str = "hangar.docker.owner";
const PORT_LABEL: &str = "hangar.docker.port";
const STDIN_LABEL: &str = "hangar.docker.stdin";
const NETWORK_LABEL: &str = "hangar.docker.network";
const INTERNAL_PREFIX: &str = "hangar.docker.";

/// The most of each of stdout and stderr [`Driver::exec`] keeps.
const EXEC_OUTPUT_LIMIT: usize = 1 << 20;

/// The user a replica runs as when neither spec nor image names another.
const NOBODY: &str = "65534:65534";

/// Where the docker driver runs replicas, and as whom.
#[derive(Debug, Clone)]
pub struct DockerDriverConfig {
    /// The engine's address (`unix:///var/run/docker.sock`, `tcp://…`);
    /// `None`: `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    /// Marks this Hangar's containers and networks (see the module docs):
    /// `[a-z0-9]`, at most 16 characters.
    pub owner: String,
    /// The image run when a spec names none.
    pub default_image: String,
}

/// See the module docs.
#[derive(Clone)]
pub struct DockerDriver {
    docker: Docker,
    owner: String,
    default_image: String,
    /// One stdin exchange per replica at a time.
    stdin_turns: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Held while a network is made or removed and a container joins it, so
    /// a network is never removed under a replica being created in it.
    networks: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for DockerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerDriver")
            .field("owner", &self.owner)
            .field("default_image", &self.default_image)
            .finish_non_exhaustive()
    }
}

fn failed(what: &str, err: DockerError) -> DriverError {
    DriverError::Failed(format!("docker: {what}: {}", engine_message(&err)))
}

/// The engine's own sentence where it sent one.
fn engine_message(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn status_of(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Milliseconds since the epoch of an RFC 3339 time as the engine writes
/// it; `None` for its "zero" time (year 1) and nonsense.
fn parse_time_ms(text: &str) -> Option<i64> {
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let ms = at.timestamp_millis();
    (ms > 0).then_some(ms)
}

/// An exit as the engine reports it: 128 + n is signal n.
fn exit_from_code(code: i64, oom_killed: bool, at_ms: i64) -> Exit {
    let code = i32::try_from(code).unwrap_or(-1);
    let (code, signal) = if (129..=128 + 64).contains(&code) {
        (None, Some(code - 128))
    } else {
        (Some(code), None)
    };
    Exit {
        code,
        signal,
        oom_killed,
        at_ms,
    }
}

impl DockerDriver {
    /// Connects to the engine, negotiates the API version and checks that
    /// it answers.
    pub async fn connect(config: DockerDriverConfig) -> Result<Self, DriverError> {
        if config.owner.is_empty()
            || config.owner.len() > 16
            || !config
                .owner
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(DriverError::Invalid(format!(
                "docker owner {:?} must be 1 to 16 of [a-z0-9]",
                config.owner
            )));
        }
        let docker = match &config.host {
            Some(host) => Docker::connect_with_host(host),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|err| failed("cannot set up a client", err))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|err| failed("the engine does not answer", err))?;
        docker
            .ping()
            .await
            .map_err(|err| failed("the engine does not answer", err))?;
        Ok(Self {
            docker,
            owner: config.owner,
            default_image: config.default_image,
            stdin_turns: Arc::default(),
            networks: Arc::default(),
        })
    }

    /// The engine's version and API version, for logs.
    pub async fn engine_version(&self) -> Result<String, DriverError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|err| failed("version", err))?;
        Ok(format!(
            "{} (API {})",
            version.version.unwrap_or_default(),
            version.api_version.unwrap_or_default()
        ))
    }

    fn container_name(&self, id: &str) -> Result<String, DriverError> {
        if !valid_id(id) {
            return Err(DriverError::NotFound(id.to_owned()));
        }
        Ok(format!("hangar-{}-{id}", self.owner))
    }

    /// The engine's list filter for what this driver made (with the label
    /// `also`, `key=value`, too).
    fn owned(&self, also: Option<String>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{OWNER_LABEL}={}", self.owner)];
        labels.extend(also);
        HashMap::from([("label".to_owned(), labels)])
    }

    fn network_name(&self, spec: &ReplicaSpec) -> String {
        let cloud: String = spec
            .labels
            .get(labels::CLOUD)
            .map(String::as_str)
            .unwrap_or("default")
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
                _ => '-',
            })
            .take(64)
            .collect();
        format!("hangar-{}-{cloud}", self.owner)
    }

    /// Makes `name` unless it exists. Call with [`Self::networks`] held.
    async fn ensure_network(&self, name: &str) -> Result<(), DriverError> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(err) if status_of(&err) == Some(404) => {}
            Err(err) => return Err(failed("inspecting a network", err)),
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([(
                OWNER_LABEL.to_owned(),
                self.owner.clone(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            Err(err) if status_of(&err) == Some(409) => Ok(()),
            Err(err) => Err(failed(&format!("creating network {name}"), err)),
        }
    }

    /// Removes `name` if no replica of this driver's is made for it any
    /// more. Containers are counted by their network label, in any state:
    /// the network's own list has only started ones, and a replica created
    /// a moment ago (under [`Self::networks`]) is started after the lock is
    /// let go.
    async fn release_network(&self, name: &str) {
        let _turn = self.networks.lock().await;
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.owned(Some(format!("{NETWORK_LABEL}={name}")))),
            ..Default::default()
        };
        match self.docker.list_containers(Some(options)).await {
            Ok(containers) if containers.is_empty() => {}
            Ok(_) => return,
            Err(err) => {
                tracing::debug!(network = name, error = %engine_message(&err), "network kept: cannot list its replicas");
                return;
            }
        }
        if let Err(err) = self.docker.remove_network(name).await {
            tracing::debug!(network = name, error = %engine_message(&err), "network not removed");
        }
    }

    async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DriverError> {
        let name = self.container_name(id)?;
        match self.docker.inspect_container(&name, None).await {
            Ok(found)
                if found
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(OWNER_LABEL))
                    == Some(&self.owner) =>
            {
                Ok(Some(found))
            }
            Ok(_) => Ok(None),
            Err(err) if status_of(&err) == Some(404) => Ok(None),
            Err(err) => Err(failed("inspecting a container", err)),
        }
    }

    async fn info(&self, id: &str) -> Result<ReplicaInfo, DriverError> {
        let found = self
            .inspect_container(id)
            .await?
            .ok_or_else(|| DriverError::NotFound(id.to_owned()))?;
        Ok(self.replica_info(id, &found))
    }

    fn replica_info(&self, id: &str, found: &ContainerInspectResponse) -> ReplicaInfo {
        let all_labels = found
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let state = found.state.clone().unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let exit = (!running).then(|| {
            let at_ms = state
                .finished_at
                .as_deref()
                .and_then(parse_time_ms)
                .unwrap_or_else(now_ms);
            exit_from_code(
                state.exit_code.unwrap_or(-1),
                state.oom_killed.unwrap_or(false),
                at_ms,
            )
        });
        let port = all_labels
            .get(PORT_LABEL)
            .and_then(|p| p.parse::<u16>().ok());
        let ip = all_labels.get(NETWORK_LABEL).and_then(|network| {
            found
                .network_settings
                .as_ref()?
                .networks
                .as_ref()?
                .get(network)?
                .ip_address
                .as_deref()?
                .parse::<std::net::IpAddr>()
                .ok()
        });
        let address = match (ip, port, running) {
            (Some(ip), Some(port), true) => Some(std::net::SocketAddr::new(ip, port)),
            _ => None,
        };
        ReplicaInfo {
            id: id.to_owned(),
            labels: all_labels
                .into_iter()
                .filter(|(k, _)| !k.starts_with(INTERNAL_PREFIX))
                .collect(),
            address,
            pid: u32::try_from(state.pid.unwrap_or(0)).unwrap_or(0),
            started_at_ms: state
                .started_at
                .as_deref()
                .and_then(parse_time_ms)
                .unwrap_or(0),
            exit,
            output_seq: 0,
        }
    }

    /// Who a replica of `image` runs as (see the module docs).
    async fn user_for(&self, spec: &ReplicaSpec, image: &str) -> Result<String, DriverError> {
        if let Some(user) = spec.user {
            return Ok(format!("{}:{}", user.uid, user.gid));
        }
        let inspected = match self.docker.inspect_image(image).await {
            Ok(inspected) => inspected,
            Err(err) if status_of(&err) == Some(404) => {
                return Err(DriverError::Invalid(format!(
                    "the image {image} is not on the Docker engine (build or pull it first)"
                )))
            }
            Err(err) => return Err(failed("inspecting an image", err)),
        };
        let user = inspected
            .config
            .and_then(|c| c.user)
            .unwrap_or_default()
            .trim()
            .to_owned();
        let name = user.split(':').next().unwrap_or_default();
        Ok(if name.is_empty() || name == "0" || name == "root" {
            NOBODY.to_owned()
        } else {
            user
        })
    }

    fn stdin_turn(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self
            .stdin_turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        turns.entry(id.to_owned()).or_default().clone()
    }

    /// Builds `tag` from the directory `context` (symlinks kept as links):
    /// with `dockerfile` `None` its own `Dockerfile`, else that text, its
    /// steps' containers held to `limits`. Each line the build prints goes
    /// to `log` as it comes; a failed step is the error, with the engine's
    /// message.
    pub async fn build_image(
        &self,
        context: &Path,
        dockerfile: Option<&str>,
        tag: &str,
        limits: BuildLimits,
        log: mpsc::Sender<String>,
    ) -> Result<(), DriverError> {
        const GENERATED: &str = ".hangar.Dockerfile";
        let dir = context.to_path_buf();
        let text = dockerfile.map(str::to_owned);
        let archive = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut tar = tar::Builder::new(Vec::new());
            tar.follow_symlinks(false);
            tar.append_dir_all(".", &dir)?;
            if let Some(text) = text {
                let mut header = tar::Header::new_gnu();
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                tar.append_data(&mut header, GENERATED, text.as_bytes())?;
            }
            tar.into_inner()
        })
        .await
        .map_err(|err| DriverError::Failed(format!("packing the build context: {err}")))?
        .map_err(|err| DriverError::Failed(format!("packing the build context: {err}")))?;
        let options = BuildImageOptions {
            dockerfile: if dockerfile.is_some() {
                GENERATED.to_owned()
            } else {
                "Dockerfile".to_owned()
            },
            t: Some(tag.to_owned()),
            rm: true,
            forcerm: true,
            memory: limits.memory(),
            memswap: limits.memory(),
            cpushares: Some(limits.cpu_shares()),
            cpuperiod: limits.cpu_quota().map(|_| CFS_PERIOD_US),
            cpuquota: limits.cpu_quota(),
            ..Default::default()
        };
        let mut stream = self.docker.build_image(
            options,
            None,
            Some(bollard::body_full(bytes::Bytes::from(archive))),
        );
        let mut partial = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|err| failed("building the image", err))?;
            if let Some(detail) = info.error_detail {
                let message = detail
                    .message
                    .unwrap_or_else(|| "the build failed".to_owned());
                let _ = log.send(message.clone()).await;
                return Err(DriverError::Failed(message));
            }
            if let Some(text) = info.stream {
                partial.push_str(&text);
                while let Some(end) = partial.find('\n') {
                    let line: String = partial.drain(..=end).collect();
                    let line = line.trim_end();
                    if !line.is_empty() {
                        let _ = log.send(line.to_owned()).await;
                    }
                }
            }
        }
        if !partial.trim().is_empty() {
            let _ = log.send(partial.trim_end().to_owned()).await;
        }
        match self.docker.inspect_image(tag).await {
            Ok(_) => Ok(()),
            Err(err) => Err(failed("the build made no image", err)),
        }
    }

    /// Pulls `reference` (with `credentials`: user name and password) and
    /// tags it `tag`. Each change of a layer's status goes to `log`.
    pub async fn pull_image(
        &self,
        reference: &str,
        credentials: Option<(String, String)>,
        tag: &str,
        log: mpsc::Sender<String>,
    ) -> Result<(), DriverError> {
        let credentials =
            credentials.map(|(username, password)| bollard::auth::DockerCredentials {
                username: Some(username),
                password: Some(password),
                ..Default::default()
            });
        let options = CreateImageOptions {
            from_image: Some(reference.to_owned()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|err| failed(&format!("pulling {reference}"), err))?;
            if let Some(detail) = info.error_detail {
                return Err(DriverError::Failed(format!(
                    "pulling {reference}: {}",
                    detail.message.unwrap_or_default()
                )));
            }
            // Progress ticks carry a detail; only the changes of status are lines.
            let ticking = info
                .progress_detail
                .as_ref()
                .is_some_and(|d| d.current.is_some());
            if let (Some(status), false) = (info.status, ticking) {
                let line = match info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                let _ = log.send(line).await;
            }
        }
        let (repo, version) = match tag.rsplit_once(':') {
            Some((repo, version)) if !version.contains('/') => (repo, version),
            _ => (tag, "latest"),
        };
        let options = TagImageOptions {
            repo: Some(repo.to_owned()),
            tag: Some(version.to_owned()),
        };
        self.docker
            .tag_image(reference, Some(options))
            .await
            .map_err(|err| failed(&format!("tagging {reference} as {tag}"), err))
    }

    async fn create_container(&self, spec: &ReplicaSpec) -> Result<String, DriverError> {
        let name = self.container_name(&spec.id)?;
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.default_image.clone());
        let user = self.user_for(spec, &image).await?;
        let network = self.network_name(spec);
        let mut container_labels: HashMap<String, String> = spec
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with(INTERNAL_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        container_labels.insert(OWNER_LABEL.to_owned(), self.owner.clone());
        container_labels.insert(NETWORK_LABEL.to_owned(), network.clone());
        container_labels.insert(STDIN_LABEL.to_owned(), spec.stdin.to_string());
        if let Some(port) = spec.port {
            container_labels.insert(PORT_LABEL.to_owned(), port.to_string());
        }
        let binds = spec.app.as_ref().map(|app| {
            let mode = if spec.app_writable { "rw" } else { "ro" };
            vec![format!("{}:/app:{mode}", app.display())]
        });
        let shares = i64::try_from(spec.cpu_millis.saturating_mul(1024) / 1000)
            .unwrap_or(i64::MAX)
            .max(2);
        let memory = spec
            .memory_limit_bytes
            .map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX));
        let host_config = HostConfig {
            cpu_shares: Some(shares),
            nano_cpus: spec
                .cpu_limit_millis
                .map(|millis| i64::try_from(millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
            memory,
            // The same as the memory limit: no swap on top.
            memory_swap: memory,
            pids_limit: Some(spec.pids_limit),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                "rw,nosuid,nodev,mode=1777".to_owned(),
            )])),
            binds,
            network_mode: Some(network.clone()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: (!spec.argv.is_empty()).then(|| spec.argv.clone()),
            // A given command replaces the image's entrypoint too.
            entrypoint: (!spec.argv.is_empty()).then(|| vec![String::new()]),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: (!spec.cwd.is_empty()).then(|| spec.cwd.clone()),
            user: Some(user),
            labels: Some(container_labels),
            open_stdin: Some(spec.stdin),
            attach_stdin: Some(spec.stdin),
            stdin_once: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let _turn = self.networks.lock().await;
        self.ensure_network(&network).await?;
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => Ok(name),
            Err(err) if status_of(&err) == Some(409) => Err(DriverError::Invalid(format!(
                "replica {} already exists",
                spec.id
            ))),
            Err(err) if status_of(&err) == Some(404) => Err(DriverError::Invalid(format!(
                "docker: {}",
                engine_message(&err)
            ))),
            Err(err) => Err(failed("creating the container", err)),
        }
    }
}

/// Turns the engine's log frames into numbered lines: frames are cut at
/// 16 KiB by the engine and carry a timestamp each; lines are joined again,
/// then cut at [`MAX_LINE_BYTES`].
#[derive(Default)]
struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    seq: u64,
}

impl LineSplitter {
    fn push(&mut self, frame: LogOutput, mut emit: impl FnMut(OutputLine)) {
        let (stream, bytes) = match frame {
            LogOutput::StdOut { message } => (OutputStream::Stdout, message),
            LogOutput::StdErr { message } => (OutputStream::Stderr, message),
            LogOutput::Console { message } => (OutputStream::Stdout, message),
            LogOutput::StdIn { .. } => return,
        };
        // "<RFC 3339 nano> <text>"
        let (at_ms, text) = match bytes.iter().position(|&b| b == b' ') {
            Some(space) => match std::str::from_utf8(&bytes[..space])
                .ok()
                .and_then(parse_time_ms)
            {
                Some(at) => (at, &bytes[space + 1..]),
                None => (now_ms(), &bytes[..]),
            },
            None => (now_ms(), &bytes[..]),
        };
        let buffer = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        buffer.extend_from_slice(text);
        loop {
            let cut = match buffer.iter().position(|&b| b == b'\n') {
                Some(newline) if newline <= MAX_LINE_BYTES => Some((newline, newline + 1)),
                _ if buffer.len() > MAX_LINE_BYTES => Some((MAX_LINE_BYTES, MAX_LINE_BYTES)),
                _ => None,
            };
            let Some((end, skip)) = cut else {
                break;
            };
            let mut line: Vec<u8> = buffer.drain(..skip).collect();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.seq += 1;
            emit(OutputLine {
                seq: self.seq,
                at_ms,
                stream,
                text: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }

    /// What is left without a newline at the end of the output.
    fn finish(&mut self, mut emit: impl FnMut(OutputLine)) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let buffer = match stream {
                OutputStream::Stdout => &mut self.stdout,
                OutputStream::Stderr => &mut self.stderr,
            };
            if buffer.is_empty() {
                continue;
            }
            let line = std::mem::take(buffer);
            self.seq += 1;
            emit(OutputLine {
                seq: self.seq,
                at_ms: now_ms(),
                stream,
                text: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }
}

type OutputFrames = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// Reads an exec's or attach's frames into stdout and stderr, each up to
/// `limit` bytes.
async fn collect(
    output: &mut OutputFrames,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
    limit: usize,
) -> bool {
    let mut truncated = false;
    while let Some(Ok(frame)) = output.next().await {
        let (buffer, bytes) = match frame {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (&mut *stdout, message)
            }
            LogOutput::StdErr { message } => (&mut *stderr, message),
            LogOutput::StdIn { .. } => continue,
        };
        let room = limit.saturating_sub(buffer.len());
        if bytes.len() > room {
            truncated = true;
        }
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    truncated
}

#[async_trait::async_trait]
impl Driver for DockerDriver {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn create(&self, spec: &ReplicaSpec) -> Result<ReplicaInfo, DriverError> {
        if !valid_id(&spec.id) {
            return Err(DriverError::Invalid(format!(
                "bad replica id {:?}",
                spec.id
            )));
        }
        if spec.rootfs.is_some() {
            return Err(DriverError::Invalid(
                "the docker driver runs images, not unpacked root filesystems".to_owned(),
            ));
        }
        if spec.argv.first().is_some_and(String::is_empty) {
            return Err(DriverError::Invalid("argv must name a program".to_owned()));
        }
        let name = self.create_container(spec).await?;
        if let Err(err) = self.docker.start_container(&name, None).await {
            let _ = self.remove(&spec.id).await;
            return Err(DriverError::Failed(format!(
                "docker: starting replica {}: {}",
                spec.id,
                engine_message(&err)
            )));
        }
        self.info(&spec.id).await
    }

    async fn list(&self) -> Result<Vec<ReplicaInfo>, DriverError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(self.owned(None)),
            ..Default::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|err| failed("listing containers", err))?;
        let prefix = format!("/hangar-{}-", self.owner);
        let mut replicas = Vec::new();
        for container in containers {
            let Some(id) = container
                .names
                .unwrap_or_default()
                .iter()
                .find_map(|name| name.strip_prefix(&prefix).map(str::to_owned))
            else {
                continue;
            };
            match self.info(&id).await {
                Ok(info) => replicas.push(info),
                // Removed between the listing and now.
                Err(DriverError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(replicas)
    }

    async fn inspect(&self, id: &str) -> Result<ReplicaInfo, DriverError> {
        self.info(id).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Exit, DriverError> {
        let name = self.container_name(id)?;
        let info = self.info(id).await?;
        if let Some(exit) = info.exit {
            return Ok(exit);
        }
        let result = if grace.is_zero() {
            let options = KillContainerOptions {
                signal: "SIGKILL".to_owned(),
            };
            self.docker.kill_container(&name, Some(options)).await
        } else {
            // The engine counts whole seconds.
            let seconds = i32::try_from(grace.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
            let options = StopContainerOptions {
                t: Some(seconds),
                signal: None,
            };
            self.docker.stop_container(&name, Some(options)).await
        };
        match result {
            Ok(()) => {}
            // 304: already stopped; 409: not running.
            Err(err) if matches!(status_of(&err), Some(304 | 409)) => {}
            Err(err) if status_of(&err) == Some(404) => {
                return Err(DriverError::NotFound(id.to_owned()))
            }
            Err(err) => return Err(failed("stopping the container", err)),
        }
        // A kill returns before the process is gone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = self.info(id).await?.exit {
                return Ok(exit);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DriverError::Failed(format!(
                    "replica {id} did not stop within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        let Some(found) = self.inspect_container(id).await? else {
            return Ok(());
        };
        let name = self.container_name(id)?;
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(&name, Some(options)).await {
            Ok(()) => {}
            Err(err) if status_of(&err) == Some(404) => {}
            Err(err) => return Err(failed("removing the container", err)),
        }
        self.stdin_turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        if let Some(network) = found
            .config
            .and_then(|c| c.labels)
            .and_then(|mut l| l.remove(NETWORK_LABEL))
        {
            self.release_network(&network).await;
        }
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecResult, DriverError> {
        let name = self.container_name(id)?;
        if self.info(id).await?.exit.is_some() {
            return Err(DriverError::NotRunning(id.to_owned()));
        }
        if argv.first().is_none_or(String::is_empty) {
            return Err(DriverError::Invalid("argv must name a program".to_owned()));
        }
        let config = ExecConfig {
            cmd: Some(argv.to_vec()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = match self.docker.create_exec(&name, config).await {
            Ok(created) => created,
            Err(err) if status_of(&err) == Some(409) => {
                return Err(DriverError::NotRunning(id.to_owned()))
            }
            Err(err) => return Err(failed("creating the exec", err)),
        };
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|err| failed("starting the exec", err))?;
        let bollard::exec::StartExecResults::Attached { mut output, .. } = started else {
            return Err(DriverError::Failed(
                "docker: the exec started detached".to_owned(),
            ));
        };
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let read = tokio::time::timeout(
            timeout,
            collect(&mut output, &mut stdout, &mut stderr, EXEC_OUTPUT_LIMIT),
        )
        .await;
        let (truncated, timed_out) = match read {
            Ok(truncated) => (truncated, false),
            Err(_) => {
                // The engine cannot kill an exec: its process is killed here,
                // which works where the engine runs on this host.
                if let Ok(exec) = self.docker.inspect_exec(&created.id).await {
                    if let Some(pid) = exec
                        .pid
                        .and_then(|p| i32::try_from(p).ok())
                        .filter(|p| *p > 0)
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                (false, true)
            }
        };
        drop(output);
        // The output ends a moment before the engine records the exit code.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let code = loop {
            let exec = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(|err| failed("inspecting the exec", err))?;
            if exec.running != Some(true) || tokio::time::Instant::now() > deadline {
                break exec.exit_code;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let code = code.and_then(|c| exit_from_code(c, false, 0).code);
        Ok(ExecResult {
            stdout,
            stderr,
            truncated,
            code: if timed_out { None } else { code },
            timed_out,
        })
    }

    async fn stdin(&self, id: &str, input: &[u8], wait: StdinWait) -> Result<String, DriverError> {
        let name = self.container_name(id)?;
        let found = self
            .inspect_container(id)
            .await?
            .ok_or_else(|| DriverError::NotFound(id.to_owned()))?;
        let takes_stdin = found
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(STDIN_LABEL))
            .is_some_and(|v| v == "true");
        if !takes_stdin {
            return Err(DriverError::NoStdin(id.to_owned()));
        }
        if !found.state.and_then(|s| s.running).unwrap_or(false) {
            return Err(DriverError::NotRunning(id.to_owned()));
        }
        let turn = self.stdin_turn(id);
        let _turn = turn.lock().await;
        let options = AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            ..Default::default()
        };
        let attached = self
            .docker
            .attach_container(&name, Some(options))
            .await
            .map_err(|err| failed("attaching to the replica", err))?;
        let mut output: OutputFrames = attached.output;
        let mut input_pipe = attached.input;
        input_pipe
            .write_all(input)
            .await
            .map_err(|err| DriverError::Failed(format!("docker: writing stdin: {err}")))?;
        input_pipe
            .flush()
            .await
            .map_err(|err| DriverError::Failed(format!("docker: writing stdin: {err}")))?;
        let mut answer = Vec::new();
        let give_up = tokio::time::Instant::now() + wait.timeout;
        loop {
            let until = if answer.is_empty() {
                give_up
            } else {
                give_up.min(tokio::time::Instant::now() + wait.quiet)
            };
            match tokio::time::timeout_at(until, output.next()).await {
                Ok(Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message }))) => {
                    answer.extend_from_slice(&message);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => break,
            }
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    async fn follow(
        &self,
        id: &str,
        after: u64,
    ) -> Result<mpsc::Receiver<OutputEvent>, DriverError> {
        let name = self.container_name(id)?;
        if self.inspect_container(id).await?.is_none() {
            return Err(DriverError::NotFound(id.to_owned()));
        }
        let (tx, rx) = mpsc::channel(crate::driver::FOLLOW_QUEUE);
        let driver = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let options = LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                timestamps: true,
                ..Default::default()
            };
            let mut frames = driver.docker.logs(&name, Some(options));
            let mut splitter = LineSplitter::default();
            let mut lines = Vec::new();
            while let Some(frame) = frames.next().await {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(err) => {
                        tracing::debug!(replica = %id, error = %err, "docker log stream broke");
                        return;
                    }
                };
                splitter.push(frame, |line| lines.push(line));
                for line in lines.drain(..) {
                    if line.seq > after && tx.send(OutputEvent::Line(line)).await.is_err() {
                        return;
                    }
                }
            }
            splitter.finish(|line| lines.push(line));
            for line in lines.drain(..) {
                if line.seq > after && tx.send(OutputEvent::Line(line)).await.is_err() {
                    return;
                }
            }
            // The log ends when the container stops; its state may lag a moment.
            for _ in 0..100 {
                match driver.info(&id).await {
                    Ok(ReplicaInfo {
                        exit: Some(exit), ..
                    }) => {
                        let _ = tx.send(OutputEvent::End(exit)).await;
                        return;
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => return,
                }
            }
        });
        Ok(rx)
    }

    async fn stats(&self, id: &str) -> Result<ReplicaStats, DriverError> {
        let name = self.container_name(id)?;
        if self.info(id).await?.exit.is_some() {
            return Err(DriverError::NotRunning(id.to_owned()));
        }
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let sample = self
            .docker
            .stats(&name, Some(options))
            .next()
            .await
            .ok_or_else(|| DriverError::Failed("docker: no stats".to_owned()))?
            .map_err(|err| failed("reading stats", err))?;
        let memory = sample.memory_stats.unwrap_or_default();
        let stats = memory.stats.unwrap_or_default();
        // As `docker stats` counts it: without the reclaimable page cache.
        let cache = ["total_inactive_file", "inactive_file"]
            .iter()
            .find_map(|key| stats.get(*key).copied())
            .unwrap_or(0);
        let networks = sample.networks.unwrap_or_default();
        Ok(ReplicaStats {
            cpu_ns: sample
                .cpu_stats
                .and_then(|c| c.cpu_usage)
                .and_then(|u| u.total_usage)
                .unwrap_or(0),
            memory_bytes: memory.usage.unwrap_or(0).saturating_sub(cache),
            rx_bytes: networks.values().filter_map(|n| n.rx_bytes).sum(),
            tx_bytes: networks.values().filter_map(|n| n.tx_bytes).sum(),
            pids: sample.pids_stats.and_then(|p| p.current).unwrap_or(0),
            at_ms: now_ms(),
        })
    }
}

/// Every container and network of `owner` on the engine, by name: what a
/// test checks is empty after removing every replica.
pub async fn leftovers(driver: &DockerDriver) -> Result<Vec<String>, DriverError> {
    let filters = driver.owned(None);
    let containers = driver
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .map_err(|err| failed("listing containers", err))?;
    let networks = driver
        .docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(|err| failed("listing networks", err))?;
    Ok(containers
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .chain(networks.into_iter().filter_map(|n| n.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> LogOutput {
        LogOutput::StdOut {
            message: bytes::Bytes::from(format!("2026-12-04T11:48:26.259675256Z {text}")),
        }
    }

    #[test]
    fn build_limits_as_the_build_api_takes_them() {
        let limits = BuildLimits {
            memory_bytes: 512 << 20,
            cpu_millis: 250,
            cpu_limit_millis: Some(1500),
        };
        assert_eq!(limits.memory(), Some(512 << 20));
        assert_eq!(limits.cpu_shares(), 256);
        assert_eq!(limits.cpu_quota(), Some(150_000));
        let big = BuildLimits {
            memory_bytes: 4 << 30,
            cpu_millis: 1,
            cpu_limit_millis: None,
        };
        assert_eq!(big.memory(), None, "not sent: the field is 32 bits");
        assert_eq!(big.cpu_shares(), 2);
        assert_eq!(big.cpu_quota(), None);
    }

    #[test]
    fn frames_become_numbered_lines_with_the_engine_time() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.push(frame("one\n"), |l| lines.push(l));
        splitter.push(frame("two, cut "), |l| lines.push(l));
        splitter.push(frame("in two\n"), |l| lines.push(l));
        splitter.push(
            LogOutput::StdErr {
                message: bytes::Bytes::from_static(b"2026-12-04T11:48:27Z oops\r\n"),
            },
            |l| lines.push(l),
        );
        splitter.push(frame("no newline"), |l| lines.push(l));
        splitter.finish(|l| lines.push(l));
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.seq, l.stream, l.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, OutputStream::Stdout, "one"),
                (2, OutputStream::Stdout, "two, cut in two"),
                (3, OutputStream::Stderr, "oops"),
                (4, OutputStream::Stdout, "no newline"),
            ]
        );
        assert_eq!(lines[0].at_ms, 1_796_384_906_259);
    }

    #[test]
    fn long_lines_are_cut() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.push(
            frame(&format!("{}\n", "x".repeat(MAX_LINE_BYTES + 5))),
            |l| lines.push(l),
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text.len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].text, "xxxxx");
    }

    #[test]
    fn exit_codes_over_128_are_signals() {
        let killed = exit_from_code(137, false, 5);
        assert_eq!((killed.code, killed.signal), (None, Some(9)));
        let crashed = exit_from_code(3, false, 5);
        assert_eq!((crashed.code, crashed.signal), (Some(3), None));
        assert_eq!(exit_from_code(255, false, 5).code, Some(255));
        assert_eq!(parse_time_ms("0001-01-01T00:00:00Z"), None);
    }
}
