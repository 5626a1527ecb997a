//! Work the servers on one PostgreSQL share runs once: builds queued at
//! once through three servers are each built by one of them, async jobs
//! accepted through all three each reach the agent once and complete once,
//! and every webhook delivery reaches a real receiver (a small HTTP server
//! here, counting by `webhook-id`) once after one retry of its schedule.
//! Then the work a server had in flight when it was killed (`kill -9`), a
//! build and a job, is taken up by the other server once the killed one's
//! claim runs out, and finishes once.
//!
//! Each server has its own data dir and port on this host (see
//! `leases.rs`). Needs root (sandboxes: build steps and replicas) and
//! PostgreSQL (`HANGAR_TEST_POSTGRES_URL`); with `CI=true` their absence
//! fails the test: `cargo test -p hangar --test exactly_once`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// What the receiver saw of one delivery: attempts, and 2xx answers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    attempts: u32,
    delivered: u32,
}

/// A webhook receiver on loopback that refuses the first attempt of every
/// delivery (503, so each follows the retry schedule once) and accepts the
/// next (204); counts both by `webhook-id`.
async fn receiver() -> (u16, Arc<Mutex<HashMap<String, Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
    let counted = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            let mut seen = counted.lock().expect("receiver's counts");
            let entry = seen.entry(id).or_default();
            entry.attempts += 1;
            let status = if entry.attempts == 1 {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                entry.delivered += 1;
                axum::http::StatusCode::NO_CONTENT
            };
            std::future::ready(status)
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

/// An agent tree whose build step says it ran (`step-ran <token>`) and then
/// takes `step_seconds`; the token makes its artifact its own (no build
/// reuses another's). The agent is the job tests' (`tests/agents/jobs`).
fn agent_tree(dir: &Path, token: &str, step_seconds: u32) -> PathBuf {
    std::fs::create_dir_all(dir).expect("agent dir");
    std::fs::copy(
        Path::new(&agent_dir("jobs")).join("main.py"),
        dir.join("main.py"),
    )
    .expect("main.py");
    std::fs::write(
        dir.join("hangar.toml"),
        format!("[build]\ncommand = \"echo step-ran {token}; sleep {step_seconds}\"\n"),
    )
    .expect("hangar.toml");
    dir.to_path_buf()
}

/// Creates an agent from the tree at `tree` through the server at `url`;
/// returns its ID.
async fn create_agent(url: &str, name: &str, tree: &Path, scaling: Value) -> String {
    let res = reqwest::Client::new()
        .post(format!("{url}/v1/agents"))
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(60))
        .json(&json!({
            "name": name,
            "cloud_id": "local",
            "source": {"type": "github", "repo": format!("file://{}", tree.display())},
            "scaling": scaling,
        }))
        .send()
        .await
        .expect("create agent");
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("body");
    assert_eq!(status, 201, "{body}");
    body["data"]["id"].as_str().expect("id").to_owned()
}

async fn latest_build(server: &Server, agent: &str) -> String {
    let agent = server.get(&format!("/v1/agents/{agent}")).await;
    agent["data"]["latest_build_id"]
        .as_str()
        .expect("latest_build_id")
        .to_owned()
}

/// Waits for a build to be ready or failed.
async fn build_finished(server: &Server, build: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let b = server.get(&format!("/v1/builds/{build}")).await["data"].clone();
        if b["status"] == "ready" || b["status"] == "failed" {
            return b;
        }
        assert!(Instant::now() < deadline, "build never finished: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A build's log lines.
async fn build_log(server: &Server, build: &str) -> Vec<String> {
    server
        .get(&format!("/v1/builds/{build}/logs?limit=1000"))
        .await["data"]["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// How often a build's step started, by its log.
fn step_runs(log: &[String]) -> usize {
    log.iter().filter(|l| l.starts_with("step-ran ")).count()
}

/// Every delivery to the endpoint, as stored.
async fn deliveries(
    db: &hangar_store::testing::TestDb,
    org: &str,
    hook: &str,
) -> Vec<hangar_core::events::Delivery> {
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = db
            .store
            .list_deliveries(org, hook, before.as_deref(), 100)
            .await
            .expect("deliveries");
        let full = page.len() == 100;
        before = page.last().map(|d| d.id.clone());
        all.extend(page);
        if !full {
            return all;
        }
    }
}

async fn submit(url: &str, agent: &str, input: Value) -> String {
    let res = reqwest::Client::new()
        .post(format!("{url}/v1/agents/{agent}/invoke"))
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(60))
        .json(&json!({"input": input, "async": true}))
        .send()
        .await
        .expect("submit");
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("body");
    assert_eq!(status, 202, "{body}");
    body["data"]["job_id"].as_str().expect("job_id").to_owned()
}

/// Waits for a job to end; returns it.
async fn job_finished(server: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let j = server.get(&format!("/v1/jobs/{id}")).await["data"].clone();
        if matches!(
            j["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return j;
        }
        assert!(Instant::now() < deadline, "job never finished: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per job ID, how often the agent logged `verb` in `path` of its sandbox.
async fn agent_counts(
    server: &Server,
    org: &str,
    instance: &str,
    path: &str,
    verb: &str,
) -> BTreeMap<String, usize> {
    let (status, text, _) = server
        .exec(
            org,
            instance,
            &["sh", "-c", &format!("cat {path} 2>/dev/null || true")],
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix(verb).and_then(|r| r.strip_prefix(' ')) {
            *counts.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// The server among `servers` that is node `node`.
async fn server_of<'s>(servers: &'s [Server], node: &str) -> &'s Server {
    for server in servers {
        if node_id(server).await == node {
            return server;
        }
    }
    panic!("no server is node {node}");
}

/// Waits until some node holds `instance`; returns that node.
async fn wait_holder(db: &hangar_store::testing::TestDb, instance: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((node, _)) = holder(db, instance).await {
            return node;
        }
        assert!(Instant::now() < deadline, "nobody holds {instance}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether `server` runs a replica whose name starts with `step`.
fn has_step(server: &Server, step: &str) -> bool {
    server.replica_ids().iter().any(|r| r.starts_with(step))
}

/// The dirs of servers killed by a test: the replicas (and build steps)
/// they left running are removed when it ends, however it ends.
#[derive(Default)]
struct Orphans(Vec<PathBuf>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for dir in &self.0 {
            kill_replicas_under(dir);
        }
    }
}

#[tokio::test]
async fn builds_jobs_and_webhook_deliveries_run_once_across_three_servers() {
    let Some(nodes) = Nodes::new(
        "exactly-once",
        &[
            "--webhook-allow-private",
            "--webhook-retry-schedule",
            "300ms,300ms,300ms",
        ],
    )
    .await
    else {
        return;
    };
    let (db, dir) = (&nodes.db, nodes.dir.clone());
    let servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|name| nodes.start(name))
        .collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let org = servers[0].org().await;

    // Every event goes to a receiver that refuses each delivery's first
    // attempt.
    let (port, seen) = receiver().await;
    let (status, hook, _, text) = servers[1]
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": []})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let hook = hook["data"]["id"].as_str().expect("id").to_owned();

    // Nine builds queued at once, three through each server; each has a
    // build step of its own (nothing reused). At zero replicas: only the
    // builds matter here.
    let creations = (0..9).map(|i| {
        let url = urls[i % urls.len()].clone();
        let tree = agent_tree(&dir.join(format!("tree-{i}")), &format!("build-{i}"), 1);
        async move {
            create_agent(
                &url,
                &format!("built-{i}"),
                &tree,
                json!({"min_instances": 0, "max_instances": 1}),
            )
            .await
        }
    });
    let agents = futures_join_all(creations).await;
    let mut builds = Vec::new();
    for agent in &agents {
        builds.push(latest_build(&servers[0], agent).await);
    }
    for build in &builds {
        let finished = build_finished(&servers[2], build).await;
        assert_eq!(finished["status"], "ready", "{finished}");
    }
    for (i, build) in builds.iter().enumerate() {
        let log = build_log(&servers[0], build).await;
        assert_eq!(
            step_runs(&log),
            1,
            "build {build} ran its step again: {log:#?}"
        );
        assert!(
            log.iter().any(|l| l == &format!("step-ran build-{i}")),
            "{log:#?}"
        );
    }
    let succeeded = events_by_subject(db, &org, "build.succeeded").await;
    for build in &builds {
        assert_eq!(succeeded.get(build), Some(&1), "{succeeded:?}");
    }
    assert!(events_by_subject(db, &org, "build.failed").await.is_empty());

    // Sixty async jobs accepted through all three servers at once: each
    // claimed once, by the server that runs the agent's replica, and run
    // once by the agent.
    let tree = agent_tree(&dir.join("tree-jobs"), "jobs", 0);
    let agent = create_agent(
        &urls[0],
        "jobber",
        &tree,
        json!({"min_instances": 1, "max_instances": 1}),
    )
    .await;
    let instance = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let a = servers[0].get(&format!("/v1/agents/{agent}")).await;
            if let Some(instance) = a["data"]["instance_id"].as_str() {
                break instance.to_owned();
            }
            assert!(Instant::now() < deadline, "never deployed: {a}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    servers[0]
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let submissions = (0..60).map(|n| {
        let url = urls[n % urls.len()].clone();
        let agent = agent.clone();
        async move { submit(&url, &agent, json!({"n": n, "sleep": 0.05})).await }
    });
    let jobs = futures_join_all(submissions).await;
    for (n, id) in jobs.iter().enumerate() {
        let j = job_finished(&servers[n % servers.len()], id).await;
        assert_eq!(j["status"], "completed", "{j}");
        assert_eq!(j["output"], json!({"n": n, "doubled": n * 2}), "{j}");
        assert_eq!(j["attempts"], 1, "claimed more than once: {j}");
    }
    let runner = server_of(&servers, &wait_holder(db, &instance).await).await;
    let delivered = agent_counts(runner, &org, &instance, "/tmp/deliveries.log", "deliver").await;
    let executed = agent_counts(runner, &org, &instance, "/tmp/executions.log", "execute").await;
    for id in &jobs {
        assert_eq!(delivered.get(id), Some(&1), "{id}: {delivered:?}");
        assert_eq!(executed.get(id), Some(&1), "{id}: {executed:?}");
    }
    let completed = events_by_subject(db, &org, "job.completed").await;
    for id in &jobs {
        assert_eq!(completed.get(id), Some(&1), "{id}: {completed:?}");
    }

    // Every delivery queued so far (builds, deployments, jobs: well over a
    // hundred) is delivered once, after exactly one refused attempt.
    let queued = deliveries(db, &org, &hook).await;
    assert!(queued.len() > 60 + 9, "{} deliveries", queued.len());
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let now = deliveries(db, &org, &hook).await;
        let pending: Vec<_> = now
            .iter()
            .filter(|d| queued.iter().any(|q| q.id == d.id))
            .filter(|d| d.status != hangar_core::events::DeliveryStatus::Delivered)
            .collect();
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never delivered: {} of {}: {:?}",
            pending.len(),
            queued.len(),
            pending.first()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored: HashMap<String, hangar_core::events::Delivery> = deliveries(db, &org, &hook)
        .await
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
    let seen = seen.lock().expect("counts").clone();
    for delivery in &queued {
        let got = seen.get(&delivery.id).copied().unwrap_or_default();
        assert_eq!(
            got,
            Seen {
                attempts: 2,
                delivered: 1
            },
            "{}: {:?}",
            delivery.id,
            stored.get(&delivery.id)
        );
        assert_eq!(
            stored[&delivery.id].attempts, 2,
            "{:?}",
            stored[&delivery.id]
        );
    }
    for (id, got) in &seen {
        assert!(got.delivered <= 1, "{id} delivered {} times", got.delivered);
        assert!(
            stored.contains_key(id),
            "{id} is no delivery of the endpoint"
        );
    }

    // Dropping a server removes the replicas under its dir.
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_build_and_a_job_in_flight_on_a_killed_server_finish_once_on_the_other() {
    // A server silent for 5 s is dead: its build's claim and its
    // instances' leases are taken then (its jobs' leases last 30 s).
    let Some(nodes) = Nodes::new("exactly-once-kill", &["--node-dead-after", "5"]).await else {
        return;
    };
    let (db, dir) = (&nodes.db, nodes.dir.clone());
    let mut orphans = Orphans::default();
    let mut servers = vec![nodes.start("a"), nodes.start("b")];
    let org = servers[0].org().await;

    // A build whose step takes 15 s: the server building it is killed
    // while the step runs.
    let tree = agent_tree(&dir.join("tree-slow"), "slow", 15);
    let agent = create_agent(
        &servers[0].url,
        "slow-build",
        &tree,
        json!({"min_instances": 0, "max_instances": 1}),
    )
    .await;
    let build = latest_build(&servers[0], &agent).await;
    // Its step's replica: `build-<id>-<the builder's boot>`.
    let step = format!("build-{}", build.trim_start_matches("build_"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let building = loop {
        let log = build_log(&servers[0], &build).await;
        if step_runs(&log) == 1 {
            if let Some(at) = servers.iter().position(|s| has_step(s, &step)) {
                break at;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the step never started: {log:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let killed = servers.remove(building);
    let killed_dir = killed.dir.clone();
    orphans.0.push(killed_dir.clone());
    killed.kill9();
    let survivor = &servers[0];
    let finished = build_finished(survivor, &build).await;
    assert_eq!(finished["status"], "ready", "{finished}");
    let log = build_log(survivor, &build).await;
    assert_eq!(step_runs(&log), 2, "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("queued again and starts over")),
        "{log:#?}"
    );
    assert_eq!(
        events_by_subject(db, &org, "build.succeeded")
            .await
            .get(&build),
        Some(&1)
    );
    assert!(events_by_subject(db, &org, "build.failed").await.is_empty());

    // The killed server comes back (removing the step it left) and both
    // run again; then a job is in flight on the server running its agent
    // when that server is killed.
    servers.push(nodes.start_at(&killed_dir));
    let deadline = Instant::now() + Duration::from_secs(60);
    while has_step(&servers[1], &step) {
        assert!(Instant::now() < deadline, "the leftover step stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tree = agent_tree(&dir.join("tree-jobs"), "jobs", 0);
    let agent = create_agent(
        &servers[0].url,
        "long-job",
        &tree,
        json!({"min_instances": 1, "max_instances": 1}),
    )
    .await;
    let instance = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let a = servers[0].get(&format!("/v1/agents/{agent}")).await;
            if let Some(instance) = a["data"]["instance_id"].as_str() {
                break instance.to_owned();
            }
            assert!(Instant::now() < deadline, "never deployed: {a}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    servers[0]
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let owner = wait_holder(db, &instance).await;
    let at = {
        let mut at = None;
        for (i, server) in servers.iter().enumerate() {
            if node_id(server).await == owner {
                at = Some(i);
            }
        }
        at.expect("a server holds the instance")
    };
    let other = 1 - at;
    // Accepted through the server that does not run it.
    let job = submit(&servers[other].url, &agent, json!({"n": 7, "sleep": 10})).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agent_counts(
        &servers[at],
        &org,
        &instance,
        "/tmp/deliveries.log",
        "deliver",
    )
    .await
    .contains_key(&job)
    {
        assert!(Instant::now() < deadline, "the job never reached the agent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = servers.remove(at);
    orphans.0.push(killed.dir.clone());
    killed.kill9();
    let survivor = &servers[0];
    let j = job_finished(survivor, &job).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["output"], json!({"n": 7, "doubled": 14}), "{j}");
    assert_eq!(j["attempts"], 2, "{j}");
    assert_eq!(
        events_by_subject(db, &org, "job.completed").await.get(&job),
        Some(&1)
    );
    let (node, _) = holder(db, &instance).await.expect("held");
    assert_eq!(node, node_id(survivor).await);
    let executed = agent_counts(survivor, &org, &instance, "/tmp/executions.log", "execute").await;
    assert_eq!(executed.get(&job), Some(&1), "{executed:?}");

    // The killed server's replica outlived it (until it would come back);
    // dropping a server removes the replicas under its dir.
    drop(orphans);
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}
