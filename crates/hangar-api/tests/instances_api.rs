//! The Instances API (seed 000) end to end on real databases: every documented
//! route, field and error code.

mod common;

use axum::http::{Method, StatusCode};
use common::each_backend;
use serde_json::json;

#[tokio::test]
async fn create_get_update_delete_as_documented() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "market-tracker").await;
        // The seed's create example, with IDs of this server.
        let r = h
            .post(
                "/instances",
                &h.a.key,
                json!({
                    "name": "my-production-instance", "agent_id": agent, "build_id": build, "organization_id": h.a.org,
                    "config": {"replicas": 2, "long_running": true, "enable_http": true},
                    "resources": {"cpu": "1.0", "memory": "1Gi", "cpu_limit": "2.0", "memory_limit": "2Gi"},
                    "env_vars": {"API_KEY": "your-secret-api-key", "TARGET_QUERY": "artificial intelligence stocks", "LOG_LEVEL": "DEBUG"}
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let i = &r.body;
        assert_eq!(i["status"], "starting", "a new instance starts as documented");
        assert_eq!(i["name"], "my-production-instance");
        assert_eq!(i["agent_id"], agent.as_str());
        assert_eq!(i["build_id"], build.as_str());
        assert_eq!(i["organization_id"], h.a.org.as_str());
        assert_eq!(i["user_id"], h.a.user.as_str());
        assert_eq!(i["deployment"]["deployment_type"], "HTTP_LONG_RUNNING");
        assert_eq!(i["deployment"]["restart_count"], 0);
        let resource = i["deployment"]["resource_name"].as_str().expect("resource_name");
        assert!(resource.starts_with("my-production-instance-"), "{resource}");
        assert_eq!(i["deployment"]["url"], format!("http://{resource}.localhost:7070"));
        assert_eq!(i["config"]["replicas"], 2);
        assert_eq!(i["config"]["port"], 8080);
        assert_eq!(i["config"]["health_path"], "/health");
        assert_eq!(i["resources"], json!({"cpu": "1.0", "memory": "1Gi", "cpu_limit": "2.0", "memory_limit": "2Gi"}));
        assert_eq!(i["env_vars"]["API_KEY"], "***REDACTED***");
        assert_eq!(i["env_vars"]["TARGET_QUERY"], "artificial intelligence stocks");
        assert!(!r.text.contains("your-secret-api-key"), "secret value leaked: {}", r.text);
        for k in ["uptime_seconds", "requests_total", "cpu_usage_percent", "memory_usage_mb"] {
            assert!(i["metrics"][k].is_number(), "metrics.{k}");
        }
        assert!(i["created_at"].as_str().expect("created_at").ends_with('Z'));
        let id = i["id"].as_str().expect("id").to_owned();

        let got = h.get(&format!("/instances/{id}"), &h.a.key).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body["id"], id.as_str());
        assert!(!got.text.contains("your-secret-api-key"));

        // The seed's update example: replicas, resources, env merged.
        let r = h
            .call(
                Method::PUT,
                &format!("/instances/{id}"),
                &h.a.key,
                Some(json!({"name": "updated-instance-name", "config": {"replicas": 3}, "resources": {"memory": "2Gi"}, "env_vars": {"LOG_LEVEL": "ERROR", "NEW_SETTING": "value"}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["name"], "updated-instance-name");
        assert_eq!(r.body["config"]["replicas"], 3);
        assert_eq!(r.body["resources"]["memory"], "2Gi");
        assert_eq!(r.body["env_vars"]["LOG_LEVEL"], "ERROR");
        assert_eq!(r.body["env_vars"]["NEW_SETTING"], "value");
        assert_eq!(r.body["env_vars"]["TARGET_QUERY"], "artificial intelligence stocks");
        assert_eq!(r.body["env_vars"]["API_KEY"], "***REDACTED***");

        // A request that breaks a rule changes nothing.
        let bad = h.call(Method::PUT, &format!("/instances/{id}"), &h.a.key, Some(json!({"name": "x", "resources": {"memory": "4Gi"}}))).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.body["error"]["field"], "resources.memory_limit");
        let unchanged = h.get(&format!("/instances/{id}"), &h.a.key).await;
        assert_eq!(unchanged.body["name"], "updated-instance-name");

        // Graceful and forced delete: 204, then gone.
        let del = h.call(Method::DELETE, &format!("/instances/{id}"), &h.a.key, None).await;
        assert_eq!(del.status, StatusCode::NO_CONTENT);
        assert!(del.text.is_empty());
        let gone = h.get(&format!("/instances/{id}"), &h.a.key).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert_eq!(gone.code(), "INSTANCE_NOT_FOUND");
        assert_eq!(gone.body["error"]["message"], format!("Instance with ID '{id}' not found"));
        let id2 = h.instance(&h.a, &agent, &build, "second").await;
        let del = h.call(Method::DELETE, &format!("/instances/{id2}?force=true"), &h.a.key, None).await;
        assert_eq!(del.status, StatusCode::NO_CONTENT);
        let again = h.call(Method::DELETE, &format!("/instances/{id2}?force=true"), &h.a.key, None).await;
        assert_eq!(again.code(), "INSTANCE_NOT_FOUND");
        let bad_force = h.call(Method::DELETE, &format!("/instances/{id2}?force=maybe"), &h.a.key, None).await;
        assert_eq!(bad_force.status, StatusCode::BAD_REQUEST);
    })
    .await;
}

#[tokio::test]
async fn documented_error_codes() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "errs").await;
        // BUILD_NOT_READY with build_status.
        let queued = h.post(&format!("/v1/agents/{agent}/redeploy"), &h.a.key, json!({})).await;
        assert_eq!(queued.status, StatusCode::ACCEPTED, "{}", queued.text);
        let new_build = queued.body["data"]["latest_build_id"].as_str().expect("build").to_owned();
        assert_ne!(new_build, build);
        let r = h.post("/instances", &h.a.key, json!({"name": "n", "agent_id": agent, "build_id": new_build, "organization_id": h.a.org})).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.code(), "BUILD_NOT_READY");
        assert_eq!(r.body["error"]["build_status"], "queued");
        assert_eq!(r.body["error"]["message"], "Cannot create instance from incomplete build");

        // Name unique within the organization.
        h.instance(&h.a, &agent, &build, "taken").await;
        let r = h.post("/instances", &h.a.key, json!({"name": "taken", "agent_id": agent, "build_id": build, "organization_id": h.a.org})).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.code(), "INSTANCE_NAME_TAKEN");

        // INSTANCE_NOT_RUNNING with current_status on exec and log follows (this
        // harness has no runtime); stored logs read whatever the status.
        let id = h.instance(&h.a, &agent, &build, "idle").await;
        let org = &h.a.org;
        let r = h.call(Method::GET, &format!("/instances/{org}/{id}/logs?lines=50"), &h.a.key, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body, json!({"logs": []}));
        for (method, path, body) in [
            (Method::POST, format!("/instances/{org}/{id}/exec"), Some(json!(["python", "-c", "print('Hello from instance!')"]))),
            (Method::GET, format!("/instances/{org}/{id}/logs?follow=true"), None),
        ] {
            let r = h.call(method, &path, &h.a.key, body).await;
            assert_eq!(r.status, StatusCode::CONFLICT, "{path}: {}", r.text);
            assert_eq!(r.code(), "INSTANCE_NOT_RUNNING");
            assert_eq!(r.body["error"]["current_status"], "starting");
        }
        // stdin needs a STDIN deployment first.
        let r = h.post(&format!("/instances/{org}/{id}/stdin"), &h.a.key, json!({"input": "hi\n"})).await;
        assert_eq!(r.code(), "STDIN_NOT_ENABLED");
        let r = h.post("/instances", &h.a.key, json!({"name": "chat", "agent_id": agent, "build_id": build, "organization_id": org, "config": {"deployment_type": "STDIN"}})).await;
        assert_eq!(r.body["deployment"]["deployment_type"], "STDIN", "{}", r.text);
        let chat = r.body["id"].as_str().expect("id");
        let r = h.post(&format!("/instances/{org}/{chat}/stdin"), &h.a.key, json!({"input": "What is the weather like today?\n"})).await;
        assert_eq!(r.code(), "INSTANCE_NOT_RUNNING");
        assert_eq!(r.body["error"]["current_status"], "starting");
        // Bad bodies and parameters are 400 before anything else.
        for (path, body) in [(format!("/instances/{org}/{id}/exec"), json!([])), (format!("/instances/{org}/{id}/exec"), json!("ls")), (format!("/instances/{org}/{chat}/stdin"), json!({"input": 5}))] {
            assert_eq!(h.post(&path, &h.a.key, body).await.status, StatusCode::BAD_REQUEST, "{path}");
        }
        for q in ["lines=0", "lines=abc", "since=yesterday"] {
            let r = h.get(&format!("/instances/{org}/{id}/logs?{q}"), &h.a.key).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        }

        // RESOURCE_LIMIT_EXCEEDED with details, at the organization's quota.
        h.db.store.update_organization(org, None, Some(3)).await.expect("quota");
        let r = h.post("/instances", &h.a.key, json!({"name": "one-too-many", "agent_id": agent, "build_id": build, "organization_id": org})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert_eq!(r.code(), "RESOURCE_LIMIT_EXCEEDED");
        assert_eq!(r.body["error"]["details"], json!({"current_instances": 3, "max_instances": 3}));
        assert_eq!(r.body["error"]["message"], "Organization has reached maximum instance count");
        // Deleting frees a slot.
        h.call(Method::DELETE, &format!("/instances/{id}"), &h.a.key, None).await;
        let r = h.post("/instances", &h.a.key, json!({"name": "fits-now", "agent_id": agent, "build_id": build, "organization_id": org})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    })
    .await;
}

#[tokio::test]
async fn list_paginates_and_filters() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "lister").await;
        let (other_agent, other_build) = h.ready_agent(&h.a, "other").await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(h.instance(&h.a, &agent, &build, &format!("l{i}")).await);
        }
        let lone = h.instance(&h.a, &other_agent, &other_build, "lone").await;
        h.db.store
            .record_instance_status(
                &ids[1],
                hangar_core::status::InstanceStatus::Running,
                None,
                1,
                0,
            )
            .await
            .expect("status");
        let org = &h.a.org;

        let r = h
            .get(&format!("/instances/by_org_id/{org}?limit=2"), &h.a.key)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["pagination"]["limit"], 2);
        assert_eq!(r.body["pagination"]["has_more"], true);
        assert_eq!(r.body["data"][0]["id"], lone.as_str(), "newest first");
        let mut seen: Vec<String> = r.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_owned())
            .collect();
        let mut cursor = r.body["pagination"]["next_cursor"]
            .as_str()
            .map(str::to_owned);
        while let Some(c) = cursor {
            let r = h
                .get(
                    &format!("/instances/by_org_id/{org}?limit=2&cursor={c}"),
                    &h.a.key,
                )
                .await;
            seen.extend(
                r.body["data"]
                    .as_array()
                    .expect("data")
                    .iter()
                    .map(|i| i["id"].as_str().expect("id").to_owned()),
            );
            cursor = r.body["pagination"]["next_cursor"]
                .as_str()
                .map(str::to_owned);
            if cursor.is_none() {
                assert_eq!(r.body["pagination"]["has_more"], false);
            }
        }
        assert_eq!(seen.len(), 6, "every instance once: {seen:?}");

        let r = h
            .get(
                &format!("/instances/by_org_id/{org}?status=running"),
                &h.a.key,
            )
            .await;
        assert_eq!(r.body["data"].as_array().expect("data").len(), 1);
        assert_eq!(r.body["data"][0]["status"], "running");
        let r = h
            .get(
                &format!("/instances/by_org_id/{org}?status=all&agent_id={other_agent}"),
                &h.a.key,
            )
            .await;
        assert_eq!(r.body["data"].as_array().expect("data").len(), 1);
        let r = h
            .get(
                &format!("/instances/by_org_id/{org}?user_id={}", h.a.user),
                &h.a.key,
            )
            .await;
        assert_eq!(r.body["data"].as_array().expect("data").len(), 6);
        let r = h
            .get(
                &format!("/instances/by_org_id/{org}?user_id=user_nobody"),
                &h.a.key,
            )
            .await;
        assert!(r.body["data"].as_array().expect("data").is_empty());
        let r = h
            .get(&format!("/instances/by_org_id/{org}"), &h.a.key)
            .await;
        assert_eq!(r.body["pagination"]["limit"], 50, "default limit");

        for q in [
            "limit=0",
            "limit=101",
            "limit=x",
            "status=sleeping",
            "cursor=not-a-cursor",
        ] {
            let r = h
                .get(&format!("/instances/by_org_id/{org}?{q}"), &h.a.key)
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text);
            assert_eq!(r.code(), "INVALID_REQUEST");
            assert!(r.body["error"]["field"].is_string(), "{q} names its field");
        }
    })
    .await;
}

#[tokio::test]
async fn status_endpoint() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "stat").await;
        let id = h.instance(&h.a, &agent, &build, "s").await;
        let r = h
            .get(&format!("/instances/status/{}/{id}", h.a.org), &h.a.key)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["status"], "DNS_PENDING");
        assert!(r.body["created_at"].is_i64());
        assert_eq!(r.body["replicas"], 0);
        assert_eq!(r.body["restart_count"], 0);
        assert!(r.body["health_checks"]
            .as_object()
            .expect("health_checks")
            .contains_key("last_check"));
        for k in [
            "cpu_percent",
            "memory_mb",
            "network_rx_bytes",
            "network_tx_bytes",
        ] {
            assert!(
                r.body["resource_usage"][k].is_number(),
                "resource_usage.{k}"
            );
        }
        h.db.store
            .record_instance_status(
                &id,
                hangar_core::status::InstanceStatus::Running,
                None,
                1,
                1,
            )
            .await
            .expect("status");
        let r = h
            .get(&format!("/instances/status/{}/{id}", h.a.org), &h.a.key)
            .await;
        assert_eq!(r.body["status"], "RUNNING");
        assert_eq!(r.body["restart_count"], 1);
        let r = h
            .get(
                &format!("/instances/status/{}/inst_missing", h.a.org),
                &h.a.key,
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.body["status"], "NOT_FOUND");
        assert_eq!(r.code(), "INSTANCE_NOT_FOUND");
    })
    .await;
}
