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
//!   [`labels::CLOUD`](crate::driver::labels::CLOUD)), made on first use and removed with its last
//!   replica: replicas reach neither each other nor the host (see `network`). A
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

//!
//! # Layout
//!
//! * this file: the configuration, connecting, the names and labels that
//!   mark what this driver owns, and the [`Driver`] verbs themselves.
//! * `container`: a [`ReplicaSpec`] as the engine's container (body, host
//!   config, user, labels) and an inspected container as a [`ReplicaInfo`]
//!   (address, exit).
//! * `network`: the per-cloud bridge networks, made and released.
//! * `image`: image builds and pulls for the builder, and their
//!   [`BuildLimits`].
//! * `output`: the engine's multiplexed output frames as numbered lines
//!   (logs) or bounded byte buffers (exec).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::ExecConfig;
use bollard::query_parameters::{
    AttachContainerOptions, KillContainerOptions, ListContainersOptions, ListNetworksOptions,
    LogsOptions, RemoveContainerOptions, StatsOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::driver::{
    now_ms, valid_id, Driver, DriverError, ExecResult, Exit, OutputEvent, ReplicaInfo, ReplicaSpec,
    ReplicaStats, StdinWait,
};

mod container;
mod image;
mod network;
mod output;

pub use image::BuildLimits;

use output::{collect, LineSplitter, OutputFrames};

/// Labels of the driver's own, kept out of [`ReplicaInfo::labels`].
const OWNER_LABEL: &str = "hangar.docker.owner";
const PORT_LABEL: &str = "hangar.docker.port";
const STDIN_LABEL: &str = "hangar.docker.stdin";
const NETWORK_LABEL: &str = "hangar.docker.network";
const INTERNAL_PREFIX: &str = "hangar.docker.";

/// The most of each of stdout and stderr [`Driver::exec`] keeps.
const EXEC_OUTPUT_LIMIT: usize = 1 << 20;

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

/// Milliseconds since the epoch of an RFC 3339 time as the engine writes
/// it; `None` for its "zero" time (year 1) and nonsense.
fn parse_time_ms(text: &str) -> Option<i64> {
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let ms = at.timestamp_millis();
    (ms > 0).then_some(ms)
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

    fn stdin_turn(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self
            .stdin_turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        turns.entry(id.to_owned()).or_default().clone()
    }
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
        // Not enforced here yet: refused rather than run with more reach
        // than asked for.
        let network = &spec.network;
        if network.egress != crate::network::Egress::Open
            || !network.reach.is_empty()
            || !network.host_ports.is_empty()
            || network.trusted_ca.is_some()
        {
            return Err(DriverError::Invalid(
                "the docker driver cannot enforce config.network yet (egress other than \"open\", \
                 reach): run the agent on a sandbox cloud"
                    .to_owned(),
            ));
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
        let code = code.and_then(|c| Exit::from_status(c, false, 0).code);
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

    /// The guard of the replicas' networks (see `network`), put back if it
    /// was flushed, gone once no network is left.
    async fn resync(&self) -> Result<(), DriverError> {
        tokio::task::spawn_blocking(|| network::host_guard(false))
            .await
            .map_err(|err| {
                DriverError::Failed(format!("the packet filter's update panicked: {err}"))
            })?
            .map_err(DriverError::Failed)
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
