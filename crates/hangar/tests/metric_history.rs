//! Metric history with real servers: `hangar serve` counts the invocations
//! it answers per minute (with their latency buckets) and measures its
//! replicas' CPU and memory, writes them to the store with its request
//! figures, and `GET /v1/agents/{id}/metrics?window=1h` plots them as a
//! series — after a restart too (the store has them, not the process), and
//! summed over two servers on one PostgreSQL.
//!
//! Every invocation sleeps 0.3 s in the agent, so every percentile of a
//! step with invocations is at least the lower bound of 0.3 s's bucket
//! (256 ms): a bound no slowness of the machine can break, unlike an upper
//! one. Needs root (sandboxes), and PostgreSQL for the second test; with
//! `CI=true` their absence fails the tests:
//! `cargo test -p hangar --test metric_history`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// What each invocation sleeps, s, and the lower bound of its latency
/// bucket, ms (0.25 ms × 2^8, the bound below 300 ms).
const SLEEP: f64 = 0.3;
const SLEPT_AT_LEAST_MS: f64 = 256.0;

/// Invokes the agent through `server` `n` times; returns how many failed.
async fn invoke(server: &Server, agent: &str, n: u64) -> u64 {
    let mut failed = 0;
    for _ in 0..n {
        let (status, _, _, _) = server
            .call(
                reqwest::Method::POST,
                &format!("/v1/agents/{agent}/invoke"),
                Some(json!({"input": {"sleep": SLEEP}})),
            )
            .await;
        failed += u64::from(status != 200);
    }
    failed
}

/// The agent's series over the last hour, as `server` shows it.
async fn series(server: &Server, agent: &str) -> Vec<Value> {
    let metrics = server
        .get(&format!("/v1/agents/{agent}/metrics?window=1h"))
        .await;
    assert_eq!(metrics["data"]["step_seconds"], 60, "{metrics}");
    let series = metrics["data"]["series"]
        .as_array()
        .expect("series")
        .clone();
    assert_eq!(series.len(), 60, "{metrics}");
    series
}

/// Waits until `server`'s series of the agent holds `sent` invocations,
/// `failed` of them failed, with percentiles from their buckets, and the
/// replicas' CPU and memory; never more invocations meanwhile.
async fn wait_series(server: &Server, agent: &str, sent: u64, failed: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let series = series(server, agent).await;
        let sum = |field: &str| -> u64 {
            series
                .iter()
                .map(|p| p[field].as_u64().expect("a count"))
                .sum()
        };
        let (requests, errors) = (sum("requests"), sum("errors"));
        assert!(
            requests <= sent,
            "{} shows {requests} invocations, sent {sent}",
            server.url
        );
        let measured = series.iter().any(|p| {
            p["cpu_percent"].is_f64() && p["memory_mb"].as_f64().is_some_and(|mb| mb > 0.0)
        });
        if requests == sent && errors == failed && measured {
            for point in series.iter().filter(|p| p["requests"] != 0) {
                let p50 = point["p50_latency_ms"].as_f64().expect("p50");
                let p95 = point["p95_latency_ms"].as_f64().expect("p95");
                assert!(p50 >= SLEPT_AT_LEAST_MS && p95 >= p50, "{point}");
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} shows {requests} invocations ({errors} failed), sent {sent} ({failed}); measured: {measured}: {series:?}",
            server.url
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Stops `server` as SIGTERM does, waiting for it to exit cleanly (it
/// writes what it has not written yet).
fn stop(server: &mut Server) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(server.child.wait().expect("the server exits").success());
}

#[tokio::test]
async fn the_series_shows_invocations_and_survives_a_restart() {
    if !root_or_skip("metric_history") {
        return;
    }
    let dir = temp("metric-history");
    let mut server = Server::start(&dir);
    let (agent, _) = server.deploy_running("plotted", "http", json!({})).await;
    let before = series(&server, &agent).await;
    assert!(before.iter().all(|p| p["requests"] == 0), "{before:?}");

    let sent = 8;
    let failed = invoke(&server, &agent, sent).await;
    assert!(failed < sent, "none answered");
    wait_series(&server, &agent, sent, failed).await;

    // The figures are the store's: a new process shows them.
    stop(&mut server);
    let server = Server::start(&dir);
    wait_series(&server, &agent, sent, failed).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn two_servers_figures_add_up_in_one_series() {
    let Some(nodes) = Nodes::new("metric-history-nodes", &[]).await else {
        return;
    };
    let (db, dir) = (&nodes.db, nodes.dir.clone());
    let mut servers = vec![nodes.start("a"), nodes.start("b")];
    let (agent, instance) = servers[0]
        .deploy_running("plotted", "http", json!({}))
        .await;

    // Through both servers: the one holding the instance answers (and
    // counts) them.
    let mut sent = 6;
    let mut failed = invoke(&servers[0], &agent, 3).await + invoke(&servers[1], &agent, 3).await;
    for server in &servers {
        wait_series(server, &agent, sent, failed).await;
    }

    // The holder stops cleanly and hands the instance over: the other
    // counts the next ones in rows of its own; once the first is back,
    // both show the sum of both.
    let (first, _) = holder(db, &instance).await.expect("held");
    let mut at = 0;
    for (i, server) in servers.iter().enumerate() {
        if node_id(server).await == first {
            at = i;
        }
    }
    stop(&mut servers[at]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match holder(db, &instance).await {
            Some((node, _)) if node != first => break,
            held => assert!(Instant::now() < deadline, "never handed over: {held:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sent += 4;
    failed += invoke(&servers[1 - at], &agent, 4).await;
    let stopped_dir = servers[at].dir.clone();
    servers[at] = nodes.start_at(&stopped_dir);
    for server in &servers {
        wait_series(server, &agent, sent, failed).await;
    }
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}
