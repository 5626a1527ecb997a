//! The `/v1` extras: builds, jobs, uploads, secrets, webhooks.

mod common;

use axum::http::{Method, StatusCode};
use common::each_backend;
use hangar_core::status::JobStatus;
use hangar_store::NewJob;
use serde_json::json;

#[tokio::test]
async fn builds_and_their_logs() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "b").await;
        h.db.store
            .append_build_log(
                &build,
                "stdout",
                &["Collecting langchain-core", "Installed"],
            )
            .await
            .expect("log");
        let r = h.get(&format!("/v1/builds/{build}"), &h.a.key).await;
        assert_eq!(r.body["data"]["status"], "ready");
        assert_eq!(r.body["data"]["agent_id"], agent.as_str());
        assert!(r.body["data"]["finished_at"].is_string());
        let r = h.get(&format!("/v1/builds/{build}/logs"), &h.a.key).await;
        let logs = r.body["data"]["logs"].as_array().expect("logs");
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0]["message"], "Collecting langchain-core");
        let r = h
            .get(&format!("/v1/builds/{build}/logs?after=1"), &h.a.key)
            .await;
        assert_eq!(r.body["data"]["logs"].as_array().expect("logs").len(), 1);
        assert_eq!(
            h.get(&format!("/v1/builds/{build}/logs?limit=0"), &h.a.key)
                .await
                .status,
            StatusCode::BAD_REQUEST
        );
        let r = h.get(&format!("/v1/agents/{agent}/builds"), &h.a.key).await;
        assert_eq!(r.body["data"][0]["id"], build.as_str());
    })
    .await;
}

#[tokio::test]
async fn jobs_poll_and_cancel() {
    each_backend(|h| async move {
        let (agent, _) = h.ready_agent(&h.a, "j").await;
        let (job, _) =
            h.db.store
                .create_job(NewJob {
                    organization_id: h.a.org.clone(),
                    agent_id: agent,
                    input: json!({"document": "..."}),
                    ..NewJob::default()
                })
                .await
                .expect("job");
        let r = h.get(&format!("/v1/jobs/{}", job.id), &h.a.key).await;
        assert_eq!(r.body["data"]["status"], "pending");
        assert_eq!(r.body["data"]["job_id"], job.id.as_str());
        assert_eq!(r.body["data"]["poll_url"], format!("/v1/jobs/{}", job.id));
        for _ in 0..2 {
            let r = h
                .raw(
                    Method::POST,
                    &format!("/v1/jobs/{}/cancel", job.id),
                    Some(&h.a.key),
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            assert_eq!(r.body["data"]["status"], "cancelled");
        }
        assert_eq!(
            h.db.store
                .get_job(&h.a.org, &job.id)
                .await
                .expect("get")
                .expect("job")
                .status,
            JobStatus::Cancelled
        );
    })
    .await;
}

#[tokio::test]
async fn uploads_secrets_webhooks() {
    each_backend(|h| async move {
        let r = h.raw(Method::POST, "/v1/uploads", Some(&h.a.key), None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let url = r.body["data"]["upload_url"].as_str().expect("url");
        let id = r.body["data"]["id"].as_str().expect("id");
        assert!(url.starts_with(&format!("http://127.0.0.1:7070/v1/uploads/{id}/content?expires=")), "{url}");
        assert!(url.contains("&signature="));
        assert!(r.body["data"]["expires_at"].is_string());

        // Secrets: values never come back.
        let r = h.post("/v1/secrets", &h.a.key, json!({"name": "OPENAI_KEY", "value": "sk-very-secret"})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.body["data"]["value"], "****");
        let r = h.post("/v1/secrets", &h.a.key, json!({"name": "OPENAI_KEY", "value": "sk-rotated"})).await;
        assert_eq!(r.status, StatusCode::OK, "replacing answers 200");
        let r = h.get("/v1/secrets", &h.a.key).await;
        assert!(!r.text.contains("sk-"), "{}", r.text);
        assert_eq!(h.db.store.reveal_secret(&h.a.org, "OPENAI_KEY").await.expect("reveal").as_deref(), Some("sk-rotated"));
        assert_eq!(h.post("/v1/secrets", &h.a.key, json!({"name": "1BAD", "value": "x"})).await.status, StatusCode::BAD_REQUEST);
        assert_eq!(h.post("/v1/secrets", &h.a.key, json!({"name": "sec_01x", "value": "x"})).await.status, StatusCode::BAD_REQUEST, "names must not look like IDs");
        let r = h.call(Method::DELETE, "/v1/secrets/OPENAI_KEY", &h.a.key, None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(h.call(Method::DELETE, "/v1/secrets/OPENAI_KEY", &h.a.key, None).await.code(), "SECRET_NOT_FOUND");

        // Webhooks: CRUD, secret shown once, events validated.
        let r = h.post("/v1/webhooks", &h.a.key, json!({"url": "https://example.com/hooks", "events": ["agent.deployed", "agent.failed"]})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let secret = r.body["data"]["secret"].as_str().expect("secret").to_owned();
        assert!(secret.starts_with("whsec_"));
        let wh = r.body["data"]["id"].as_str().expect("id").to_owned();
        let r = h.get(&format!("/v1/webhooks/{wh}"), &h.a.key).await;
        assert!(r.body["data"]["secret"].is_null() && !r.text.contains(&secret));
        let r = h.call(Method::PATCH, &format!("/v1/webhooks/{wh}"), &h.a.key, Some(json!({"enabled": false, "events": ["agent.scaled"]}))).await;
        assert_eq!(r.body["data"]["enabled"], false);
        assert_eq!(r.body["data"]["events"], json!(["agent.scaled"]));
        assert_eq!(h.get("/v1/webhooks", &h.a.key).await.body["data"].as_array().expect("hooks").len(), 1);
        for bad in [json!({"url": "ftp://x"}), json!({"url": "https://x", "events": ["agent.exploded"]}), json!({"url": "https://x", "secret": "plain"})] {
            assert_eq!(h.post("/v1/webhooks", &h.a.key, bad.clone()).await.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert_eq!(h.call(Method::DELETE, &format!("/v1/webhooks/{wh}"), &h.a.key, None).await.status, StatusCode::OK);
        assert_eq!(h.get(&format!("/v1/webhooks/{wh}"), &h.a.key).await.code(), "WEBHOOK_NOT_FOUND");
    })
    .await;
}

/// PUT `body` to an upload URL's path (no API key: the URL is signed).
async fn put_upload(h: &common::Harness, path: &str, body: Vec<u8>) -> common::Reply {
    let req = axum::http::Request::builder()
        .method(Method::PUT)
        .uri(path)
        .header("content-length", body.len())
        .body(axum::body::Body::from(body))
        .expect("request");
    h.send(req).await
}

fn signed_path(id: &str, expires: i64) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&common::config().signing_key).expect("key");
    mac.update(format!("{id}:{expires}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    format!("/v1/uploads/{id}/content?expires={expires}&signature={signature}")
}

#[tokio::test]
async fn upload_urls_take_one_archive_within_the_limit() {
    each_backend(|h| async move {
        let open = || async {
            let r = h
                .raw(Method::POST, "/v1/uploads", Some(&h.a.key), None)
                .await;
            let url = r.body["data"]["upload_url"]
                .as_str()
                .expect("url")
                .to_owned();
            let id = r.body["data"]["id"].as_str().expect("id").to_owned();
            (
                url.trim_start_matches("http://127.0.0.1:7070").to_owned(),
                id,
            )
        };
        // The smallest thing that starts like a tar archive.
        let mut tar = vec![0u8; 1024];
        tar[257..262].copy_from_slice(b"ustar");

        let (path, id) = open().await;
        let r = put_upload(&h, &path, b"just some text".to_vec()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        let tampered = path.replace("signature=", "signature=00");
        let r = put_upload(&h, &tampered, tar.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        let r = put_upload(
            &h,
            &signed_path(&id, chrono::Utc::now().timestamp() - 1),
            tar.clone(),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "expired: {}", r.text);
        let r = put_upload(
            &h,
            &signed_path("upl_..%2F..%2Fetc", 4_000_000_000),
            tar.clone(),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        let r = put_upload(
            &h,
            &signed_path("upl_01nonexistent", 4_000_000_000),
            tar.clone(),
        )
        .await;
        assert_eq!(r.code(), "UPLOAD_NOT_FOUND", "{}", r.text);

        let r = put_upload(&h, &path, tar.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["data"]["size_bytes"], 1024);
        let stored = common::config().uploads_dir.expect("dir").join(&id);
        assert_eq!(std::fs::read(&stored).expect("stored"), tar);
        let upload =
            h.db.store
                .get_upload(&h.a.org, &id)
                .await
                .expect("get")
                .expect("upload");
        assert_eq!(upload.size_bytes, Some(1024));
        assert!(upload.completed_at.is_some());
        let r = put_upload(&h, &path, tar.clone()).await;
        assert_eq!(r.code(), "UPLOAD_ALREADY_COMPLETE", "{}", r.text);
        std::fs::remove_file(stored).expect("rm");

        // Over the limit (1 MiB in tests): refused, nothing kept.
        let (path, id) = open().await;
        let mut big = vec![0u8; (1 << 20) + 1];
        big[257..262].copy_from_slice(b"ustar");
        let r = put_upload(&h, &path, big).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
        assert!(!common::config()
            .uploads_dir
            .expect("dir")
            .join(&id)
            .exists());
    })
    .await;
}
