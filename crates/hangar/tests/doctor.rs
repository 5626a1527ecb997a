//! `hangar doctor` on this host, as root and as an unprivileged user, and
//! what a `hangar serve` not run as root says and answers: a notice in its
//! first lines pointing at `hangar doctor`, and 503 `RUNTIME_UNAVAILABLE`
//! naming the reason for every request that would need an agent to run
//! here. The unprivileged runs use `setpriv` (util-linux) to become uid
//! 65534, so these tests need root: `cargo test -p hangar --test doctor`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

mod common;

use common::*;

/// Every check `hangar doctor` reports, in its order.
const CHECKS: [&str; 10] = [
    "root",
    "cgroups",
    "network",
    "data dir",
    "python",
    "node",
    "git",
    "database",
    "docker",
    "kubernetes",
];

/// The unprivileged user the tests become (nobody on Debian).
const NOBODY: u32 = 65534;

/// `hangar` run as `NOBODY`, with no supplementary groups.
fn as_nobody() -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_hangar"));
    command
}

/// A fresh directory `NOBODY` owns (and so may write).
fn nobody_dir(tag: &str) -> std::path::PathBuf {
    let dir = temp(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    chown_tree(&dir);
    dir
}

/// Gives `NOBODY` everything under `dir`.
fn chown_tree(dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(status.success(), "chown -R {}", dir.display());
    // Its parent (the temp dir) must let NOBODY through.
    let parent = dir.parent().expect("parent");
    let mode = std::fs::metadata(parent)
        .expect("parent")
        .permissions()
        .mode();
    assert!(
        mode & 0o001 != 0,
        "{} is not searchable by others",
        parent.display()
    );
}

/// The lines of `hangar doctor`'s report and its exit code.
fn doctor(mut command: Command, dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .current_dir(dir)
        .arg("doctor")
        .args(args)
        .output()
        .expect("run hangar doctor");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        stderr.is_empty(),
        "doctor reports on stdout: {}",
        String::from_utf8_lossy(&stderr)
    );
    (status.code(), stdout)
}

/// The report's line for check `name`.
fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|line| {
            let mut words = line.split_whitespace().skip(1);
            name.split(' ').all(|part| words.next() == Some(part))
        })
        .unwrap_or_else(|| panic!("no {name} line in:\n{report}"))
}

#[test]
fn doctor_as_root_passes_and_reports_every_check() {
    if !root_or_skip("doctor as root") {
        return;
    }
    let dir = temp("doctor-root");
    std::fs::create_dir_all(&dir).expect("dir");
    let (code, report) = doctor(
        Command::new(env!("CARGO_BIN_EXE_hangar")),
        &dir,
        &["--data-dir", "data"],
    );
    assert_eq!(code, Some(0), "serve can run agents here:\n{report}");
    for check in CHECKS {
        let found = line(&report, check);
        let status = found.split_whitespace().next().unwrap_or_default();
        assert!(
            ["ok", "warn"].contains(&status),
            "{check} did not fail: {found}"
        );
        if status == "warn" {
            assert!(
                found.contains(" — fix: "),
                "a warning says the fix: {found}"
            );
        }
    }
    assert!(line(&report, "root").starts_with("  ok"), "{report}");
    assert!(
        line(&report, "data dir").contains("not there yet"),
        "the doctor creates nothing: {report}"
    );
    assert!(
        !dir.join("data").exists(),
        "the doctor created the data dir"
    );
    assert!(
        report
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("hangar serve can run agents here")),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn doctor_as_an_unprivileged_user_fails_and_says_root_is_missing() {
    if !root_or_skip("doctor as nobody") {
        return;
    }
    let dir = nobody_dir("doctor-nobody");
    let (code, report) = doctor(as_nobody(), &dir, &[]);
    assert_eq!(code, Some(1), "{report}");
    let root = line(&report, "root");
    assert!(root.starts_with("  FAIL"), "{report}");
    assert!(
        root.contains(&format!("not running as root (uid {NOBODY})"))
            && root.contains("RUNTIME_UNAVAILABLE")
            && root.contains("fix: run `hangar serve` as root"),
        "{root}"
    );
    assert!(
        line(&report, "data dir").starts_with("  ok"),
        "its own dir is writable: {report}"
    );
    assert!(
        report
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("hangar serve cannot run agents here")),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn doctor_checks_the_database_serve_would_open() {
    let dir = temp("doctor-db");
    std::fs::create_dir_all(&dir).expect("dir");
    // Nothing listens on port 1: refused at once.
    let (code, report) = doctor(
        Command::new(env!("CARGO_BIN_EXE_hangar")),
        &dir,
        &[
            "--database-url",
            "postgres://hangar:sesame@127.0.0.1:1/hangar",
        ],
    );
    assert_eq!(code, Some(1), "serve could not start:\n{report}");
    let database = line(&report, "database");
    assert!(
        database.starts_with("  FAIL") && database.contains("does not answer"),
        "{database}"
    );
    assert!(
        !report.contains("sesame"),
        "the password is hidden: {report}"
    );

    // The same through the environment, as serve reads it.
    let mut command = Command::new(env!("CARGO_BIN_EXE_hangar"));
    command.env(
        "HANGAR_DATABASE_URL",
        "postgres://hangar@127.0.0.1:1/hangar",
    );
    let (_, report) = doctor(command, &dir, &[]);
    assert!(line(&report, "database").starts_with("  FAIL"), "{report}");

    // A PostgreSQL that answers (CI=true: there must be one).
    let postgres = hangar_store::testing::backends()
        .into_iter()
        .find(|backend| *backend == hangar_store::Backend::Postgres);
    if let Some(backend) = postgres {
        let db = hangar_store::testing::TestDb::new(backend).await;
        let (_, report) = doctor(
            Command::new(env!("CARGO_BIN_EXE_hangar")),
            &dir,
            &["--database-url", &db.url],
        );
        let database = line(&report, "database");
        assert!(
            database.starts_with("  ok") && database.contains("answers"),
            "{database}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server process, killed when the test ends, failed or not.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `hangar serve` as `NOBODY` in `dir`: the process, its URL, and the
/// stderr lines printed before it listened.
fn serve_as_nobody(dir: &Path) -> (Running, String, Vec<String>) {
    let child = as_nobody()
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("HANGAR_ADMIN_KEY", KEY)
        .env("HANGAR_RATE_LIMIT", "off")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hangar serve as nobody");
    let mut child = Running(child);
    let (lines, seen) = mpsc::channel();
    let stderr = BufReader::new(child.0.stderr.take().expect("stderr"));
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
    let url = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "serve exited: {:?}",
            seen.try_iter().collect::<Vec<_>>()
        );
        if let Some(rest) = line.strip_prefix("hangar listening on ") {
            break rest.split_whitespace().next().expect("url").to_owned();
        }
    };
    std::thread::spawn(move || for _ in stdout.lines() {});
    // The lines it wrote to stderr before its first log line: the
    // start-up block, which ends with its verdict. (The wait is only a
    // guard against a server that prints neither.)
    let mut before = Vec::new();
    while let Ok(line) = seen.recv_timeout(Duration::from_secs(30)) {
        let block = line.starts_with("hangar: ");
        let verdict =
            block && !line.starts_with("hangar: FAIL") && !line.starts_with("hangar: warn");
        before.push(line);
        if !block || verdict {
            break;
        }
    }
    (child, url, before)
}

async fn call(url: &str, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("{url}{path}"))
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(30))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_server_not_run_as_root_says_so_first_and_refuses_work_for_agents() {
    if !root_or_skip("serve as nobody") {
        return;
    }
    // An agent with a ready build and an instance, made by a server that
    // runs agents; then the same data dir served by a normal user.
    let dir = temp("doctor-serve");
    let _ = std::fs::remove_dir_all(&dir);
    let root = Server::start(&dir);
    let org = root.org().await;
    let (instance, agent, build) = root.deploy_echo_at_zero().await;
    root.kill9();
    kill_replicas_under(&dir);
    chown_tree(&dir);

    let (server, url, first) = serve_as_nobody(&dir);
    // The notice comes first, before any log line, and says what to run.
    assert!(
        first.first().is_some_and(
            |l| l.starts_with("hangar: FAIL  root") && l.contains("not running as root")
        ),
        "{first:#?}"
    );
    let notice = first
        .iter()
        .take_while(|l| l.starts_with("hangar: "))
        .find(|l| l.contains("WILL NOT RUN AGENTS"));
    assert!(
        notice.is_some_and(|l| l.contains("hangar doctor")),
        "the block ends with the verdict and points at hangar doctor: {first:#?}"
    );

    let refused = |(status, body): (u16, Value), what: &str| {
        assert_eq!(status, 503, "{what}: {body}");
        assert_eq!(
            body["error"]["code"], "RUNTIME_UNAVAILABLE",
            "{what}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("not running as root") && message.contains("hangar doctor"),
            "{what} names the reason: {message}"
        );
    };
    use reqwest::Method;
    refused(
        call(
            &url,
            Method::POST,
            "/v1/agents",
            json!({"name": "another", "cloud_id": "local",
                   "source": {"type": "github", "repo": format!("file://{}", agent_dir("echo"))}}),
        )
        .await,
        "creating an agent",
    );
    refused(
        call(
            &url,
            Method::POST,
            "/instances",
            json!({"name": "echo-copy", "agent_id": agent, "build_id": build, "organization_id": org}),
        )
        .await,
        "creating an instance",
    );
    refused(
        call(
            &url,
            Method::POST,
            &format!("/v1/agents/{agent}/start"),
            json!({}),
        )
        .await,
        "starting an agent",
    );
    refused(
        call(
            &url,
            Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            json!({"input": {"text": "hi"}}),
        )
        .await,
        "invoking",
    );
    refused(
        call(
            &url,
            Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            json!({"input": {}, "async": true}),
        )
        .await,
        "queueing a job",
    );
    refused(
        call(
            &url,
            Method::POST,
            &format!("/instances/{org}/{instance}/exec"),
            json!(["true"]),
        )
        .await,
        "exec",
    );
    refused(
        call(
            &url,
            Method::POST,
            &format!("/instances/{org}/{instance}/stdin"),
            json!({"input": "hi\n"}),
        )
        .await,
        "stdin",
    );
    refused(
        call(&url, Method::GET, "/agents/echo/", Value::Null).await,
        "the agent's URL",
    );
    // What needs no agent running still works.
    let (status, body) = call(
        &url,
        Method::GET,
        &format!("/v1/agents/{agent}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the local Docker engine answers; with `CI=true` it must.
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
async fn docker_answers(test: &str) -> bool {
    let connected = hangar_runtime::DockerDriver::connect(hangar_runtime::DockerDriverConfig {
        host: None,
        owner: "doctortest".to_owned(),
        default_image: "debian:bookworm-slim".to_owned(),
    })
    .await;
    if let Err(err) = connected {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no Docker engine ({err}), and CI=true"
        );
        eprintln!("SKIPPED {test} (the docker half): no Docker engine: {err}");
        return false;
    }
    true
}

#[tokio::test]
async fn engines_that_answer_are_ok_and_missing_ones_only_warn() {
    let dir = temp("doctor-engines");
    std::fs::create_dir_all(&dir).expect("dir");
    let missing_kubeconfig = dir.join("no-such-kubeconfig");
    // Nothing there: a warning each, with the fix, never a failure.
    let mut command = Command::new(env!("CARGO_BIN_EXE_hangar"));
    command.env("KUBECONFIG", &missing_kubeconfig);
    let (_, report) = doctor(command, &dir, &["--docker-host", "tcp://127.0.0.1:1"]);
    let docker = line(&report, "docker");
    assert!(
        docker.starts_with("  warn")
            && docker.contains("tcp://127.0.0.1:1")
            && docker.contains(" — fix: "),
        "{docker}"
    );
    let kubernetes = line(&report, "kubernetes");
    assert!(
        kubernetes.starts_with("  warn")
            && kubernetes.contains("no-such-kubeconfig")
            && kubernetes.contains(" — fix: "),
        "{kubernetes}"
    );

    // The engine and the cluster this machine has (CI=true: both), as
    // serve would find them.
    let (_, report) = doctor(Command::new(env!("CARGO_BIN_EXE_hangar")), &dir, &[]);
    if docker_answers("engines").await {
        let docker = line(&report, "docker");
        assert!(
            docker.starts_with("  ok") && docker.contains("docker clouds build and run here"),
            "{docker}"
        );
    }
    if kubernetes::cluster_or_skip("doctor engines")
        .await
        .is_some()
    {
        let kubernetes = line(&report, "kubernetes");
        assert!(
            kubernetes.starts_with("  ok") && kubernetes.contains("answers"),
            "{kubernetes}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_clusters_of_the_kubernetes_clouds_in_the_database_are_checked() {
    let dir = temp("doctor-clouds");
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("dir");
    // A database as serve leaves it, with a kubernetes cloud whose
    // kubeconfig is gone (the API checks a new cloud's cluster; a file can
    // vanish later).
    let url = format!("sqlite://{}", data.join("hangar.db").display());
    let sealer = hangar_store::seal::Sealer::new(&hangar_store::seal::Sealer::generate_key())
        .expect("sealer");
    let store = hangar_store::Store::connect(&url, sealer)
        .await
        .expect("store");
    let boot = store.bootstrap(None).await.expect("bootstrap");
    let gone = dir.join("gone.kubeconfig");
    store
        .create_cloud(
            &boot.organization.id,
            "k8s-gone",
            hangar_core::model::DriverKind::Kubernetes,
            &json!({"kubeconfig": gone.to_string_lossy()}),
            None,
        )
        .await
        .expect("cloud");
    store.close().await;

    let (_, report) = doctor(
        Command::new(env!("CARGO_BIN_EXE_hangar")),
        &dir,
        &["--data-dir", "data"],
    );
    let kubernetes = line(&report, "kubernetes");
    assert!(
        kubernetes.starts_with("  warn")
            && kubernetes.contains("cloud 'k8s-gone'")
            && kubernetes.contains(&gone.to_string_lossy().into_owned())
            && kubernetes.contains(" — fix: "),
        "{kubernetes}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
