//! `hangar shim`: one small process per replica, like `containerd-shim`.
//!
//! Why a process of its own: libcontainer forks with a raw `clone3` and
//! `chdir`s the calling process, which is only safe in a single-threaded
//! process — not in the tokio daemon. And the replica's stdio pipes and exit
//! status need an owner that outlives `hangar serve`: the shim runs in its own
//! session, so a restart (or a `kill -9`) of the daemon leaves replicas
//! running, and the next daemon finds the shims again by their directories
//! and sockets ([`crate::SandboxDriver`]).
//!
//! ```text
//! hangar shim run <dir>      <dir>/replica.json → sandbox created and started
//!   stdout: one handshake line (Reply::Info or Reply::Error), then /dev/null
//!   ShimConfig::socket       requests (protocol), one per connection
//!   <dir>/shim.log           the shim's own log (never fd 1 or 2)
//! hangar shim exec <dir>     ExecRequest on stdin → Reply::Exec on stdout
//! hangar shim cleanup <dir>  removes the sandbox and <dir> when the shim is gone
//! ```
//!
//! # Inside the shim
//!
//! Single-threaded until the sandbox has started (checked), then a tokio
//! *current-thread* runtime: no libcontainer call forks after that, so
//! threads would be safe, but one is plenty. It reads stdout and stderr into
//! numbered lines kept in a bounded buffer ([`BUFFER_LINES`] lines,
//! [`BUFFER_BYTES`] bytes) and broadcast to followers; it reaps the init
//! process on `SIGCHLD` and records its exit and whether the OOM killer
//! ended it. The buffer is what carries output across a daemon restart: a
//! daemon that was away for longer than the buffer lasts gets a
//! [`OutputEvent::Gap`]. While a daemon follows, the shim reads the pipes no
//! faster than it takes the lines (a replica that logs faster than they are
//! stored waits on its writes instead of losing lines), unless the follower
//! takes nothing for seconds. A shim exits only after [`Request::Delete`].
//!
//! Exec runs in a process of its own too (`hangar shim exec`, started by the
//! driver), so a long exec never holds up the shim's pipes and a shim never
//! forks while it has more than one thread.

pub mod protocol;
mod server;

use std::fs::{self, File};
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use crate::driver::{now_ms, DriverError, ExecResult, ReplicaInfo};
use crate::sandbox::{error_chain, SandboxStdio, Sandboxes, StdioPipes};
use protocol::{ErrorKind, ExecRequest, Reply, ShimConfig, CONFIG_FILE};

/// Output lines a shim keeps for followers that are not there yet.
pub const BUFFER_LINES: usize = 10_000;
/// Bytes of output text a shim keeps, at most.
pub const BUFFER_BYTES: usize = 8 << 20;

/// Reads the shim's configuration from `dir`.
pub fn read_config(dir: &Path) -> Result<ShimConfig, DriverError> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read(&path)
        .map_err(|err| DriverError::Failed(format!("cannot read {}: {err}", path.display())))?;
    serde_json::from_slice(&text)
        .map_err(|err| DriverError::Failed(format!("cannot parse {}: {err}", path.display())))
}

/// `hangar shim run <dir>`: creates and starts the replica, answers the
/// handshake on stdout, then serves requests until deleted. Returns the
/// process's exit code.
pub fn run(dir: &Path) -> i32 {
    // Its own session: signals to the daemon's process group (a terminal's
    // Ctrl-C) do not reach it.
    let _ = nix::unistd::setsid();
    let started = start(dir);
    let reply = match &started {
        Ok((_, info, _)) => Reply::Info(info.clone()),
        Err(err) => Reply::error(ErrorKind::Failed, err.to_string()),
    };
    let mut stdout = io::stdout().lock();
    let handshake = serde_json::to_string(&reply).unwrap_or_default();
    let _ = writeln!(stdout, "{handshake}").and_then(|()| stdout.flush());
    drop(stdout);
    // From now on fd 1 goes nowhere: the daemon that read the handshake may
    // be gone any time.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 2);
    }
    let Ok((parts, info, config)) = started else {
        tracing::error!("the replica did not start");
        return 1;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the shim's runtime; killing the replica");
            let sandbox = parts.sandbox;
            let _ = sandbox.delete();
            return 1;
        }
    };
    runtime.block_on(server::serve(dir.to_path_buf(), config, info, parts))
}

/// What [`start`] hands the server.
pub(crate) struct Started {
    pub sandbox: crate::sandbox::Sandbox,
    pub pipes: StdioPipes,
    pub stdin: Option<File>,
    pub listener: UnixListener,
}

fn start(dir: &Path) -> Result<(Started, ReplicaInfo, ShimConfig), DriverError> {
    let failed = |what: &str, err: &dyn std::fmt::Display| {
        DriverError::Failed(format!("shim: cannot {what}: {err}"))
    };
    let threads = fs::read_dir("/proc/self/task")
        .map_err(|err| failed("count its threads", &err))?
        .count();
    if threads != 1 {
        return Err(DriverError::Failed(format!(
            "shim: {threads} threads before creating the sandbox; libcontainer needs one"
        )));
    }
    let config = read_config(dir)?;
    let socket = &config.socket;
    let _ = fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|err| failed("bind its socket", &err))?;
    listener
        .set_nonblocking(true)
        .map_err(|err| failed("configure its socket", &err))?;

    let sandboxes = Sandboxes::new(&config.sandboxes_dir, &config.cgroup_parent)
        .map_err(|err| DriverError::Invalid(error_chain(&err)))?;
    let spec = config.sandbox_spec();
    let (pipes, mut stdio) =
        SandboxStdio::pipes().map_err(|err| failed("create stdio pipes", &err))?;
    let stdin = if config.spec.stdin {
        let (read, write) =
            pipe2(OFlag::O_CLOEXEC).map_err(|err| failed("create the stdin pipe", &err))?;
        stdio.stdin = Some(read);
        Some(File::from(write))
    } else {
        None
    };
    let mut sandbox = sandboxes.create(&spec, stdio).map_err(|err| match err {
        crate::sandbox::SandboxError::InvalidSpec { .. }
        | crate::sandbox::SandboxError::InvalidId { .. } => DriverError::Invalid(error_chain(&err)),
        _ => DriverError::Failed(error_chain(&err)),
    })?;
    if let Err(err) = sandbox.start() {
        let message = error_chain(&err);
        let _ = sandbox.delete();
        return Err(DriverError::Failed(message));
    }
    let address = match config.network {
        protocol::ShimNetwork::Bridge => sandbox
            .ip()
            .zip(config.spec.port)
            .map(|(ip, port)| std::net::SocketAddr::new(ip, port)),
        protocol::ShimNetwork::Host { port } => {
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        }
    };
    let info = ReplicaInfo {
        id: config.spec.id.clone(),
        labels: config.spec.labels.clone(),
        address,
        pid: u32::try_from(sandbox.pid().as_raw()).unwrap_or(0),
        started_at_ms: now_ms(),
        exit: None,
        output_seq: 0,
    };
    Ok((
        Started {
            sandbox,
            pipes,
            stdin,
            listener,
        },
        info,
        config,
    ))
}

/// `hangar shim exec <dir>`: reads an [`ExecRequest`] line from stdin, runs
/// it in the replica, writes a [`Reply::Exec`] (or [`Reply::Error`]) line to
/// stdout. Output bytes travel as base64 inside the JSON.
pub fn exec(dir: &Path) -> i32 {
    let reply = match run_exec(dir) {
        Ok(result) => Reply::Exec(result),
        Err(err) => {
            let kind = match err {
                DriverError::NotRunning(_) => ErrorKind::NotRunning,
                DriverError::Invalid(_) => ErrorKind::Invalid,
                _ => ErrorKind::Failed,
            };
            Reply::error(kind, err.to_string())
        }
    };
    let line = serde_json::to_string(&reply).unwrap_or_default();
    let mut stdout = io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn run_exec(dir: &Path) -> Result<ExecResult, DriverError> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| DriverError::Failed(format!("cannot read the exec request: {err}")))?;
    let request: ExecRequest = serde_json::from_str(&line)
        .map_err(|err| DriverError::Invalid(format!("bad exec request: {err}")))?;
    let config = read_config(dir)?;
    let sandboxes = Sandboxes::new(&config.sandboxes_dir, &config.cgroup_parent)
        .map_err(|err| DriverError::Failed(error_chain(&err)))?;
    let spec = config.sandbox_spec();
    let output = sandboxes
        .exec(
            &spec,
            &request.argv,
            &request.env,
            Duration::from_millis(request.timeout_ms),
        )
        .map_err(|err| match err {
            crate::sandbox::SandboxError::NotRunning { id } => DriverError::NotRunning(id),
            crate::sandbox::SandboxError::InvalidSpec { .. } => {
                DriverError::Invalid(error_chain(&err))
            }
            other => DriverError::Failed(error_chain(&other)),
        });
    let output = match output {
        Ok(output) => output,
        Err(DriverError::Failed(chain)) => {
            return unstartable(&chain).ok_or(DriverError::Failed(chain))
        }
        Err(err) => return Err(err),
    };
    Ok(ExecResult {
        stdout: output.stdout,
        stderr: output.stderr,
        truncated: output.stdout_truncated || output.stderr_truncated,
        code: output.status.code(),
        timed_out: output.timed_out,
    })
}

/// A program the sandbox could not start — not in the replica's `PATH`, or
/// not executable — answered as a shell answers it: exit status 127 or 126,
/// and why on stderr. It is the caller's command that is wrong, not the
/// replica. `chain` is the exec's error chain; libcontainer (0.7) checks
/// the program in the replica before it execs, and says so in these words.
fn unstartable(chain: &str) -> Option<ExecResult> {
    let code = if chain.contains("not found in $PATH") {
        127
    } else if chain.contains("does not have correct permissions") {
        126
    } else {
        return None;
    };
    let start = chain.find("executable '")?;
    let reason = chain[start..].split(": ").next().unwrap_or_default();
    Some(ExecResult {
        stdout: Vec::new(),
        stderr: format!("hangar: {reason}\n").into_bytes(),
        truncated: false,
        code: Some(code),
        timed_out: false,
    })
}

/// `hangar shim cleanup <dir>`: removes a replica's sandbox (killing what
/// still runs) and the shim's directory. Meant for a replica whose shim is
/// gone; a shim of `dir` still running is killed first, or it would linger
/// with nothing left to watch.
pub fn cleanup(dir: &Path) -> i32 {
    kill_shims_of(dir);
    let result = read_config(dir).and_then(|config| {
        let _ = fs::remove_file(&config.socket);
        let sandboxes = Sandboxes::new(&config.sandboxes_dir, &config.cgroup_parent)
            .map_err(|err| DriverError::Failed(error_chain(&err)))?;
        sandboxes
            .remove(&config.spec.id)
            .map_err(|err| DriverError::Failed(error_chain(&err)))
    });
    let result = result.and_then(|()| {
        fs::remove_dir_all(dir)
            .map_err(|err| DriverError::Failed(format!("cannot remove {}: {err}", dir.display())))
    });
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("{err}");
            1
        }
    }
}

/// SIGKILLs the `hangar shim run <dir>` processes of `dir`, found by their
/// command lines.
fn kill_shims_of(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let runs_dir = args.windows(3).any(|w| {
            w[0] == b"shim"
                && w[1] == b"run"
                && std::str::from_utf8(w[2]).is_ok_and(|arg| {
                    let arg = Path::new(arg);
                    arg == dir || arg.canonicalize().is_ok_and(|a| a == dir)
                })
        });
        if runs_dir && pid != std::process::id() as i32 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_cannot_start_is_an_exit_status_like_a_shells() {
        let missing = "container: create the tenant: executable 'python' not found in $PATH";
        let result = unstartable(missing).expect("an exit status");
        assert_eq!(result.code, Some(127));
        assert_eq!(
            String::from_utf8_lossy(&result.stderr),
            "hangar: executable 'python' not found in $PATH\n"
        );
        let denied =
            "x: executable 'run' at path '\"/app/run\"' does not have correct permissions: y";
        assert_eq!(unstartable(denied).and_then(|r| r.code), Some(126));
        assert!(unstartable("container: out of memory").is_none());
    }
}
