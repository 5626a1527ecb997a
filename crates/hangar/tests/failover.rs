//! Losing a node under load: with two `hangar serve` on one PostgreSQL and
//! invocations going through the node that does not run the agent, a
//! `kill -9` of the node that does fails only the requests in flight on it;
//! those that come after wait while the dead node's lease runs out, and are
//! answered once the surviving node has taken the agent over. Async jobs
//! accepted before the kill each complete once.
//!
//! Both servers run on this host, each with its own data dir and port.
//! Needs root (sandboxes) and PostgreSQL (`HANGAR_TEST_POSTGRES_URL`); with
//! `CI=true` their absence fails the test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;

use common::*;

#[tokio::test]
async fn a_killed_node_fails_only_what_was_in_flight_on_it() {
    let Some(nodes) = Nodes::new(
        "failover",
        &["--node-dead-after", "4", "--instance-lease", "4"],
    )
    .await
    else {
        return;
    };
    let (db, dir) = (&nodes.db, nodes.dir.clone());
    let a = nodes.start("a");
    let b = nodes.start("b");
    let a_id = node_id(&a).await;

    let (agent, instance) = a
        .deploy_running(
            "survivor",
            "http",
            json!({"scaling": {"min_instances": 2, "max_instances": 2}}),
        )
        .await;
    let (doomed, survivor) = if holder(db, &instance).await.expect("a holder").0 == a_id {
        (a, b)
    } else {
        (b, a)
    };
    let survivor_id = node_id(&survivor).await;

    // Jobs accepted before the kill, some still running when it comes.
    let mut jobs = Vec::new();
    for n in 0..6 {
        let (status, body, _, text) = survivor
            .call(
                reqwest::Method::POST,
                &format!("/v1/agents/{agent}/invoke"),
                Some(json!({"input": {"job": n, "sleep": 1}, "async": true})),
            )
            .await;
        assert_eq!(status, 202, "{text}");
        jobs.push(body["data"]["job_id"].as_str().expect("job_id").to_owned());
    }

    // Two callers invoke through the survivor, back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let callers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(load(
                survivor.url.clone(),
                agent.clone(),
                stop.clone(),
                seen.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let doomed_dir = doomed.dir.clone();
    doomed.kill9();

    let deadline = Instant::now() + Duration::from_secs(120);
    while holder(db, &instance).await.map(|h| h.0) != Some(survivor_id.clone()) {
        assert!(Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    survivor
        .wait_instance(&instance, "running on the survivor", |i| {
            i["status"] == "running" && i["deployment"]["replicas"] == 2
        })
        .await;
    let answered_before = seen.ok.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.ok.load(Ordering::SeqCst) < answered_before + 10 {
        assert!(Instant::now() < deadline, "no answers after the takeover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.expect("caller");
    }
    // At most what each caller had in flight on the dead node.
    let failed = seen.failed.lock().expect("lock").clone();
    assert!(
        failed.len() <= 2,
        "more failed than were in flight: {failed:#?}"
    );

    // Every job completes, once.
    for job in &jobs {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let read = survivor.get(&format!("/v1/jobs/{job}")).await;
            match read["data"]["status"].as_str() {
                Some("completed") => break,
                Some("pending" | "running") => {}
                other => panic!("job {job} ended {other:?}: {read}"),
            }
            assert!(
                Instant::now() < deadline,
                "job {job} never completed: {read}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let org = survivor.org().await;
    let completed = events_by_subject(db, &org, "job.completed").await;
    for job in &jobs {
        assert_eq!(completed.get(job), Some(&1), "{job}: {completed:?}");
    }

    // The killed node's sandboxes outlived it (until it comes back).
    kill_replicas_under(&doomed_dir);
    survivor.delete(&instance, true).await;
    survivor.wait_nothing_left(&instance).await;
    drop(survivor);
    let _ = std::fs::remove_dir_all(&dir);
}
