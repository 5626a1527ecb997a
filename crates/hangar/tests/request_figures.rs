//! Request figures are the cluster's: two `hangar serve` on one PostgreSQL
//! each count the invocations they answer, write them to the store every
//! few seconds, and show the sum of every server's in the Agents API
//! (`GET /v1/agents/{id}` and its `metrics`), whichever server is asked.
//!
//! Invocations go through both servers: the one holding the agent's
//! instance answers them, the other forwards them there (or, were it to
//! answer itself, counts them where it answered). Either way, what the
//! figures show is exactly what was sent and how it ended, each
//! invocation counted once. Needs root
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

#[tokio::test]
async fn invocations_through_two_servers_add_up_on_either() {
    if !root_or_skip("request-figures") {
        return;
    }
    if !hangar_store::testing::backends().contains(&hangar_store::Backend::Postgres) {
        return;
    }
    let db = hangar_store::testing::TestDb::new(hangar_store::Backend::Postgres).await;
    let flags = ["--database-url", db.url.as_str()];
    let dir = temp("request-figures");
    let key = shared_key();
    let env = [("HANGAR_SECRET_KEY", key.as_str())];
    let a = Server::start_full(&dir.join("a"), &flags, &env);
    let b = Server::start_full(&dir.join("b"), &flags, &env);
    let (agent, instance) = a.deploy_running("counted", "http", json!({})).await;
    assert_eq!(figures(&a, &agent).await, (0, 0.0, 0));

    // Through both servers, in turns.
    let (mut sent, mut failed) = (0u64, 0u64);
    for n in 0..12 {
        let server = if n % 3 == 0 { &b } else { &a };
        let status = invoke(server, &agent, n).await;
        sent += 1;
        failed += u64::from(status != 200);
    }
    assert!(sent > failed, "none answered: {failed} of {sent} failed");

    // Each server shows both servers' invocations once the other has
    // written its counts (every few seconds): exactly those, never more.
    let want = (sent, rate(failed, sent), sent);
    for server in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = figures(server, &agent).await;
            if seen == want {
                break;
            }
            assert!(seen.0 <= sent && seen.2 <= sent, "{seen:?}, sent {want:?}");
            assert!(
                Instant::now() < deadline,
                "{} shows {seen:?}, sent {want:?}",
                server.url
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A window narrower than a day covers them too; the list shows the
    // same as the agent.
    let hour = a
        .get(&format!("/v1/agents/{agent}/metrics?window=1h"))
        .await;
    assert_eq!(hour["data"]["requests"], sent, "{hour}");
    let listed = b.get("/v1/agents").await;
    let row: Vec<&Value> = listed["data"]
        .as_array()
        .expect("agents")
        .iter()
        .filter(|x| x["id"] == agent.as_str())
        .collect();
    assert_eq!(row.len(), 1, "{listed}");
    assert_eq!(row[0]["metrics"]["requests_24h"], sent, "{listed}");

    // A clean stop writes what the server had not written yet: once both
    // have stopped, the store holds every invocation.
    invoke(&a, &agent, 99).await;
    invoke(&b, &agent, 100).await;
    let mut a = a;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(a.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(a.child.wait().expect("the server exits").success());
    let mut b = b;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(b.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(b.child.wait().expect("the server exits").success());
    let stored = db
        .store
        .request_counts(&[instance.as_str()], 0)
        .await
        .expect("stored counts");
    assert_eq!(stored[&instance].requests, sent + 2, "{stored:?}");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}
