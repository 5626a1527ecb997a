//! The sandbox's PID 1: a tiny init, like Docker's `--init` (tini), that
//! starts `spec.argv` as its only child and stays in front of it.
//!
//! Why: PID 1 of a pid namespace only receives the signals it installed a
//! handler for, so an agent that never installed one (a plain Python HTTP
//! server) ignored the `SIGTERM` of a graceful stop and was `SIGKILL`ed only
//! after the whole grace period. Orphans are re-parented to PID 1 as well,
//! and an agent that never waits for children it did not start leaves them
//! as zombies until the pids limit is reached.
//!
//! What it does:
//!
//! * blocks the signals below and takes them with `sigwait` (blocked signals
//!   reach PID 1 whatever their disposition): `SIGTERM`, `SIGINT`, `SIGHUP`,
//!   `SIGQUIT` and `SIGWINCH` go to the agent's process group — what a
//!   terminal or a stop delivers to a whole job, so the workers a shell
//!   wrapper started hear it too — and `SIGUSR1`/`SIGUSR2`, messages to a
//!   program rather than a job, to the agent alone;
//! * reaps every child on `SIGCHLD`;
//! * once the agent has ended, reports exactly how (exit code or signal)
//!   through a pipe to the sandbox's creator ([`read_report`]) and exits
//!   with the shell's convention (the code, or 128 + the signal): PID 1
//!   cannot die by a signal it sends itself, so its own status alone would
//!   turn "killed by `SIGTERM`" into "exited 143".
//!
//! # Not a program in the sandbox
//!
//! The init is not exec'd from a file: it is libcontainer's own init process
//! (a fork of the caller, already in the sandbox's namespaces and cgroup,
//! with the sandbox's identity, capabilities, `no_new_privs`, rlimits,
//! working directory, environment and stdio) that, instead of exec'ing
//! `spec.argv`, runs [`InitExecutor::exec`]. So nothing is mounted into the
//! sandbox's root, it works in an image root without the host's C library,
//! and the argv is still checked (found in `PATH`, executable) at create
//! time, as libcontainer's default executor does. The agent itself is
//! exec'd as before, with the signal mask cleared and `SIGPIPE` at its
//! default (the caller, a Rust program, ignores it).
//!
//! It never spawns threads or touches tokio: its whole life is one `sigwait`
//! loop in a process that was single-threaded when libcontainer forked it.
//! It never returns into libcontainer or the caller's code either; it exits.
//! It writes nothing to the sandbox's stdio but a failure to start the agent
//! (like a shell's "not found", code 127 or 126), and keeps no descriptor
//! the caller had open (stdin's pipe, the cgroup lock, sockets).

use std::ffi::CString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::ExitStatus;

/// Forwarded to the agent's whole process group.
const TO_GROUP: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGWINCH,
];

/// Forwarded to the agent alone.
const TO_AGENT: [Signal; 2] = [Signal::SIGUSR1, Signal::SIGUSR2];

/// What the init leaves in its report pipe: a tag and the code or signal
/// number, little-endian.
const REPORT_LEN: usize = 5;
const EXITED: u8 = b'E';
const SIGNALED: u8 = b'S';

/// The libcontainer executor that makes the sandbox's init process the init
/// described in the module docs. Cloned into the init process by the fork;
/// `report` is the write end of the pipe [`read_report`] reads.
#[derive(Clone)]
pub(super) struct InitExecutor {
    pub report: Arc<OwnedFd>,
}

impl Executor for InitExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let argv = spec
            .process()
            .as_ref()
            .and_then(|process| process.args().as_ref())
            .filter(|args| !args.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let code = run(argv, &self.report);
        // Never back into libcontainer: this process is the sandbox's PID 1
        // and ends with its agent.
        std::process::exit(code)
    }

    /// The agent's argv is checked exactly as libcontainer checks what it
    /// execs (found in the spec's `PATH`, executable), so a bad program
    /// still fails the create rather than the start.
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// The signals the init takes with `sigwait`.
fn handled() -> SigSet {
    let mut signals = SigSet::empty();
    for signal in TO_GROUP.iter().chain(&TO_AGENT) {
        signals.add(*signal);
    }
    signals.add(Signal::SIGCHLD);
    signals
}

/// The calling thread's signal mask with the init's signals blocked, until
/// dropped. Held while libcontainer forks the init, which inherits the mask:
/// a signal sent between [`super::Sandbox::start`] and the init's first
/// `sigwait` then waits, pending, instead of being dropped (PID 1 has no
/// handler for it).
pub(super) struct InitSignalsBlocked(Option<SigSet>);

impl InitSignalsBlocked {
    pub fn new() -> Result<Self, Errno> {
        handled()
            .thread_swap_mask(SigmaskHow::SIG_BLOCK)
            .map(|before| Self(Some(before)))
    }
}

impl Drop for InitSignalsBlocked {
    fn drop(&mut self) {
        if let Some(before) = self.0.take() {
            let _ = before.thread_set_mask();
        }
    }
}

/// Runs `argv` as the init's child until it ends; returns the init's exit
/// code.
fn run(argv: &[String], report: &OwnedFd) -> i32 {
    let signals = handled();
    // Blocked since the fork already ([`InitSignalsBlocked`]); again in case
    // a caller did not: a signal or an exit before `sigwait` stays pending.
    if let Err(errno) = signals.thread_block() {
        return fail_to_start(&argv[0], &std::io::Error::from(errno));
    }
    close_inherited(report.as_raw_fd());

    let agent = match spawn(argv) {
        Ok(pid) => pid,
        Err(errno) => return fail_to_start(&argv[0], &std::io::Error::from(errno)),
    };
    // Only the agent holds the sandbox's stdio from now on: when it closes
    // stdin, a writer sees the pipe closed as before.
    for fd in 0..=2 {
        let _ = nix::unistd::close(fd);
    }

    let status = loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(signal) => forward(agent, signal),
        }
        if let Some(status) = reap(agent) {
            break status;
        }
    };
    let (tag, value, code) = match status {
        ExitStatus::Exited(code) => (EXITED, code, code),
        ExitStatus::Signaled(signal) => (SIGNALED, signal as i32, 128 + signal as i32),
    };
    let mut message = [0_u8; REPORT_LEN];
    message[0] = tag;
    message[1..].copy_from_slice(&value.to_le_bytes());
    let _ = nix::unistd::write(report.as_fd(), &message);
    code
}

/// Starts `argv` (looked up in `PATH` as `execvp` does) with this process's
/// environment, in a process group of its own, so forwarding to the group
/// never signals the init itself (libcontainer made it a session and group
/// leader), and with an empty signal mask: `posix_spawnp` rather than std's
/// `Command`, which would pass on the signals blocked here. Signal
/// dispositions are passed on as they are, as libcontainer's own exec did.
fn spawn(argv: &[String]) -> Result<Pid, Errno> {
    use nix_spawn::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
    let cstring = |text: &[u8]| CString::new(text).map_err(|_| Errno::EINVAL);
    let args = argv
        .iter()
        .map(|arg| cstring(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    #[allow(
        clippy::disallowed_methods,
        reason = "not a setting: the sandbox's environment, as libcontainer set it up for the \
                  program (the spec's, plus HOME), passed on whole"
    )]
    let env = std::env::vars_os()
        .map(|(key, value)| {
            let mut pair = key.into_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            cstring(&pair)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let failed = |errno: nix_spawn::errno::Errno| Errno::from_raw(errno as i32);
    let mut attr = PosixSpawnAttr::init().map_err(failed)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK,
    )
    .map_err(failed)?;
    attr.set_pgroup(nix_spawn::unistd::Pid::from_raw(0))
        .map_err(failed)?;
    attr.set_sigmask(&nix_spawn::sys::signal::SigSet::empty())
        .map_err(failed)?;
    let actions = PosixSpawnFileActions::init().map_err(failed)?;
    posix_spawnp(&args[0], &actions, &attr, &args, &env)
        .map(|pid| Pid::from_raw(pid.as_raw()))
        .map_err(failed)
}

/// Says on the sandbox's stderr that `program` could not be started, as a
/// shell would; returns the shell's code for it.
fn fail_to_start(program: &str, err: &std::io::Error) -> i32 {
    let _ = writeln!(
        std::io::stderr(),
        "hangar init: cannot run {program}: {err}"
    );
    if err.kind() == ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// Closes every descriptor above stdio the caller had open when
/// libcontainer forked it (marked close-on-exec, but this process never
/// execs), except `keep`.
fn close_inherited(keep: RawFd) {
    let listed: Option<Vec<RawFd>> = std::fs::read_dir("/proc/self/fd").ok().map(|dir| {
        dir.flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .collect()
    });
    // The directory's own descriptor is closed by now: closing it again
    // fails harmlessly.
    let fds = listed.unwrap_or_else(|| (3..1024).collect());
    for fd in fds.into_iter().filter(|fd| *fd > 2 && *fd != keep) {
        let _ = nix::unistd::close(fd);
    }
}

fn forward(agent: Pid, signal: Signal) {
    let sent = if TO_AGENT.contains(&signal) {
        kill(agent, signal)
    } else {
        killpg(agent, signal)
    };
    if sent == Err(Errno::ESRCH) {
        // The group may be gone while the agent is not reaped yet.
        let _ = kill(agent, signal);
    }
}

/// Reaps every child that has ended; the agent's status once it has.
fn reap(agent: Pid) -> Option<ExitStatus> {
    let mut ended = None;
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => {
                ended = Some(ExitStatus::Exited(code));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == agent => {
                ended = Some(ExitStatus::Signaled(signal));
            }
            // Another orphan reaped, or interrupted: look again.
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(Errno::EINTR) => {}
            // Nothing more has ended (or no child is left at all).
            Ok(_) | Err(_) => return ended,
        }
    }
}

/// How the agent ended, from the init's report pipe (non-blocking); `None`
/// when the init wrote nothing (it was killed first, or never started the
/// agent).
pub(super) fn read_report(pipe: &mut File) -> Option<ExitStatus> {
    let mut message = [0_u8; REPORT_LEN];
    let mut filled = 0;
    while filled < REPORT_LEN {
        match pipe.read(&mut message[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if filled != REPORT_LEN {
        return None;
    }
    let value = i32::from_le_bytes([message[1], message[2], message[3], message[4]]);
    match message[0] {
        EXITED => Some(ExitStatus::Exited(value)),
        SIGNALED => Signal::try_from(value).ok().map(ExitStatus::Signaled),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::OFlag;

    fn round_trip(status: ExitStatus) -> Option<ExitStatus> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).expect("pipe");
        let (tag, value) = match status {
            ExitStatus::Exited(code) => (EXITED, code),
            ExitStatus::Signaled(signal) => (SIGNALED, signal as i32),
        };
        let mut message = vec![tag];
        message.extend_from_slice(&value.to_le_bytes());
        File::from(write).write_all(&message).expect("write");
        read_report(&mut File::from(read))
    }

    #[test]
    fn reports_read_back_exactly() {
        for status in [
            ExitStatus::Exited(0),
            ExitStatus::Exited(143),
            ExitStatus::Signaled(Signal::SIGTERM),
            ExitStatus::Signaled(Signal::SIGKILL),
        ] {
            assert_eq!(round_trip(status), Some(status));
        }
    }

    #[test]
    fn no_report_is_none() {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).expect("pipe");
        let mut read = File::from(read);
        assert_eq!(read_report(&mut read), None, "nothing written yet");
        File::from(write).write_all(b"E\x01").expect("write");
        assert_eq!(read_report(&mut read), None, "a torn report");
    }
}
