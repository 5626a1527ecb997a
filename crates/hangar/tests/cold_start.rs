//! `HTTP_COLD_START` instances of the Instances API for real: `hangar serve`
//! with a 2 s idle timeout, an instance created with that deployment type,
//! sandboxes going to zero when idle and back when a request comes to the
//! instance URL. Needs root like `run.rs`:
//! `cargo test -p hangar --test cold_start`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

async fn endpoint_status(server: &Server, org: &str, instance: &str) -> String {
    server
        .get(&format!("/instances/status/{org}/{instance}"))
        .await["status"]
        .as_str()
        .expect("status")
        .to_owned()
}

/// Waits until the status endpoint says `want` (a minute at most).
async fn wait_endpoint(server: &Server, org: &str, instance: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = endpoint_status(server, org, instance).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {want}: {status}, {}",
            server.instance(instance).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until no process of `instance`'s replicas is left.
async fn wait_no_replica(instance: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !replica_pids(instance).is_empty() {
        assert!(Instant::now() < deadline, "replicas left running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A request to the instance URL `host` (the `http` agent echoes its body).
async fn through_the_url(server: &Server, host: &str, input: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/invoke", server.url))
        .header("host", host)
        .json(&input)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_http_cold_start_instance_scales_to_zero_and_its_url_starts_it_again() {
    if !root_or_skip("HTTP_COLD_START instances") {
        return;
    }
    let dir = temp("coldinst");
    let server = Server::start_with(&dir, &["--scale-to-zero-after", "2"]);
    let org = server.org().await;
    // The agent's own instance may go to zero too: only ours runs.
    let default_instance = server
        .deploy(
            "coldsource",
            "http",
            json!({"scaling": {"min_instances": 0, "max_instances": 1}}),
        )
        .await;
    let view = server.instance(&default_instance).await;
    let (agent, build) = (
        view["agent_id"].as_str().expect("agent_id").to_owned(),
        view["build_id"].as_str().expect("build_id").to_owned(),
    );

    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/instances",
            Some(json!({
                "name": "cold",
                "agent_id": agent,
                "build_id": build,
                "organization_id": org,
                "config": {"deployment_type": "HTTP_COLD_START", "replicas": 1},
            })),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(
        created["deployment"]["deployment_type"], "HTTP_COLD_START",
        "{created}"
    );
    assert_eq!(created["config"]["long_running"], false, "{created}");
    let instance = created["id"].as_str().expect("id").to_owned();
    let host = created["deployment"]["url"]
        .as_str()
        .and_then(|u| u.strip_prefix("http://"))
        .expect("instance URL")
        .trim_end_matches('/')
        .to_owned();

    // It answers once its replica runs (the request waits for it).
    let (status, body) = through_the_url(&server, &host, json!({"warm": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["echo"], json!({"warm": true}));

    for round in 1..=2 {
        // Idle past the timeout: no replica left, and the instance says it
        // waits for a request rather than that it stopped.
        wait_endpoint(&server, &org, &instance, "READY_TO_COLD_START").await;
        wait_no_replica(&instance).await;
        let view = server.instance(&instance).await;
        assert_eq!(view["status"], "running", "{view}");
        assert_eq!(view["deployment"]["replicas"], 0, "{view}");

        // The next request is held while a replica starts, then answered.
        let started = Instant::now();
        let (status, body) = through_the_url(&server, &host, json!({ "cold": round })).await;
        assert_eq!(status, 200, "round {round}: {body}");
        assert_eq!(body["output"]["echo"], json!({ "cold": round }));
        eprintln!("cold start {round} answered in {:?}", started.elapsed());
    }
    server
        .wait_log(&org, &instance, "scaled from 1 to 0 replicas")
        .await;

    server.delete(&instance, true).await;
    server.delete(&default_instance, true).await;
    server.wait_nothing_left(&instance).await;
}
