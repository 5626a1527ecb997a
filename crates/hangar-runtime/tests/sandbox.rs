//! Real sandboxes, run as root: `cargo test -p hangar-runtime` (or
//! `sudo -E cargo test …`). Without root each test prints why it is skipped,
//! unless `CI=true`, where skipping would hide a broken runner: then it fails.
//!
//! The tests hold one lock while they create sandboxes: `libcontainer` forks
//! with a raw `clone3` and `chdir`s the whole process, which is only safe while
//! no other thread is in the middle of the same.
//!
//! `RUST_LOG=debug` shows libcontainer's logs, but note that its init process
//! logs through the same subscriber after it has connected stdio to the
//! sandbox's pipes: those lines land in the sandbox's stdout and break the
//! output assertions.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hangar_runtime::sandbox::{
    cgroup_roots, error_chain, ExecOutput, ExitStatus, Network, Sandbox, SandboxError, SandboxSpec,
    SandboxStdio, Sandboxes, StdioPipes, EXEC_OUTPUT_LIMIT,
};
use nix::sys::signal::Signal;

static SERIAL: Mutex<()> = Mutex::new(());

/// A state dir and a cgroup parent of the test's own, checked to be gone when
/// the test ends.
struct Fixture {
    sandboxes: Sandboxes,
    state_dir: PathBuf,
    cgroup_parent: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    /// `None` (after saying why) when the test cannot run here.
    #[allow(
        clippy::disallowed_methods,
        reason = "CI=true makes a missing prerequisite a failure, not a skip"
    )]
    fn new(name: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            let why = "sandbox tests need root (namespaces, cgroups, mounts)";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}, and CI=true"
            );
            eprintln!("SKIPPED {name}: {why}");
            return None;
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let unique = format!("hangar-test-{}-{name}", std::process::id());
        let state_dir = std::env::temp_dir().join(&unique);
        let cgroup_parent = PathBuf::from("/").join(&unique);
        let sandboxes = Sandboxes::new(&state_dir, &cgroup_parent).expect("valid fixture paths");
        Some(Self {
            sandboxes,
            state_dir,
            cgroup_parent,
            _serial: serial,
        })
    }

    fn create(&self, spec: &SandboxSpec) -> (Sandbox, StdioPipes) {
        let (pipes, stdio) = SandboxStdio::pipes().expect("pipes");
        let sandbox = self
            .sandboxes
            .create(spec, stdio)
            .unwrap_or_else(|err| fail(&err));
        (sandbox, pipes)
    }

    /// Creates, starts and waits for `spec`; returns how it ended and what it
    /// printed. The outputs here are small, so reading stdout to the end
    /// before stderr cannot fill a pipe and deadlock.
    fn run(&self, spec: &SandboxSpec) -> (Sandbox, ExitStatus, String, String) {
        let (mut sandbox, mut pipes) = self.create(spec);
        sandbox.start().unwrap_or_else(|err| fail(&err));
        let (mut stdout, mut stderr) = (String::new(), String::new());
        pipes
            .stdout
            .read_to_string(&mut stdout)
            .expect("read stdout");
        pipes
            .stderr
            .read_to_string(&mut stderr)
            .expect("read stderr");
        let exit = sandbox.wait().unwrap_or_else(|err| fail(&err));
        (sandbox, exit, stdout, stderr)
    }

    /// Asserts nothing of sandbox `id` is left, nor the shared cgroup parent.
    fn assert_gone(&self, id: &str) {
        let dir = self.sandboxes.sandbox_dir(id);
        assert!(!dir.exists(), "{} left behind", dir.display());
        let relative = self.cgroup_parent.strip_prefix("/").expect("absolute");
        for root in cgroup_roots().expect("cgroup mounts") {
            let parent = root.join(relative);
            assert!(!parent.exists(), "cgroup {} left behind", parent.display());
        }
        assert_eq!(zombie_children(), Vec::<String>::new(), "unreaped children");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The state dir itself only holds the lock file once sandboxes are gone.
        let _ = std::fs::remove_file(self.state_dir.join(".cgroups.lock"));
        let _ = std::fs::remove_file(self.state_dir.join(".firewall.lock"));
        let _ = std::fs::remove_dir(&self.state_dir);
    }
}

/// This process's children that have exited but were never waited for.
fn zombie_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("procfs").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces, so split after ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        if fields.next() == Some("Z") && fields.next() == Some(me.as_str()) {
            zombies.push(head.to_owned() + ")");
        }
    }
    zombies
}

fn fail(err: &SandboxError) -> ! {
    panic!("{}", error_chain(err))
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

fn python(id: &str, code: &str) -> SandboxSpec {
    SandboxSpec::new(id, argv(&["/usr/bin/python3", "-c", code]))
}

#[test]
fn python_prints_42_to_the_callers_pipe() {
    let Some(fx) = Fixture::new("py42") else {
        return;
    };
    let (sandbox, exit, stdout, stderr) = fx.run(&python("py42", "print(6*7)"));
    assert_eq!(stdout, "42\n", "stderr: {stderr}");
    assert_eq!(exit, ExitStatus::Exited(0));
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("py42");
}

/// What the process can see and do from inside, reported as `key=value` lines.
const PROBE: &str = r#"
import errno, os, socket, sys
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines())
print("pid=%d" % os.getpid())
print("uid=%d gid=%d" % (os.getuid(), os.getgid()))
print("groups=%s" % os.getgroups())
print("caps=%s" % status["CapEff"].strip())
print("bounding=%s" % status["CapBnd"].strip())
print("no_new_privs=%s" % status["NoNewPrivs"].strip())
print("hostname=%s" % socket.gethostname())
print("procs=%s" % sorted(p for p in os.listdir("/proc") if p.isdigit()))
print("init_fds=%s" % attempt(lambda: os.listdir("/proc/1/fd")))
print("init_exe=%s" % attempt(lambda: open("/proc/1/exe", "rb")))
print("root=%s" % attempt(lambda: os.listdir("/root")))
print("shadow=%s" % attempt(lambda: open("/etc/shadow").read()))
print("write_usr=%s" % attempt(lambda: open("/usr/hangar-probe", "w")))
print("write_etc=%s" % attempt(lambda: open("/etc/hangar-probe", "w")))
print("write_root=%s" % attempt(lambda: open("/hangar-probe", "w")))
print("write_tmp=%s" % attempt(lambda: open("/tmp/hangar-probe", "w").write("x")))
print("state_dir=%s" % attempt(lambda: os.listdir(sys.argv[1])))
print("sys=%s" % os.path.exists("/sys/kernel"))
print("interfaces=%s" % sorted(name for _, name in socket.if_nameindex()))
server = socket.create_server(("127.0.0.1", 0))
print("loopback=%s" % attempt(lambda: socket.create_connection(server.getsockname(), timeout=1)))
print("oops", file=sys.stderr)
sys.exit(3)
"#;

#[test]
fn sandbox_is_isolated_and_unprivileged() {
    let Some(fx) = Fixture::new("probe") else {
        return;
    };
    let state_dir = fx.state_dir.display().to_string();
    let spec = SandboxSpec::new(
        "probe",
        argv(&["/usr/bin/python3", "-c", PROBE, &state_dir]),
    );
    let (sandbox, exit, stdout, stderr) = fx.run(&spec);
    eprintln!("probe stdout:\n{stdout}");
    assert_eq!(stderr, "oops\n");
    assert_eq!(exit, ExitStatus::Exited(3));
    for expected in [
        // The init is PID 1, the program its only child.
        "pid=2",
        "uid=65534 gid=65534",
        "groups=[65534]",
        "caps=0000000000000000",
        "bounding=0000000000000000",
        "no_new_privs=1",
        "hostname=probe",
        "procs=['1', '2']",
        // The init is a fork of the caller that never execs: nothing of it
        // is open to the program (a write to the caller's binary, say).
        "init_fds=EACCES",
        "init_exe=EACCES",
        // Not mounted at all: the host's /root does not exist in the sandbox.
        "root=ENOENT",
        "shadow=EACCES",
        "write_usr=EROFS",
        "write_etc=EROFS",
        "write_root=EROFS",
        "write_tmp=ok",
        "state_dir=ENOENT",
        "sys=False",
        "interfaces=['lo']",
        // Isolated means isolated for now: nothing brings `lo` up yet (the
        // CNI step will), so even loopback connections fail.
        "loopback=ENETUNREACH",
    ] {
        assert!(
            stdout.lines().any(|line| line == expected),
            "expected {expected:?} in:\n{stdout}"
        );
    }
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("probe");
}

#[test]
fn host_network_shares_the_hosts_interfaces() {
    let Some(fx) = Fixture::new("hostnet") else {
        return;
    };
    let mut spec = python(
        "hostnet",
        "import socket; print(len(socket.if_nameindex()))",
    );
    spec.network = Network::Host;
    let host_interfaces = std::fs::read_dir("/sys/class/net").expect("sysfs").count();
    let (sandbox, exit, stdout, stderr) = fx.run(&spec);
    assert!(exit.success(), "{exit:?}: {stderr}");
    assert_eq!(stdout.trim(), host_interfaces.to_string());
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("hostnet");
}

#[test]
fn stop_terminates_then_kills() {
    let Some(fx) = Fixture::new("stop") else {
        return;
    };

    // A workload that handles SIGTERM exits on it.
    let handles_term = python(
        "term",
        "import signal, sys, time\n\
         signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n\
         print('ready', flush=True)\n\
         time.sleep(60)",
    );
    let (mut sandbox, mut pipes) = fx.create(&handles_term);
    sandbox.start().unwrap_or_else(|err| fail(&err));
    let mut ready = [0_u8; 6];
    pipes.stdout.read_exact(&mut ready).expect("ready line");
    assert_eq!(&ready, b"ready\n");
    assert_eq!(sandbox.try_wait().unwrap_or_else(|err| fail(&err)), None);
    let exit = sandbox
        .stop(Duration::from_secs(10))
        .unwrap_or_else(|err| fail(&err));
    assert_eq!(exit, ExitStatus::Exited(0));
    // Idempotent: already gone is success.
    assert_eq!(
        sandbox
            .stop(Duration::ZERO)
            .unwrap_or_else(|err| fail(&err)),
        exit
    );
    sandbox
        .kill(Signal::SIGKILL)
        .unwrap_or_else(|err| fail(&err));
    sandbox.delete().unwrap_or_else(|err| fail(&err));

    // A workload that ignores SIGTERM is killed once the grace is over.
    let ignores_term = python(
        "stubborn",
        "import signal, time\n\
         signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         print('ready', flush=True)\n\
         time.sleep(60)",
    );
    let (mut sandbox, mut pipes) = fx.create(&ignores_term);
    sandbox.start().unwrap_or_else(|err| fail(&err));
    pipes.stdout.read_exact(&mut ready).expect("ready line");
    let exit = sandbox
        .stop(Duration::from_millis(200))
        .unwrap_or_else(|err| fail(&err));
    assert_eq!(exit, ExitStatus::Signaled(Signal::SIGKILL));
    sandbox.delete().unwrap_or_else(|err| fail(&err));

    fx.assert_gone("term");
    fx.assert_gone("stubborn");
}

/// A program that never installed a SIGTERM handler (`sleep`, a plain
/// Python server) ends by the SIGTERM of a stop, long before a grace period
/// that would otherwise have run out: as PID 1 itself, the kernel dropped
/// the signal and only the SIGKILL after the grace ended it.
#[test]
fn stop_ends_a_program_without_a_handler_by_sigterm() {
    let Some(fx) = Fixture::new("noterm") else {
        return;
    };
    for (id, spec) in [
        ("sleep", SandboxSpec::new("sleep", argv(&["sleep", "600"]))),
        (
            "pyserver",
            python(
                "pyserver",
                "import http.server\n\
                 server = http.server.HTTPServer(('127.0.0.1', 8080), http.server.SimpleHTTPRequestHandler)\n\
                 print('ready', flush=True)\n\
                 server.serve_forever()",
            ),
        ),
    ] {
        let (mut sandbox, mut pipes) = fx.create(&spec);
        sandbox.start().unwrap_or_else(|err| fail(&err));
        if id == "pyserver" {
            let mut ready = [0_u8; 6];
            pipes.stdout.read_exact(&mut ready).expect("ready line");
            // The init holds nothing of this process (the stdio pipes, the
            // cgroup lock), only the write end of its report pipe.
            let held = std::fs::read_dir(format!("/proc/{}/fd", sandbox.pid()))
                .expect("the init's fds")
                .count();
            assert_eq!(held, 1, "descriptors the init holds");
        }
        // Far longer than the test may take: only SIGTERM can end it.
        let exit = sandbox
            .stop(Duration::from_secs(600))
            .unwrap_or_else(|err| fail(&err));
        assert_eq!(exit, ExitStatus::Signaled(Signal::SIGTERM), "{id}");
        assert!(!sandbox.oom_killed());
        sandbox.delete().unwrap_or_else(|err| fail(&err));
        fx.assert_gone(id);
    }
}

/// The program's exit code and the signal that killed it are reported as
/// they are, not as the init's own exit (128 + the signal).
#[test]
fn exit_codes_and_signals_are_the_programs() {
    let Some(fx) = Fixture::new("codes") else {
        return;
    };
    for (id, script, expected) in [
        ("zero", "exit 0", ExitStatus::Exited(0)),
        ("seven", "exit 7", ExitStatus::Exited(7)),
        // What a shell reports for a SIGTERM death, on purpose: still a code.
        ("c143", "exit 143", ExitStatus::Exited(143)),
        (
            "selfterm",
            "kill -TERM $$",
            ExitStatus::Signaled(Signal::SIGTERM),
        ),
        (
            "selfkill",
            "kill -KILL $$",
            ExitStatus::Signaled(Signal::SIGKILL),
        ),
        (
            "selfusr1",
            "kill -USR1 $$",
            ExitStatus::Signaled(Signal::SIGUSR1),
        ),
    ] {
        let (sandbox, exit, _, stderr) = fx.run(&SandboxSpec::new(id, argv(&["sh", "-c", script])));
        assert_eq!(exit, expected, "{id}: {stderr}");
        assert!(!sandbox.oom_killed(), "{id}");
        sandbox.delete().unwrap_or_else(|err| fail(&err));
        fx.assert_gone(id);
    }
}

/// An orphan (here the grandchild of a double fork) is re-parented to PID 1:
/// the init reaps it, where a program as PID 1 that never waits for
/// children it did not start would leave it a zombie for good.
const ORPHAN: &str = r#"
import os, time
read, write = os.pipe()
child = os.fork()
if child == 0:
    grandchild = os.fork()
    if grandchild == 0:
        os._exit(0)
    os.write(write, b"%d" % grandchild)
    os._exit(0)
os.close(write)
orphan = int(os.read(read, 32))
os.waitpid(child, 0)
# A bound for the old behaviour, where it stays a zombie: not a timing.
deadline = time.monotonic() + 60
state = "?"
while time.monotonic() < deadline:
    try:
        with open("/proc/%d/stat" % orphan) as stat:
            state = stat.read().rsplit(") ", 1)[1].split(" ")[0]
    except (FileNotFoundError, ProcessLookupError):
        # Gone between the lookup and the read: ESRCH, not ENOENT.
        print("reaped", flush=True)
        break
    time.sleep(0.05)
else:
    print("never reaped, state", state, flush=True)
"#;

#[test]
fn orphans_are_reaped() {
    let Some(fx) = Fixture::new("orphans") else {
        return;
    };
    let (sandbox, exit, stdout, stderr) = fx.run(&python("orphans", ORPHAN));
    assert_eq!(stdout, "reaped\n", "stderr: {stderr}");
    assert_eq!(exit, ExitStatus::Exited(0));
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("orphans");
}

#[test]
fn delete_works_in_every_state() {
    let Some(fx) = Fixture::new("states") else {
        return;
    };

    // Created, never started.
    let (sandbox, _pipes) = fx.create(&SandboxSpec::new("created", argv(&["true"])));
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("created");

    // Running.
    let (mut sandbox, _pipes) = fx.create(&SandboxSpec::new("running", argv(&["sleep", "60"])));
    sandbox.start().unwrap_or_else(|err| fail(&err));
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("running");

    // A child that outlives nothing: killing PID 1 takes the namespace with it.
    let (mut sandbox, _pipes) = fx.create(&SandboxSpec::new(
        "tree",
        argv(&["sh", "-c", "sleep 60 & sleep 60"]),
    ));
    sandbox.start().unwrap_or_else(|err| fail(&err));
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("tree");
}

#[test]
fn failed_creates_leave_nothing_behind() {
    let Some(fx) = Fixture::new("fail") else {
        return;
    };

    let missing = SandboxSpec::new("missing", argv(&["/nonexistent/program"]));
    let (_pipes, stdio) = SandboxStdio::pipes().expect("pipes");
    let err = fx
        .sandboxes
        .create(&missing, stdio)
        .expect_err("create must fail");
    eprintln!("missing program: {}", error_chain(&err));
    fx.assert_gone("missing");

    let (sandbox, _pipes) = fx.create(&SandboxSpec::new("taken", argv(&["true"])));
    let (_pipes2, stdio) = SandboxStdio::pipes().expect("pipes");
    let err = fx
        .sandboxes
        .create(&SandboxSpec::new("taken", argv(&["true"])), stdio)
        .expect_err("duplicate id");
    assert!(matches!(err, SandboxError::AlreadyExists { .. }), "{err}");
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("taken");

    let (_pipes, stdio) = SandboxStdio::pipes().expect("pipes");
    let err = fx
        .sandboxes
        .create(&SandboxSpec::new("../escape", argv(&["true"])), stdio)
        .expect_err("bad id");
    assert!(matches!(err, SandboxError::InvalidId { .. }), "{err}");
    assert!(!Path::new(&fx.state_dir).join("escape").exists());
}

/// Not a benchmark with assertions: prints the mean wall time of the phases,
/// so regressions show in the test log (`--nocapture`).
#[test]
fn timings() {
    let Some(fx) = Fixture::new("timing") else {
        return;
    };
    const RUNS: u32 = 20;
    for (label, command) in [
        ("true", argv(&["/usr/bin/true"])),
        (
            "python3 print(6*7)",
            argv(&["/usr/bin/python3", "-c", "print(6*7)"]),
        ),
    ] {
        let (mut create, mut start_to_exit, mut delete) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for run in 0..RUNS {
            let id = format!("t{run}");
            let spec = SandboxSpec::new(&id, command.clone());
            let t0 = Instant::now();
            let (mut sandbox, mut pipes) = fx.create(&spec);
            let t1 = Instant::now();
            sandbox.start().unwrap_or_else(|err| fail(&err));
            let exit = sandbox.wait().unwrap_or_else(|err| fail(&err));
            let t2 = Instant::now();
            assert!(exit.success(), "{exit:?}");
            let mut out = String::new();
            pipes.stdout.read_to_string(&mut out).expect("stdout");
            let t3 = Instant::now();
            sandbox.delete().unwrap_or_else(|err| fail(&err));
            let t4 = Instant::now();
            create += t1 - t0;
            start_to_exit += t2 - t1;
            delete += t4 - t3;
            fx.assert_gone(&id);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(RUNS);
        eprintln!(
            "TIMING {label}: mean over {RUNS} runs: create {:.1} ms, start→exit {:.1} ms, \
             create→exit {:.1} ms, delete {:.1} ms",
            ms(create),
            ms(start_to_exit),
            ms(create + start_to_exit),
            ms(delete),
        );
    }
}

/// The value of cgroup file `file` of sandbox `id`, from whichever hierarchy
/// has it.
fn cgroup_file(fx: &Fixture, id: &str, file: &str) -> Option<String> {
    let cgroup = fx.sandboxes.cgroup_path(id);
    let relative = cgroup.strip_prefix("/").expect("absolute");
    cgroup_roots()
        .expect("cgroup mounts")
        .into_iter()
        .find_map(|root| std::fs::read_to_string(root.join(relative).join(file)).ok())
}

#[test]
fn memory_limit_oom_kills_and_says_so() {
    let Some(fx) = Fixture::new("oom") else {
        return;
    };

    // 400 MB of written (not just reserved) memory under a 256 MiB limit,
    // with no swap to escape to.
    let mut hog = python("hog", "s = ' ' * (400 << 20)\nprint('survived', len(s))");
    hog.memory_limit_bytes = Some(256 << 20);
    let (mut sandbox, mut pipes) = fx.create(&hog);
    assert_eq!(
        cgroup_file(&fx, "hog", "memory.limit_in_bytes")
            .or_else(|| cgroup_file(&fx, "hog", "memory.max"))
            .map(|limit| limit.trim().to_owned()),
        Some((256_u64 << 20).to_string())
    );
    assert!(!sandbox.oom_killed(), "nothing ran yet");
    sandbox.start().unwrap_or_else(|err| fail(&err));
    let mut stdout = String::new();
    pipes
        .stdout
        .read_to_string(&mut stdout)
        .expect("read stdout");
    let exit = sandbox.wait().unwrap_or_else(|err| fail(&err));
    assert_eq!(exit, ExitStatus::Signaled(Signal::SIGKILL), "{stdout}");
    assert!(sandbox.oom_killed(), "SIGKILL not reported as an OOM kill");
    assert_eq!(stdout, "");
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("hog");

    // Under the limit: no OOM.
    let mut modest = python("modest", "s = ' ' * (64 << 20)\nprint(len(s) >> 20)");
    modest.memory_limit_bytes = Some(256 << 20);
    let (sandbox, exit, stdout, stderr) = fx.run(&modest);
    assert_eq!(exit, ExitStatus::Exited(0), "{stderr}");
    assert_eq!(stdout, "64\n");
    assert!(!sandbox.oom_killed());
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("modest");

    // An ordinary SIGKILL is not an OOM kill.
    let mut sleeper = SandboxSpec::new("sleeper", argv(&["sleep", "60"]));
    sleeper.memory_limit_bytes = Some(256 << 20);
    let (mut sandbox, _pipes) = fx.create(&sleeper);
    sandbox.start().unwrap_or_else(|err| fail(&err));
    let exit = sandbox
        .stop(Duration::ZERO)
        .unwrap_or_else(|err| fail(&err));
    assert_eq!(exit, ExitStatus::Signaled(Signal::SIGKILL));
    assert!(!sandbox.oom_killed());
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("sleeper");
}

/// The program (a SIGTERM-less python) stays up while shell fork bombs run
/// beside it, their error messages sent to `/dev/null` so they never block
/// on a full pipe. A shell that cannot fork exits, and the init reaps what
/// exits (no zombie holds a pid), so one bomb burns out at the limit: a
/// child of the program starts a new one whenever the last one's shell has
/// returned, to keep the sandbox at its limit.
const FORK_BOMB: &str = r#"
import os, time
if os.fork() == 0:
    while True:
        try:
            bomb = os.fork()
        except OSError:
            time.sleep(0.01)
            continue
        if bomb == 0:
            os.execv("/bin/sh", ["sh", "-c", "exec 2>/dev/null; f() { f | f & }; f"])
        os.waitpid(bomb, 0)
print("ready", flush=True)
time.sleep(600)
"#;

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let Some(fx) = Fixture::new("bomb") else {
        return;
    };
    const LIMIT: i64 = 64;
    let mut bomb = python("bomb", FORK_BOMB);
    bomb.pids_limit = LIMIT;
    // Also checks the CPU settings reach the kernel, and keeps the bomb to
    // half a CPU.
    bomb.cpu_millis = 250;
    bomb.cpu_limit_millis = Some(500);
    let (mut sandbox, mut pipes) = fx.create(&bomb);
    sandbox.start().unwrap_or_else(|err| fail(&err));
    let mut ready = [0_u8; 6];
    pipes.stdout.read_exact(&mut ready).expect("ready line");
    assert_eq!(&ready, b"ready\n");

    let read = |file| {
        cgroup_file(&fx, "bomb", file)
            .unwrap_or_else(|| panic!("no {file}"))
            .trim()
            .to_owned()
    };
    assert_eq!(read("pids.max"), LIMIT.to_string());
    if cgroup_file(&fx, "bomb", "cpu.shares").is_some() {
        // cgroup v1 (or hybrid): the values as given.
        assert_eq!(read("cpu.shares"), "256");
        assert_eq!(read("cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu.cfs_period_us"), "100000");
    } else {
        // cgroup v2: libcontainer converts shares to a weight.
        assert_eq!(read("cpu.max"), "50000 100000");
    }

    // Let it rage for a while; the sandbox never holds more than the limit,
    // and this process can still start programs.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut peak = 0_i64;
    while Instant::now() < deadline {
        let current: i64 = read("pids.current").parse().expect("pids.current");
        peak = peak.max(current);
        assert!(current <= LIMIT, "{current} tasks over a limit of {LIMIT}");
        let started = Instant::now();
        let status = std::process::Command::new("true")
            .status()
            .expect("spawn true on the host");
        assert!(status.success());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the host is starved: `true` took {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("fork bomb: peak {peak} tasks (limit {LIMIT})");
    assert!(
        peak >= LIMIT - 8,
        "the bomb never got near the limit: {peak}"
    );
    // The kernel counts the forks it refused.
    let refused = cgroup_file(&fx, "bomb", "pids.events")
        .and_then(|events| {
            events
                .lines()
                .find_map(|line| line.strip_prefix("max ")?.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    assert!(refused > 0, "no fork was refused");
    assert_eq!(sandbox.try_wait().unwrap_or_else(|err| fail(&err)), None);

    // The init forwards SIGTERM to the program's group, but with the CPU
    // shared by the bomb it may not run before the grace is over.
    let exit = sandbox
        .stop(Duration::from_millis(100))
        .unwrap_or_else(|err| fail(&err));
    assert!(
        [Signal::SIGTERM, Signal::SIGKILL]
            .map(ExitStatus::Signaled)
            .contains(&exit),
        "{exit:?}"
    );
    assert!(!sandbox.oom_killed());
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("bomb");
}

/// What an exec'd process sees, one `key=value` per line.
const EXEC_PROBE: &str = r#"
import os, socket
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
def parent(pid):
    return open("/proc/%s/stat" % pid).read().rsplit(") ", 1)[1].split(" ")[1]
print("init_children=%s" % [open("/proc/%s/cmdline" % p).read().replace("\0", " ").strip()
    for p in os.listdir("/proc") if p.isdigit() and parent(p) == "1"])
print("not_pid1=%s" % (os.getpid() != 1))
print("uid=%d gid=%d" % (os.getuid(), os.getgid()))
print("groups=%s" % os.getgroups())
print("caps=%s" % status["CapEff"].strip())
print("bounding=%s" % status["CapBnd"].strip())
print("no_new_privs=%s" % status["NoNewPrivs"].strip())
print("hostname=%s" % socket.gethostname())
print("same_cgroup=%s" % (open("/proc/self/cgroup").read() == open("/proc/1/cgroup").read()))
print("nofile=%s" % open("/proc/self/limits").read().count("Max open files            1024                 1024"))
print("env=%s,%s" % (os.environ.get("GREETING"), os.environ.get("PATH")))
print("cwd=%s" % os.getcwd())
print("interfaces=%s" % sorted(name for _, name in socket.if_nameindex()))
"#;

/// After an exec: the process is reaped and its files are gone.
fn assert_exec_left_nothing(fx: &Fixture, id: &str) {
    assert_eq!(zombie_children(), Vec::<String>::new(), "unreaped children");
    let dir = fx.sandboxes.sandbox_dir(id);
    assert!(!dir.join("exec-process.json").exists());
    let stale: Vec<_> = std::fs::read_dir(dir.join("runtime").join(id))
        .expect("runtime dir")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tenant-"))
        .collect();
    assert_eq!(stale, Vec::<String>::new(), "per-exec files left");
}

fn exec(sandbox: &Sandbox, args: &[&str], timeout: Duration) -> ExecOutput {
    sandbox
        .exec(&argv(args), &[], timeout)
        .unwrap_or_else(|err| fail(&err))
}

#[test]
fn exec_runs_in_the_sandbox() {
    let Some(fx) = Fixture::new("exec") else {
        return;
    };
    const LONG: Duration = Duration::from_secs(20);
    let (mut sandbox, _pipes) = fx.create(&SandboxSpec::new("exec", argv(&["sleep", "60"])));

    // Not started yet: libcontainer refuses, and nothing is left.
    let err = sandbox
        .exec(&argv(&["true"]), &[], LONG)
        .expect_err("exec before start");
    eprintln!("exec before start: {}", error_chain(&err));
    assert_exec_left_nothing(&fx, "exec");

    sandbox.start().unwrap_or_else(|err| fail(&err));

    let out = exec(&sandbox, &["python3", "-c", "print(6*7)"], LONG);
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"42\n"[..], &b""[..])
    );
    assert_eq!(out.status, ExitStatus::Exited(0));
    assert!(!out.timed_out && !out.stdout_truncated && !out.stderr_truncated);
    assert_exec_left_nothing(&fx, "exec");

    // The sandbox's namespaces, cgroup and identity.
    let out = sandbox
        .exec(
            &argv(&["/usr/bin/python3", "-c", EXEC_PROBE]),
            &[("GREETING".to_owned(), "hi".to_owned())],
            LONG,
        )
        .unwrap_or_else(|err| fail(&err));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("exec probe:\n{stdout}");
    assert_eq!(
        out.status,
        ExitStatus::Exited(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "init_children=['sleep 60']",
        "not_pid1=True",
        "uid=65534 gid=65534",
        "groups=[65534]",
        "caps=0000000000000000",
        "bounding=0000000000000000",
        "no_new_privs=1",
        "hostname=exec",
        "same_cgroup=True",
        "nofile=1",
        "env=hi,/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "cwd=/",
        "interfaces=['lo']",
    ] {
        assert!(
            stdout.lines().any(|line| line == expected),
            "expected {expected:?} in:\n{stdout}"
        );
    }
    assert_exec_left_nothing(&fx, "exec");

    // A failing command is an exit code, with its stderr.
    let out = exec(
        &sandbox,
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        LONG,
    );
    assert_eq!(out.status, ExitStatus::Exited(7));
    assert_eq!(
        (out.stdout, out.stderr),
        (b"out\n".to_vec(), b"err\n".to_vec())
    );

    // Too slow: killed, with its process group, at the timeout.
    let started = Instant::now();
    let out = exec(
        &sandbox,
        &["sh", "-c", "echo started; sleep 30; echo never"],
        Duration::from_millis(500),
    );
    let took = started.elapsed();
    assert!(out.timed_out);
    assert_eq!(out.status, ExitStatus::Signaled(Signal::SIGKILL));
    assert_eq!(out.stdout, b"started\n");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_exec_left_nothing(&fx, "exec");

    // A missing program is an error, not an exit code.
    let err = sandbox
        .exec(&argv(&["/nonexistent/program"]), &[], LONG)
        .expect_err("missing program");
    eprintln!("exec of a missing program: {}", error_chain(&err));
    assert!(matches!(err, SandboxError::Container { .. }), "{err}");
    assert_exec_left_nothing(&fx, "exec");

    // Far more than a pipe buffer on both streams: no deadlock, truncated.
    let out = exec(
        &sandbox,
        &[
            "python3",
            "-c",
            "import sys\n\
             for _ in range(50):\n\
             \x20   sys.stdout.write('o' * 100_000); sys.stderr.write('e' * 100_000)",
        ],
        LONG,
    );
    assert_eq!(out.status, ExitStatus::Exited(0));
    assert_eq!(out.stdout.len(), EXEC_OUTPUT_LIMIT);
    assert_eq!(out.stderr.len(), EXEC_OUTPUT_LIMIT);
    assert!(out.stdout.iter().all(|&b| b == b'o') && out.stderr.iter().all(|&b| b == b'e'));
    assert!(out.stdout_truncated && out.stderr_truncated && !out.timed_out);
    assert_exec_left_nothing(&fx, "exec");

    // The sandbox itself was never disturbed.
    assert_eq!(sandbox.try_wait().unwrap_or_else(|err| fail(&err)), None);
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("exec");
}

/// Not a benchmark with assertions: the mean exec round trip of `true`.
#[test]
fn exec_timing() {
    let Some(fx) = Fixture::new("exectime") else {
        return;
    };
    const RUNS: u32 = 20;
    let (mut sandbox, _pipes) = fx.create(&SandboxSpec::new("exectime", argv(&["sleep", "60"])));
    sandbox.start().unwrap_or_else(|err| fail(&err));
    let mut total = Duration::ZERO;
    for _ in 0..RUNS {
        let started = Instant::now();
        let out = exec(&sandbox, &["/usr/bin/true"], Duration::from_secs(10));
        total += started.elapsed();
        assert_eq!(out.status, ExitStatus::Exited(0));
    }
    eprintln!(
        "TIMING exec true: mean over {RUNS} runs: {:.1} ms",
        total.as_secs_f64() * 1000.0 / f64::from(RUNS)
    );
    assert_exec_left_nothing(&fx, "exectime");
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("exectime");
}

// Network::Bridge: CNI-wired sandboxes. They need the CNI reference plugins
// (Debian: containernetworking-plugins) and iptables; they share the host's
// `hangar0` bridge and the host-local pool /var/lib/cni/networks/hangar, so
// ids carry this process's pid.

const HTTP_PORT: u16 = 8080;

fn bridged(id: &str, argv: Vec<String>) -> SandboxSpec {
    let mut spec = SandboxSpec::new(id, argv);
    spec.network = Network::Bridge;
    spec
}

fn bridged_id(name: &str) -> String {
    format!("br{}-{name}", std::process::id())
}

fn http_server(id: &str) -> SandboxSpec {
    bridged(
        id,
        argv(&[
            "/usr/bin/python3",
            "-m",
            "http.server",
            "--bind",
            "0.0.0.0",
            "--directory",
            "/",
            &HTTP_PORT.to_string(),
        ]),
    )
}

/// `GET /` on `addr`, retried while the server starts; the response's first
/// line.
fn http_get(addr: std::net::SocketAddr) -> String {
    use std::io::Write;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.0\r\nHost: sandbox\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match attempt {
            Ok(response) if !response.is_empty() => {
                return response.lines().next().unwrap_or_default().to_owned()
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no HTTP response from {addr}: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The host's veth interfaces.
fn veths() -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir("/sys/class/net")
        .expect("sysfs")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("veth"))
        .collect();
    names.sort();
    names
}

/// host-local's reservation files in the default network: `(ip, container id)`.
fn reservations() -> Vec<(String, String)> {
    let dir =
        Path::new("/var/lib/cni/networks").join(hangar_runtime::sandbox::DEFAULT_NETWORK_NAME);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.parse::<std::net::IpAddr>().ok()?;
            let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
            Some((name, owner.lines().next().unwrap_or_default().to_owned()))
        })
        .collect()
}

/// The `net:[inode]` of the network namespace bound at a bridged sandbox's
/// `netns` file.
fn netns_inode(fx: &Fixture, id: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(fx.sandboxes.sandbox_dir(id).join("netns"))
        .expect("netns bind mount")
        .ino()
}

/// Whether any process or mount still holds network namespace `inode`.
fn netns_alive(inode: u64) -> bool {
    let name = format!("net:[{inode}]");
    let held_by_process = std::fs::read_dir("/proc")
        .expect("procfs")
        .flatten()
        .any(|entry| {
            std::fs::read_link(entry.path().join("ns/net"))
                .is_ok_and(|link| link.to_string_lossy() == name)
        });
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .contains(&name);
    held_by_process || mounted
}

/// Asserts a deleted bridged sandbox left no veth, reservation or namespace.
fn assert_network_gone(id: &str, ip: std::net::IpAddr, veths_before: &[String], netns: u64) {
    assert_eq!(veths(), veths_before, "veth left behind");
    let held: Vec<_> = reservations()
        .into_iter()
        .filter(|(addr, owner)| owner == id || *addr == ip.to_string())
        .collect();
    assert_eq!(held, Vec::new(), "IPAM reservation left behind");
    assert!(!netns_alive(netns), "network namespace left behind");
}

#[test]
fn bridged_sandbox_serves_http_to_the_host() {
    let Some(fx) = Fixture::new("bridge-http") else {
        return;
    };
    let veths_before = veths();
    let id = bridged_id("http");
    let (mut sandbox, _pipes) = fx.create(&http_server(&id));
    let ip = sandbox.ip().expect("a bridged sandbox has an address");
    assert!(ip.is_ipv4(), "{ip}");
    assert!(
        reservations().contains(&(ip.to_string(), id.clone())),
        "host-local holds {ip} for {id}"
    );
    let netns = netns_inode(&fx, &id);
    sandbox.start().unwrap_or_else(|err| fail(&err));

    let status = http_get(std::net::SocketAddr::new(ip, HTTP_PORT));
    assert!(status.starts_with("HTTP/1.0 200"), "{status}");

    // Inside: lo is up (loopback plugin), eth0 has the address.
    let inside = exec(
        &sandbox,
        &[
            "/usr/bin/python3",
            "-c",
            &format!(
                "import urllib.request, socket; \
                 print(urllib.request.urlopen('http://127.0.0.1:{HTTP_PORT}/').status); \
                 print(sorted(n for _, n in socket.if_nameindex()))"
            ),
        ],
        Duration::from_secs(10),
    );
    let stdout = String::from_utf8_lossy(&inside.stdout);
    assert!(
        inside.status.success(),
        "{:?}: {}",
        inside.status,
        String::from_utf8_lossy(&inside.stderr)
    );
    assert_eq!(stdout.trim(), "200\n['eth0', 'lo']");

    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone(&id);
    assert_network_gone(&id, ip, &veths_before, netns);
}

#[test]
fn bridged_sandboxes_get_their_own_addresses() {
    let Some(fx) = Fixture::new("bridge-two") else {
        return;
    };
    let veths_before = veths();
    let (a, b) = (bridged_id("a"), bridged_id("b"));
    let sleep = argv(&["/usr/bin/sleep", "60"]);
    let (first, _a_pipes) = fx.create(&bridged(&a, sleep.clone()));
    let (second, _b_pipes) = fx.create(&bridged(&b, sleep));
    let (ip_a, ip_b) = (first.ip().expect("ip a"), second.ip().expect("ip b"));
    assert_ne!(ip_a, ip_b);
    assert_eq!(veths().len(), veths_before.len() + 2);
    let (ns_a, ns_b) = (netns_inode(&fx, &a), netns_inode(&fx, &b));
    assert_ne!(ns_a, ns_b);

    first.delete().unwrap_or_else(|err| fail(&err));
    assert!(!fx.sandboxes.sandbox_dir(&a).exists());
    assert!(!netns_alive(ns_a));
    assert!(
        !reservations()
            .iter()
            .any(|(addr, _)| *addr == ip_a.to_string()),
        "{ip_a} is released"
    );
    second.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone(&b);
    assert_network_gone(&b, ip_b, &veths_before, ns_b);
    assert_network_gone(&a, ip_a, &veths_before, ns_a);

    // The other modes have no address.
    let (isolated, _pipes) = fx.create(&SandboxSpec::new("plain", argv(&["/usr/bin/true"])));
    assert_eq!(isolated.ip(), None);
    isolated.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("plain");
}

#[test]
fn bridged_network_timing() {
    let Some(fx) = Fixture::new("bridge-timing") else {
        return;
    };
    const RUNS: u32 = 10;
    let mut means = Vec::new();
    for network in [Network::Isolated, Network::Bridge] {
        let (mut create, mut delete) = (Duration::ZERO, Duration::ZERO);
        for run in 0..RUNS {
            let id = bridged_id(&format!("t{run}"));
            let mut spec = SandboxSpec::new(&id, argv(&["/usr/bin/true"]));
            spec.network = network;
            let t0 = Instant::now();
            let (sandbox, _pipes) = fx.create(&spec);
            create += t0.elapsed();
            let t1 = Instant::now();
            sandbox.delete().unwrap_or_else(|err| fail(&err));
            delete += t1.elapsed();
            fx.assert_gone(&id);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(RUNS);
        eprintln!(
            "TIMING {network:?}: mean over {RUNS} runs: create {:.1} ms, delete {:.1} ms",
            ms(create),
            ms(delete)
        );
        means.push((ms(create), ms(delete)));
    }
    eprintln!(
        "TIMING bridge network overhead: create +{:.1} ms (netns + CNI loopback/bridge ADD), \
         delete +{:.1} ms (CNI bridge DEL + netns)",
        means[1].0 - means[0].0,
        means[1].1 - means[0].1
    );
}

// The packet filter (`hangar_runtime::network`): which bridged sandboxes,
// host services and outside addresses a sandbox reaches.

/// Whether `sandbox` can open a TCP connection to `host:port`: "ok",
/// "refused", "timeout" or the errno.
fn connect_from(sandbox: &Sandbox, host: &str, port: u16) -> String {
    const PROBE: &str = "import socket, sys\n\
        s = socket.socket(); s.settimeout(5)\n\
        try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print('ok')\n\
        except ConnectionRefusedError: print('refused')\n\
        except socket.timeout: print('timeout')\n\
        except OSError as e: print('errno', e.errno)\n";
    let port = port.to_string();
    let out = exec(
        sandbox,
        &["/usr/bin/python3", "-c", PROBE, host, &port],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn in_group(mut spec: SandboxSpec, group: &str, reach: &[&str]) -> SandboxSpec {
    spec.network_policy.group = group.to_owned();
    spec.network_policy.reach = reach.iter().map(|g| (*g).to_owned()).collect();
    spec
}

/// The packet filter's table of `fx`'s sandboxes, as `nft` lists it; `None`
/// when there is none.
fn firewall_table(fx: &Fixture) -> Option<String> {
    let name = hangar_runtime::sandbox::firewall_table_name(fx.sandboxes.state_dir());
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", &name])
        .output()
        .expect("nft runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn bridged_sandboxes_reach_their_group_and_what_they_name_only() {
    let Some(fx) = Fixture::new("bridge-groups") else {
        return;
    };
    let ids = ["a1", "a2", "b", "c"].map(bridged_id);
    let (mut a1, _p1) = fx.create(&in_group(http_server(&ids[0]), "a", &[]));
    let (mut a2, _p2) = fx.create(&in_group(http_server(&ids[1]), "a", &["b"]));
    let (mut b, _p3) = fx.create(&in_group(http_server(&ids[2]), "b", &[]));
    let (mut c, _p4) = fx.create(&in_group(http_server(&ids[3]), "c", &[]));
    for sandbox in [&mut a1, &mut a2, &mut b, &mut c] {
        sandbox.start().unwrap_or_else(|err| fail(&err));
    }
    let ip = |sandbox: &Sandbox| sandbox.ip().expect("bridged").to_string();
    // The host (Hangar's gateway) reaches every one of them.
    for sandbox in [&a1, &a2, &b, &c] {
        let status = http_get(std::net::SocketAddr::new(
            sandbox.ip().expect("ip"),
            HTTP_PORT,
        ));
        assert!(status.starts_with("HTTP/1.0 200"), "{status}");
    }
    assert_eq!(connect_from(&a1, &ip(&a2), HTTP_PORT), "ok", "same group");
    assert_eq!(connect_from(&a2, &ip(&a1), HTTP_PORT), "ok", "same group");
    assert_eq!(
        connect_from(&a1, &ip(&b), HTTP_PORT),
        "refused",
        "other group"
    );
    assert_eq!(connect_from(&a2, &ip(&b), HTTP_PORT), "ok", "a2 names b");
    assert_eq!(
        connect_from(&b, &ip(&a2), HTTP_PORT),
        "refused",
        "b names nobody"
    );
    assert_eq!(
        connect_from(&c, &ip(&a1), HTTP_PORT),
        "refused",
        "other group"
    );
    assert_eq!(
        connect_from(&b, &ip(&c), HTTP_PORT),
        "refused",
        "other group"
    );

    // A flushed table is rebuilt whole by a sync.
    let table = hangar_runtime::sandbox::firewall_table_name(fx.sandboxes.state_dir());
    let flushed = std::process::Command::new("nft")
        .args(["flush", "table", "inet", &table])
        .status()
        .expect("nft runs");
    assert!(flushed.success());
    assert_eq!(connect_from(&c, &ip(&a1), HTTP_PORT), "ok", "no rules left");
    assert_eq!(fx.sandboxes.sync_firewall(), Ok(4));
    assert_eq!(connect_from(&c, &ip(&a1), HTTP_PORT), "refused", "repaired");

    for sandbox in [a1, a2, b, c] {
        sandbox.delete().unwrap_or_else(|err| fail(&err));
    }
    for id in &ids {
        fx.assert_gone(id);
    }
    assert_eq!(
        firewall_table(&fx),
        None,
        "the table goes with the last sandbox"
    );
}

/// A listener on every address of the host, as a careless host service is.
fn host_service() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

/// An address of the host outside the bridge: its default route's source.
fn host_address() -> String {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
    socket.connect("192.0.2.200:9").expect("a default route");
    socket.local_addr().expect("addr").ip().to_string()
}

#[test]
fn bridged_sandboxes_reach_no_host_service_but_their_host_ports() {
    let Some(fx) = Fixture::new("bridge-host") else {
        return;
    };
    let (_listener, port) = host_service();
    let (_other, other_port) = host_service();
    let id = bridged_id("host");
    let mut spec = bridged(&id, argv(&["/usr/bin/sleep", "60"]));
    spec.network_policy.host_ports = vec![port];
    let (mut sandbox, _pipes) = fx.create(&spec);
    sandbox.start().unwrap_or_else(|err| fail(&err));
    let gateway = "10.231.0.1";
    assert_eq!(connect_from(&sandbox, gateway, other_port), "refused");
    assert_eq!(
        connect_from(&sandbox, &host_address(), other_port),
        "refused"
    );
    assert_eq!(connect_from(&sandbox, "172.17.0.1", other_port), "refused");
    assert_eq!(connect_from(&sandbox, gateway, port), "ok", "a host port");
    assert_eq!(connect_from(&sandbox, &host_address(), port), "ok");
    // No IPv6 to go around the rules with.
    let ipv6 = exec(
        &sandbox,
        &["/usr/bin/cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"],
        Duration::from_secs(10),
    );
    assert_eq!(String::from_utf8_lossy(&ipv6.stdout).trim(), "1");
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone(&id);
}

/// A network namespace standing for the world outside the host: a veth pair
/// with 198.51.100.1 on the host and 198.51.100.2 inside, and an HTTP server
/// on port 80 and 81 inside.
struct Outside {
    name: String,
    servers: Vec<std::process::Child>,
}

impl Outside {
    const ADDRESS: &'static str = "198.51.100.2";

    fn new() -> Self {
        let name = format!("hgo{}", std::process::id());
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("ip runs");
            assert!(status.success(), "ip {args:?}");
        };
        let (host_end, inner_end) = (format!("{name}h"), format!("{name}i"));
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &inner_end,
        ]);
        ip(&["link", "set", &inner_end, "netns", &name]);
        ip(&["addr", "add", "198.51.100.1/24", "dev", &host_end]);
        ip(&["link", "set", &host_end, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", "198.51.100.2/24", "dev", &inner_end]);
        inside(&["link", "set", &inner_end, "up"]);
        inside(&["link", "set", "lo", "up"]);
        let servers = ["80", "81"]
            .into_iter()
            .map(|port| {
                std::process::Command::new("ip")
                    .args(["netns", "exec", &name, "python3", "-m", "http.server"])
                    .args(["--bind", Self::ADDRESS, port])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("http server")
            })
            .collect();
        let outside = Self { name, servers };
        for port in [80, 81] {
            let addr = std::net::SocketAddr::new(Self::ADDRESS.parse().expect("ip"), port);
            let status = http_get(addr);
            assert!(status.starts_with("HTTP/1.0 200"), "{status}");
        }
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn bridged_sandboxes_reach_outside_as_their_egress_says() {
    use hangar_runtime::network::Egress;
    let Some(fx) = Fixture::new("bridge-egress") else {
        return;
    };
    let outside = Outside::new();
    let sleeper = |name: &str, egress: Egress| {
        let mut spec = bridged(&bridged_id(name), argv(&["/usr/bin/sleep", "60"]));
        spec.network_policy.egress = egress;
        spec
    };
    let destination = |text: &str| text.parse().expect("destination");
    let specs = [
        sleeper("open", Egress::Open),
        sleeper("none", Egress::None),
        sleeper(
            "allow",
            Egress::Allow(vec![destination("198.51.100.0/24:80")]),
        ),
    ];
    let mut sandboxes = Vec::new();
    for spec in &specs {
        let (mut sandbox, pipes) = fx.create(spec);
        sandbox.start().unwrap_or_else(|err| fail(&err));
        sandboxes.push((sandbox, pipes));
    }
    let reach = |index: usize, port: u16| connect_from(&sandboxes[index].0, Outside::ADDRESS, port);
    assert_eq!(
        (reach(0, 80), reach(0, 81)),
        ("ok".into(), "ok".into()),
        "open"
    );
    assert_eq!(
        (reach(1, 80), reach(1, 81)),
        ("refused".into(), "refused".into()),
        "none"
    );
    assert_eq!(
        (reach(2, 80), reach(2, 81)),
        ("ok".into(), "refused".into()),
        "allow port 80 only"
    );
    // What was refused is kept for the driver to tell, once.
    let mut denied: Vec<(String, String)> = fx
        .sandboxes
        .take_denials()
        .unwrap_or_else(|err| panic!("{err}"))
        .into_iter()
        .map(|denial| (denial.sandbox, denial.destination.to_string()))
        .collect();
    denied.sort();
    let at = |port: u16| format!("{}:{port}", Outside::ADDRESS);
    assert_eq!(
        denied,
        [
            (specs[2].id.clone(), at(81)),
            (specs[1].id.clone(), at(80)),
            (specs[1].id.clone(), at(81)),
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(fx.sandboxes.take_denials(), Ok(Vec::new()));
    for (sandbox, _pipes) in sandboxes {
        sandbox.delete().unwrap_or_else(|err| fail(&err));
    }
    for spec in &specs {
        fx.assert_gone(&spec.id);
    }
    assert_eq!(firewall_table(&fx), None);
    drop(outside);
}

#[test]
fn failed_bridge_setup_leaves_nothing_behind() {
    let Some(fx) = Fixture::new("bridge-fail") else {
        return;
    };
    let veths_before = veths();
    let sandboxes = fx
        .sandboxes
        .clone()
        .with_bridge(hangar_runtime::sandbox::BridgeConfig {
            plugin_dir: PathBuf::from("/nonexistent/cni"),
            ..Default::default()
        });
    let id = bridged_id("fail");
    let (_pipes, stdio) = SandboxStdio::pipes().expect("pipes");
    let err = sandboxes
        .create(&bridged(&id, argv(&["/usr/bin/true"])), stdio)
        .expect_err("no plugins, no network");
    assert!(
        matches!(err, SandboxError::Network { .. }),
        "{}",
        error_chain(&err)
    );
    fx.assert_gone(&id);
    assert_eq!(veths(), veths_before);
    assert!(!reservations().iter().any(|(_, owner)| *owner == id));
    assert!(!std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .contains(&id));
}

#[test]
fn app_overlay_is_writable_and_leaves_the_artifact_untouched() {
    let Some(fx) = Fixture::new("app") else {
        return;
    };
    let artifact =
        std::env::temp_dir().join(format!("hangar-test-artifact-{}", std::process::id()));
    std::fs::create_dir_all(&artifact).expect("artifact dir");
    std::fs::write(artifact.join("main.py"), "print('from the artifact')\n").expect("write");
    let mut spec = python(
        "app",
        "import os; print(open('/app/main.py').read().strip()); \
         open('/app/new.txt', 'w').write('x'); print(sorted(os.listdir('/app')), os.getcwd())\n\
         try:\n    open('/app/main.py', 'w')\nexcept PermissionError:\n    print('artifact files are read-only')",
    );
    spec.app = Some(artifact.clone());
    spec.cwd = PathBuf::from("/app");
    let (sandbox, exit, stdout, stderr) = fx.run(&spec);
    assert_eq!(exit, ExitStatus::Exited(0), "stderr: {stderr}");
    assert_eq!(
        stdout,
        "print('from the artifact')\n['main.py', 'new.txt'] /app\nartifact files are read-only\n",
        "stderr: {stderr}"
    );
    sandbox.delete().unwrap_or_else(|err| fail(&err));
    fx.assert_gone("app");
    assert_eq!(
        std::fs::read_to_string(artifact.join("main.py")).expect("read"),
        "print('from the artifact')\n"
    );
    assert!(!artifact.join("new.txt").exists());
    std::fs::remove_dir_all(&artifact).expect("remove artifact");
}
