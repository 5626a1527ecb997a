//! The Agents API (seed 003) end to end on real databases.

mod common;

use axum::http::{Method, StatusCode};
use common::each_backend;
use serde_json::json;

#[tokio::test]
async fn deploy_example_and_the_agent_object() {
    each_backend(|h| async move {
        h.post("/v1/secrets", &h.a.key, json!({"name": "OPENAI_KEY", "value": "sk-live-123"})).await;
        // The seed's full example (cloud by name).
        let r = h
            .post(
                "/v1/agents",
                &h.a.key,
                json!({
                    "name": "sentiment-analyzer", "cloud_id": "local",
                    "source": {"type": "github", "repo": "myorg/sentiment-agent", "branch": "main"},
                    "runtime": {"language": "python", "version": "3.11"},
                    "resources": {"cpu": 2, "memory_mb": 4096},
                    "environment": {"OPENAI_API_KEY": "${secrets.OPENAI_KEY}", "LOG_LEVEL": "info"},
                    "scaling": {"min_instances": 1, "max_instances": 10, "target_cpu_percent": 70}
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["success"], true);
        assert!(r.body["meta"]["request_id"].as_str().expect("request_id").starts_with("req_"));
        assert_eq!(r.headers["x-request-id"].to_str().expect("header"), r.body["meta"]["request_id"].as_str().expect("id"));
        let a = &r.body["data"];
        assert!(a["id"].as_str().expect("id").starts_with("agent_"));
        assert_eq!(a["name"], "sentiment-analyzer");
        assert_eq!(a["status"], "created", "queued build: awaiting deployment");
        assert!(a["cloud_id"].as_str().expect("cloud").starts_with("cloud_"));
        assert_eq!(a["runtime"]["language"], "python");
        assert_eq!(a["resources"], json!({"cpu": 2, "memory_mb": 4096, "gpu": null}));
        assert_eq!(a["scaling"], json!({"min_instances": 1, "max_instances": 10, "current_instances": 0, "target_cpu_percent": 70}));
        assert_eq!(a["endpoints"]["health"], "/health");
        assert_eq!(a["endpoints"]["invoke"], "/invoke");
        assert_eq!(a["endpoints"]["base_url"], "http://127.0.0.1:7070/agents/sentiment-analyzer", "path-style, under the cloud's base URL");
        assert_eq!(a["environment"], json!({"OPENAI_API_KEY": "****", "LOG_LEVEL": "info"}));
        assert_eq!(a["source"], json!({"type": "github", "repo": "myorg/sentiment-agent", "branch": "main"}));
        for k in ["requests_24h", "avg_latency_ms", "error_rate_percent"] {
            assert!(a["metrics"][k].is_number(), "metrics.{k}");
        }
        for k in ["status", "last_check", "uptime_percent"] {
            assert!(a["health"].as_object().expect("health").contains_key(k), "health.{k}");
        }
        for k in ["display_name", "version", "created_at", "updated_at", "deployed_at", "metadata"] {
            assert!(a.as_object().expect("agent").contains_key(k), "{k}");
        }
        assert!(!r.text.contains("sk-live-123"));
        let id = a["id"].as_str().expect("id").to_owned();

        // Docker source credentials are redacted; upload sources validate.
        let r = h
            .post(
                "/v1/agents",
                &h.a.key,
                json!({"name": "img", "cloud_id": "local", "source": {"type": "docker", "image": "ghcr.io/user/my-agent:v1.0.0", "credentials": {"username": "user", "password": "${secrets.GITHUB_TOKEN}"}}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["data"]["source"]["credentials"]["password"], "****");
        // Uploads: this server's upload_url (or the id) of the caller's own upload.
        let up = h.raw(Method::POST, "/v1/uploads", Some(&h.a.key), None).await;
        let url = up.body["data"]["upload_url"].as_str().expect("url").to_owned();
        let upload_id = up.body["data"]["id"].as_str().expect("id").to_owned();
        let r = h.post("/v1/agents", &h.a.key, json!({"name": "up", "cloud_id": "local", "source": {"type": "upload", "archive_url": url}})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["data"]["source"]["upload_id"], upload_id.as_str());
        let r = h.post("/v1/agents", &h.a.key, json!({"name": "up2", "cloud_id": "local", "source": {"type": "upload", "archive_url": "https://example.com/a.tgz"}})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "only this server's uploads: {}", r.text);
        let r = h.post("/v1/agents", &h.b.key, json!({"name": "theft", "cloud_id": "local", "source": {"type": "upload", "upload_id": upload_id}})).await;
        assert_eq!(r.code(), "UPLOAD_NOT_FOUND", "another org's upload: {}", r.text);
        // file:// repositories are paths on the server: operators only.
        let r = h.post("/v1/agents", &h.b.key, json!({"name": "local-repo", "cloud_id": "local", "source": {"type": "github", "repo": "file:///srv/repo.git"}})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        let r = h.post("/v1/agents", &h.a.key, json!({"name": "local-repo", "cloud_id": "local", "source": {"type": "github", "repo": "file:///srv/repo.git"}})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        // Tokens in git URLs are not shown.
        let r = h.post("/v1/agents", &h.a.key, json!({"name": "tok", "cloud_id": "local", "source": {"type": "github", "repo": "https://x:ghp_SECRET@github.com/o/r.git"}})).await;
        assert!(!r.text.contains("ghp_SECRET"), "{}", r.text);

        // Names are unique within the cloud.
        let r = h.post("/v1/agents", &h.a.key, json!({"name": "sentiment-analyzer", "cloud_id": "local", "source": {"type": "github", "repo": "a/b"}})).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.code(), "AGENT_NAME_TAKEN");
        assert_eq!(r.body["success"], false);

        // List, get.
        let r = h.get("/v1/agents?limit=4", &h.a.key).await;
        assert_eq!(r.body["data"].as_array().expect("data").len(), 4);
        assert_eq!(r.body["pagination"]["has_more"], true);
        let c = r.body["pagination"]["next_cursor"].as_str().expect("cursor");
        let r2 = h.get(&format!("/v1/agents?limit=4&cursor={c}"), &h.a.key).await;
        assert_eq!(r2.body["data"].as_array().expect("data").len(), 1);
        assert_eq!(r2.body["data"][0]["id"], id.as_str(), "oldest last");
        let by_name = h.get("/v1/agents?cloud_id=local", &h.a.key).await;
        assert_eq!(by_name.body["data"].as_array().expect("data").len(), 5, "the filter takes a cloud's name too");
        assert_eq!(h.get("/v1/agents?cloud_id=nowhere", &h.a.key).await.code(), "CLOUD_NOT_FOUND");
        let r = h.get(&format!("/v1/agents/{id}"), &h.a.key).await;
        assert_eq!(r.body["data"]["id"], id.as_str());
    })
    .await;
}

#[tokio::test]
async fn update_lifecycle_and_delete() {
    each_backend(|h| async move {
        let (id, _) = h.ready_agent(&h.a, "life").await;
        let r = h.get(&format!("/v1/agents/{id}"), &h.a.key).await;
        assert_eq!(r.body["data"]["status"], "deploying", "build ready, no instance yet");

        let r = h
            .call(
                Method::PATCH,
                &format!("/v1/agents/{id}"),
                &h.a.key,
                Some(json!({"display_name": "Life v2", "version": "2.1.0", "resources": {"cpu": 0.5}, "scaling": {"max_instances": 3},
                            "environment": {"LOG_LEVEL": "debug"}, "metadata": {"team": "nlp", "cost_center": "ai-001"}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let a = &r.body["data"];
        assert_eq!(a["display_name"], "Life v2");
        assert_eq!(a["version"], "2.1.0");
        assert_eq!(a["resources"]["cpu"], 0.5);
        assert_eq!(a["scaling"]["max_instances"], 3);
        assert_eq!(a["metadata"], json!({"team": "nlp", "cost_center": "ai-001"}));
        let r = h.call(Method::PATCH, &format!("/v1/agents/{id}"), &h.a.key, Some(json!({"environment": {"LOG_LEVEL": null}, "metadata": {"team": null}}))).await;
        assert_eq!(r.body["data"]["environment"], json!({}));
        assert_eq!(r.body["data"]["metadata"], json!({"cost_center": "ai-001"}));
        let r = h.call(Method::PATCH, &format!("/v1/agents/{id}"), &h.a.key, Some(json!({"scaling": {"min_instances": 5, "max_instances": 2}}))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.body["error"]["field"], "scaling.max_instances");
        let r = h.call(Method::PATCH, &format!("/v1/agents/{id}"), &h.a.key, Some(json!({"cloud_id": "elsewhere"}))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "cloud_id cannot change");

        // Stop and start set what is wanted; stopping twice is fine.
        for _ in 0..2 {
            let r = h.post(&format!("/v1/agents/{id}/stop"), &h.a.key, json!({})).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            assert_eq!(r.body["data"]["status"], "stopped");
        }
        let r = h.raw(Method::POST, &format!("/v1/agents/{id}/start"), Some(&h.a.key), None).await;
        assert_eq!(r.status, StatusCode::OK, "start takes no body: {}", r.text);
        assert_eq!(r.body["data"]["status"], "deploying");

        // Redeploy queues a build.
        let before = h.get(&format!("/v1/agents/{id}/builds"), &h.a.key).await;
        assert_eq!(before.body["data"].as_array().expect("builds").len(), 1);
        let r = h.raw(Method::POST, &format!("/v1/agents/{id}/redeploy"), Some(&h.a.key), None).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let after = h.get(&format!("/v1/agents/{id}/builds"), &h.a.key).await;
        assert_eq!(after.body["data"].as_array().expect("builds").len(), 2);
        assert_eq!(after.body["data"][0]["status"], "queued");

        // Invoke, logs need a running agent: AGENT_NOT_RUNNING with current_status.
        let r = h.post(&format!("/v1/agents/{id}/invoke"), &h.a.key, json!({"input": {"text": "I love it", "language": "en"}})).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert_eq!(r.code(), "AGENT_NOT_RUNNING");
        assert_eq!(r.body["error"]["current_status"], "created");
        let r = h.raw(Method::POST, &format!("/v1/agents/{id}/invoke"), Some(&h.a.key), Some(r#"{"input": {"document": "..."}, "async": true}"#)).await;
        assert_eq!(r.code(), "AGENT_NOT_RUNNING", "the seed's curl sends no Content-Type: still JSON");
        for q in ["tail=100", "follow=true"] {
            let r = h.get(&format!("/v1/agents/{id}/logs?{q}"), &h.a.key).await;
            assert_eq!(r.code(), "AGENT_NOT_RUNNING", "{q}");
        }
        for q in ["tail=0", "level=verbose", "since=now", "until=2024-13-01"] {
            let r = h.get(&format!("/v1/agents/{id}/logs?{q}"), &h.a.key).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        }
        for body in [json!({"input": 1, "options": {"timeout": 0}}), json!({"input": 1, "options": {"headers": {"bad header": "x"}}}), json!({"input": 1, "asynk": true})] {
            let r = h.post(&format!("/v1/agents/{id}/invoke"), &h.a.key, body.clone()).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        }

        // Metrics.
        let r = h.get(&format!("/v1/agents/{id}/metrics"), &h.a.key).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["data"]["window"], "24h");
        assert_eq!(r.body["data"]["replicas"], 0);
        assert_eq!(h.get(&format!("/v1/agents/{id}/metrics?window=1y"), &h.a.key).await.status, StatusCode::BAD_REQUEST);

        // Delete.
        let r = h.call(Method::DELETE, &format!("/v1/agents/{id}"), &h.a.key, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["data"], json!({"id": id, "deleted": true}));
        let r = h.get(&format!("/v1/agents/{id}"), &h.a.key).await;
        assert_eq!(r.code(), "AGENT_NOT_FOUND");
    })
    .await;
}

#[tokio::test]
async fn agents_validate_every_field() {
    each_backend(|h| async move {
        let base =
            json!({"name": "v", "cloud_id": "local", "source": {"type": "github", "repo": "a/b"}});
        let cases = [
            ("name", json!("has space")),
            ("cloud_id", json!(5)),
            ("source", json!({"type": "svn", "repo": "a/b"})),
            ("source", json!({"type": "github", "repo": "nope"})),
            ("resources", json!({"cpu": "-1"})),
            ("resources", json!({"memory": "12Zi"})),
            ("resources", json!({"cpu": ""})),
            ("resources", json!({"memory_mb": -5})),
            ("resources", json!({"gpu": 1})),
            ("scaling", json!({"min_instances": 101})),
            ("scaling", json!({"target_cpu_percent": 0})),
            ("environment", json!({"PORT": "1"})),
            ("environment", json!({"TIMEOUT": 30})),
            ("environment", json!({"X": "${secrets.}"})),
            ("runtime", json!({"language": "py thon"})),
            ("metadata", json!({"k": 1})),
            ("display_name", json!("a\u{0007}b")),
            ("config", json!({"port": 0})),
            ("bogus", json!(true)),
        ];
        for (field, value) in cases {
            let mut body = base.clone();
            body[field] = value.clone();
            let r = h.post("/v1/agents", &h.a.key, body).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{field}={value}: {}",
                r.text
            );
            assert_eq!(r.code(), "INVALID_REQUEST");
            let named = r.body["error"]["field"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let message = r.body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                named.starts_with(field) || message.contains(field),
                "{field}={value} should name the field: {}",
                r.text
            );
        }
        for missing in ["name", "cloud_id", "source"] {
            let mut body = base.clone();
            body.as_object_mut().expect("object").remove(missing);
            let r = h.post("/v1/agents", &h.a.key, body).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            assert!(
                r.body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(missing),
                "{}",
                r.text
            );
        }
        let mut body = base.clone();
        body["cloud_id"] = json!("cloud_nowhere");
        let r = h.post("/v1/agents", &h.a.key, body).await;
        assert_eq!(r.code(), "CLOUD_NOT_FOUND");
        // Nothing half-written: no agent exists after all those failures.
        let r = h.get("/v1/agents", &h.a.key).await;
        assert!(
            r.body["data"].as_array().expect("data").is_empty(),
            "{}",
            r.text
        );
    })
    .await;
}
