//! The sandbox driver: the embedded default [`Driver`], one `hangar shim`
//! process per replica (see [`crate::shim`]).
//!
//! ```text
//! <state_dir>/shims/<replica id>/      replica.json, shim.log
//! /run/hangar/<hash of state_dir>/<replica id>.sock   the shim's socket
//! <state_dir>/sandboxes/<replica id>/  the sandbox (bundle, libcontainer state, netns)
//! cgroup /hangar-<hash of state_dir>/<replica id>
//! ```
//!
//! Everything about a replica is in its shim's directory, so a new daemon
//! finds every replica by listing `shims/` and asking each shim for its
//! status; a directory whose shim does not answer is a replica whose shim
//! died, reported as exited and cleaned up with `hangar shim cleanup`.
//!
//! Network: with root, the CNI reference plugins and `iptables`, each
//! replica gets its own network namespace on the `hangar0` bridge and is
//! reached at its own IP and [`ReplicaSpec::port`]. Otherwise replicas share
//! the host's network, each with a free port of its own set in `PORT`, and
//! the driver warns at start: replicas can then reach each other and the
//! host's loopback services.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::driver::{
    now_ms, Driver, DriverError, ExecResult, Exit, OutputEvent, Refusal, ReplicaInfo, ReplicaSpec,
    ReplicaStats, StdinWait, FOLLOW_QUEUE,
};
use crate::sandbox::CNI_PLUGIN_DIR;
use crate::shim::protocol::{ExecRequest, Reply, Request, ShimConfig, ShimNetwork, CONFIG_FILE};

/// How long a shim may take to create and start its sandbox.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Added to every call's own time limit before the driver gives up on a shim.
const CALL_SLACK: Duration = Duration::from_secs(15);

/// Where and how the sandbox driver runs replicas.
#[derive(Debug, Clone)]
pub struct SandboxDriverConfig {
    /// The `hangar` binary (its `shim` subcommand runs each replica).
    pub shim_program: PathBuf,
    /// Where the driver keeps shims' and sandboxes' files; created 0700.
    pub state_dir: PathBuf,
    /// Force the host network even where bridging would work.
    pub host_network: bool,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct SandboxDriver {
    shim_program: PathBuf,
    shims_dir: PathBuf,
    sandboxes_dir: PathBuf,
    sockets_dir: PathBuf,
    cgroup_parent: PathBuf,
    bridged: bool,
}

impl SandboxDriver {
    /// Prepares the state dir and picks the network mode (see the module
    /// docs); says loudly when replicas will share the host's network.
    pub fn new(config: SandboxDriverConfig) -> io::Result<Self> {
        let mut dirs = fs::DirBuilder::new();
        dirs.recursive(true).mode(0o700);
        dirs.create(&config.state_dir)?;
        // Absolute: shims run with paths from their config, and libcontainer
        // changes the working directory of the process that calls it.
        let canonical = fs::canonicalize(&config.state_dir)?;
        let shims_dir = canonical.join("shims");
        let sandboxes_dir = canonical.join("sandboxes");
        dirs.create(&shims_dir)?;
        dirs.create(&sandboxes_dir)?;
        let hash = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
        let cgroup_parent = PathBuf::from(format!("/hangar-{}", hex::encode(&hash[..6])));
        let sockets_dir = PathBuf::from(format!("/run/hangar/{}", hex::encode(&hash[..6])));
        dirs.create(&sockets_dir)?;
        let root = nix::unistd::geteuid().is_root();
        let bridged = if config.host_network {
            false
        } else {
            match bridge_unavailable(root).or_else(|| {
                crate::sandbox::ensure_host_rules(&crate::sandbox::BridgeConfig::default())
                    .err()
                    .map(|err| format!("the bridge's egress rules cannot be installed: {err}"))
            }) {
                None => true,
                Some(why) => {
                    tracing::warn!(
                        "REPLICAS WILL SHARE THE HOST'S NETWORK: {why}. Each replica gets its own \
                         PORT on 127.0.0.1, but replicas can reach each other and the host's \
                         loopback services."
                    );
                    false
                }
            }
        };
        if !root {
            tracing::warn!(
                "not running as root: sandboxes need root (namespaces, cgroups, mounts); \
                 creating replicas will fail"
            );
        }
        Ok(Self {
            shim_program: config.shim_program,
            shims_dir,
            sandboxes_dir,
            sockets_dir,
            cgroup_parent,
            bridged,
        })
    }

    /// Whether replicas get their own network namespace on the bridge.
    pub fn bridged(&self) -> bool {
        self.bridged
    }

    /// Replica `id`'s shim socket (a valid id: checked by [`Self::shim_dir`]).
    fn socket(&self, id: &str) -> PathBuf {
        self.sockets_dir.join(format!("{id}.sock"))
    }

    fn shim_dir(&self, id: &str) -> Result<PathBuf, DriverError> {
        let valid = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(DriverError::NotFound(id.to_owned()));
        }
        Ok(self.shims_dir.join(id))
    }

    /// Sends one request to replica `id`'s shim and reads one reply.
    async fn call(
        &self,
        id: &str,
        request: &Request,
        limit: Duration,
    ) -> Result<Reply, DriverError> {
        let dir = self.shim_dir(id)?;
        if !dir.join(CONFIG_FILE).exists() {
            return Err(DriverError::NotFound(id.to_owned()));
        }
        let exchange = async {
            let mut stream = UnixStream::connect(self.socket(id)).await?;
            let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
            line.push(b'\n');
            stream.write_all(&line).await?;
            let mut reply = String::new();
            BufReader::new(stream).read_line(&mut reply).await?;
            serde_json::from_str::<Reply>(&reply).map_err(io::Error::other)
        };
        match tokio::time::timeout(limit + CALL_SLACK, exchange).await {
            Ok(Ok(Reply::Error { kind, message })) => Err(Reply::into_error(kind, message, id)),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(err)) => Err(DriverError::Failed(format!(
                "the shim of replica {id} is not answering: {err}"
            ))),
            Err(_) => Err(DriverError::Failed(format!(
                "the shim of replica {id} did not answer in time"
            ))),
        }
    }

    /// A replica whose shim is gone: exited, with what its config says.
    fn lost(&self, config: &ShimConfig) -> ReplicaInfo {
        ReplicaInfo {
            id: config.spec.id.clone(),
            labels: config.spec.labels.clone(),
            address: None,
            pid: 0,
            started_at_ms: 0,
            exit: Some(Exit {
                code: None,
                signal: None,
                oom_killed: false,
                at_ms: now_ms(),
            }),
            output_seq: 0,
        }
    }

    async fn run_helper(
        &self,
        command: &str,
        dir: &Path,
        input: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<std::process::Output, DriverError> {
        let mut child = Command::new(&self.shim_program)
            .arg("shim")
            .arg(command)
            .arg(dir)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                DriverError::Failed(format!(
                    "cannot run {} shim {command}: {err}",
                    self.shim_program.display()
                ))
            })?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(&input).await.map_err(|err| {
                DriverError::Failed(format!("cannot talk to shim {command}: {err}"))
            })?;
        }
        match tokio::time::timeout(limit + CALL_SLACK, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(err)) => Err(DriverError::Failed(format!("shim {command} failed: {err}"))),
            Err(_) => Err(DriverError::Failed(format!(
                "shim {command} did not finish in time"
            ))),
        }
    }
}

/// Why replicas cannot have a bridged network here, if they cannot.
fn bridge_unavailable(root: bool) -> Option<String> {
    if !root {
        return Some("not running as root".to_owned());
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_PLUGIN_DIR).join(plugin).exists() {
            return Some(format!(
                "the CNI plugin {CNI_PLUGIN_DIR}/{plugin} is missing (Debian: containernetworking-plugins)"
            ));
        }
    }
    let iptables = ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"];
    if !iptables.iter().any(|path| Path::new(path).exists()) {
        return Some("iptables is missing (needed for masquerade)".to_owned());
    }
    None
}

fn free_port() -> Result<u16, DriverError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|err| DriverError::Failed(format!("cannot allocate a port: {err}")))
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[async_trait::async_trait]
impl Driver for SandboxDriver {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn create(&self, spec: &ReplicaSpec) -> Result<ReplicaInfo, DriverError> {
        let dir = self
            .shim_dir(&spec.id)
            .map_err(|_| DriverError::Invalid(format!("bad replica id {:?}", spec.id)))?;
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(DriverError::Invalid(format!(
                    "replica {} already exists",
                    spec.id
                )))
            }
            Err(err) => {
                return Err(DriverError::Failed(format!(
                    "cannot create {}: {err}",
                    dir.display()
                )))
            }
        }
        let result = self.start_shim(spec, &dir).await;
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    async fn list(&self) -> Result<Vec<ReplicaInfo>, DriverError> {
        let entries = fs::read_dir(&self.shims_dir).map_err(|err| {
            DriverError::Failed(format!("cannot list {}: {err}", self.shims_dir.display()))
        })?;
        let mut replicas = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(config) = crate::shim::read_config(&entry.path()) else {
                // A create that never wrote its config: nothing runs there.
                tracing::warn!(replica = %id, "removing a shim directory without a configuration");
                let _ = fs::remove_dir_all(entry.path());
                continue;
            };
            match self.call(&id, &Request::Status, Duration::ZERO).await {
                Ok(Reply::Info(info)) => replicas.push(info),
                Ok(_) | Err(_) => replicas.push(self.lost(&config)),
            }
        }
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(replicas)
    }

    async fn inspect(&self, id: &str) -> Result<ReplicaInfo, DriverError> {
        match self.call(id, &Request::Status, Duration::ZERO).await {
            Ok(Reply::Info(info)) => Ok(info),
            Ok(other) => Err(unexpected(&other)),
            Err(DriverError::Failed(_)) => {
                let dir = self.shim_dir(id)?;
                let config = crate::shim::read_config(&dir)
                    .map_err(|_| DriverError::NotFound(id.to_owned()))?;
                Ok(self.lost(&config))
            }
            Err(err) => Err(err),
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Exit, DriverError> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        match self.call(id, &Request::Stop { grace_ms }, grace).await? {
            Reply::Stopped(exit) => Ok(exit),
            other => Err(unexpected(&other)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        let dir = self.shim_dir(id)?;
        if !dir.exists() {
            return Ok(());
        }
        match self.call(id, &Request::Delete, Duration::ZERO).await {
            Ok(Reply::Deleted) => return Ok(()),
            Ok(other) => return Err(unexpected(&other)),
            Err(DriverError::NotFound(_)) => {}
            Err(err) => {
                tracing::warn!(replica = %id, error = %err, "shim gone; cleaning up without it")
            }
        }
        if !dir.exists() {
            return Ok(());
        }
        let output = self
            .run_helper("cleanup", &dir, None, Duration::from_secs(30))
            .await?;
        if output.status.success() {
            Ok(())
        } else {
            Err(DriverError::Failed(format!(
                "cleaning up replica {id} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecResult, DriverError> {
        let info = self.inspect(id).await?;
        if info.exit.is_some() {
            return Err(DriverError::NotRunning(id.to_owned()));
        }
        let request = ExecRequest {
            argv: argv.to_vec(),
            env: env.to_vec(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let mut input =
            serde_json::to_vec(&request).map_err(|err| DriverError::Failed(err.to_string()))?;
        input.push(b'\n');
        let dir = self.shim_dir(id)?;
        let output = self.run_helper("exec", &dir, Some(input), timeout).await?;
        let reply: Reply = serde_json::from_slice(&output.stdout).map_err(|err| {
            DriverError::Failed(format!(
                "shim exec answered nonsense ({err}): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        })?;
        match reply {
            Reply::Exec(result) => Ok(result),
            Reply::Error { kind, message } => Err(Reply::into_error(kind, message, id)),
            other => Err(unexpected(&other)),
        }
    }

    async fn stdin(&self, id: &str, input: &[u8], wait: StdinWait) -> Result<String, DriverError> {
        let request = Request::Stdin {
            input: String::from_utf8_lossy(input).into_owned(),
            quiet_ms: u64::try_from(wait.quiet.as_millis()).unwrap_or(u64::MAX),
            timeout_ms: u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match self.call(id, &request, wait.timeout).await? {
            Reply::Output(output) => Ok(output),
            other => Err(unexpected(&other)),
        }
    }

    async fn follow(
        &self,
        id: &str,
        after: u64,
    ) -> Result<mpsc::Receiver<OutputEvent>, DriverError> {
        let dir = self.shim_dir(id)?;
        if !dir.join(CONFIG_FILE).exists() {
            return Err(DriverError::NotFound(id.to_owned()));
        }
        let mut stream = UnixStream::connect(self.socket(id)).await.map_err(|err| {
            DriverError::Failed(format!("the shim of replica {id} is not answering: {err}"))
        })?;
        let mut line = serde_json::to_vec(&Request::Follow { after })
            .map_err(|err| DriverError::Failed(err.to_string()))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|err| DriverError::Failed(format!("cannot follow replica {id}: {err}")))?;
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
        let id = id.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => match serde_json::from_str::<Reply>(&line) {
                        Ok(Reply::Event(event)) => {
                            let end = matches!(event, OutputEvent::End(_));
                            if tx.send(event).await.is_err() || end {
                                return;
                            }
                        }
                        Ok(other) => {
                            tracing::warn!(replica = %id, reply = ?other, "unexpected reply while following");
                            return;
                        }
                        Err(err) => {
                            tracing::warn!(replica = %id, error = %err, "bad line while following");
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(err) => {
                        tracing::debug!(replica = %id, error = %err, "follow stream broke");
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn stats(&self, id: &str) -> Result<ReplicaStats, DriverError> {
        match self.call(id, &Request::Stats, Duration::ZERO).await? {
            Reply::Stats(stats) => Ok(stats),
            other => Err(unexpected(&other)),
        }
    }

    /// What the packet filter refused (see `sandbox::firewall`); a
    /// sandbox's id is its replica's.
    async fn take_refusals(&self) -> Result<Vec<Refusal>, DriverError> {
        if !self.bridged {
            return Ok(Vec::new());
        }
        let sandboxes = self.sandboxes()?;
        let denials = tokio::task::spawn_blocking(move || sandboxes.take_denials())
            .await
            .map_err(|err| DriverError::Failed(format!("reading the refusals panicked: {err}")))?
            .map_err(DriverError::Failed)?;
        Ok(denials
            .into_iter()
            .map(|denial| Refusal {
                replica: denial.sandbox,
                destination: denial.destination.into(),
            })
            .collect())
    }

    /// The bridge's egress rules and the sandboxes' packet filter, rebuilt
    /// from what is on disk (see `sandbox::firewall`).
    async fn resync(&self) -> Result<(), DriverError> {
        if !self.bridged {
            return Ok(());
        }
        let sandboxes = self.sandboxes()?;
        tokio::task::spawn_blocking(move || {
            crate::sandbox::ensure_host_rules(sandboxes.bridge())?;
            sandboxes.sync_firewall().map(drop)
        })
        .await
        .map_err(|err| DriverError::Failed(format!("the packet filter's sync panicked: {err}")))?
        .map_err(DriverError::Failed)
    }
}

impl SandboxDriver {
    /// The sandbox layer over this driver's sandboxes dir.
    fn sandboxes(&self) -> Result<crate::sandbox::Sandboxes, DriverError> {
        crate::sandbox::Sandboxes::new(&self.sandboxes_dir, &self.cgroup_parent)
            .map_err(|err| DriverError::Failed(err.to_string()))
    }

    async fn start_shim(&self, spec: &ReplicaSpec, dir: &Path) -> Result<ReplicaInfo, DriverError> {
        let network = if self.bridged {
            ShimNetwork::Bridge
        } else {
            ShimNetwork::Host { port: free_port()? }
        };
        let config = ShimConfig {
            spec: spec.clone(),
            sandboxes_dir: self.sandboxes_dir.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            network,
            socket: self.socket(&spec.id),
        };
        // Checked here, so a bad spec is an error of this call and not a
        // shim that fails to start.
        let sandbox_spec = config.sandbox_spec();
        if let Some(image) = &spec.image {
            return Err(DriverError::Invalid(format!(
                "the sandbox driver does not run container images ({image}); \
                 it runs an image's unpacked root filesystem"
            )));
        }
        if sandbox_spec.argv.first().is_none_or(String::is_empty) {
            return Err(DriverError::Invalid("argv must name a program".to_owned()));
        }
        let bytes =
            serde_json::to_vec(&config).map_err(|err| DriverError::Failed(err.to_string()))?;
        write_private(&dir.join(CONFIG_FILE), &bytes).map_err(|err| {
            DriverError::Failed(format!("cannot write the replica's config: {err}"))
        })?;
        let mut child = Command::new(&self.shim_program)
            .arg("shim")
            .arg("run")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|err| {
                DriverError::Failed(format!(
                    "cannot start {} shim: {err}",
                    self.shim_program.display()
                ))
            })?;
        let Some(stdout) = child.stdout.take() else {
            return Err(DriverError::Failed("the shim has no stdout".to_owned()));
        };
        let mut handshake = String::new();
        let read = tokio::time::timeout(
            START_TIMEOUT,
            BufReader::new(stdout).read_line(&mut handshake),
        )
        .await;
        let reply = match read {
            Ok(Ok(_)) => serde_json::from_str::<Reply>(&handshake).map_err(|_| {
                DriverError::Failed(format!(
                    "the shim of replica {} exited without starting it (see its log)",
                    spec.id
                ))
            }),
            Ok(Err(err)) => Err(DriverError::Failed(format!(
                "cannot read the shim's handshake: {err}"
            ))),
            Err(_) => {
                let _ = child.start_kill();
                Err(DriverError::Failed(format!(
                    "the shim of replica {} did not start it within {}s",
                    spec.id,
                    START_TIMEOUT.as_secs()
                )))
            }
        };
        // The shim lives on in its own session; dropping the handle leaves
        // it running and tokio reaps it when it exits.
        drop(child);
        match reply? {
            Reply::Info(info) => Ok(info),
            Reply::Error { kind, message } => Err(Reply::into_error(kind, message, &spec.id)),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> DriverError {
    DriverError::Failed(format!("the shim answered something unexpected: {reply:?}"))
}
