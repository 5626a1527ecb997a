//! The driver conformance suite: every [`Driver`] answers the same calls the
//! same way. Each test below runs once per driver — `sandbox::<test>` (real
//! shims and youki sandboxes), `docker::<test>` (containers on the local
//! engine, from a Python base image the suite makes) and
//! `kubernetes::<test>` (pods on the cluster of `$KUBECONFIG`, from that
//! image with the agents in it, pushed to the registry beside the cluster)
//! — with the same specs: the test agents of `tests/agents/`, run by
//! `python3`.
//!
//! `cargo test -p hangar --test conformance` as root with a Docker engine
//! and a cluster. Without them a test says why it is skipped, unless
//! `CI=true`, where it fails instead. What only one driver has (a shim that
//! dies, a follower that stalls a shim) is tested in that driver's own
//! tests. Where Kubernetes cannot do what the others do, the test says so
//! where it asks less of it: its log does not tell stdout from stderr, it
//! has no per-pod pids limit, and it does not show a pod's host PID.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hangar_runtime::driver::{
    DriverError, Exit, OutputEvent, OutputStream, ReplicaInfo, ReplicaSpec, StdinWait,
};
use hangar_runtime::{DockerDriver, Driver, SandboxDriver, SandboxDriverConfig};

mod common;

use common::docker as engine;
use common::kubernetes as cluster;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Sandbox,
    Docker,
    Kubernetes,
}

/// The cloud the kubernetes subject's replicas are labelled with.
const CLOUD: &str = "cloud_conformance";

/// One driver under test, with what it needs to be made again (a daemon
/// restart) and to be checked for leftovers.
struct Subject {
    kind: Kind,
    test: String,
    driver: Box<dyn Driver>,
    state_dir: PathBuf,
    docker: Option<DockerDriver>,
    /// The kubernetes subject's image of the test agents.
    image: Option<String>,
}

impl Subject {
    async fn new(kind: Kind, test: &str) -> Option<Self> {
        let test = format!("{kind:?}-{}", test.replace('_', "-")).to_lowercase();
        let state_dir =
            std::env::temp_dir().join(format!("hangar-conformance-{}-{test}", std::process::id()));
        match kind {
            Kind::Sandbox => {
                if !common::root_or_skip(&test) {
                    return None;
                }
                Some(Self {
                    kind,
                    driver: Box::new(sandbox(&state_dir)),
                    test,
                    state_dir,
                    docker: None,
                    image: None,
                })
            }
            Kind::Docker => {
                let driver = engine::driver_or_skip(&test, &engine::owner(&test)).await?;
                Some(Self {
                    kind,
                    driver: Box::new(driver.clone()),
                    test,
                    state_dir,
                    docker: Some(driver),
                    image: None,
                })
            }
            Kind::Kubernetes => {
                let driver = cluster::driver_or_skip(&test, &engine::owner(&test), CLOUD).await?;
                let image = cluster::agents_image(&test).await;
                Some(Self {
                    kind,
                    driver: Box::new(driver),
                    test,
                    state_dir,
                    docker: None,
                    image: Some(image),
                })
            }
        }
    }

    /// A replica of the test agent `agent`: at `/app` from this host, or,
    /// on a cluster, in the agents image.
    fn spec(&self, id: &str, agent: &str) -> ReplicaSpec {
        let mut spec = base_spec(id, agent);
        if let Some(image) = &self.image {
            spec.app = None;
            spec.image = Some(image.clone());
            spec.argv[2] = format!("/agents/{agent}/main.py");
            spec.cwd = format!("/agents/{agent}");
        }
        spec
    }

    /// A replica running a shell script instead of an agent.
    fn shell(&self, id: &str, script: &str) -> ReplicaSpec {
        let mut spec = self.spec(id, "http");
        spec.argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
        spec.port = None;
        spec
    }

    /// Whether the driver tells stdout from stderr.
    fn has_streams(&self) -> bool {
        self.kind != Kind::Kubernetes
    }

    /// A new driver over the same replicas, as after `hangar serve` restarts.
    async fn again(&self) -> Box<dyn Driver> {
        match self.kind {
            Kind::Sandbox => Box::new(sandbox(&self.state_dir)),
            Kind::Docker => Box::new(
                engine::driver_or_skip(&self.test, &engine::owner(&self.test))
                    .await
                    .expect("the engine answered a moment ago"),
            ),
            Kind::Kubernetes => Box::new(
                cluster::driver_or_skip(&self.test, &engine::owner(&self.test), CLOUD)
                    .await
                    .expect("the cluster answered a moment ago"),
            ),
        }
    }

    fn id(&self, name: &str) -> String {
        format!("rep-{}-{name}", std::process::id())
    }

    /// Nothing of any replica is left: no shim, sandbox, container or network.
    async fn assert_nothing_left(&self) {
        if self.kind == Kind::Kubernetes {
            let left = cluster::leftovers(&self.test, &engine::owner(&self.test)).await;
            assert!(left.is_empty(), "left on the cluster: {left:?}");
            return;
        }
        match &self.docker {
            None => {
                for sub in ["shims", "sandboxes"] {
                    let left: Vec<_> = std::fs::read_dir(self.state_dir.join(sub))
                        .expect("state dir")
                        .flatten()
                        .map(|e| e.file_name())
                        // The state dir's lock files stay.
                        .filter(|name| !name.to_string_lossy().starts_with('.'))
                        .collect();
                    assert!(left.is_empty(), "left in {sub}: {left:?}");
                }
                // The table goes with the last replica; it is named after the
                // driver's own (canonical) path.
                let sandboxes =
                    std::fs::canonicalize(self.state_dir.join("sandboxes")).expect("state dir");
                let table = hangar_runtime::sandbox::firewall_table_name(&sandboxes);
                let listed = std::process::Command::new("nft")
                    .args(["list", "table", "inet", &table])
                    .output()
                    .expect("nft runs");
                assert!(
                    !listed.status.success(),
                    "packet filter table left: {}",
                    String::from_utf8_lossy(&listed.stdout)
                );
            }
            Some(driver) => {
                let left = hangar_runtime::docker::leftovers(driver)
                    .await
                    .expect("leftovers");
                assert!(left.is_empty(), "left on the engine: {left:?}");
            }
        }
    }
}

impl Drop for Subject {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
        // A failed test leaves its replicas: gone with the test.
        match self.kind {
            Kind::Docker => engine::remove_owned(&engine::owner(&self.test)),
            Kind::Kubernetes => cluster::remove_owned(&engine::owner(&self.test)),
            Kind::Sandbox => {}
        }
    }
}

fn sandbox(state_dir: &Path) -> SandboxDriver {
    SandboxDriver::new(SandboxDriverConfig {
        shim_program: PathBuf::from(env!("CARGO_BIN_EXE_hangar")),
        state_dir: state_dir.to_path_buf(),
        host_network: false,
    })
    .expect("driver")
}

/// A replica of the test agent `agent`, the same for every driver.
fn base_spec(id: &str, agent: &str) -> ReplicaSpec {
    ReplicaSpec {
        id: id.to_owned(),
        labels: BTreeMap::from([
            ("hangar.instance".to_owned(), "inst_test".to_owned()),
            ("hangar.cloud".to_owned(), "cloud_conformance".to_owned()),
        ]),
        argv: vec![
            "python3".to_owned(),
            "-u".to_owned(),
            "/app/main.py".to_owned(),
        ],
        env: vec![
            ("PORT".to_owned(), "8080".to_owned()),
            ("HANGAR_REPLICA_ID".to_owned(), id.to_owned()),
        ],
        cwd: "/app".to_owned(),
        app: Some(PathBuf::from(common::agent_dir(agent))),
        app_writable: false,
        port: Some(8080),
        stdin: false,
        cpu_millis: 500,
        cpu_limit_millis: None,
        memory_limit_bytes: Some(256 << 20),
        pids_limit: 128,
        rootfs: None,
        user: None,
        image: None,
        image_auth: None,
        network: Default::default(),
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

async fn wait_healthy(info: &ReplicaInfo) {
    let address = info.address.expect("an address");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client
            .get(format!("http://{address}/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if matches!(&answer, Ok(r) if r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "never healthy: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Events from a follow stream until a line containing `want` (or 20 s).
async fn read_until(
    rx: &mut tokio::sync::mpsc::Receiver<OutputEvent>,
    want: &str,
) -> Vec<OutputEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => {
                let done = matches!(&event, OutputEvent::Line(l) if l.text.contains(want));
                seen.push(event);
                if done {
                    return seen;
                }
            }
            other => panic!("{want:?} never came ({other:?}); saw {seen:?}"),
        }
    }
}

/// Every event until the end of the output, and the exit.
async fn read_to_end(
    rx: &mut tokio::sync::mpsc::Receiver<OutputEvent>,
) -> (Vec<(u64, OutputStream, String)>, Exit) {
    let mut lines = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(OutputEvent::Line(line))) => lines.push((line.seq, line.stream, line.text)),
            Ok(Some(OutputEvent::Gap { through })) => panic!("lines lost through {through}"),
            Ok(Some(OutputEvent::End(exit))) => return (lines, exit),
            other => panic!("the output never ended ({other:?}); saw {lines:?}"),
        }
    }
}

async fn wait_exit(driver: &dyn Driver, id: &str) -> Exit {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = driver.inspect(id).await.expect("inspect").exit {
            return exit;
        }
        assert!(Instant::now() < deadline, "{id} never exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Create, health, invoke, logs, exec (output, exit code, timeout), stats,
/// a forced stop (no grace period), remove.
async fn http_replica_serves_execs_and_leaves_nothing(s: Subject) {
    let id = s.id("http");
    let info = s.driver.create(&s.spec(&id, "http")).await.expect("create");
    assert!(info.exit.is_none());
    // A pod's process is on a node: no host PID to tell.
    assert!(info.pid > 0 || s.kind == Kind::Kubernetes, "{info:?}");
    assert_eq!(info.labels["hangar.instance"], "inst_test");
    wait_healthy(&info).await;

    let invoked = reqwest::Client::new()
        .post(format!("http://{}/invoke", info.address.expect("address")))
        .json(&serde_json::json!({"hello": "world"}))
        .send()
        .await
        .expect("invoke")
        .json::<serde_json::Value>()
        .await
        .expect("json");
    assert_eq!(invoked["output"]["echo"]["hello"], "world");
    assert_eq!(invoked["output"]["replica"], id.as_str());

    let mut output = s.driver.follow(&id, 0).await.expect("follow");
    let seen = read_until(&mut output, "invoked with").await;
    // Numbered from 1 without gaps. Where the two streams are read apart
    // (docker's logs), a stderr line of the same millisecond may come first.
    let seqs: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            OutputEvent::Line(l) => Some(l.seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|e| matches!(e, OutputEvent::Line(l) if l.text == "INFO listening on 8080" && l.stream == OutputStream::Stdout)),
        "{seen:?}"
    );
    let log_stream = if s.has_streams() {
        OutputStream::Stderr
    } else {
        OutputStream::Stdout
    };
    assert!(
        seen.iter().any(|e| matches!(e, OutputEvent::Line(l) if l.stream == log_stream && l.text.starts_with("DEBUG"))),
        "the request log goes to stderr: {seen:?}"
    );

    let exec = s
        .driver
        .exec(
            &id,
            &argv(&["python3", "-c", "print(6*7)"]),
            &[],
            Duration::from_secs(20),
        )
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "42\n");
    assert_eq!(exec.code, Some(0));
    assert!(!exec.timed_out);
    let exec = s
        .driver
        .exec(
            &id,
            &argv(&["/bin/sh", "-c", "echo out; echo \"$GREETING\" >&2; exit 7"]),
            &[("GREETING".to_owned(), "hi there".to_owned())],
            Duration::from_secs(20),
        )
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&exec.stderr), "hi there\n");
    assert_eq!(exec.code, Some(7));
    let started = Instant::now();
    let exec = s
        .driver
        .exec(
            &id,
            &argv(&["sleep", "30"]),
            &[],
            Duration::from_millis(500),
        )
        .await
        .expect("exec");
    assert!(exec.timed_out, "{exec:?}");
    assert!(started.elapsed() < Duration::from_secs(20));

    let mut stats = s.driver.stats(&id).await.expect("stats");
    if s.kind == Kind::Kubernetes {
        // The kubelet's summary lags by its housekeeping interval (10 s or
        // more for network counters), and Kubernetes 1.20's counts no
        // processes.
        let deadline = Instant::now() + Duration::from_secs(60);
        while stats.rx_bytes == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stats = s.driver.stats(&id).await.expect("stats");
        }
    } else {
        assert!(stats.pids >= 1, "{stats:?}");
    }
    assert!(stats.memory_bytes > 1 << 20, "{stats:?}");
    assert!(stats.cpu_ns > 0, "{stats:?}");
    assert!(stats.rx_bytes > 0, "{stats:?}");

    let exit = s.driver.stop(&id, Duration::ZERO).await.expect("stop");
    assert_eq!(exit.signal, Some(9), "no grace is SIGKILL: {exit:?}");
    assert_eq!(
        s.driver.inspect(&id).await.expect("inspect").exit,
        Some(exit)
    );
    assert!(matches!(
        s.driver
            .exec(&id, &argv(&["true"]), &[], Duration::from_secs(5))
            .await,
        Err(DriverError::NotRunning(_))
    ));
    s.driver.remove(&id).await.expect("remove");
    s.assert_nothing_left().await;
    assert!(matches!(
        s.driver.inspect(&id).await,
        Err(DriverError::NotFound(_))
    ));
    s.driver.remove(&id).await.expect("removing twice is fine");
}

/// A replica that handles SIGTERM ends on its own within the grace period;
/// a zero grace period kills at once.
async fn stop_is_graceful_then_forced(s: Subject) {
    let polite = s.id("polite");
    s.driver
        .create(&s.shell(
            &polite,
            "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.1; done",
        ))
        .await
        .expect("create");
    let mut output = s.driver.follow(&polite, 0).await.expect("follow");
    read_until(&mut output, "up").await;
    let exit = s
        .driver
        .stop(&polite, Duration::from_secs(20))
        .await
        .expect("stop");
    assert_eq!(exit.code, Some(0), "{exit:?}");
    let (lines, end) = read_to_end(&mut output).await;
    assert_eq!(end, exit);
    assert!(lines.iter().any(|(_, _, text)| text == "bye"), "{lines:?}");

    let stubborn = s.id("stubborn");
    s.driver
        .create(&s.shell(&stubborn, "trap '' TERM; while true; do sleep 0.1; done"))
        .await
        .expect("create");
    let started = Instant::now();
    let exit = s
        .driver
        .stop(&stubborn, Duration::ZERO)
        .await
        .expect("stop");
    assert_eq!(exit.signal, Some(9), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        s.driver
            .stop(&stubborn, Duration::ZERO)
            .await
            .expect("again"),
        exit,
        "stopping a stopped replica gives its exit"
    );
    for id in [polite, stubborn] {
        s.driver.remove(&id).await.expect("remove");
    }
    s.assert_nothing_left().await;
}

/// A program with no SIGTERM handler (a plain Python agent, `sleep`) ends
/// by the SIGTERM of a graceful stop, not by the SIGKILL after the grace:
/// PID 1 of the replica is an init that passes the signal on (a program
/// that is PID 1 itself never hears it).
async fn a_program_without_a_handler_ends_by_sigterm(s: Subject) {
    let plain = s.id("plain");
    s.driver
        .create(&s.shell(&plain, "echo up; exec sleep 600"))
        .await
        .expect("create");
    let mut output = s.driver.follow(&plain, 0).await.expect("follow");
    read_until(&mut output, "up").await;
    let exit = s
        .driver
        .stop(&plain, Duration::from_secs(120))
        .await
        .expect("stop");
    assert_eq!(exit.signal, Some(15), "ended by SIGTERM: {exit:?}");
    s.driver.remove(&plain).await.expect("remove");
    s.assert_nothing_left().await;
}

/// A crash is reported with its code, at the end of the output and by
/// inspect; the controller restarts by making the replica again.
async fn crash_is_reported_and_the_replica_made_again(s: Subject) {
    let id = s.id("crash");
    s.driver
        .create(&s.spec(&id, "crash"))
        .await
        .expect("create");
    let mut output = s.driver.follow(&id, 0).await.expect("follow");
    let (lines, exit) = read_to_end(&mut output).await;
    assert_eq!(
        lines,
        [(1, OutputStream::Stdout, "ERROR about to crash".to_owned())]
    );
    assert_eq!(exit.code, Some(3));
    assert!(!exit.oom_killed);
    assert!(exit.at_ms > 0);
    assert_eq!(
        s.driver.inspect(&id).await.expect("inspect").exit,
        Some(exit)
    );
    assert!(matches!(
        s.driver.create(&s.spec(&id, "crash")).await,
        Err(DriverError::Invalid(_))
    ));
    s.driver.remove(&id).await.expect("remove");
    let again = s.driver.create(&s.spec(&id, "http")).await.expect("again");
    wait_healthy(&again).await;
    s.driver.remove(&id).await.expect("remove");
    s.assert_nothing_left().await;
}

/// Over its memory limit, a replica is killed and the kill is named.
async fn oom_kill_is_reported(s: Subject) {
    let id = s.id("oom");
    let mut oom = s.spec(&id, "oom");
    oom.memory_limit_bytes = Some(64 << 20);
    oom.port = None;
    s.driver.create(&oom).await.expect("create");
    let exit = wait_exit(s.driver.as_ref(), &id).await;
    assert!(exit.oom_killed, "{exit:?}");
    assert!(exit.describe().contains("out of memory"));
    s.driver.remove(&id).await.expect("remove");
    s.assert_nothing_left().await;
}

/// Stdin answers, and a new driver (a restarted daemon) adopts the replica
/// with its labels, talks to it, and follows its output from any line.
async fn stdin_answers_and_a_new_driver_adopts_the_replica(s: Subject) {
    let id = s.id("echo");
    let mut echo = s.spec(&id, "echo");
    echo.stdin = true;
    echo.port = None;
    s.driver.create(&echo).await.expect("create");
    let mut banner = s.driver.follow(&id, 0).await.expect("follow");
    read_until(&mut banner, "ready").await;
    let wait = StdinWait {
        quiet: Duration::from_millis(300),
        timeout: Duration::from_secs(10),
    };
    let reply = s.driver.stdin(&id, b"hello\n", wait).await.expect("stdin");
    assert_eq!(reply, "echo: hello\n");

    let again = s.again().await;
    let listed = again.list().await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id);
    assert!(listed[0].exit.is_none());
    assert_eq!(listed[0].labels["hangar.instance"], "inst_test");
    assert_eq!(listed[0].labels["hangar.cloud"], "cloud_conformance");
    let reply = again.stdin(&id, b"again\n", wait).await.expect("stdin");
    assert_eq!(reply, "echo: again\n");
    let mut output = again.follow(&id, 1).await.expect("follow");
    let seen = read_until(&mut output, "echo: again").await;
    let texts: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            OutputEvent::Line(l) => Some((l.seq, l.text.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(texts, [(2, "echo: hello"), (3, "echo: again")]);

    let http = s.id("nostdin");
    s.driver
        .create(&s.spec(&http, "http"))
        .await
        .expect("create");
    assert!(matches!(
        s.driver.stdin(&http, b"x\n", wait).await,
        Err(DriverError::NoStdin(_))
    ));
    again.remove(&id).await.expect("remove");
    again.remove(&http).await.expect("remove");
    s.assert_nothing_left().await;
}

/// Every line of a fast writer reaches a slow follower, numbered, in order,
/// from either stream; a follower can start after any line.
async fn a_slow_follower_gets_every_line(s: Subject) {
    let id = s.id("flood");
    let mut flood = s.spec(&id, "http");
    flood.argv = argv(&[
        "python3",
        "-c",
        "import sys\nsys.stdout.write(''.join(f'line {i}\\n' for i in range(1, 20001)))\nsys.stdout.flush()\nprint('warn', file=sys.stderr, flush=True)\n",
    ]);
    flood.port = None;
    s.driver.create(&flood).await.expect("create");
    let mut output = s.driver.follow(&id, 0).await.expect("follow");
    let mut lines = Vec::new();
    let exit = loop {
        match tokio::time::timeout(Duration::from_secs(30), output.recv()).await {
            Ok(Some(OutputEvent::Line(line))) => {
                lines.push(line);
                if lines.len() % 2_000 == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Ok(Some(OutputEvent::Gap { through })) => panic!("lines lost through {through}"),
            Ok(Some(OutputEvent::End(exit))) => break exit,
            other => panic!("the flood never ended: {other:?}"),
        }
    };
    assert_eq!(exit.code, Some(0));
    assert_eq!(lines.len(), 20_001, "last: {:?}", lines.last());
    assert!(lines.iter().enumerate().all(|(i, l)| l.seq == i as u64 + 1));
    // The two streams are two pipes: their lines interleave as they are read.
    let stdout: Vec<_> = lines
        .iter()
        .filter(|l| l.stream == OutputStream::Stdout && (s.has_streams() || l.text != "warn"))
        .map(|l| l.text.as_str())
        .collect();
    let wrong = stdout
        .iter()
        .enumerate()
        .find(|(i, text)| **text != format!("line {}", i + 1));
    assert!(wrong.is_none(), "{wrong:?}");
    let stderr: Vec<_> = lines
        .iter()
        .filter(|l| {
            if s.has_streams() {
                l.stream == OutputStream::Stderr
            } else {
                l.text == "warn"
            }
        })
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(stderr, ["warn"]);
    let mut late = s.driver.follow(&id, 19_999).await.expect("follow");
    let (tail, end) = read_to_end(&mut late).await;
    let expected: Vec<_> = lines[19_999..]
        .iter()
        .map(|l| (l.seq, l.stream, l.text.clone()))
        .collect();
    assert_eq!(tail, expected);
    assert_eq!(end, exit);
    s.driver.remove(&id).await.expect("remove");
    s.assert_nothing_left().await;
}

/// Bad ids and specs are refused; unknown replicas are not found.
async fn bad_specs_and_unknown_replicas(s: Subject) {
    let mut bad = s.spec("Bad/Id", "http");
    assert!(matches!(
        s.driver.create(&bad).await,
        Err(DriverError::Invalid(_))
    ));
    bad.id = s.id("noprogram");
    bad.argv = vec![String::new()];
    assert!(matches!(
        s.driver.create(&bad).await,
        Err(DriverError::Invalid(_))
    ));
    let unknown = s.id("unknown");
    assert!(matches!(
        s.driver.inspect(&unknown).await,
        Err(DriverError::NotFound(_))
    ));
    assert!(matches!(
        s.driver.stats(&unknown).await,
        Err(DriverError::NotFound(_))
    ));
    assert!(matches!(
        s.driver.stop(&unknown, Duration::ZERO).await,
        Err(DriverError::NotFound(_))
    ));
    assert!(matches!(
        s.driver.follow(&unknown, 0).await,
        Err(DriverError::NotFound(_))
    ));
    s.driver
        .remove(&unknown)
        .await
        .expect("removing nothing is fine");
    assert!(s.driver.list().await.expect("list").is_empty());
    s.assert_nothing_left().await;
}

/// The pids and CPU limits hold: forks past the pids limit fail, and a
/// busy loop under a 0.2-CPU cap gets about that.
async fn limits_hold(s: Subject) {
    let forks = s.id("forks");
    let mut limited = s.spec(&forks, "http");
    limited.argv = argv(&[
        "python3",
        "-c",
        "import os, time\nn = 0\nfor _ in range(60):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n    n += 1\nprint(f'forked {n}', flush=True)\ntime.sleep(60)\n",
    ]);
    limited.port = None;
    limited.pids_limit = 16;
    if s.kind == Kind::Kubernetes {
        // A pod's pids limit is its node's, not its spec's.
        return caps_hold(s).await;
    }
    s.driver.create(&limited).await.expect("create");
    let mut output = s.driver.follow(&forks, 0).await.expect("follow");
    let seen = read_until(&mut output, "forked").await;
    let Some(OutputEvent::Line(line)) = seen.last() else {
        panic!("{seen:?}")
    };
    let forked: u64 = line.text["forked ".len()..].parse().expect("a count");
    assert!(
        (4..16).contains(&forked),
        "{forked} forks under a pids limit of 16"
    );
    let stats = s.driver.stats(&forks).await.expect("stats");
    assert!(stats.pids <= 16, "{stats:?}");
    s.driver.remove(&forks).await.expect("remove");
    caps_hold(s).await;
}

/// A busy loop under a 0.2-CPU cap gets about that.
async fn caps_hold(s: Subject) {
    let busy = s.id("busy");
    let mut capped = s.spec(&busy, "http");
    capped.argv = argv(&["python3", "-c", "while True: pass"]);
    capped.port = None;
    capped.cpu_limit_millis = Some(200);
    s.driver.create(&capped).await.expect("create");
    let before = s.driver.stats(&busy).await.expect("stats");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut after = s.driver.stats(&busy).await.expect("stats");
    // Counters sampled by a kubelet move on at its own pace: wait for a
    // sample two seconds on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while after.at_ms < before.at_ms + 2_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = s.driver.stats(&busy).await.expect("stats");
    }
    let used = after.cpu_ns.saturating_sub(before.cpu_ns);
    let wall = u64::try_from(after.at_ms - before.at_ms).expect("later") * 1_000_000;
    assert!(
        used * 10 < wall * 4,
        "a busy loop under a 0.2-CPU cap used {used} ns of CPU in {wall} ns"
    );
    assert!(used > 0);
    s.driver.remove(&busy).await.expect("remove");
    s.assert_nothing_left().await;
}

/// A server off the cluster's pod network reaches replicas through the API
/// server's port-forward: the address is a local port, and requests go
/// through to the pod; removing the replica closes the port.
#[tokio::test]
async fn kubernetes_replicas_are_reached_through_port_forward_when_asked() {
    let test = "k8s-port-forward";
    let Some(cluster) =
        cluster::cluster_or_skip_with(test, Some(hangar_runtime::kubernetes::Reach::PortForward))
            .await
    else {
        return;
    };
    assert_eq!(
        cluster.reach(),
        Some(hangar_runtime::kubernetes::Reach::PortForward)
    );
    let owner = engine::owner(test);
    let driver = hangar_runtime::KubernetesDriver::new(&owner).expect("owner");
    driver.add_cloud(CLOUD, cluster);
    let image = cluster::agents_image(test).await;
    let id = format!("rep-{}-forward", std::process::id());
    let mut spec = base_spec(&id, "http");
    spec.app = None;
    spec.image = Some(image);
    spec.argv[2] = "/agents/http/main.py".to_owned();
    spec.cwd = "/agents/http".to_owned();
    let info = driver.create(&spec).await.expect("create");
    let address = info.address.expect("an address");
    assert!(address.ip().is_loopback(), "a local port: {address}");
    wait_healthy(&info).await;
    let invoked = reqwest::Client::new()
        .post(format!("http://{address}/invoke"))
        .json(&serde_json::json!({"through": "port-forward"}))
        .send()
        .await
        .expect("invoke")
        .json::<serde_json::Value>()
        .await
        .expect("json");
    assert_eq!(invoked["output"]["echo"]["through"], "port-forward");
    assert_eq!(
        driver.inspect(&id).await.expect("inspect").address,
        Some(address),
        "one forward per replica"
    );
    driver.remove(&id).await.expect("remove");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "the local port closes with the replica"
    );
    cluster::remove_owned(&owner);
}

/// A cloud's network stays while any replica is made for it, started or
/// not: the engine lists only started containers on a network, and a
/// replica being created is started after the driver's network lock is let
/// go. The last replica's removal takes the network away.
#[tokio::test]
async fn docker_a_network_stays_for_a_replica_not_yet_started() {
    let Some(s) = Subject::new(Kind::Docker, "network_stays").await else {
        return;
    };
    let owner = engine::owner(&s.test);
    let network = format!("hangar-{owner}-cloud_conformance");
    let docker = |args: &[&str]| {
        std::process::Command::new("docker")
            .args(args)
            .output()
            .expect("docker")
    };
    let first = s.id("first");
    s.driver
        .create(&s.shell(&first, "sleep 600"))
        .await
        .expect("create");
    // What another create holds between making its container and starting it.
    let made = docker(&[
        "create",
        "--label",
        &format!("hangar.docker.owner={owner}"),
        "--label",
        &format!("hangar.docker.network={network}"),
        "--network",
        &network,
        engine::BASE_IMAGE,
        "true",
    ]);
    assert!(made.status.success(), "{made:?}");
    let made = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    s.driver.remove(&first).await.expect("remove");
    assert!(
        docker(&["network", "inspect", &network]).status.success(),
        "the network went with a replica created on it still waiting to start"
    );
    assert!(docker(&["rm", "-f", &made]).status.success());
    let last = s.id("last");
    s.driver
        .create(&s.shell(&last, "sleep 600"))
        .await
        .expect("create");
    s.driver.remove(&last).await.expect("remove");
    s.assert_nothing_left().await;
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sandbox {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(s) = super::Subject::new(super::Kind::Sandbox, stringify!($test)).await {
                        super::$test(s).await;
                    }
                }
            )*
        }
        mod docker {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(s) = super::Subject::new(super::Kind::Docker, stringify!($test)).await {
                        super::$test(s).await;
                    }
                }
            )*
        }
        mod kubernetes {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(s) = super::Subject::new(super::Kind::Kubernetes, stringify!($test)).await {
                        super::$test(s).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    http_replica_serves_execs_and_leaves_nothing,
    stop_is_graceful_then_forced,
    a_program_without_a_handler_ends_by_sigterm,
    crash_is_reported_and_the_replica_made_again,
    oom_kill_is_reported,
    stdin_answers_and_a_new_driver_adopts_the_replica,
    a_slow_follower_gets_every_line,
    bad_specs_and_unknown_replicas,
    limits_hold,
);
