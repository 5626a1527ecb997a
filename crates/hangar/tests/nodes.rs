//! Servers on one PostgreSQL see each other as nodes (`GET /v1/nodes`): a
//! heartbeat row each, `ready` while it beats, `dead` once silent for longer
//! than `--node-dead-after`, `stopped` after a clean stop. Needs PostgreSQL
//! (`HANGAR_TEST_POSTGRES_URL`); with `CI=true` its absence fails the test.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

async fn nodes(server: &Server) -> Vec<Value> {
    server.get("/v1/nodes").await["data"]
        .as_array()
        .expect("a list")
        .clone()
}

/// Waits until `server` lists node `id` with `status`.
async fn wait_status(server: &Server, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = nodes(server).await;
        if let Some(node) = listed
            .iter()
            .find(|n| n["id"] == id && n["status"] == status)
        {
            return node.clone();
        }
        assert!(Instant::now() < deadline, "{id} never {status}: {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn servers_on_one_database_see_each_other_beat_stop_and_die() {
    if !hangar_store::testing::backends().contains(&hangar_store::Backend::Postgres) {
        return;
    }
    let db = hangar_store::testing::TestDb::new(hangar_store::Backend::Postgres).await;
    let dir = temp("nodes");
    // Servers on one database share one secret key.
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("hangar.key");
    std::fs::write(&key, rand::random::<[u8; 32]>()).expect("key");
    let flags = [
        "--database-url",
        db.url.as_str(),
        "--node-dead-after",
        "2",
        "--secret-key-file",
        key.to_str().expect("utf-8"),
    ];
    let a = Server::start_with(&dir.join("a"), &flags);
    let b = Server::start_with(&dir.join("b"), &flags);

    // Both are listed, ready, by either of them, with what they have.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = nodes(&a).await;
        if listed.len() == 2 && listed.iter().all(|n| n["status"] == "ready") {
            break listed;
        }
        assert!(Instant::now() < deadline, "not both ready: {listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<&str> = listed
        .iter()
        .map(|n| n["id"].as_str().expect("id"))
        .collect();
    assert_ne!(ids[0], ids[1]);
    let mut addresses: Vec<&str> = listed
        .iter()
        .map(|n| n["address"].as_str().expect("address"))
        .collect();
    addresses.sort_unstable();
    let mut urls = vec![a.url.as_str(), b.url.as_str()];
    urls.sort_unstable();
    assert_eq!(addresses, urls);
    for node in &listed {
        assert!(
            node["capacity"]["cpu_millis"].as_u64().expect("cpu") >= 1000,
            "{node}"
        );
        assert!(
            node["capacity"]["memory_bytes"].as_u64().expect("memory") > 0,
            "{node}"
        );
        assert_eq!(node["replicas"], 0);
        assert!(node["last_heartbeat_at"].is_string() && node["started_at"].is_string());
    }
    let from_b: Vec<Value> = nodes(&b).await.iter().map(|n| n["id"].clone()).collect();
    assert_eq!(
        from_b,
        listed.iter().map(|n| n["id"].clone()).collect::<Vec<_>>()
    );
    let b_id = listed
        .iter()
        .find(|n| n["address"] == b.url.as_str())
        .and_then(|n| n["id"].as_str())
        .expect("b listed")
        .to_owned();
    let a_id = ids
        .iter()
        .find(|id| **id != b_id)
        .expect("a listed")
        .to_string();

    // The operator's only: another organization's admin is refused.
    let (status, created, _, text) = a
        .call(
            reqwest::Method::POST,
            "/v1/organizations",
            Some(json!({"name": "Tenant", "admin_email": "t@tenant.test"})),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let tenant_key = created["data"]["api_key"]["key"].as_str().expect("key");
    let res = reqwest::Client::new()
        .get(format!("{}/v1/nodes", a.url))
        .bearer_auth(tenant_key)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 403);

    // A node killed without a word is dead once silent past the limit; one
    // that stops cleanly says so.
    b.kill9();
    wait_status(&a, &b_id, "dead").await;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(a.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = db.store.list_nodes().await.expect("nodes");
        let a_row = stored.iter().find(|n| n.beat.id == a_id).expect("a stored");
        if a_row.stopped_at.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "a never recorded its stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}
