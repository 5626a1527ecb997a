//! Request figures are the cluster's: two `hangar serve` on one PostgreSQL
//! each count the invocations they answer, write them to the store every
//! few seconds, and show the sum of every server's in the Agents API
//! (`GET /v1/agents/{id}` and its `metrics`), whichever server is asked.
//!
//! Invocations go through both servers: the one holding the agent's
//! instance answers them (the other forwards them there), so its count
//! grows; then it stops cleanly, the other takes the instance over and
//! counts the next ones. Both servers' rows are in the store then, and
//! each server shows their sum: exactly what was sent and how it ended,
//! each invocation once, in the agent's metrics and object and in the list
//! of agents (which the server asked answers itself). Needs root
//! (sandboxes) and PostgreSQL (`HANGAR_TEST_POSTGRES_URL`); with `CI=true`
//! their absence fails the test:
//! `cargo test -p hangar --test request_figures`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// The agent's request figures as `server` shows them: from its metrics
/// (`requests`, `errors` from the error rate, rounded) and its object
/// (`requests_24h`).
async fn figures(server: &Server, agent: &str) -> (u64, f64, u64) {
    let metrics = server.get(&format!("/v1/agents/{agent}/metrics")).await["data"].clone();
    let object = server.get(&format!("/v1/agents/{agent}")).await["data"].clone();
    (
        metrics["requests"].as_u64().expect("requests"),
        metrics["error_rate_percent"].as_f64().expect("error rate"),
        object["metrics"]["requests_24h"]
            .as_u64()
            .expect("requests_24h"),
    )
}

async fn invoke(server: &Server, agent: &str, n: u64) -> u16 {
    let (status, _, _, _) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"n": n}})),
        )
        .await;
    status
}

fn rate(errors: u64, requests: u64) -> f64 {
    (errors as f64 * 10_000.0 / requests as f64).round() / 100.0
}

/// Waits until `server` shows `sent` invocations of which `failed` failed,
/// in the agent's metrics and object and in the list of agents (which the
/// server asked answers itself, from the database); never more meanwhile.
async fn wait_figures(server: &Server, agent: &str, sent: u64, failed: u64) {
    let want = (sent, rate(failed, sent), sent);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = figures(server, agent).await;
        let listed = server.get("/v1/agents").await;
        let row: Vec<&Value> = listed["data"]
            .as_array()
            .expect("agents")
            .iter()
            .filter(|x| x["id"] == agent)
            .collect();
        assert_eq!(row.len(), 1, "{listed}");
        let in_list = row[0]["metrics"]["requests_24h"].as_u64().expect("count");
        if seen == want && in_list == sent {
            return;
        }
        assert!(
            seen.0 <= sent && seen.2 <= sent && in_list <= sent,
            "{} shows {seen:?} and {in_list} listed, sent {want:?}",
            server.url
        );
        assert!(
            Instant::now() < deadline,
            "{} shows {seen:?} and {in_list} listed, sent {want:?}",
            server.url
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops `server` as SIGTERM does, waiting for it to exit cleanly.
fn stop(server: &mut Server) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(server.child.wait().expect("the server exits").success());
}

#[tokio::test]
async fn invocations_through_two_servers_add_up_on_either() {
    let Some(nodes) = Nodes::new("request-figures", &[]).await else {
        return;
    };
    let (db, dir) = (&nodes.db, nodes.dir.clone());
    let mut servers = vec![nodes.start("a"), nodes.start("b")];
    let (agent, instance) = servers[0]
        .deploy_running("counted", "http", json!({}))
        .await;
    assert_eq!(figures(&servers[0], &agent).await, (0, 0.0, 0));

    // Through both servers, in turns: the one holding the instance counts
    // them.
    let (mut sent, mut failed) = (0u64, 0u64);
    for n in 0..12 {
        let status = invoke(&servers[usize::from(n % 3 == 0)], &agent, n).await;
        sent += 1;
        failed += u64::from(status != 200);
    }
    assert!(sent > failed, "none answered: {failed} of {sent} failed");
    for server in &servers {
        wait_figures(server, &agent, sent, failed).await;
    }
    let hour = servers[1]
        .get(&format!("/v1/agents/{agent}/metrics?window=1h"))
        .await;
    assert_eq!(hour["data"]["requests"], sent, "{hour}");

    // The holder stops cleanly (writing what it had not) and hands the
    // instance over: the other counts from now on, and once the stopped
    // one is back, both show what both counted.
    let (first, _) = holder(db, &instance).await.expect("held");
    let mut at = 0;
    for (i, server) in servers.iter().enumerate() {
        if node_id(server).await == first {
            at = i;
        }
    }
    stop(&mut servers[at]);
    let other = &servers[1 - at];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match holder(db, &instance).await {
            Some((node, _)) if node != first => break,
            held => assert!(Instant::now() < deadline, "never handed over: {held:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in 0..6 {
        let status = invoke(other, &agent, 100 + n).await;
        sent += 1;
        failed += u64::from(status != 200);
    }
    let stopped_dir = servers[at].dir.clone();
    servers[at] = nodes.start_at(&stopped_dir);
    for server in &servers {
        wait_figures(server, &agent, sent, failed).await;
    }

    // A clean stop writes what the server had not written yet: once both
    // have stopped, the store holds every invocation.
    invoke(&servers[0], &agent, 99).await;
    invoke(&servers[1], &agent, 100).await;
    for server in &mut servers {
        stop(server);
    }
    let stored = db
        .store
        .request_counts(&[instance.as_str()], 0)
        .await
        .expect("stored counts");
    assert_eq!(stored[&instance].requests, sent + 2, "{stored:?}");
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}
