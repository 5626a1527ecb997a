//! Stream tokens (`POST /v1/tokens`, `?access_token=`) and CORS: what a
//! browser page needs to follow logs with an `EventSource`.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::each_backend;
use serde_json::json;

#[tokio::test]
async fn a_stream_token_reads_its_one_object_and_nothing_else() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "tok").await;
        let (other_agent, other_build) = h.ready_agent(&h.a, "tok2").await;
        let inst = h.instance(&h.a, &agent, &build, "tok-inst").await;
        h.db.store
            .append_build_log(&build, "stdout", &["step 1", "step 2"])
            .await
            .expect("log");

        let r = h
            .post("/v1/tokens", &h.a.key, json!({"build_id": build}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let token = r.body["data"]["token"].as_str().expect("token").to_owned();
        assert!(token.starts_with("hgt_"));
        assert_eq!(r.body["data"]["object_id"], build.as_str());
        assert_eq!(r.body["data"]["permissions"], json!(["read"]));
        assert!(r.body["data"]["expires_at"].is_string());

        // Its build's log, without Authorization.
        let r = h
            .raw(
                Method::GET,
                &format!("/v1/builds/{build}/logs?access_token={token}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["data"]["logs"].as_array().expect("logs").len(), 2);
        // Another build's log: as if it did not exist.
        let r = h
            .raw(
                Method::GET,
                &format!("/v1/builds/{other_build}/logs?access_token={token}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.code(), "BUILD_NOT_FOUND");
        // Anything but a streaming read: the token is no API key.
        for path in [
            format!("/v1/builds/{build}"),
            format!("/v1/agents/{agent}"),
            "/v1/me".to_owned(),
        ] {
            let r = h
                .raw(
                    Method::GET,
                    &format!("{path}?access_token={token}"),
                    None,
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        }
        let r = h
            .raw(
                Method::POST,
                &format!("/v1/agents/{agent}/stop?access_token={token}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);

        // An instance token reads that instance's logs; an agent token its agent's.
        let r = h
            .post(
                "/v1/tokens",
                &h.a.key,
                json!({"instance_id": inst, "ttl_seconds": 60}),
            )
            .await;
        let inst_token = r.body["data"]["token"].as_str().expect("token").to_owned();
        let r = h
            .raw(
                Method::GET,
                &format!(
                    "/instances/{}/{inst}/logs?access_token={inst_token}",
                    h.a.org
                ),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(r.body["logs"].is_array());
        let r = h
            .raw(
                Method::GET,
                &format!("/v1/agents/{agent}/logs?access_token={inst_token}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.code(), "AGENT_NOT_FOUND");
        let r = h
            .post("/v1/tokens", &h.a.key, json!({"agent_id": other_agent}))
            .await;
        let agent_token = r.body["data"]["token"].as_str().expect("token").to_owned();
        let r = h
            .raw(
                Method::GET,
                &format!("/v1/agents/{agent}/logs?access_token={agent_token}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.code(), "AGENT_NOT_FOUND");

        // Forged, truncated or garbage tokens: 401 in the envelope.
        for bad in ["hgt_x.y", "nope", &token[..token.len() - 3]] {
            let r = h
                .raw(
                    Method::GET,
                    &format!("/v1/builds/{build}/logs?access_token={bad}"),
                    None,
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
            assert_eq!(r.code(), "UNAUTHORIZED");
        }
    })
    .await;
}

#[tokio::test]
async fn tokens_are_checked_when_made_and_die_with_their_key() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "tok").await;
        // Exactly one object, of the caller's organization, a sane lifetime.
        for body in [
            json!({}),
            json!({"agent_id": agent, "build_id": build}),
            json!({"agent_id": agent, "ttl_seconds": 0}),
            json!({"agent_id": agent, "ttl_seconds": 3601}),
            json!({"agent_id": agent, "scope": "write"}),
            json!({"agent_id": 7}),
        ] {
            let r = h.post("/v1/tokens", &h.a.key, body.clone()).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
            assert_eq!(r.code(), "INVALID_REQUEST");
        }
        let r = h
            .post("/v1/tokens", &h.b.key, json!({"agent_id": agent}))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.code(), "AGENT_NOT_FOUND");

        // A key made for the purpose, its token, then the key revoked.
        let r = h
            .post("/v1/api_keys", &h.a.key, json!({"name": "page"}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let key_id = r.body["data"]["id"].as_str().expect("id").to_owned();
        let key = r.body["data"]["key"].as_str().expect("key").to_owned();
        let r = h.post("/v1/tokens", &key, json!({"build_id": build})).await;
        let token = r.body["data"]["token"].as_str().expect("token").to_owned();
        let path = format!("/v1/builds/{build}/logs?access_token={token}");
        assert_eq!(
            h.raw(Method::GET, &path, None, None).await.status,
            StatusCode::OK
        );
        let r = h
            .call(
                Method::DELETE,
                &format!("/v1/api_keys/{key_id}"),
                &h.a.key,
                None,
            )
            .await;
        assert!(r.status.is_success(), "{}", r.text);
        let r = h.raw(Method::GET, &path, None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.code(), "UNAUTHORIZED");
    })
    .await;
}

#[tokio::test]
async fn cors_answers_configured_origins_only() {
    each_backend(|h| async move {
        let preflight = |origin: &str| {
            Request::builder()
                .method(Method::OPTIONS)
                .uri("/v1/me")
                .header("origin", origin)
                .header("access-control-request-method", "GET")
                .header(
                    "access-control-request-headers",
                    "authorization,last-event-id",
                )
                .body(Body::empty())
                .expect("request")
        };
        let r = h.send(preflight("http://console.test")).await;
        assert!(r.status.is_success(), "{}", r.status);
        assert_eq!(
            r.headers["access-control-allow-origin"],
            "http://console.test"
        );
        let allowed = r.headers["access-control-allow-headers"]
            .to_str()
            .expect("ascii")
            .to_ascii_lowercase();
        assert!(
            allowed.contains("authorization") && allowed.contains("last-event-id"),
            "{allowed}"
        );
        let r = h.send(preflight("http://evil.test")).await;
        assert!(r.headers.get("access-control-allow-origin").is_none());

        // A real request from the page: allowed, and still authenticated.
        let get = |key: Option<&str>| {
            let mut req = Request::builder()
                .uri("/v1/me")
                .header("origin", "http://console.test");
            if let Some(key) = key {
                req = req.header("authorization", format!("Bearer {key}"));
            }
            req.body(Body::empty()).expect("request")
        };
        let r = h.send(get(Some(&h.a.key))).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.headers["access-control-allow-origin"],
            "http://console.test"
        );
        assert_eq!(h.send(get(None)).await.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}
