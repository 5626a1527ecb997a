//! The per-API-key rate limit through the real router and store: a key
//! whose bucket is empty answers 429 `RATE_LIMITED` with `Retry-After` in the
//! envelope, before its handler; other keys, stream tokens of other keys,
//! requests without a key and instance URLs are not touched by it.
//!
//! The bucket refills one request an hour, so nothing here depends on how
//! fast the machine sends.

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use hangar_api::RateLimit;
use serde_json::json;

/// Two requests, then one an hour.
fn tiny() -> hangar_api::ApiConfig {
    hangar_api::ApiConfig {
        rate_limit: Some(RateLimit {
            count: NonZeroU32::MIN,
            unit: Duration::from_secs(3600),
            burst: NonZeroU32::new(2).expect("non-zero"),
        }),
        ..config()
    }
}

async fn harnesses() -> Vec<Harness> {
    let mut all = Vec::new();
    for backend in hangar_store::testing::backends() {
        all.push(Harness::with_config(backend, tiny()).await);
    }
    all
}

#[tokio::test]
async fn a_key_past_its_burst_answers_429_with_retry_after_in_the_envelope() {
    for h in harnesses().await {
        for _ in 0..2 {
            let r = h.get("/v1/me", &h.a.key).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
        // Any route, any method: the bucket is the key's.
        let r = h
            .post("/v1/agents", &h.a.key, json!({"name": "never-created"}))
            .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
        assert_eq!(r.code(), "RATE_LIMITED");
        assert_eq!(r.body["success"], false);
        let message = r.body["error"]["message"].as_str().expect("message");
        assert!(message.contains("1 per hour, in bursts of 2"), "{message}");
        let retry_after: u64 = r
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After of whole seconds");
        assert!((1..=3600).contains(&retry_after), "{retry_after}");
        assert_eq!(r.body["error"]["retry_after_seconds"], json!(retry_after));
        assert!(
            r.headers.contains_key("x-request-id"),
            "a 429 cites its request"
        );
        // Refused before the handler: nothing was created.
        let agents =
            h.db.store
                .list_agents(&h.a.org, None, None, 10)
                .await
                .expect("agents");
        assert!(agents.items.is_empty(), "{:?}", agents.items);
    }
}

#[tokio::test]
async fn other_keys_and_requests_without_a_key_are_not_limited() {
    for h in harnesses().await {
        for _ in 0..3 {
            h.get("/v1/me", &h.a.key).await;
        }
        assert_eq!(
            h.get("/v1/me", &h.a.key).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // Another organization's key.
        assert_eq!(h.get("/v1/me", &h.b.key).await.status, StatusCode::OK);
        // Another key of the same user: the limit is per key.
        let second =
            h.db.store
                .create_api_key(&h.a.org, &h.a.user, "second")
                .await
                .expect("store")
                .expect("user");
        assert_eq!(h.get("/v1/me", &second.secret).await.status, StatusCode::OK);
        // No key, or a key that does not authenticate: the handler answers.
        for _ in 0..5 {
            let r = h.raw(Method::GET, "/healthz", None, None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let r = h.get("/v1/me", "hgr_not_a_key").await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        }
        // A browser's preflight carries no key and ends in CORS.
        let preflight = Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/me")
            .header("origin", "http://console.test")
            .header("access-control-request-method", "GET")
            .body(Body::empty())
            .expect("request");
        assert!(h.send(preflight).await.status.is_success());
    }
}

#[tokio::test]
async fn a_stream_token_counts_against_the_key_that_minted_it() {
    for h in harnesses().await {
        let (agent, _) = h.ready_agent(&h.a, "streamed").await; // 1st request
        let r = h
            .post("/v1/tokens", &h.a.key, json!({"agent_id": agent}))
            .await; // 2nd
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let token = r.body["data"]["token"].as_str().expect("token").to_owned();
        let r = h
            .raw(
                Method::GET,
                &format!("/v1/agents/{agent}/logs?access_token={token}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
        assert_eq!(r.code(), "RATE_LIMITED");
    }
}

#[tokio::test]
async fn instance_urls_are_not_limited() {
    for h in harnesses().await {
        for _ in 0..3 {
            h.get("/v1/me", &h.a.key).await;
        }
        assert_eq!(
            h.get("/v1/me", &h.a.key).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // The same key on an instance URL is the agent's business (it may
        // check its own bearer tokens): the proxy answers, never the limit.
        for _ in 0..5 {
            let request = Request::builder()
                .uri("/invoke")
                .header("host", "some-agent.localhost:7070")
                .header("authorization", format!("Bearer {}", h.a.key))
                .body(Body::empty())
                .expect("request");
            let r = h.send(request).await;
            assert_ne!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
            assert_ne!(r.code(), "RATE_LIMITED", "{}", r.text);
        }
    }
}

#[tokio::test]
async fn the_openapi_document_lists_the_429_on_keyed_routes() {
    let doc = serde_json::to_value(hangar_api::openapi()).expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    let mut keyed = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("item") {
            let Some(responses) = operation.get("responses") else {
                continue;
            };
            if path == "/v1/uploads/{id}/content" && method == "put" {
                assert!(responses.get("429").is_none(), "signed URLs take no key");
                assert_eq!(operation["security"], json!([]), "and say so");
                continue;
            }
            let refusal = &responses["429"];
            assert!(
                refusal["description"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("RATE_LIMITED")),
                "{method} {path}: {refusal}"
            );
            assert!(
                refusal["headers"]["Retry-After"].is_object(),
                "{method} {path}"
            );
            keyed += 1;
        }
    }
    assert!(keyed > 40, "{keyed} operations");
}
