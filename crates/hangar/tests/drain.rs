//! Draining a node under load fails no request: with two `hangar serve` on
//! one PostgreSQL and invocations going through both, `POST
//! /v1/nodes/{id}/drain` of the node that runs an agent moves the agent to
//! the other node (its replicas start there before those on the drained
//! node stop), every invocation meanwhile answers 200, and the drained node
//! ends with no replica and takes nothing until it is undrained.
//!
//! Both servers run on this host, each with its own data dir and port.
//! Needs root (sandboxes) and PostgreSQL (`HANGAR_TEST_POSTGRES_URL`); with
//! `CI=true` their absence fails the test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

#[tokio::test]
async fn draining_a_node_under_load_moves_its_agents_and_fails_no_request() {
    let Some(nodes) = Nodes::new("drain", &["--node-dead-after", "6"]).await else {
        return;
    };
    let (db, dir) = (&nodes.db, nodes.dir.clone());
    let a = nodes.start("a");
    let b = nodes.start("b");
    let a_id = node_id(&a).await;

    let (agent, instance) = a
        .deploy_running(
            "drained",
            "http",
            json!({"scaling": {"min_instances": 2, "max_instances": 2}}),
        )
        .await;
    let (drained, other) = if holder(db, &instance).await.expect("a holder").0 == a_id {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let (drained_id, other_id) = (node_id(drained).await, node_id(other).await);
    wait_replicas(other, &[(&drained_id, 2), (&other_id, 0)]).await;

    // Load through both nodes, two callers each.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let callers: Vec<_> = [&drained.url, &other.url, &drained.url, &other.url]
        .into_iter()
        .map(|url| tokio::spawn(load(url.clone(), agent.clone(), stop.clone(), seen.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Asked through the other node: the drained node hears of it with its
    // next heartbeat.
    let (status, body, _, text) = other
        .call(
            reqwest::Method::POST,
            &format!("/v1/nodes/{drained_id}/drain"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["data"]["draining"], true, "{body}");

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let moved = holder(db, &instance).await.map(|h| h.0) == Some(other_id.clone());
        if moved && drained.replica_ids().is_empty() && other.replica_ids().len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never moved: holder {:?}, replicas {:?} / {:?}",
            holder(db, &instance).await,
            drained.replica_ids(),
            other.replica_ids()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A little more load once it has moved.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.expect("caller");
    }
    let failed = seen.failed.lock().expect("lock").clone();
    assert!(failed.is_empty(), "failed while draining: {failed:#?}");
    assert!(
        seen.ok.load(Ordering::SeqCst) > 20,
        "too little load to tell"
    );

    // The drained node runs nothing and says so; requests through it are
    // forwarded.
    wait_replicas(other, &[(&drained_id, 0), (&other_id, 2)]).await;
    let nodes = other.get("/v1/nodes").await;
    let listed = |id: &str| -> Value {
        nodes["data"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["id"] == id)
            .cloned()
            .expect("listed")
    };
    assert_eq!(listed(&drained_id)["draining"], true, "{nodes}");
    assert_eq!(listed(&other_id)["draining"], false, "{nodes}");
    let (status, _, _, text) = drained
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"after": true}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");

    // An agent nobody runs yet, asked for through the drained node (which
    // takes nothing): the other node takes it over and answers.
    let quiet = drained
        .deploy(
            "undrained-elsewhere",
            "http",
            json!({"scaling": {"min_instances": 0, "max_instances": 1}}),
        )
        .await;
    let quiet_agent = drained.instance(&quiet).await["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();
    let (status, _, _, text) = drained
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{quiet_agent}/invoke"),
            Some(json!({"input": {"first": true}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        holder(db, &quiet).await.map(|h| h.0),
        Some(other_id.clone()),
        "the drained node took an instance"
    );
    other.delete(&quiet, true).await;

    // Undrained, it is an ordinary node again (what moved stays moved).
    let (status, body, _, text) = drained
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/nodes/{drained_id}/drain"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["data"]["draining"], false, "{body}");
    let (status, body, _, text) = drained
        .call(reqwest::Method::POST, "/v1/nodes/node-nowhere/drain", None)
        .await;
    assert_eq!(status, 404, "{text}");
    assert_eq!(body["error"]["code"], "NODE_NOT_FOUND", "{body}");
    assert_eq!(
        holder(db, &instance).await.map(|h| h.0),
        Some(other_id.clone())
    );

    other.delete(&instance, true).await;
    other.wait_nothing_left(&instance).await;
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
