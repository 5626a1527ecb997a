//! The `Driver` trait: what the controller asks of whatever runs replicas.
//!
//! A replica is one running copy of an instance. The controller decides how
//! many there should be and with what spec; a driver makes and observes
//! them. Every driver — the sandbox driver ([`crate::SandboxDriver`]), a
//! Docker engine, Kubernetes — answers the same calls with the same types,
//! so the controller, the API and the gateway never know which one runs.
//!
//! Replicas outlive the process that created them: [`Driver::list`] finds
//! them again after a restart, with the [`ReplicaSpec::labels`] they were
//! created with, so the controller can re-adopt them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::network::NetworkPolicy;

/// Labels every replica carries, for re-adoption.
pub mod labels {
    /// The organization the replica's instance belongs to.
    pub const ORG: &str = "hangar.org";
    /// The agent the replica runs.
    pub const AGENT: &str = "hangar.agent";
    /// The instance the replica belongs to.
    pub const INSTANCE: &str = "hangar.instance";
    /// A hash of the instance spec the replica was made from: a replica whose
    /// hash differs from the instance's current one is rolled.
    pub const GENERATION: &str = "hangar.generation";
    /// The cloud the replica runs in: drivers that run several clouds keep
    /// them apart by it (the docker driver: one bridge network per cloud).
    pub const CLOUD: &str = "hangar.cloud";
    /// Which driver runs the replica ("sandbox", "docker", "kubernetes"), for a
    /// [`crate::DriverSet`] to route by; absent: the set's default.
    pub const DRIVER: &str = "hangar.driver";
}

/// Everything a driver needs to make one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSpec {
    /// Unique among all replicas of this driver; `[a-z0-9_-]`, at most 64 bytes.
    pub id: String,
    /// Free-form labels, given back by [`Driver::list`] and [`Driver::inspect`].
    pub labels: BTreeMap<String, String>,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Environment variables, in order (the driver adds none but `PATH` and,
    /// with a host network, `PORT`).
    pub env: Vec<(String, String)>,
    /// The working directory inside the replica.
    pub cwd: String,
    /// The artifact shown at `/app`, if any: a directory on the host.
    pub app: Option<PathBuf>,
    /// Show [`ReplicaSpec::app`] read-write, itself, instead of behind a
    /// throwaway overlay: a build writes its artifact there. Its files must
    /// be writable by the sandbox's user. For drivers that run images
    /// (kubernetes): give the replica a writable copy of the image's
    /// `/app` over a read-only root.
    #[serde(default)]
    pub app_writable: bool,
    /// The port an HTTP replica listens on, if it serves HTTP. A driver that
    /// cannot give the replica an address of its own picks another port and
    /// sets `PORT` to it; [`ReplicaInfo::address`] has the one to use.
    pub port: Option<u16>,
    /// Keep a pipe to the replica's stdin ([`Driver::stdin`]); otherwise its
    /// stdin is empty.
    pub stdin: bool,
    /// CPU request in millicores (a relative weight under contention).
    pub cpu_millis: u64,
    /// Hard CPU cap in millicores.
    pub cpu_limit_millis: Option<u64>,
    /// Hard memory limit in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// The most processes and threads the replica may hold.
    pub pids_limit: i64,
    /// An OCI image's unpacked root filesystem (a directory on the host) to
    /// run in instead of the host's `/usr` and `/etc`: read-only, with the
    /// replica's writes in a layer of its own. A replica of an image has
    /// no [`ReplicaSpec::app`]; a build step on one has its tree there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    /// Who the process runs as; `None`: the sandbox's unprivileged user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ReplicaUser>,
    /// A container image to run, for drivers that run images (docker): its
    /// entrypoint and cmd run when [`ReplicaSpec::argv`] is empty, its
    /// working directory when [`ReplicaSpec::cwd`] is. The sandbox driver
    /// refuses it (it runs [`ReplicaSpec::rootfs`] instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Credentials for pulling [`ReplicaSpec::image`], for drivers whose
    /// cluster pulls it (kubernetes); `None`: a public image, or one the
    /// cluster can pull on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_auth: Option<RegistryAuth>,
    /// What the replica may reach ([`crate::network`]). A driver that cannot
    /// enforce it refuses the replica. Absent (a replica of an earlier
    /// version): a group of its own, open egress.
    #[serde(default)]
    pub network: NetworkPolicy,
}

/// A registry's address and the user and password to pull from it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    /// `host[:port]`, as in the image reference.
    pub server: String,
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"****")
            .finish()
    }
}

/// A numeric user and group a replica runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaUser {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
}

/// How a replica ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// It went over its memory limit and the kernel killed it.
    pub oom_killed: bool,
    /// When it ended, in ms since the epoch.
    pub at_ms: i64,
}

impl Exit {
    /// The exit of a container as an engine or a kubelet reports it: a
    /// status, where 128 + n means killed by signal n.
    #[must_use]
    pub fn from_status(status: i64, oom_killed: bool, at_ms: i64) -> Self {
        let status = i32::try_from(status).unwrap_or(-1);
        let (code, signal) = if (129..=128 + 64).contains(&status) {
            (None, Some(status - 128))
        } else {
            (Some(status), None)
        };
        Self {
            code,
            signal,
            oom_killed,
            at_ms,
        }
    }

    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A sentence for status reasons and log lines: "exited with code 1",
    /// "was killed by signal 9", "was killed: out of memory".
    pub fn describe(&self) -> String {
        if self.oom_killed {
            "was killed: out of memory (over its memory limit)".to_owned()
        } else if let Some(code) = self.code {
            format!("exited with code {code}")
        } else if let Some(signal) = self.signal {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| signal.to_string());
            format!("was killed by {name}")
        } else {
            "ended".to_owned()
        }
    }
}

/// What a driver knows of one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// Its id.
    pub id: String,
    /// The labels it was created with.
    pub labels: BTreeMap<String, String>,
    /// Where its HTTP port is reachable from this host, if it has one.
    pub address: Option<SocketAddr>,
    /// Its main process, as this host sees it (drivers that cannot tell: 0).
    pub pid: u32,
    /// When it started, in ms since the epoch.
    pub started_at_ms: i64,
    /// `None` while it runs.
    pub exit: Option<Exit>,
    /// The last output line number it has produced (lines count from 1).
    pub output_seq: u64,
}

/// Which stream an output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// One line a replica wrote, numbered from 1 in the order the driver read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    /// Its number.
    pub seq: u64,
    /// When it was read, in ms since the epoch.
    pub at_ms: i64,
    /// Where from.
    pub stream: OutputStream,
    /// The text, without its newline; invalid UTF-8 replaced; long lines are
    /// split at [`MAX_LINE_BYTES`].
    pub text: String,
}

/// Lines longer than this are cut into several.
pub const MAX_LINE_BYTES: usize = 16 << 10;

/// Output events a [`Driver::follow`] channel holds: room for a whole read
/// of a busy replica's output, so the follower can take it as one batch.
pub const FOLLOW_QUEUE: usize = 4096;

/// What a follower of a replica's output receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputEvent {
    /// A line.
    Line(OutputLine),
    /// Lines up to and including `through` were dropped before this follower
    /// read them (a bounded buffer overflowed).
    Gap {
        /// The last line number lost.
        through: u64,
    },
    /// The replica has exited and all its output has been sent.
    End(Exit),
}

/// The output and exit status of [`Driver::exec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// stdout, at most 1 MiB.
    #[serde(with = "bytes_base64")]
    pub stdout: Vec<u8>,
    /// stderr, at most 1 MiB.
    #[serde(with = "bytes_base64")]
    pub stderr: Vec<u8>,
    /// Output was cut at the limit.
    pub truncated: bool,
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// It ran past the time limit and was killed.
    pub timed_out: bool,
}

/// When [`Driver::stdin`] stops collecting output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdinWait {
    /// Once some output came, it counts as complete after this long with
    /// no more.
    pub quiet: Duration,
    /// Give up waiting (returning what came so far) after this long.
    pub timeout: Duration,
}

/// Resource usage counters of a replica, read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReplicaStats {
    /// CPU time used since it started, in ns.
    pub cpu_ns: u64,
    /// Memory in use now (without the reclaimable page cache), in bytes.
    pub memory_bytes: u64,
    /// Bytes received on its network interfaces.
    pub rx_bytes: u64,
    /// Bytes sent on its network interfaces.
    pub tx_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// When read, in ms since the epoch.
    pub at_ms: i64,
}

/// Everything that can go wrong in a driver call.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No replica with that id.
    #[error("replica {0} not found")]
    NotFound(String),
    /// The replica has exited; the call needs it running.
    #[error("replica {0} is not running")]
    NotRunning(String),
    /// The spec cannot be run (bad id, argv, limits...).
    #[error("invalid replica spec: {0}")]
    Invalid(String),
    /// The replica cannot take stdin (created without [`ReplicaSpec::stdin`]).
    #[error("replica {0} was not started with stdin")]
    NoStdin(String),
    /// Anything else: the message says what failed and why.
    #[error("{0}")]
    Failed(String),
}

/// Makes, observes and removes replicas. See the module docs.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// A short name for logs and `/healthz` ("sandbox", "docker", ...).
    fn name(&self) -> &'static str;

    /// Creates and starts a replica; returns once its process runs.
    async fn create(&self, spec: &ReplicaSpec) -> Result<ReplicaInfo, DriverError>;

    /// Every replica this driver has, running or exited, including those
    /// created by an earlier process.
    async fn list(&self) -> Result<Vec<ReplicaInfo>, DriverError>;

    /// One replica.
    async fn inspect(&self, id: &str) -> Result<ReplicaInfo, DriverError>;

    /// Stops a replica: `SIGTERM`, then `SIGKILL` once `grace` has passed
    /// (zero: `SIGKILL` at once). Returns once it has exited; already
    /// exited is success. The replica stays until [`Driver::remove`].
    async fn stop(&self, id: &str, grace: Duration) -> Result<Exit, DriverError>;

    /// Kills what still runs and removes every trace of the replica
    /// (processes, cgroup, network, files). Unknown ids are success.
    async fn remove(&self, id: &str) -> Result<(), DriverError>;

    /// Runs `argv` in the replica (its namespaces, cgroup, user), with `env`
    /// added, killed after `timeout`.
    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecResult, DriverError>;

    /// Writes `input` to the replica's stdin and returns the stdout lines it
    /// wrote after that, joined with newlines, collected as `wait` says.
    /// One stdin exchange per replica at a time.
    async fn stdin(&self, id: &str, input: &[u8], wait: StdinWait) -> Result<String, DriverError>;

    /// The replica's output lines after line `after` (0: from the first one
    /// still buffered), then live ones as they come, then
    /// [`OutputEvent::End`] once it has exited. The channel closes after
    /// `End`, or if the driver loses the replica.
    async fn follow(
        &self,
        id: &str,
        after: u64,
    ) -> Result<mpsc::Receiver<OutputEvent>, DriverError>;

    /// Resource usage counters now.
    async fn stats(&self, id: &str) -> Result<ReplicaStats, DriverError>;

    /// Repairs what the driver keeps on the host for all its replicas (the
    /// sandbox driver: its packet filter and egress rules), undoing what was
    /// changed behind its back. The controller calls it at start and then
    /// every few seconds. Default: nothing to repair.
    async fn resync(&self) -> Result<(), DriverError> {
        Ok(())
    }

    /// The connections replicas tried and their [`ReplicaSpec::network`]
    /// refused, since the last call (each source, destination and port
    /// once). Default: none are recorded.
    async fn take_refusals(&self) -> Result<Vec<Refusal>, DriverError> {
        Ok(Vec::new())
    }
}

/// A connection a replica tried and its network policy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The replica.
    pub replica: String,
    /// Where it tried to go.
    pub destination: SocketAddr,
}

/// Bytes as base64 text inside JSON.
mod bytes_base64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// Whether `id` may name a replica: `[a-z0-9_-]`, 1 to 64 bytes.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
