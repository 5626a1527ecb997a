//! The sandbox driver with real shims (`hangar shim`) and real sandboxes:
//! `cargo test -p hangar --test driver` as root. Without root each test says
//! why it is skipped, unless `CI=true`, where it fails instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hangar_runtime::driver::{
    DriverError, OutputEvent, OutputStream, ReplicaInfo, ReplicaSpec, StdinWait,
};
use hangar_runtime::{Driver, SandboxDriver, SandboxDriverConfig};

fn agent(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/agents")
        .join(name)
}

struct Fixture {
    driver: SandboxDriver,
    state_dir: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            let why = "sandbox driver tests need root";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}, and CI=true"
            );
            eprintln!("SKIPPED {name}: {why}");
            return None;
        }
        let state_dir =
            std::env::temp_dir().join(format!("hangar-driver-test-{}-{name}", std::process::id()));
        Some(Self {
            driver: driver(&state_dir),
            state_dir,
        })
    }

    fn assert_empty(&self) {
        for sub in ["shims", "sandboxes"] {
            let left: Vec<_> = std::fs::read_dir(self.state_dir.join(sub))
                .expect("state dir")
                .flatten()
                .map(|e| e.file_name())
                .filter(|name| name != ".cgroups.lock")
                .collect();
            assert!(left.is_empty(), "left in {sub}: {left:?}");
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn driver(state_dir: &Path) -> SandboxDriver {
    SandboxDriver::new(SandboxDriverConfig {
        shim_program: PathBuf::from(env!("CARGO_BIN_EXE_hangar")),
        state_dir: state_dir.to_path_buf(),
        host_network: false,
    })
    .expect("driver")
}

fn spec(id: &str, agent_name: &str) -> ReplicaSpec {
    ReplicaSpec {
        id: id.to_owned(),
        labels: BTreeMap::from([("hangar.instance".to_owned(), "inst_test".to_owned())]),
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
        app: Some(agent(agent_name)),
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
    }
}

fn replica_id(name: &str) -> String {
    format!("rep_{}_{name}", std::process::id())
}

async fn wait_healthy(info: &ReplicaInfo) {
    let address = info.address.expect("an address");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
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

/// Lines from a follow stream until `want` shows up (or 10 s pass).
async fn read_until(
    rx: &mut tokio::sync::mpsc::Receiver<OutputEvent>,
    want: &str,
) -> Vec<OutputEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
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

#[tokio::test]
async fn http_replica_runs_answers_execs_and_is_removed() {
    let Some(fx) = Fixture::new("http") else {
        return;
    };
    let id = replica_id("http");
    let info = fx.driver.create(&spec(&id, "http")).await.expect("create");
    assert!(info.exit.is_none());
    assert!(info.pid > 0);
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

    let mut output = fx.driver.follow(&id, 0).await.expect("follow");
    let seen = read_until(&mut output, "invoked with").await;
    assert!(
        seen.iter().any(|e| matches!(e, OutputEvent::Line(l) if l.text == "INFO listening on 8080" && l.stream == OutputStream::Stdout)),
        "{seen:?}"
    );

    let exec = fx
        .driver
        .exec(
            &id,
            &[
                "python3".to_owned(),
                "-c".to_owned(),
                "print(6*7)".to_owned(),
            ],
            &[],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "42\n");
    assert_eq!(exec.code, Some(0));

    // Egress through the shared masquerade rule, where the host has any.
    let url = "http://deb.debian.org/debian/";
    let host_reaches = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_ok();
    if host_reaches {
        let egress = fx
            .driver
            .exec(
                &id,
                &[
                    "python3".to_owned(),
                    "-c".to_owned(),
                    format!("import urllib.request; print(urllib.request.urlopen({url:?}, timeout=10).status)"),
                ],
                &[],
                Duration::from_secs(20),
            )
            .await
            .expect("exec");
        assert_eq!(
            String::from_utf8_lossy(&egress.stdout),
            "200\n",
            "no egress from the replica: {}",
            String::from_utf8_lossy(&egress.stderr)
        );
    } else {
        eprintln!("egress not checked: this host cannot reach {url} either");
    }

    let stats = fx.driver.stats(&id).await.expect("stats");
    assert!(stats.memory_bytes > 1 << 20, "{stats:?}");
    assert!(stats.cpu_ns > 0, "{stats:?}");
    assert!(stats.rx_bytes > 0, "{stats:?}");

    let exit = fx
        .driver
        .stop(&id, Duration::from_millis(300))
        .await
        .expect("stop");
    assert_eq!(
        exit.signal,
        Some(9),
        "python ignores SIGTERM as PID 1: {exit:?}"
    );
    assert!(matches!(
        fx.driver
            .exec(&id, &["true".to_owned()], &[], Duration::from_secs(5))
            .await,
        Err(DriverError::NotRunning(_))
    ));
    fx.driver.remove(&id).await.expect("remove");
    fx.assert_empty();
    assert!(matches!(
        fx.driver.inspect(&id).await,
        Err(DriverError::NotFound(_))
    ));
}

#[tokio::test]
async fn stdin_replica_answers_and_a_new_driver_readopts_it() {
    let Some(fx) = Fixture::new("stdin") else {
        return;
    };
    let id = replica_id("echo");
    let mut echo = spec(&id, "echo");
    echo.stdin = true;
    echo.port = None;
    fx.driver.create(&echo).await.expect("create");
    // Output after the write counts as the answer: let the banner pass first.
    let mut banner = fx.driver.follow(&id, 0).await.expect("follow");
    read_until(&mut banner, "ready").await;
    let wait = StdinWait {
        quiet: Duration::from_millis(200),
        timeout: Duration::from_secs(10),
    };
    let reply = fx.driver.stdin(&id, b"hello\n", wait).await.expect("stdin");
    assert_eq!(reply, "echo: hello\n");

    // A daemon restart: a new driver over the same state finds it.
    let again = driver(&fx.state_dir);
    let listed = again.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert!(listed[0].exit.is_none());
    assert_eq!(listed[0].labels["hangar.instance"], "inst_test");
    let reply = again.stdin(&id, b"again\n", wait).await.expect("stdin");
    assert_eq!(reply, "echo: again\n");
    let mut output = again.follow(&id, 1).await.expect("follow");
    let seen = read_until(&mut output, "echo: again").await;
    let texts: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            OutputEvent::Line(l) => Some(l.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["echo: hello", "echo: again"]);

    again.remove(&id).await.expect("remove");
    fx.assert_empty();
}

#[tokio::test]
async fn crashes_and_oom_kills_are_reported() {
    let Some(fx) = Fixture::new("crash") else {
        return;
    };
    let crash = replica_id("crash");
    let info = fx
        .driver
        .create(&spec(&crash, "crash"))
        .await
        .expect("create");
    let mut output = fx.driver.follow(&info.id, 0).await.expect("follow");
    let mut end = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), output.recv())
        .await
        .expect("an end")
    {
        if let OutputEvent::End(exit) = event {
            end = Some(exit);
        }
    }
    let exit = end.expect("end event");
    assert_eq!(exit.code, Some(3));
    assert!(!exit.oom_killed);
    assert_eq!(
        fx.driver.inspect(&crash).await.expect("inspect").exit,
        Some(exit)
    );

    let oom = replica_id("oom");
    fx.driver.create(&spec(&oom, "oom")).await.expect("create");
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = fx.driver.inspect(&oom).await.expect("inspect").exit {
            break exit;
        }
        assert!(Instant::now() < deadline, "never OOM-killed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.oom_killed, "{exit:?}");
    assert!(exit.describe().contains("out of memory"));

    for id in [crash, oom] {
        fx.driver.remove(&id).await.expect("remove");
    }
    fx.assert_empty();
}

#[tokio::test]
async fn a_replica_whose_shim_died_is_reported_and_cleaned_up() {
    let Some(fx) = Fixture::new("lost") else {
        return;
    };
    let id = replica_id("lost");
    let info = fx.driver.create(&spec(&id, "http")).await.expect("create");
    wait_healthy(&info).await;
    let shim_pid = std::fs::read_to_string(format!("/proc/{}/stat", info.pid))
        .expect("stat")
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split(' ').nth(1).map(str::to_owned))
        .expect("ppid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid.parse().expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listed = fx.driver.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].exit.is_some(), "{listed:?}");
    fx.driver.remove(&id).await.expect("remove");
    fx.assert_empty();
    // Gone, or a zombie waiting for whoever inherited it to reap it.
    let state = std::fs::read_to_string(format!("/proc/{}/stat", info.pid))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next()));
    assert!(
        matches!(state, None | Some(Some('Z'))),
        "the replica's process survived: {state:?}"
    );
}

#[tokio::test]
async fn a_follower_slower_than_the_replica_gets_every_line() {
    let Some(fx) = Fixture::new("flood") else {
        return;
    };
    let id = replica_id("flood");
    // 60,000 lines (six times the shim's buffer) written as fast as the pipe
    // takes them, then a last line.
    let mut flood = spec(&id, "http");
    flood.argv = vec![
        "python3".to_owned(),
        "-c".to_owned(),
        "import sys\nsys.stdout.write(''.join(f'line {i}\\n' for i in range(1, 60001)))\nsys.stdout.flush()\nprint('done', flush=True)\n"
            .to_owned(),
    ];
    flood.port = None;
    fx.driver.create(&flood).await.expect("create");
    let mut output = fx.driver.follow(&id, 0).await.expect("follow");
    let mut lines = Vec::new();
    let mut gaps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(30), output.recv()).await {
        match event {
            OutputEvent::Line(line) => {
                lines.push(line.text);
                // A slow reader: the replica must wait for it, not lose lines.
                if lines.len() % 2_000 == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            OutputEvent::Gap { through } => gaps.push(through),
            OutputEvent::End(_) => break,
        }
        assert!(Instant::now() < deadline, "the flood never ended");
    }
    assert!(gaps.is_empty(), "lines were dropped through {gaps:?}");
    assert_eq!(lines.len(), 60_001, "last: {:?}", lines.last());
    assert!(lines[..60_000]
        .iter()
        .enumerate()
        .all(|(i, l)| *l == format!("line {}", i + 1)));
    assert_eq!(lines[60_000], "done");
    fx.driver.remove(&id).await.expect("remove");
    fx.assert_empty();
}

#[tokio::test]
async fn a_follower_that_stops_reading_holds_the_replica_back_only_once() {
    let Some(fx) = Fixture::new("stall") else {
        return;
    };
    let id = replica_id("stall");
    let mut flood = spec(&id, "http");
    flood.argv = vec![
        "python3".to_owned(),
        "-c".to_owned(),
        "import sys\nsys.stdout.write(''.join(f'line {i}\\n' for i in range(1, 60001)))\nsys.stdout.flush()\n"
            .to_owned(),
    ];
    flood.port = None;
    fx.driver.create(&flood).await.expect("create");
    // Attached, and never read: the shim pauses once for it, then reads on.
    let _stalled = fx.driver.follow(&id, 0).await.expect("follow");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if fx
            .driver
            .inspect(&id)
            .await
            .expect("inspect")
            .exit
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a stalled follower kept the replica from finishing its output"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fx.driver.remove(&id).await.expect("remove");
    fx.assert_empty();
}
