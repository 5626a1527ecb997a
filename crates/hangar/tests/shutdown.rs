//! SIGTERM with work in flight, for real: `hangar serve` as a process, a
//! build whose sandboxed step is still running, async jobs running on a
//! sandboxed agent, and a webhook delivery whose receiver has not answered.
//! The server exits 0 within its grace period and leaves each of them in a
//! state the next start continues (read from its database while it is
//! down); started again, it finishes them all, and the receiver is sent
//! the cut-off delivery again under the same `webhook-id`. Needs root like
//! `run.rs`: `cargo test -p hangar --test shutdown`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_core::events::DeliveryStatus;
use hangar_core::status::{BuildStatus, JobStatus};
use serde_json::{json, Value};

mod common;

use common::*;

/// A webhook receiver that records every attempt (its `webhook-id` and
/// body) and, while `hold` is set, never answers.
#[derive(Default)]
struct Receiver {
    hold: AtomicBool,
    got: Mutex<Vec<(String, Value)>>,
}

impl Receiver {
    fn got(&self) -> Vec<(String, Value)> {
        self.got.lock().expect("lock").clone()
    }
}

async fn receive(
    axum::extract::State(receiver): axum::extract::State<Arc<Receiver>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let payload = serde_json::from_slice(&body).unwrap_or(Value::Null);
    receiver.got.lock().expect("lock").push((id, payload));
    if receiver.hold.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    axum::http::StatusCode::NO_CONTENT
}

/// Starts the receiver on a free loopback port; returns its URL.
async fn start_receiver(receiver: Arc<Receiver>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Waits (a generous deadline: a wait, not a timing claim) until `done`.
async fn wait_for<T>(what: &str, mut done: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(value) = done().await {
            return value;
        }
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit(server: &Server, agent: &str, input: Value) -> String {
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": input, "async": true})),
        )
        .await;
    assert_eq!(status, 202, "{text}");
    body["data"]["job_id"].as_str().expect("job_id").to_owned()
}

async fn job(server: &Server, id: &str) -> Value {
    server.get(&format!("/v1/jobs/{id}")).await["data"].clone()
}

async fn build(server: &Server, id: &str) -> Value {
    server.get(&format!("/v1/builds/{id}")).await["data"].clone()
}

async fn build_log(server: &Server, id: &str) -> String {
    server.get(&format!("/v1/builds/{id}/logs")).await["data"]["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An agent whose build step takes a while (longer than the server's
/// drain), then runs like `tests/agents/echo`.
fn slow_build_source(dir: &Path) -> String {
    let source = dir.join("slow-build");
    std::fs::create_dir_all(&source).expect("source dir");
    std::fs::copy(
        Path::new(&agent_dir("echo")).join("main.py"),
        source.join("main.py"),
    )
    .expect("main.py");
    std::fs::write(
        source.join("hangar.toml"),
        "[build]\ncommand = \"echo step started; sleep 20; echo step done\"\n",
    )
    .expect("hangar.toml");
    format!("file://{}", source.display())
}

/// Removes the replicas under a data dir however the test ends: they
/// outlive the server on purpose between its two starts.
struct Replicas<'a>(&'a Path);

impl Drop for Replicas<'_> {
    fn drop(&mut self) {
        kill_replicas_under(self.0);
    }
}

/// The webhook receiver listens on loopback: the operator allows it.
const FLAGS: [&str; 3] = [
    "--webhook-retry-schedule",
    "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s",
    "--webhook-allow-private",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_builds_jobs_and_deliveries_and_the_next_start_finishes_them() {
    if !root_or_skip("shutdown") {
        return;
    }
    let dir = temp("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let replicas = Replicas(&dir);
    let receiver = Arc::new(Receiver::default());
    receiver.hold.store(true, Ordering::SeqCst);
    let hook_url = start_receiver(receiver.clone()).await;

    let mut server = Server::start_with(&dir, &FLAGS);
    let org = server.org().await;
    let (status, hook, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": hook_url, "events": ["job.completed"]})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let hook = hook["data"]["id"].as_str().expect("id").to_owned();
    let (jobs_agent, _) = server.deploy_running("jobber", "jobs", json!({})).await;

    // A build whose step is running.
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/v1/agents",
            Some(json!({
                "name": "slow-build",
                "cloud_id": "local",
                "source": {"type": "github", "repo": slow_build_source(&dir)},
            })),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let built_agent = created["data"]["id"].as_str().expect("id").to_owned();
    let slow_build = server
        .get(&format!("/v1/agents/{built_agent}/builds"))
        .await["data"][0]["id"]
        .as_str()
        .expect("build")
        .to_owned();
    wait_for("the build step started", async || {
        build_log(&server, &slow_build)
            .await
            .contains("step started")
            .then_some(())
    })
    .await;

    // Jobs running: one longer than the drain, one shorter.
    let long_job = submit(&server, &jobs_agent, json!({"sleep": 20, "n": 1})).await;
    let short_job = submit(&server, &jobs_agent, json!({"sleep": 3, "n": 2})).await;
    for id in [&long_job, &short_job] {
        wait_for("a job running", async || {
            (job(&server, id).await["status"] == "running").then_some(())
        })
        .await;
    }
    // A delivery under way: a quick job's completion, sent to a receiver
    // that does not answer.
    let quick_job = submit(&server, &jobs_agent, json!({"n": 3})).await;
    wait_for("the quick job's delivery sent", async || {
        receiver
            .got()
            .iter()
            .any(|(_, body)| body["data"]["subject"] == quick_job.as_str())
            .then_some(())
    })
    .await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    // Generous: the grace period is 30 s, after which the server would
    // exit 1 rather than 0.
    let exited = wait_for("exited after SIGTERM", async || {
        server.child.try_wait().expect("wait")
    })
    .await;
    assert_eq!(exited.code(), Some(0), "a drained shutdown exits 0");
    // Replicas outlive the server: the next start adopts them.
    server.keep_dir = true;
    drop(server);
    receiver.hold.store(false, Ordering::SeqCst);

    // Down: nothing is half-written.
    {
        let store = hangar_store::Store::connect(
            &format!("sqlite://{}", dir.join("hangar-data/hangar.db").display()),
            hangar_store::seal::Sealer::new(&hangar_store::seal::Sealer::generate_key())
                .expect("sealer"),
        )
        .await
        .expect("open the stopped server's database");
        let b = store
            .get_build(&org, &slow_build)
            .await
            .expect("build")
            .expect("exists");
        assert!(
            matches!(b.status, BuildStatus::Queued | BuildStatus::Ready),
            "the build is queued again (or finished), not left building: {b:?}"
        );
        for id in [&long_job, &short_job, &quick_job] {
            let j = store.get_job(&org, id).await.expect("job").expect("exists");
            assert!(
                matches!(j.status, JobStatus::Pending | JobStatus::Completed),
                "a job is released (or finished), not left running: {j:?}"
            );
        }
        for id in [&short_job, &quick_job] {
            let j = store.get_job(&org, id).await.expect("job").expect("exists");
            assert_eq!(j.status, JobStatus::Completed, "{j:?}");
        }
        let deliveries = store
            .list_deliveries(&org, &hook, None, 100)
            .await
            .expect("deliveries");
        assert!(
            deliveries
                .iter()
                .all(|d| d.status == DeliveryStatus::Pending),
            "no delivery is lost or given up: {deliveries:?}"
        );
        // Which way each went depends on the machine's pace; both are right.
        eprintln!(
            "after SIGTERM: build {}, long job {}, deliveries {:?}",
            b.status,
            store
                .get_job(&org, &long_job)
                .await
                .expect("job")
                .expect("exists")
                .status,
            deliveries
                .iter()
                .map(|d| (d.attempts, d.last_error.clone()))
                .collect::<Vec<_>>()
        );
        store.close().await;
    }

    // Started again: everything finishes.
    let server = Server::start_with(&dir, &FLAGS);
    let b = wait_for("the build finished", async || {
        let b = build(&server, &slow_build).await;
        (b["status"] == "ready" || b["status"] == "failed").then_some(b)
    })
    .await;
    assert_eq!(b["status"], "ready", "{b}");
    let log = build_log(&server, &slow_build).await;
    assert!(log.contains("step done"), "{log}");
    for (id, n) in [(&long_job, 1), (&short_job, 2), (&quick_job, 3)] {
        let j = wait_for("a job finished", async || {
            let j = job(&server, id).await;
            (j["status"] != "pending" && j["status"] != "running").then_some(j)
        })
        .await;
        assert_eq!(j["status"], "completed", "{j}");
        assert_eq!(j["output"], json!({"n": n, "doubled": n * 2}), "{j}");
    }
    let deliveries = wait_for("every delivery delivered", async || {
        let d = server.get(&format!("/v1/webhooks/{hook}/deliveries")).await["data"]
            .as_array()
            .expect("deliveries")
            .clone();
        (d.len() == 3 && d.iter().all(|d| d["status"] == "delivered")).then_some(d)
    })
    .await;
    // One delivery per event, sent again (not anew) when cut off: every
    // attempt the receiver saw for an event carries that event's one ID.
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, body) in receiver.got() {
        let event = body["data"]["event_id"]
            .as_str()
            .expect("event_id")
            .to_owned();
        ids.entry(event).or_default().insert(id);
    }
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.values().all(|set| set.len() == 1), "{ids:?}");
    let quick_delivery = receiver
        .got()
        .iter()
        .filter(|(_, body)| body["data"]["subject"] == quick_job.as_str())
        .count();
    assert!(
        quick_delivery >= 2,
        "the cut-off delivery was sent again: {deliveries:?}"
    );
    drop(server);
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
}
