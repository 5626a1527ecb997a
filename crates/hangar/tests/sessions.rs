//! Sticky sessions end to end: a real `hangar serve`, the `http` agent
//! (which answers with its replica's ID) at three replicas.
//!
//! Every request naming a session — `options.session_id` on invoke, the
//! `X-Hangar-Session` header on the instance URL — reaches one replica;
//! sessions are objects listed with their request counts; deleting one
//! ends it, with `?kill=true` stops its replica, and the next session is
//! served by the others.

mod common;

use std::collections::BTreeSet;

use common::{root_or_skip, temp, Server};
use reqwest::Method;
use serde_json::{json, Value};

async fn invoke(server: &Server, agent: &str, session: &str) -> String {
    let (status, body, _, text) = server
        .call(
            Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {"n": 1}, "options": {"session_id": session}})),
        )
        .await;
    assert_eq!(status, 200, "{text}");
    body["data"]["output"]["replica"]
        .as_str()
        .expect("the agent names its replica")
        .to_owned()
}

fn host_of(url: &Value) -> String {
    url.as_str()
        .expect("url")
        .strip_prefix("http://")
        .expect("http URL")
        .trim_end_matches('/')
        .to_owned()
}

#[tokio::test]
async fn sessions_stick_to_one_replica_and_end_when_deleted() {
    if !root_or_skip("sticky sessions") {
        return;
    }
    let dir = temp("sessions");
    let server = Server::start(&dir);
    let instance = server
        .deploy(
            "sticky",
            "http",
            json!({"scaling": {"min_instances": 3, "max_instances": 3}}),
        )
        .await;
    let inst = server
        .wait_instance(&instance, "3 ready", |i| {
            i["status"] == "running" && i["deployment"]["replicas"] == 3
        })
        .await;
    let agent = inst["agent_id"].as_str().expect("agent_id").to_owned();

    // Three new sessions, one after the other, with nothing in flight: each
    // goes to the least loaded replica, ties going round: three replicas.
    let firsts: Vec<String> = {
        let mut firsts = Vec::new();
        for s in ["alpha", "beta", "gamma"] {
            firsts.push(invoke(&server, &agent, s).await);
        }
        firsts
    };
    assert_eq!(
        firsts.iter().collect::<BTreeSet<_>>().len(),
        3,
        "{firsts:?}"
    );
    // 50 more each, interleaved: every one on its session's replica.
    for round in 0..50 {
        for (s, first) in ["alpha", "beta", "gamma"].iter().zip(&firsts) {
            let replica = invoke(&server, &agent, s).await;
            assert_eq!(&replica, first, "request {round} of {s}");
        }
    }

    // Listed with their counts, from the store.
    let listed = server.get(&format!("/v1/agents/{agent}/sessions")).await;
    let sessions = listed["data"].as_array().expect("a list");
    assert_eq!(sessions.len(), 3, "{listed}");
    for (s, first) in ["alpha", "beta", "gamma"].iter().zip(&firsts) {
        let session = sessions.iter().find(|x| x["id"] == *s).expect("listed");
        assert_eq!(session["requests"], 51, "{session}");
        assert_eq!(session["replica_id"], first.as_str());
        assert_eq!(session["agent_id"], agent.as_str());
        assert_eq!(session["instance_id"], instance.as_str());
        assert_eq!(session["replica_changes"], 0);
    }
    let alpha = server.get("/v1/sessions/alpha").await;
    assert_eq!(alpha["data"]["requests"], 51);

    // A malformed session ID is refused, naming the field.
    let (status, body, _, _) = server
        .call(
            Method::POST,
            &format!("/v1/agents/{agent}/invoke"),
            Some(json!({"input": {}, "options": {"session_id": "not a session!"}})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    assert_eq!(body["error"]["field"], "options.session_id");

    // The instance URL's header sticks the same way, and is one session.
    let host = host_of(&inst["deployment"]["url"]);
    let http = reqwest::Client::new();
    let mut by_url = BTreeSet::new();
    for _ in 0..20 {
        let res = http
            .post(format!("{}/invoke", server.url))
            .header("host", &host)
            .header("x-hangar-session", "by-url")
            .json(&json!({"via": "url"}))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), 200);
        let answer: Value = res.json().await.expect("json");
        by_url.insert(
            answer["output"]["replica"]
                .as_str()
                .expect("replica")
                .to_owned(),
        );
    }
    assert_eq!(by_url.len(), 1, "{by_url:?}");
    let url_session = server.get("/v1/sessions/by-url").await;
    assert_eq!(url_session["data"]["requests"], 20);
    assert_eq!(
        url_session["data"]["replica_id"].as_str(),
        by_url.first().map(String::as_str)
    );
    let res = http
        .post(format!("{}/invoke", server.url))
        .header("host", &host)
        .header("x-hangar-session", "no/slashes")
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 400);
    let refused: Value = res.json().await.expect("json");
    assert_eq!(refused["error"]["field"], "X-Hangar-Session");

    // Deleting ends it: gone from the list and 404; the ID starts afresh.
    let (status, ended, _, text) = server.call(Method::DELETE, "/v1/sessions/beta", None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ended["data"]["ended"], true);
    assert_eq!(ended["data"]["replica_stopped"], false);
    let (status, missing, _, _) = server.call(Method::GET, "/v1/sessions/beta", None).await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "SESSION_NOT_FOUND");
    let (status, _, _, _) = server.call(Method::DELETE, "/v1/sessions/beta", None).await;
    assert_eq!(status, 404);

    // With kill, its replica stops; a new session is served by another,
    // and the session's ID, used again, starts a new session elsewhere.
    let (status, killed, _, text) = server
        .call(Method::DELETE, "/v1/sessions/alpha?kill=true", None)
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(killed["data"]["replica_id"], firsts[0].as_str());
    assert_eq!(killed["data"]["replica_stopped"], true);
    for s in ["delta", "epsilon", "alpha"] {
        assert_ne!(invoke(&server, &agent, s).await, firsts[0], "{s}");
    }
    let again = server.get("/v1/sessions/alpha").await;
    assert_eq!(again["data"]["requests"], 1);
    let (status, bad, _, _) = server
        .call(Method::DELETE, "/v1/sessions/gamma?kill=maybe", None)
        .await;
    assert_eq!(status, 400, "{bad}");

    // An agent's sessions go with it.
    let (status, _, _, text) = server
        .call(Method::DELETE, &format!("/v1/agents/{agent}"), None)
        .await;
    assert_eq!(status, 200, "{text}");
    let (status, _, _, _) = server.call(Method::GET, "/v1/sessions/gamma", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sessions_survive_a_restart_of_the_server() {
    if !root_or_skip("sessions across a restart") {
        return;
    }
    let dir = temp("sessions-restart");
    let server = Server::start(&dir);
    // The idle timeout is the agent's, checked like any setting.
    let (status, refused, _, _) = server
        .call(
            Method::POST,
            "/v1/agents",
            Some(json!({
                "name": "too-brief",
                "cloud_id": "local",
                "source": {"type": "github", "repo": format!("file://{}", common::agent_dir("http"))},
                "config": {"session_idle_timeout_seconds": 5},
            })),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["field"]
            .as_str()
            .is_some_and(|f| f.ends_with("session_idle_timeout_seconds")),
        "{refused}"
    );
    let (agent, _) = server
        .deploy_running(
            "kept",
            "http",
            json!({
                "config": {"session_idle_timeout_seconds": 3600},
                "scaling": {"min_instances": 2, "max_instances": 2},
            }),
        )
        .await;
    let before = invoke(&server, &agent, "kept-1").await;
    for _ in 0..4 {
        assert_eq!(invoke(&server, &agent, "kept-1").await, before);
    }
    let started = server.get("/v1/sessions/kept-1").await["data"]["started_at"].clone();
    server.kill9();

    let server = Server::start(&dir);
    let kept = server.get("/v1/sessions/kept-1").await;
    assert_eq!(kept["data"]["requests"], 5, "{kept}");
    assert_eq!(kept["data"]["replica_id"], before.as_str());
    let after = invoke(&server, &agent, "kept-1").await;
    let session = server.get("/v1/sessions/kept-1").await;
    assert_eq!(session["data"]["requests"], 6, "{session}");
    assert_eq!(session["data"]["started_at"], started);
    assert_eq!(session["data"]["replica_id"], after.as_str());
    // Its replica, if the restarted server still runs it, keeps it; a
    // replica that did not survive the restart moves it, and says so.
    let moved = u64::from(after != before);
    assert_eq!(session["data"]["replica_changes"], moved, "{session}");
    for _ in 0..5 {
        assert_eq!(invoke(&server, &agent, "kept-1").await, after);
    }
}

/// Two servers on one PostgreSQL: a session's requests, listing and
/// `DELETE ?kill=true` made to the node that does not run the instance
/// reach the one that does (only it can stop the replica).
#[tokio::test]
async fn sessions_are_served_and_killed_through_the_node_that_runs_them() {
    let Some(nodes) = common::Nodes::new("sessions-hop", &[]).await else {
        return;
    };
    let a = nodes.start("a");
    let b = nodes.start("b");
    let (agent, instance) = a
        .deploy_running(
            "hopped",
            "http",
            json!({"scaling": {"min_instances": 2, "max_instances": 2}}),
        )
        .await;
    let held_by = common::holder(&nodes.db, &instance)
        .await
        .expect("a holder")
        .0;
    let other = if held_by == common::node_id(&a).await {
        &b
    } else {
        &a
    };

    let first = invoke(other, &agent, "hop-1").await;
    for _ in 0..10 {
        assert_eq!(invoke(other, &agent, "hop-1").await, first);
    }
    let listed = other.get(&format!("/v1/agents/{agent}/sessions")).await;
    assert_eq!(listed["data"][0]["requests"], 11, "{listed}");
    let (status, killed, _, text) = other
        .call(Method::DELETE, "/v1/sessions/hop-1?kill=true", None)
        .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(killed["data"]["replica_stopped"], true, "{killed}");
    assert_ne!(invoke(other, &agent, "hop-2").await, first);
}
