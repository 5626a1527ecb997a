//! Tenancy: another organization's objects answer exactly like missing ones, on
//! every route that names one, and are left untouched. Plus authentication.

mod common;

use axum::http::{Method, StatusCode};
use common::each_backend;
use hangar_store::NewJob;
use serde_json::{json, Value};

#[tokio::test]
async fn another_orgs_objects_are_not_found_on_every_route() {
    each_backend(|h| async move {
        // Objects of organization A.
        let (agent, build) = h.ready_agent(&h.a, "private").await;
        let inst = h.instance(&h.a, &agent, &build, "private-inst").await;
        let (job, _) = h
            .db
            .store
            .create_job(NewJob { organization_id: h.a.org.clone(), agent_id: agent.clone(), input: json!({}), ..NewJob::default() })
            .await
            .expect("job");
        let hook = h.post("/v1/webhooks", &h.a.key, json!({"url": "https://example.com/hook"})).await.body["data"]["id"].as_str().expect("hook").to_owned();
        h.post("/v1/secrets", &h.a.key, json!({"name": "PRIVATE", "value": "v"})).await;
        let key = h.post("/v1/api_keys", &h.a.key, json!({"name": "k"})).await.body["data"]["id"].as_str().expect("key").to_owned();
        let cloud = h.get("/v1/clouds/local", &h.a.key).await.body["data"]["id"].as_str().expect("cloud").to_owned();
        let (a_org, b_org, user) = (h.a.org.clone(), h.b.org.clone(), h.a.user.clone());
        let session = hangar_store::SessionVisit {
            organization_id: &a_org,
            id: "private-session",
            agent_id: &agent,
            instance_id: &inst,
            replica_id: "rep_private",
            idle_timeout: std::time::Duration::from_secs(3600),
        };
        h.db.store.visit_session(&session).await.expect("session");

        // (method, path with A's object, same path with a missing one, body)
        let routes: Vec<(Method, String, String, Option<Value>)> = vec![
            (Method::GET, format!("/instances/by_org_id/{a_org}"), "/instances/by_org_id/org_missing".into(), None),
            (Method::GET, format!("/instances/{inst}"), "/instances/inst_missing".into(), None),
            (Method::PUT, format!("/instances/{inst}"), "/instances/inst_missing".into(), Some(json!({"name": "stolen"}))),
            (Method::DELETE, format!("/instances/{inst}"), "/instances/inst_missing".into(), None),
            (Method::DELETE, format!("/instances/{inst}?force=true"), "/instances/inst_missing?force=true".into(), None),
            (Method::GET, format!("/instances/status/{a_org}/{inst}"), format!("/instances/status/{b_org}/inst_missing"), None),
            (Method::GET, format!("/instances/status/{b_org}/{inst}"), format!("/instances/status/{b_org}/inst_missing"), None),
            (Method::POST, format!("/instances/{a_org}/{inst}/exec"), format!("/instances/{b_org}/inst_missing/exec"), Some(json!(["ls"]))),
            (Method::POST, format!("/instances/{b_org}/{inst}/exec"), format!("/instances/{b_org}/inst_missing/exec"), Some(json!(["ls"]))),
            (Method::POST, format!("/instances/{a_org}/{inst}/stdin"), format!("/instances/{b_org}/inst_missing/stdin"), Some(json!({"input": "x"}))),
            (Method::POST, format!("/instances/{b_org}/{inst}/stdin"), format!("/instances/{b_org}/inst_missing/stdin"), Some(json!({"input": "x"}))),
            (Method::GET, format!("/instances/{a_org}/{inst}/logs"), format!("/instances/{b_org}/inst_missing/logs"), None),
            (Method::GET, format!("/instances/{b_org}/{inst}/logs"), format!("/instances/{b_org}/inst_missing/logs"), None),
            (Method::GET, format!("/v1/agents/{agent}"), "/v1/agents/agent_missing".into(), None),
            (Method::PATCH, format!("/v1/agents/{agent}"), "/v1/agents/agent_missing".into(), Some(json!({"version": "x"}))),
            (Method::DELETE, format!("/v1/agents/{agent}"), "/v1/agents/agent_missing".into(), None),
            (Method::POST, format!("/v1/agents/{agent}/invoke"), "/v1/agents/agent_missing/invoke".into(), Some(json!({"input": 1}))),
            (Method::POST, format!("/v1/agents/{agent}/start"), "/v1/agents/agent_missing/start".into(), None),
            (Method::POST, format!("/v1/agents/{agent}/stop"), "/v1/agents/agent_missing/stop".into(), None),
            (Method::POST, format!("/v1/agents/{agent}/redeploy"), "/v1/agents/agent_missing/redeploy".into(), None),
            (Method::GET, format!("/v1/agents/{agent}/logs"), "/v1/agents/agent_missing/logs".into(), None),
            (Method::GET, format!("/v1/agents/{agent}/metrics"), "/v1/agents/agent_missing/metrics".into(), None),
            (Method::GET, format!("/v1/agents/{agent}/builds"), "/v1/agents/agent_missing/builds".into(), None),
            (Method::GET, format!("/v1/agents/{agent}/sessions"), "/v1/agents/agent_missing/sessions".into(), None),
            (Method::GET, "/v1/sessions/private-session".into(), "/v1/sessions/missing".into(), None),
            (Method::DELETE, "/v1/sessions/private-session".into(), "/v1/sessions/missing".into(), None),
            (Method::GET, format!("/v1/builds/{build}"), "/v1/builds/build_missing".into(), None),
            (Method::GET, format!("/v1/builds/{build}/logs"), "/v1/builds/build_missing/logs".into(), None),
            (Method::GET, format!("/v1/jobs/{}", job.id), "/v1/jobs/job_missing".into(), None),
            (Method::POST, format!("/v1/jobs/{}/cancel", job.id), "/v1/jobs/job_missing/cancel".into(), None),
            (Method::DELETE, "/v1/secrets/PRIVATE".into(), "/v1/secrets/MISSING".into(), None),
            (Method::GET, format!("/v1/webhooks/{hook}"), "/v1/webhooks/wh_missing".into(), None),
            (Method::PATCH, format!("/v1/webhooks/{hook}"), "/v1/webhooks/wh_missing".into(), Some(json!({"enabled": false}))),
            (Method::DELETE, format!("/v1/webhooks/{hook}"), "/v1/webhooks/wh_missing".into(), None),
            (Method::GET, format!("/v1/users/{user}"), "/v1/users/user_missing".into(), None),
            (Method::DELETE, format!("/v1/api_keys/{key}"), "/v1/api_keys/key_missing".into(), None),
            (Method::GET, format!("/v1/clouds/{cloud}"), "/v1/clouds/cloud_missing".into(), None),
            (Method::GET, format!("/v1/organizations/{a_org}"), "/v1/organizations/org_missing".into(), None),
            (Method::PATCH, format!("/v1/organizations/{a_org}"), "/v1/organizations/org_missing".into(), Some(json!({"name": "mine"}))),
        ];
        for (method, theirs, missing, body) in routes {
            let got = h.call(method.clone(), &theirs, &h.b.key, body.clone()).await;
            let baseline = h.call(method.clone(), &missing, &h.b.key, body).await;
            assert_eq!(got.status, StatusCode::NOT_FOUND, "{method} {theirs}: {}", got.text);
            assert_eq!(got.status, baseline.status, "{method} {theirs}");
            assert_eq!(got.code(), baseline.code(), "{method} {theirs}");
            assert!(got.code().ends_with("_NOT_FOUND"), "{method} {theirs}: {}", got.text);
            assert_eq!(got.body["status"], baseline.body["status"], "{method} {theirs}");
        }
        // Referencing another organization's objects in a body is the same.
        let r = h.post("/instances", &h.b.key, json!({"name": "n", "agent_id": agent, "build_id": build, "organization_id": b_org})).await;
        assert_eq!(r.code(), "AGENT_NOT_FOUND");
        let r = h.post("/instances", &h.b.key, json!({"name": "n", "agent_id": agent, "build_id": build, "organization_id": a_org})).await;
        assert_eq!(r.code(), "ORGANIZATION_NOT_FOUND");
        let r = h.post("/v1/agents", &h.b.key, json!({"name": "n", "cloud_id": cloud, "source": {"type": "github", "repo": "a/b"}})).await;
        assert_eq!(r.code(), "CLOUD_NOT_FOUND");
        let r = h.post("/v1/api_keys", &h.b.key, json!({"name": "n", "user_id": user})).await;
        assert_eq!(r.code(), "USER_NOT_FOUND");
        // Lists show only one's own.
        for path in ["/v1/agents", "/v1/secrets", "/v1/webhooks", "/v1/users", "/v1/api_keys", "/v1/clouds", "/v1/organizations"] {
            let r = h.get(path, &h.b.key).await;
            assert!(!r.text.contains(&a_org) && !r.text.contains(&agent) && !r.text.contains("PRIVATE") && !r.text.contains(&hook), "{path}: {}", r.text);
        }
        // And everything of A is intact.
        let r = h.get(&format!("/instances/{inst}"), &h.a.key).await;
        assert_eq!(r.body["name"], "private-inst");
        assert_eq!(h.get(&format!("/v1/agents/{agent}"), &h.a.key).await.status, StatusCode::OK);
        assert_eq!(h.get(&format!("/v1/webhooks/{hook}"), &h.a.key).await.body["data"]["enabled"], true);
        assert_eq!(h.get(&format!("/v1/jobs/{}", job.id), &h.a.key).await.body["data"]["status"], "pending");
        assert_eq!(h.get("/v1/secrets", &h.a.key).await.body["data"][0]["name"], "PRIVATE");
        let keys = h.get("/v1/api_keys", &h.a.key).await;
        assert!(keys.body["data"].as_array().expect("keys").iter().all(|k| k["revoked_at"].is_null()));
        let session = h.get("/v1/sessions/private-session", &h.a.key).await;
        assert_eq!(session.body["data"]["replica_id"], "rep_private", "{}", session.text);
        let listed = h.get(&format!("/v1/agents/{agent}/sessions"), &h.a.key).await;
        assert_eq!(listed.body["data"][0]["id"], "private-session", "{}", listed.text);
    })
    .await;
}

#[tokio::test]
async fn authentication() {
    each_backend(|h| async move {
        for key in [None, Some("hgr_not_a_key"), Some("")] {
            let r = h.raw(Method::GET, "/v1/agents", key, None).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{key:?}");
            assert_eq!(r.code(), "UNAUTHORIZED");
            assert_eq!(r.headers["www-authenticate"], "Bearer");
        }
        let r = h
            .raw(
                Method::GET,
                &format!("/instances/by_org_id/{}", h.a.org),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = h.get("/v1/me", &h.a.key).await;
        assert_eq!(r.body["organization_id"], h.a.org.as_str());
        assert_eq!(r.body["user_id"], h.a.user.as_str());
        // A revoked key stops working at once.
        let created = h
            .post("/v1/api_keys", &h.a.key, json!({"name": "temp"}))
            .await;
        let secret = created.body["data"]["key"]
            .as_str()
            .expect("shown once")
            .to_owned();
        let id = created.body["data"]["id"].as_str().expect("id").to_owned();
        assert_eq!(h.get("/v1/me", &secret).await.status, StatusCode::OK);
        let listed = h.get("/v1/api_keys", &h.a.key).await;
        assert!(!listed.text.contains(&secret), "keys are shown once");
        let r = h
            .call(
                Method::DELETE,
                &format!("/v1/api_keys/{id}"),
                &h.a.key,
                None,
            )
            .await;
        assert!(r.body["data"]["revoked_at"].is_string());
        assert_eq!(
            h.get("/v1/me", &secret).await.status,
            StatusCode::UNAUTHORIZED
        );
    })
    .await;
}
