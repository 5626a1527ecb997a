//! Any node answers anything: with two `hangar serve` on one PostgreSQL,
//! every request about an instance made to the node that does not run it
//! is answered by the node that does, through one authenticated hop —
//! sync and streaming invokes, async jobs, exec, stdin, instance URLs
//! (websockets too), the live view of the agent and a live log follow
//! (resumed with `Last-Event-ID` through the other node). The node that
//! was asked starts nothing; a request that claims to be a hop with a
//! wrong token is refused.
//!
//! Both servers run on this host, each with its own data dir and port
//! (their addresses are their node addresses). Needs root (sandboxes) and
//! PostgreSQL (`HANGAR_TEST_POSTGRES_URL`); with `CI=true` their absence
//! fails the test.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// A streaming request's body up to `want` (or its end), at most `wait`.
async fn read_until(res: &mut reqwest::Response, want: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut seen = String::new();
    while !seen.contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, res.chunk()).await {
            Ok(Ok(Some(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            _ => panic!("{want:?} never came: {seen}"),
        }
    }
    seen
}

#[tokio::test]
async fn a_node_forwards_every_request_about_an_instance_it_does_not_run() {
    let Some(nodes) = Nodes::new("forwarding", &[]).await else {
        return;
    };
    let (db, dir) = (&nodes.db, nodes.dir.clone());
    let a = nodes.start("a");
    let b = nodes.start("b");
    let a_id = node_id(&a).await;
    let org = a.org().await;

    let (agent, instance) = a
        .deploy_running(
            "hopped",
            "web",
            json!({"scaling": {"min_instances": 2, "max_instances": 2}}),
        )
        .await;
    let (echo_agent, echo) = a
        .deploy_running(
            "echoed",
            "echo",
            json!({
                "config": {"enable_http": false, "stdin_enabled": true},
                "scaling": {"min_instances": 1, "max_instances": 1},
            }),
        )
        .await;
    let owner_of = |id: String| {
        let db = &db;
        async move { holder(db, &id).await.expect("a holder").0 }
    };
    // Each instance is held by one node; requests go to the other.
    let (owner, other) = if owner_of(instance.clone()).await == a_id {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let owner_id = node_id(owner).await;
    let other_id = node_id(other).await;
    let (echo_owner, echo_other) = if owner_of(echo.clone()).await == a_id {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let http = reqwest::Client::new();

    // The live view of the agent comes from its node.
    let view = other.get(&format!("/v1/agents/{agent}")).await;
    assert_eq!(view["data"]["scaling"]["current_instances"], 2, "{view}");

    // A sync invoke is answered by one of the owner's replicas.
    let (status, body, _, text) = other
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"n": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["meta"]["instance_id"], instance.as_str(), "{body}");

    // A streaming invoke comes through as it is made.
    let res = http
        .post(format!("{}/v1/agents/{agent}/invoke", other.url))
        .bearer_auth(KEY)
        .header("accept", "text/event-stream")
        .json(&json!({"input": {"n": 2}}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/event-stream")),
        "{:?}",
        res.headers()
    );
    let events = res.text().await.expect("events");
    assert!(events.contains(r#""type":"start""#), "{events}");
    assert!(events.contains(r#""type":"chunk""#), "{events}");
    assert!(events.contains(r#""type":"done""#), "{events}");

    // An async job accepted through the other node runs to completion
    // (on the owner, which runs the agent), and reads the same anywhere.
    let (status, accepted, _, text) = other
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"n": 3}, "async": true})),
        )
        .await;
    assert_eq!(status, 202, "{text}");
    let job = accepted["data"]["job_id"]
        .as_str()
        .or_else(|| accepted["data"]["id"].as_str())
        .expect("job id")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = other.get(&format!("/v1/jobs/{job}")).await;
        if read["data"]["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "never completed: {read}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The instance URL, websockets included.
    let inst = other.instance(&instance).await;
    let url = inst["deployment"]["url"].as_str().expect("url");
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host")
        .to_owned();
    let res = http
        .get(format!("{}/through/the/hop?x=1", other.url))
        .header("host", &host)
        .send()
        .await
        .expect("instance URL");
    assert_eq!(res.status(), 200);
    let seen: Value = res.json().await.expect("json");
    assert_eq!(seen["path"], "/through/the/hop", "{seen}");
    assert_eq!(seen["query"], "x=1", "{seen}");
    // The caller first, then the node that forwarded it.
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1, 127.0.0.1");
    assert!(seen["headers"].get("x-hangar-hop").is_none(), "{seen}");
    websocket_echoes(other, &host, "/ws").await;

    // Exec runs in the owner's replica.
    let (status, out, code) = other.exec(&org, &instance, &["echo", "forwarded"]).await;
    assert_eq!(
        (status, out.as_str(), code.as_deref()),
        (200, "forwarded\n", Some("0"))
    );

    // Stdin reaches the stdin agent wherever it runs.
    let (status, body, _, text) = echo_other
        .call(
            reqwest::Method::POST,
            &format!("/instances/{org}/{echo}/stdin"),
            Some(json!({"input": "over the hop\n"})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("echo: over the hop"), "{body}");
    assert!(
        echo_other.replica_ids().is_empty() || echo_owner.replica_ids().len() == 1,
        "the stdin agent runs on one node"
    );
    let _ = echo_agent;

    // A live log follow through the other node sees lines as the owner's
    // replicas write them, and resumes after the last one it saw.
    let follow = format!("{}/v1/agents/{agent}/logs?follow=true", other.url);
    let mut res = http
        .get(&follow)
        .bearer_auth(KEY)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("follow");
    assert_eq!(res.status(), 200);
    // The agent logs each request it serves, path included.
    let visit = |server: &Server, path: &str| {
        http.get(format!("{}{path}", server.url))
            .header("host", &host)
            .send()
    };
    let visited = visit(other, "/followed").await.expect("visit");
    assert_eq!(visited.status(), 200);
    let seen = read_until(&mut res, "GET /followed", Duration::from_secs(30)).await;
    let last_id = seen
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("id:"))
        .map(|id| id.trim().to_owned())
        .expect("events carry ids");
    drop(res);
    let visited = visit(owner, "/while-away").await.expect("visit");
    assert_eq!(visited.status(), 200);
    let mut res = http
        .get(&follow)
        .bearer_auth(KEY)
        .header("accept", "text/event-stream")
        .header("last-event-id", &last_id)
        .send()
        .await
        .expect("resume");
    assert_eq!(res.status(), 200);
    let resumed = read_until(&mut res, "GET /while-away", Duration::from_secs(30)).await;
    assert!(!resumed.contains("GET /followed"), "{resumed}");
    drop(res);

    // Nothing of either instance ever ran on a node that did not hold it.
    wait_replicas(other, &[(&owner_id, owner.replica_ids().len() as u64)]).await;
    if other_id != node_id(echo_owner).await {
        assert!(other.replica_ids().is_empty(), "{:?}", other.replica_ids());
    }

    // A request that says it was forwarded, with a wrong token, is refused.
    let res = http
        .get(format!("{}/v1/agents/{agent}", other.url))
        .bearer_auth(KEY)
        .header("x-hangar-hop", "not-the-token")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{body}");

    owner.delete(&instance, true).await;
    echo_owner.delete(&echo, true).await;
    owner.wait_nothing_left(&instance).await;
    echo_owner.wait_nothing_left(&echo).await;
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
