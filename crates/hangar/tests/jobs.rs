//! Async jobs end to end: a real `hangar serve`, a real sandboxed agent
//! (`tests/agents/jobs`, which logs every delivery and dedupes on the job id
//! it is sent), and `kill -9` of the server with jobs accepted.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{root_or_skip, temp, Server};
use serde_json::{json, Value};

/// The per-agent cap the kill test runs with.
const CAP: usize = 4;

async fn invoke(server: &Server, agent: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/agents/{agent}/invoke", server.url))
        .bearer_auth(common::KEY)
        .timeout(Duration::from_secs(60))
        .json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let res = req.send().await.expect("invoke");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn submit(server: &Server, agent: &str, key: Option<&str>, input: Value) -> String {
    let (status, body) = invoke(server, agent, key, json!({"input": input, "async": true})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["status"], "pending", "{body}");
    body["data"]["job_id"].as_str().expect("job_id").to_owned()
}

async fn job(server: &Server, id: &str) -> Value {
    server.get(&format!("/v1/jobs/{id}")).await["data"].clone()
}

/// Polls a job until `done` holds (a generous deadline: this is a wait, not
/// a timing claim).
async fn wait_job(server: &Server, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = job(server, id).await;
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job never {what}: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn finished(j: &Value) -> bool {
    matches!(
        j["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// Lines of a file in the agent's sandbox.
async fn agent_file(server: &Server, org: &str, instance: &str, path: &str) -> Vec<String> {
    let (status, text, _) = server
        .exec(
            org,
            instance,
            &["sh", "-c", &format!("cat {path} 2>/dev/null || true")],
        )
        .await;
    assert_eq!(status, 200, "{text}");
    text.lines().map(str::to_owned).collect()
}

/// Per job id, how often `verb` was logged.
fn counts(lines: &[String], verb: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lines {
        if let Some(id) = line.strip_prefix(verb).and_then(|r| r.strip_prefix(' ')) {
            *out.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    out
}

async fn deploy_jobs_agent(server: &Server, name: &str) -> (String, String) {
    server.deploy_running(name, "jobs", json!({})).await
}

#[tokio::test]
async fn async_jobs_complete_fail_are_cancelled_and_keyed() {
    if !root_or_skip("jobs") {
        return;
    }
    let server = Server::start(&temp("jobs"));
    let org = server.org().await;
    let (agent, instance) = deploy_jobs_agent(&server, "jobber").await;

    // Completes with the agent's output.
    let ok = submit(&server, &agent, None, json!({"n": 21})).await;
    let j = wait_job(&server, &ok, "finished", finished).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["output"], json!({"n": 21, "doubled": 42}));
    assert_eq!(j["usage"], json!({"tokens_used": 1}));
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["instance_id"], instance.as_str());
    assert!(
        j["started_at"].is_string() && j["finished_at"].is_string() && j["latency_ms"].is_u64(),
        "{j}"
    );

    // The agent's error fails the job, without a retry.
    let bad = submit(&server, &agent, None, json!({"fail": true})).await;
    let j = wait_job(&server, &bad, "finished", finished).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["error"]["code"], "AGENT_ERROR");
    assert_eq!(j["error"]["details"]["agent_status"], 500);
    assert_eq!(j["attempts"], 1);

    // Cancelling a running job stops the agent's work: its request is aborted.
    let slow = submit(&server, &agent, None, json!({"sleep": 600, "n": 1})).await;
    wait_job(&server, &slow, "running", |j| j["status"] == "running").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent_file(&server, &org, &instance, "/tmp/deliveries.log")
        .await
        .contains(&format!("deliver {slow}"))
    {
        assert!(
            Instant::now() < deadline,
            "the slow job never reached the agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, cancelled, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/jobs/{slow}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(cancelled["data"]["status"], "cancelled");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent_file(&server, &org, &instance, "/tmp/deliveries.log")
        .await
        .contains(&format!("aborted {slow}"))
    {
        assert!(
            Instant::now() < deadline,
            "the agent's work on the cancelled job went on"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(job(&server, &slow).await["status"], "cancelled");

    // Idempotency-Key, async: the same job.
    let first = submit(&server, &agent, Some("order-1"), json!({"n": 5})).await;
    let (status, again) = invoke(
        &server,
        &agent,
        Some("order-1"),
        json!({"input": {"n": 5}, "async": true}),
    )
    .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["data"]["job_id"], first.as_str());
    wait_job(&server, &first, "finished", finished).await;
    let (_, body) = invoke(
        &server,
        &agent,
        Some("order-1"),
        json!({"input": {"n": 5}, "async": true}),
    )
    .await;
    assert_eq!(body["data"]["job_id"], first.as_str());
    assert_eq!(body["data"]["status"], "completed");

    // Idempotency-Key, sync: the same result, and the agent ran it once.
    let (status, a) = invoke(&server, &agent, Some("sync-1"), json!({"input": {"n": 8}})).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["data"]["output"], json!({"n": 8, "doubled": 16}));
    let sync_job = a["meta"]["job_id"].as_str().expect("job_id").to_owned();
    let (status, b) = invoke(&server, &agent, Some("sync-1"), json!({"input": {"n": 8}})).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        (&b["data"]["output"], &b["meta"]["job_id"]),
        (&a["data"]["output"], &a["meta"]["job_id"])
    );
    let (status, e1) = invoke(
        &server,
        &agent,
        Some("sync-2"),
        json!({"input": {"fail": true}}),
    )
    .await;
    let (status2, e2) = invoke(
        &server,
        &agent,
        Some("sync-2"),
        json!({"input": {"fail": true}}),
    )
    .await;
    assert_eq!((status, status2), (502, 502), "{e1} {e2}");
    assert_eq!(
        (e1["error"]["code"].as_str(), e2["error"]["code"].as_str()),
        (Some("AGENT_ERROR"), Some("AGENT_ERROR"))
    );

    let deliveries = counts(
        &agent_file(&server, &org, &instance, "/tmp/deliveries.log").await,
        "deliver",
    );
    let executions = counts(
        &agent_file(&server, &org, &instance, "/tmp/executions.log").await,
        "execute",
    );
    for id in [&ok, &bad, &first, &sync_job] {
        assert_eq!(
            deliveries.get(id.as_str()),
            Some(&1),
            "{id}: {deliveries:?}"
        );
        assert_eq!(
            executions.get(id.as_str()),
            Some(&1),
            "{id}: {executions:?}"
        );
    }
    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

#[tokio::test]
async fn kill_9_with_100_accepted_jobs_loses_none() {
    if !root_or_skip("jobs-kill9") {
        return;
    }
    let dir = temp("jobs-kill9");
    let cap = CAP.to_string();
    let env = [("HANGAR_JOB_CONCURRENCY", cap.as_str())];
    let server = Server::start_with_env(&dir, &env);
    let org = server.org().await;
    let (agent, instance) = deploy_jobs_agent(&server, "durable").await;

    // 100 jobs of 0.1 s each, at most CAP at a time: about 2.5 s of work.
    // The kill comes once some have completed: then some are in flight and
    // the rest pending.
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(submit(&server, &agent, None, json!({"n": n, "sleep": 0.1})).await);
    }
    wait_job(&server, &ids[2 * CAP], "completed", |j| {
        j["status"] == "completed"
    })
    .await;
    server.kill9();

    let server = Server::start_with_env(&dir, &env);
    // What the store says the killed server left (the restarted server may
    // already be running some again).
    let mut at_kill = BTreeMap::<String, usize>::new();
    for id in &ids {
        *at_kill
            .entry(
                job(&server, id).await["status"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            )
            .or_insert(0) += 1;
    }
    for (n, id) in ids.iter().enumerate() {
        let j = wait_job(&server, id, "finished", finished).await;
        assert_eq!(j["status"], "completed", "{j}");
        assert_eq!(j["output"], json!({"n": n, "doubled": n * 2}), "{j}");
    }
    let deliveries = counts(
        &agent_file(&server, &org, &instance, "/tmp/deliveries.log").await,
        "deliver",
    );
    let executions = counts(
        &agent_file(&server, &org, &instance, "/tmp/executions.log").await,
        "execute",
    );
    let most = agent_file(&server, &org, &instance, "/tmp/max_concurrency").await;
    let redelivered: Vec<_> = deliveries.iter().filter(|(_, c)| **c > 1).collect();
    eprintln!(
        "kill -9 with 100 accepted jobs (just after the restart: {at_kill:?}): {} completed, {} delivered ({} deliveries), {} redelivered (in flight at the kill) {:?}, {} executed once by the agent, at most {:?} at once",
        ids.len(),
        deliveries.len(),
        deliveries.values().sum::<usize>(),
        redelivered.len(),
        redelivered,
        executions.values().filter(|c| **c == 1).count(),
        most
    );
    for id in &ids {
        assert!(deliveries.contains_key(id), "{id} never reached the agent");
        assert_eq!(
            executions.get(id),
            Some(&1),
            "{id} executed {:?} times",
            executions.get(id)
        );
    }
    assert_eq!(deliveries.len(), 100);
    assert!(
        redelivered.len() <= CAP,
        "more redeliveries than jobs in flight: {redelivered:?}"
    );
    assert!(redelivered.iter().all(|(_, c)| **c == 2), "{redelivered:?}");
    let most: usize = most
        .first()
        .and_then(|m| m.parse().ok())
        .expect("max_concurrency");
    assert!(
        most <= CAP,
        "the per-agent cap was exceeded: {most} at once"
    );
    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
    let _ = std::fs::remove_dir_all(&dir);
}
