//! Running one more process in a running sandbox: [`super::Sandbox::exec`].
//!
//! The process is a libcontainer *tenant*: it joins the sandbox init's
//! namespaces and cgroup, and is set up from a `process.json` built exactly
//! like the init's process (same uid and gid with no other groups, no
//! capabilities, `no_new_privs`, the same rlimits, the sandbox's `cwd`), with
//! the argv replaced and the environment extended. Like the init, it becomes
//! a child of the caller (libcontainer's intermediate process clones it with
//! `CLONE_PARENT`), which is how it is waited for and reaped here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{
    cleanup, io_error, spec, ExitStatus, Sandbox, SandboxError, SandboxSpec, SandboxStdio,
    Sandboxes,
};

/// The most of each of stdout and stderr that [`Sandbox::exec`] keeps.
pub const EXEC_OUTPUT_LIMIT: usize = 1 << 20;

/// How long the output loop waits on the pipes before it checks whether the
/// process has exited (its pipes can outlive it, held by a background child).
const EXEC_POLL: Duration = Duration::from_millis(10);

/// The `process.json` written for each exec, next to the bundle.
const PROCESS_FILE: &str = "exec-process.json";

/// Held while an exec is set up (see [`Sandboxes::exec`]).
const EXEC_LOCK_FILE: &str = "exec.lock";

/// What libcontainer names the notify socket it binds for each exec.
const TENANT_NOTIFY_PREFIX: &str = "tenant-notify-";

/// What an exec'd process printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its stdout, at most [`EXEC_OUTPUT_LIMIT`] bytes.
    pub stdout: Vec<u8>,
    /// Its stderr, at most [`EXEC_OUTPUT_LIMIT`] bytes.
    pub stderr: Vec<u8>,
    /// stdout went over the limit: the rest was read and thrown away.
    pub stdout_truncated: bool,
    /// stderr went over the limit: the rest was read and thrown away.
    pub stderr_truncated: bool,
    /// How it ended; `Signaled(SIGKILL)` when it timed out.
    pub status: ExitStatus,
    /// It was still running at the timeout and was killed.
    pub timed_out: bool,
}

/// One captured stream: a non-blocking pipe read end and what came out.
struct Capture {
    pipe: Option<File>,
    data: Vec<u8>,
    truncated: bool,
}

impl Capture {
    fn new(pipe: File) -> io::Result<Self> {
        let flags = OFlag::from_bits_truncate(fcntl(pipe.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            pipe.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        Ok(Self {
            pipe: Some(pipe),
            data: Vec::new(),
            truncated: false,
        })
    }

    /// Reads what is there, up to `budget` bytes; closes the pipe at EOF.
    fn read_available(&mut self, mut budget: usize) -> io::Result<()> {
        let mut buf = [0_u8; 64 << 10];
        while budget > 0 {
            let Some(pipe) = self.pipe.as_mut() else {
                return Ok(());
            };
            match pipe.read(&mut buf) {
                Ok(0) => self.pipe = None,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let room = EXEC_OUTPUT_LIMIT - self.data.len();
                    self.data.extend_from_slice(&buf[..n.min(room)]);
                    self.truncated |= n > room;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

impl Sandbox {
    /// Runs `argv` inside the running sandbox and returns its output and
    /// exit status, killing it if it is still running after `timeout`.
    ///
    /// The process runs in the sandbox's namespaces (it sees the sandbox's
    /// file system and processes) and cgroup (its limits count it), as the
    /// sandbox's uid and gid, with no capabilities, `no_new_privs`, the
    /// sandbox's rlimits and working directory, and the sandbox's
    /// environment with `env` added (replacing variables of the same name).
    /// stdin is `/dev/null`. It is not PID 1 of the sandbox.
    ///
    /// Output: stdout and stderr are read concurrently until the process
    /// exits, so it never blocks on a full pipe. Each keeps its first
    /// [`EXEC_OUTPUT_LIMIT`] bytes; the rest is read and thrown away
    /// (`*_truncated` says so). Once the process has exited, what is in the
    /// pipes is collected and they are closed: a background child it left
    /// behind keeps running in the sandbox, and gets `EPIPE` if it writes.
    ///
    /// Timeout: the timeout counts from the moment the process has exec'd.
    /// Past it the process and its process group (libcontainer makes it a
    /// session leader) get `SIGKILL`; children that left the group survive
    /// in the sandbox until it is deleted. Either way the process itself is
    /// reaped before this returns, and the per-exec files libcontainer and
    /// this method write (a notify socket, `process.json`) are removed.
    ///
    /// A program that cannot be started (missing, not executable) is an
    /// error ([`SandboxError::Container`]), not an exit status.
    ///
    /// # Where it may run
    ///
    /// Like [`super::Sandboxes::create`] and [`Sandbox::start`]: only while
    /// the calling process is effectively single-threaded (libcontainer forks
    /// with a raw `clone3` and `chdir`s the process), and not concurrently
    /// with another exec or create — a failed exec reaps the `youki:[…]`
    /// helper children that appeared while it ran. Blocks for up to
    /// `timeout` (plus the set-up); run it on a thread of its own, away from
    /// an async runtime.
    ///
    /// # Seccomp
    ///
    /// Sandboxes have no seccomp filter yet (and libcontainer is built
    /// without `libseccomp`). When one is added, note that it will not
    /// cover exec: libcontainer rebuilds a tenant's `linux` section from the
    /// namespaces and cgroup path only, so the spec's `seccomp` is dropped
    /// and exec'd processes run unfiltered.
    pub fn exec(
        &self,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        if self.exit.is_some() {
            return Err(SandboxError::NotRunning {
                id: self.id.clone(),
            });
        }
        self.sandboxes.exec(&self.spec, argv, env, timeout)
    }
}

impl Sandboxes {
    /// [`Sandbox::exec`] for a sandbox this process did not create (another
    /// process, such as its shim, holds the [`Sandbox`]): `spec` is the spec
    /// it was created from. The sandbox must be running; its init is found
    /// from libcontainer's state.
    ///
    /// Execs into one sandbox may run concurrently from several processes:
    /// the set-up is serialized with a lock file in the sandbox's directory.
    pub fn exec(
        &self,
        spec: &SandboxSpec,
        argv: &[String],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        let mut process_spec = spec.clone();
        process_spec.argv = argv.to_vec();
        for (key, value) in env {
            match process_spec.env.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1 = value.clone(),
                None => process_spec.env.push((key.clone(), value.clone())),
            }
        }
        process_spec.validate()?;
        let id = spec.id.as_str();
        let dir = self.sandbox_dir(id);
        if !dir.join("runtime").join(id).join("state.json").exists() {
            return Err(SandboxError::NotRunning { id: id.to_owned() });
        }
        let process_file = dir.join(PROCESS_FILE);
        // One exec sets up at a time: the process file and libcontainer's
        // notify sockets are per sandbox, not per exec.
        let lock_path = dir.join(EXEC_LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error(id, "open", &lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, source)| {
            SandboxError::Os {
                id: id.to_owned(),
                action: "lock the exec lock file",
                source,
            }
        })?;
        write_process_file(id, &process_file, &process_spec)?;

        let result = spawn_tenant(id, &dir, &process_file);
        let mut cleanup_error =
            fs::remove_file(&process_file)
                .err()
                .map(io_error(id, "remove", &process_file));
        let runtime = dir.join("runtime").join(id);
        if let Err(err) = remove_notify_sockets(&runtime) {
            cleanup_error.get_or_insert(io_error(id, "clean up", &runtime)(err));
        }
        drop(lock);
        let (pid, pipes) = result?;
        let output = collect(id, pid, pipes, timeout).inspect_err(|_| {
            // Never leave it running or unreaped.
            let _ = signal::kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            cleanup::kill_and_reap(pid);
        })?;
        match cleanup_error {
            Some(err) => Err(err),
            None => Ok(output),
        }
    }
}

/// Starts the tenant process; on failure kills and reaps the helpers it
/// left behind.
fn spawn_tenant(
    id: &str,
    dir: &Path,
    process_file: &Path,
) -> Result<(Pid, [Capture; 2]), SandboxError> {
    let (pipes, stdio) = SandboxStdio::pipes().map_err(io_error(id, "create", "exec pipes"))?;
    let stdin =
        OwnedFd::from(File::open("/dev/null").map_err(io_error(id, "open", "/dev/null"))?);
    let captures = [
        Capture::new(pipes.stdout).map_err(io_error(id, "configure", "exec pipes"))?,
        Capture::new(pipes.stderr).map_err(io_error(id, "configure", "exec pipes"))?,
    ];
    let helpers_before = cleanup::helper_children();
    let built = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
        .with_root_path(dir.join("runtime"))
        .and_then(|builder| {
            builder
                .with_stdin(stdin)
                .with_stdout(stdio.stdout)
                .with_stderr(stdio.stderr)
                .as_tenant()
                .with_process(Some(process_file))
                .with_detach(true)
                .build()
        });
    match built {
        Ok(pid) => Ok((pid, captures)),
        Err(source) => {
            for pid in cleanup::helper_children() {
                if !helpers_before.contains(&pid) {
                    tracing::debug!(sandbox = id, %pid, "reaping helper of a failed exec");
                    cleanup::kill_and_reap(pid);
                }
            }
            Err(SandboxError::Container {
                id: id.to_owned(),
                action: "exec in the container",
                source: Box::new(source),
            })
        }
    }
}

/// Reads both pipes until the process exits or the deadline passes, then
/// reaps it.
fn collect(
    id: &str,
    pid: Pid,
    mut captures: [Capture; 2],
    timeout: Duration,
) -> Result<ExecOutput, SandboxError> {
    let deadline = Instant::now() + timeout;
    let os_error = |action| {
        let id = id.to_owned();
        move |source| SandboxError::Os { id, action, source }
    };
    let read_error = |source: io::Error| SandboxError::Io {
        id: id.to_owned(),
        action: "read the output of",
        path: "the exec'd process".into(),
        source,
    };
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = try_reap(pid).map_err(os_error("wait for the exec'd process"))? {
            break status;
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            // Its process group first, then itself in case it left it.
            let _ = signal::kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            match signal::kill(pid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    return Err(os_error("kill the exec'd process")(source));
                }
            }
            break reap(pid).map_err(os_error("wait for the exec'd process"))?;
        }
        let wait = (deadline - now).min(EXEC_POLL);
        let open: Vec<usize> = (0..2).filter(|&i| captures[i].pipe.is_some()).collect();
        if open.is_empty() {
            // Both pipes closed: the process is exiting (or closed them).
            thread::sleep(wait.min(Duration::from_millis(1)));
            continue;
        }
        let ready = {
            let mut fds: Vec<PollFd> = open
                .iter()
                .map(|&i| {
                    let pipe = captures[i].pipe.as_ref().expect("open pipe");
                    PollFd::new(pipe.as_fd(), PollFlags::POLLIN)
                })
                .collect();
            let millis = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
            match poll(&mut fds, millis) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(source) => return Err(os_error("poll the exec'd process's output")(source)),
            }
            fds.iter()
                .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                .collect::<Vec<_>>()
        };
        for (&i, ready) in open.iter().zip(ready) {
            if ready {
                captures[i]
                    .read_available(EXEC_OUTPUT_LIMIT)
                    .map_err(read_error)?;
            }
        }
    };
    // Whatever the process wrote before it ended is in the pipes now; a
    // child still writing is cut off after one more limit's worth.
    for capture in &mut captures {
        capture
            .read_available(EXEC_OUTPUT_LIMIT)
            .map_err(read_error)?;
    }
    let [stdout, stderr] = captures;
    Ok(ExecOutput {
        stdout: stdout.data,
        stderr: stderr.data,
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        status,
        timed_out,
    })
}

/// Writes `spec`'s OCI process as `path`, readable by the owner only (it
/// holds the environment).
fn write_process_file(
    id: &str,
    path: &Path,
    process_spec: &super::SandboxSpec,
) -> Result<(), SandboxError> {
    let process = spec::process(process_spec).map_err(|source| SandboxError::Spec {
        id: id.to_owned(),
        source,
    })?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(id, "create", path))?;
    serde_json::to_writer(&file, &process)
        .map_err(|err| io_error(id, "write", path)(io::Error::other(err)))
}

/// Removes the notify sockets libcontainer binds for tenants and never
/// removes. Execs do not run concurrently, so every one found is stale.
fn remove_notify_sockets(runtime: &Path) -> io::Result<()> {
    for entry in fs::read_dir(runtime)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(TENANT_NOTIFY_PREFIX))
        {
            match fs::remove_file(entry.path()) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
    }
    Ok(())
}

/// The exit status of child `pid` if it has ended, without blocking.
fn try_reap(pid: Pid) -> Result<Option<ExitStatus>, Errno> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(ExitStatus::Exited(code))),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok(Some(ExitStatus::Signaled(signal)))
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

/// Blocks until child `pid` has ended and reaps it.
fn reap(pid: Pid) -> Result<ExitStatus, Errno> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Exited(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(ExitStatus::Signaled(signal)),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
}
