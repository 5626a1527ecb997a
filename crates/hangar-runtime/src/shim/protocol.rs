//! What the sandbox driver and a shim say to each other: the replica's
//! configuration file, and newline-delimited JSON over the shim's Unix socket
//! (one request per connection; one reply, or a stream of them for
//! [`Request::Follow`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::driver::{
    DriverError, ExecResult, Exit, OutputEvent, ReplicaInfo, ReplicaSpec, ReplicaStats,
};
use crate::sandbox::{Network, SandboxSpec};

/// The shim's configuration, written by the driver as [`CONFIG_FILE`] in the
/// shim's directory before it starts the shim (owner-only: it holds the
/// replica's environment).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    /// The replica.
    pub spec: ReplicaSpec,
    /// [`crate::sandbox::Sandboxes`]' state dir.
    pub sandboxes_dir: PathBuf,
    /// [`crate::sandbox::Sandboxes`]' cgroup parent.
    pub cgroup_parent: PathBuf,
    /// Its network.
    pub network: ShimNetwork,
    /// The shim's socket: in a short directory of its own under `/run`, as
    /// a socket path must fit in 108 bytes and data dirs can be deep.
    pub socket: PathBuf,
}

/// How a replica is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ShimNetwork {
    /// Its own namespace on the CNI bridge; reached at its IP and
    /// [`ReplicaSpec::port`].
    Bridge,
    /// The host's network; reached at `127.0.0.1:port` (`PORT` is set to it).
    Host {
        /// The port allocated to it.
        port: u16,
    },
}

impl ShimConfig {
    /// The sandbox spec the replica runs with (also what exec needs).
    pub fn sandbox_spec(&self) -> SandboxSpec {
        let spec = &self.spec;
        let mut sandbox = SandboxSpec::new(spec.id.clone(), spec.argv.clone());
        for (key, value) in &spec.env {
            match sandbox.env.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1.clone_from(value),
                None => sandbox.env.push((key.clone(), value.clone())),
            }
        }
        sandbox.network = match self.network {
            ShimNetwork::Bridge => Network::Bridge,
            ShimNetwork::Host { port } => {
                sandbox.env.retain(|(key, _)| key != "PORT");
                sandbox.env.push(("PORT".to_owned(), port.to_string()));
                Network::Host
            }
        };
        sandbox.cwd = PathBuf::from(&spec.cwd);
        sandbox.app.clone_from(&spec.app);
        sandbox.app_writable = spec.app_writable;
        sandbox.rootfs.clone_from(&spec.rootfs);
        if let Some(user) = spec.user {
            sandbox.uid = user.uid;
            sandbox.gid = user.gid;
        }
        sandbox.cpu_millis = spec.cpu_millis;
        sandbox.cpu_limit_millis = spec.cpu_limit_millis;
        sandbox.memory_limit_bytes = spec.memory_limit_bytes;
        sandbox.pids_limit = spec.pids_limit;
        sandbox.network_policy.clone_from(&spec.network);
        sandbox
    }
}

/// The configuration file in a shim's directory.
pub const CONFIG_FILE: &str = "replica.json";
/// The shim's own log in its directory.
pub const LOG_FILE: &str = "shim.log";

/// A request to a shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answered with [`Reply::Info`].
    Status,
    /// Terminate (then kill after `grace_ms`); answered with [`Reply::Stopped`].
    Stop {
        /// The grace period.
        grace_ms: u64,
    },
    /// Answered with a stream of [`Reply::Event`].
    Follow {
        /// Send lines after this one.
        after: u64,
    },
    /// Write to stdin; answered with [`Reply::Output`].
    Stdin {
        /// What to write.
        input: String,
        /// Output counts as complete after this long without more.
        quiet_ms: u64,
        /// Stop waiting after this long.
        timeout_ms: u64,
    },
    /// Answered with [`Reply::Stats`].
    Stats,
    /// Kill, remove the sandbox and the shim's directory, and exit; answered
    /// with [`Reply::Deleted`] just before the shim exits.
    Delete,
}

/// What [`crate::SandboxDriver`] sends `hangar shim exec` on its stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The command.
    pub argv: Vec<String>,
    /// Added environment.
    pub env: Vec<(String, String)>,
    /// Killed after this long.
    pub timeout_ms: u64,
}

/// A shim's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The replica now (also the start handshake).
    Info(ReplicaInfo),
    /// How it ended.
    Stopped(Exit),
    /// One event of a follow stream.
    Event(OutputEvent),
    /// What stdin produced.
    Output(String),
    /// Counters.
    Stats(ReplicaStats),
    /// Gone.
    Deleted,
    /// What `hangar shim exec` ran.
    Exec(ExecResult),
    /// The request failed.
    Error {
        /// Which kind of failure.
        kind: ErrorKind,
        /// What and why.
        message: String,
    },
}

/// [`DriverError`]'s variants, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// [`DriverError::NotRunning`].
    NotRunning,
    /// [`DriverError::Invalid`].
    Invalid,
    /// [`DriverError::NoStdin`].
    NoStdin,
    /// [`DriverError::Failed`].
    Failed,
}

impl Reply {
    /// The reply for a failed request.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Error {
            kind,
            message: message.into(),
        }
    }

    /// A [`Reply::Error`] as the driver's error for replica `id`.
    pub fn into_error(kind: ErrorKind, message: String, id: &str) -> DriverError {
        match kind {
            ErrorKind::NotRunning => DriverError::NotRunning(id.to_owned()),
            ErrorKind::Invalid => DriverError::Invalid(message),
            ErrorKind::NoStdin => DriverError::NoStdin(id.to_owned()),
            ErrorKind::Failed => DriverError::Failed(message),
        }
    }
}
