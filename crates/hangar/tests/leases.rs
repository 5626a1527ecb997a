//! Two `hangar serve` on one PostgreSQL run each instance once: the node
//! that holds an instance's lease runs all its replicas, the other none.
//! When the holder is killed (`kill -9`), the other takes the instance over
//! once the lease runs out; when the killed node comes back it starts
//! nothing of the instance again and removes the replicas it left running.
//! A clean stop while another node is ready hands the instance over.
//!
//! Both servers run on this host, each with its own data dir and port:
//! the sandbox driver's bridge and address pool are host-wide by design
//! (shared by every server on the host, addresses handed out under the
//! CNI plugin's lock), while its state dir and packet-filter table are the
//! data dir's own, so the two do not meet. A request to the node that does
//! not run the instance is forwarded to the one that does (`forwarding.rs`
//! tests every kind). Needs root (sandboxes) and PostgreSQL
//! (`HANGAR_TEST_POSTGRES_URL`); with `CI=true` their absence fails the
//! test.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::*;

/// The replicas whose shims run under a server's dir (see
/// [`Server::replica_ids`]), sorted: also of a server that is not running.
fn shims(dir: &std::path::Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir.join("hangar-data/runtime/shims"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

async fn invoke(server: &Server, agent: &str, input: Value) -> (u16, Value, String) {
    let (status, body, _, text) = server
        .call(
            reqwest::Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({ "input": input })),
        )
        .await;
    (status, body, text)
}

#[tokio::test]
async fn an_instance_runs_on_one_node_moves_when_it_dies_and_is_handed_over_at_a_clean_stop() {
    let Some(nodes) = Nodes::new(
        "leases",
        &["--node-dead-after", "3", "--instance-lease", "3"],
    )
    .await
    else {
        return;
    };
    let (db, dir) = (&nodes.db, nodes.dir.clone());
    let a = nodes.start("a");
    let b = nodes.start("b");
    let (a_id, b_id) = (node_id(&a).await, node_id(&b).await);

    let instance = a
        .deploy(
            "leased",
            "http",
            json!({"scaling": {"min_instances": 2, "max_instances": 2}}),
        )
        .await;
    a.wait_instance(&instance, "running with 2 replicas", |i| {
        i["status"] == "running" && i["deployment"]["replicas"] == 2
    })
    .await;
    let agent = a.instance(&instance).await["agent_id"]
        .as_str()
        .expect("agent_id")
        .to_owned();

    // One node holds the instance and runs both replicas; the other none.
    let (owner_id, generation) = holder(db, &instance).await.expect("a holder");
    let (owner, other, other_id) = if owner_id == a_id {
        (a, b, b_id)
    } else {
        (b, a, a_id)
    };
    wait_replicas(&other, &[(&owner_id, 2), (&other_id, 0)]).await;
    // Through the other node a request is answered by the owner's replica
    // (forwarded), and makes none start there.
    let (status, body, text) = invoke(&other, &agent, json!({"n": 0})).await;
    assert_eq!(status, 200, "{text}");
    let answered = body["data"]["output"]["replica"].as_str().expect("replica");
    assert!(owner.replica_ids().iter().any(|r| r == answered), "{body}");
    // Past the other node's resync (10 s), which visits every instance.
    tokio::time::sleep(Duration::from_secs(12)).await;
    wait_replicas(&other, &[(&owner_id, 2), (&other_id, 0)]).await;
    assert_eq!(owner.replica_ids().len(), 2, "{:?}", owner.replica_ids());
    assert!(other.replica_ids().is_empty(), "{:?}", other.replica_ids());
    let (status, body, text) = invoke(&owner, &agent, json!({"n": 1})).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["data"]["output"]["echo"]["n"], 1, "{body}");
    let answered = body["data"]["output"]["replica"].as_str().expect("replica");
    assert!(owner.replica_ids().iter().any(|r| r == answered), "{body}");

    // The owner dies without a word; its sandboxes outlive it. The other
    // node takes the instance over (a new generation) and runs it.
    let orphans = shims(&owner.dir);
    let owner_dir = owner.dir.clone();
    owner.kill9();
    let deadline = Instant::now() + Duration::from_secs(120);
    let taken = loop {
        match holder(db, &instance).await {
            Some((node, g)) if node == other_id => break g,
            held => assert!(Instant::now() < deadline, "never taken over: {held:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(taken > generation, "{taken} > {generation}");
    other
        .wait_instance(&instance, "running on the other node", |i| {
            i["status"] == "running" && i["deployment"]["replicas"] == 2
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body, text) = invoke(&other, &agent, json!({"n": 2})).await;
        if status == 200 {
            assert_eq!(body["data"]["output"]["echo"]["n"], 2, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never answered: {status} {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let moved = shims(&other.dir);
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert_eq!(
        shims(&owner_dir),
        orphans,
        "the dead node's replicas are still there"
    );

    // The dead node comes back: it starts nothing of the instance and
    // removes the replicas it left behind; the instance stays where it is.
    let back = nodes.start_at(&owner_dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !back.replica_ids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "orphans left: {:?}",
            back.replica_ids()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_replicas(&back, &[(&owner_id, 0), (&other_id, 2)]).await;
    // A few resyncs later, still nothing on the node that came back.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(back.replica_ids().is_empty(), "{:?}", back.replica_ids());
    assert_eq!(shims(&other.dir), moved);
    assert_eq!(holder(db, &instance).await, Some((other_id.clone(), taken)));
    let (status, _, text) = invoke(&other, &agent, json!({"n": 3})).await;
    assert_eq!(status, 200, "{text}");

    // A clean stop while another node is ready hands the instance over
    // without waiting for the lease to run out: the lease released, the
    // stopping node's replicas stopped, and the other node runs it.
    let mut other = other;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(other.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let exit = other.child.wait().expect("the server exits");
    assert!(exit.success(), "{exit:?}");
    assert!(shims(&other.dir).is_empty(), "{:?}", shims(&other.dir));
    let deadline = Instant::now() + Duration::from_secs(60);
    let handed = loop {
        match holder(db, &instance).await {
            Some((node, g)) if node == owner_id => break g,
            held => assert!(Instant::now() < deadline, "never handed over: {held:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(handed > taken, "{handed} > {taken}");
    back.wait_instance(&instance, "running where it was handed", |i| {
        i["status"] == "running" && i["deployment"]["replicas"] == 2
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body, text) = invoke(&back, &agent, json!({"n": 4})).await;
        if status == 200 {
            assert_eq!(body["data"]["output"]["echo"]["n"], 4, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never answered: {status} {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(back.replica_ids().len(), 2, "{:?}", back.replica_ids());

    back.delete(&instance, true).await;
    back.wait_nothing_left(&instance).await;
    drop(back);
    drop(other);
    let _ = std::fs::remove_dir_all(&dir);
}
