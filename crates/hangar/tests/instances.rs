//! Instances API instances for real: one created without `config.replicas`
//! for an agent whose floor is zero runs, says so consistently, and takes
//! stdin and exec as soon as its replica is there; a stopped one says it is
//! stopped, in words. Needs root like `run.rs`:
//! `cargo test -p hangar --test instances`.

use serde_json::json;

mod common;

use common::*;

#[tokio::test]
async fn stdin_and_exec_on_a_new_instance_of_a_scale_to_zero_agent_are_answered() {
    if !root_or_skip("instance stdin") {
        return;
    }
    let server = Server::start(&temp("inst-stdin"));
    let org = server.org().await;
    let (default_instance, agent_id, build_id) = server.deploy_echo_at_zero().await;

    // No `config.replicas`: the agent's floor (0), at least one.
    let (status, created, _, text) = server
        .call(
            reqwest::Method::POST,
            "/instances",
            Some(json!({
                "name": "echo-copy",
                "agent_id": agent_id,
                "build_id": build_id,
                "organization_id": org,
            })),
        )
        .await;
    assert_eq!(status, 201, "{text}");
    let instance = created["id"].as_str().expect("id").to_owned();

    // At once, while it is still starting: answered once the replica runs.
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/instances/{org}/{instance}/stdin"),
            Some(json!({"input": "hello\n"})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("echo: hello"), "{text:?}");
    assert_eq!(created["config"]["replicas"], 1, "{created}");

    // Its status and its replicas agree: running, with its replica ready.
    server
        .wait_instance(&instance, "running", |i| i["status"] == "running")
        .await;
    let inst = server.instance(&instance).await;
    assert_eq!(inst["deployment"]["replicas"], 1, "{inst}");
    let (status, out, code) = server.exec(&org, &instance, &["echo", "awake"]).await;
    assert_eq!(
        (status, out.as_str(), code.as_deref()),
        (200, "awake\n", Some("0"))
    );

    // A stopped instance says so, with the status it has.
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent_id}/stop"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    server
        .wait_instance(&default_instance, "stopped", |i| i["status"] == "stopped")
        .await;
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/instances/{org}/{default_instance}/stdin"),
            Some(json!({"input": "x\n"})),
        )
        .await;
    assert_eq!(status, 409, "{text}");
    assert_eq!(body["error"]["code"], "INSTANCE_NOT_RUNNING");
    assert_eq!(body["error"]["current_status"], "stopped");
    assert_eq!(
        body["error"]["message"],
        format!("Cannot send input to instance {default_instance}: it is stopped")
    );

    server.delete(&instance, true).await;
    server.delete(&default_instance, true).await;
    server.wait_nothing_left(&instance).await;
}

/// The endpoint status of an instance (`READY_TO_COLD_START` at zero).
async fn endpoint_status(server: &Server, org: &str, instance: &str) -> String {
    server
        .get(&format!("/instances/status/{org}/{instance}"))
        .await["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn stdin_on_a_stdin_agent_scaled_to_zero_wakes_it_within_its_limit() {
    if !root_or_skip("stdin at zero") {
        return;
    }
    let server = Server::start_with(&temp("inst-zero"), &["--scale-to-zero-after", "2"]);
    let org = server.org().await;
    let instance = server
        .deploy(
            "dozy",
            "echo",
            json!({
                "config": {"enable_http": false, "stdin_enabled": true},
                "scaling": {"min_instances": 0, "max_instances": 1},
            }),
        )
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while endpoint_status(&server, &org, &instance).await != "READY_TO_COLD_START" {
        assert!(std::time::Instant::now() < deadline, "never scaled to zero");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    server.wait_nothing_left(&instance).await;

    // Woken, and answered within stdin's own 30 s limit (the request's
    // client gives up after 60 s, the controller's activation wait).
    let (status, _, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/instances/{org}/{instance}/stdin"),
            Some(json!({"input": "wake up\n"})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("echo: wake up"), "{text:?}");

    server.delete(&instance, true).await;
    server.wait_nothing_left(&instance).await;
}
