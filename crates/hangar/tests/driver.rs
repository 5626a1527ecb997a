//! What only the sandbox driver has, with real shims (`hangar shim`) and
//! real sandboxes: a shim that dies, a follower that stalls a shim. What
//! every driver does is in the conformance suite (`tests/conformance.rs`).
//! `cargo test -p hangar --test driver` as root. Without root each test says
//! why it is skipped, unless `CI=true`, where it fails instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hangar_runtime::driver::{ReplicaInfo, ReplicaSpec};
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
    #[allow(
        clippy::disallowed_methods,
        reason = "CI=true makes a missing prerequisite a failure, not a skip"
    )]
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
                // The state dir's lock files stay.
                .filter(|name| !name.to_string_lossy().starts_with('.'))
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
        image_auth: None,
        network: Default::default(),
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

/// A plain Python agent (the `http` test agent installs no signal handler)
/// stopped gracefully ends by the SIGTERM of the stop, reported as such by
/// the stop, by inspect and at the end of its output — not by the SIGKILL
/// that followed the grace period while the agent was the sandbox's PID 1.
#[tokio::test]
async fn a_plain_python_agent_ends_by_the_sigterm_of_a_graceful_stop() {
    let Some(fx) = Fixture::new("term") else {
        return;
    };
    let id = replica_id("term");
    let info = fx.driver.create(&spec(&id, "http")).await.expect("create");
    wait_healthy(&info).await;
    let mut output = fx.driver.follow(&id, 0).await.expect("follow");
    // Far longer than the test may take: only SIGTERM can end it.
    let exit = fx
        .driver
        .stop(&id, Duration::from_secs(600))
        .await
        .expect("stop");
    assert_eq!(
        (exit.code, exit.signal, exit.oom_killed),
        (None, Some(15), false),
        "{exit:?}"
    );
    assert_eq!(
        fx.driver.inspect(&id).await.expect("inspect").exit,
        Some(exit)
    );
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), output.recv()).await {
            Ok(Some(hangar_runtime::driver::OutputEvent::End(end))) => break end,
            Ok(Some(_)) => {}
            other => panic!("the output never ended: {other:?}"),
        }
    };
    assert_eq!(end, exit);
    fx.driver.remove(&id).await.expect("remove");
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
