//! Liveness on real sandboxes: a replica that was ready and then fails its
//! health checks is restarted and counted; one that never becomes ready
//! within its start timeout is replaced. Needs root (with `CI=true` and no
//! root these tests fail instead of skipping):
//! `cargo test -p hangar --test liveness`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// The agent's events of `kind`, oldest first.
async fn events(server: &Server, agent: &str, kind: &str) -> Vec<Value> {
    let mut found: Vec<Value> = server.get("/v1/events?limit=100").await["data"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == kind && e["data"]["agent_id"] == agent)
        .cloned()
        .collect();
    found.reverse();
    found
}

#[tokio::test]
async fn a_hung_agent_is_restarted_and_counted() {
    if !root_or_skip("liveness_hung") {
        return;
    }
    let server = Server::start(&temp("hung"));
    let (agent, instance) = server
        .deploy_running(
            "wedged",
            "hung",
            json!({"config": {"liveness_failures": 1}}),
        )
        .await;
    let before = server.instance(&instance).await;
    assert_eq!(before["deployment"]["restart_count"], 0);
    let (status, answer, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"hang": true}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let hung_replica = answer["data"]["output"]["replica"]
        .as_str()
        .expect("replica")
        .to_owned();

    // Its next check fails: restarted, counted, and a new replica serves.
    let restarted = server
        .wait_instance(&instance, "restarted", |i| {
            i["deployment"]["restart_count"] == 1 && i["status"] == "running"
        })
        .await;
    assert_eq!(restarted["deployment"]["restart_count"], 1, "{restarted}");
    let (status, answer, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(answer["data"]["output"]["hung"], false, "a fresh replica");
    assert_ne!(answer["data"]["output"]["replica"], hung_replica.as_str());

    // Told as lost health, then regained; and in the instance's log.
    let deadline = Instant::now() + Duration::from_secs(30);
    let changes = loop {
        let changes = events(&server, &agent, "agent.health_changed").await;
        if changes.len() >= 2 {
            break changes;
        }
        assert!(Instant::now() < deadline, "{changes:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(changes[0]["data"]["healthy"], false);
    let reason = changes[0]["data"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&hung_replica) && reason.contains("answered 500"),
        "{reason}"
    );
    assert_eq!(changes[1]["data"]["healthy"], true);
    let org = server.org().await;
    server
        .wait_log(&org, &instance, "failed 1 health checks in a row")
        .await;
    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}

#[tokio::test]
async fn a_replica_never_ready_within_its_start_timeout_is_replaced() {
    if !root_or_skip("liveness_start_timeout") {
        return;
    }
    let server = Server::start(&temp("never-ready"));
    let instance = server
        .deploy(
            "never",
            "hung",
            json!({
                "config": {"start_timeout_seconds": 1},
                "environment": {"HUNG_FROM_START": "1"},
            }),
        )
        .await;
    let failing = server
        .wait_instance(&instance, "replaced", |i| {
            i["deployment"]["restart_count"].as_u64() >= Some(1)
        })
        .await;
    let reason = failing["status_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let shown = failing.to_string();
    assert!(
        shown.contains("not healthy after 1s") && shown.contains("answered 500"),
        "{failing}"
    );
    assert_ne!(failing["status"], "running", "{reason}");
    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}
