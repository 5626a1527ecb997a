//! `GET /metrics`: Prometheus text for the operator, nobody else.

mod common;

use axum::http::StatusCode;
use common::each_backend;
use serde_json::json;

/// The value of the sample line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn the_operator_scrapes_requests_backlog_instances_and_the_process() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "m").await;
        let inst = h.instance(&h.a, &agent, &build, "m-inst").await;
        for _ in 0..3 {
            assert_eq!(h.get(&format!("/v1/agents/{agent}"), &h.a.key).await.status, StatusCode::OK);
        }
        assert_eq!(h.get("/v1/agents/agent_nope", &h.a.key).await.status, StatusCode::NOT_FOUND);
        let r = h.post(&format!("/v1/agents/{agent}/invoke"), &h.a.key, json!({"input": 1, "async": true})).await;
        assert!(r.status.is_client_error() || r.status.is_success(), "{}", r.text);

        // An invented method is counted, but not as a label of its own.
        let r = h
            .raw(axum::http::Method::from_bytes(b"BREW").expect("method"), "/v1/me", Some(&h.a.key), None)
            .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

        let r = h.get("/metrics", &h.a.key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(!r.text.contains("BREW"), "{}", r.text);
        assert!(r.text.contains(r#"method="other""#), "{}", r.text);
        assert!(r.headers["content-type"].to_str().expect("ascii").starts_with("text/plain; version=0.0.4"));
        let text = &r.text;
        // Requests by route template, not by path: IDs never become labels.
        assert_eq!(
            sample(text, r#"hangar_http_requests_total{method="GET",route="/v1/agents/{id}",status="200"}"#),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            sample(text, r#"hangar_http_requests_total{method="GET",route="/v1/agents/{id}",status="404"}"#),
            Some(1.0)
        );
        assert!(!text.contains(&format!("route=\"/v1/agents/{agent}")), "{text}");
        assert!(text.contains("# TYPE hangar_http_request_duration_seconds histogram"));
        assert!(sample(text, r#"hangar_http_request_duration_seconds_count{method="GET",route="/v1/agents/{id}"}"#) >= Some(4.0));
        // Backlog and instances, read at scrape time.
        assert!(sample(text, r#"hangar_builds{status="queued"}"#).is_some(), "{text}");
        assert!(sample(text, r#"hangar_jobs{status="pending"}"#).is_some());
        assert_eq!(sample(text, "hangar_webhook_deliveries_pending"), Some(0.0));
        let labels = format!(r#"{{organization_id="{}",agent_id="{agent}",instance_id="{inst}"}}"#, h.a.org);
        assert_eq!(sample(text, &format!("hangar_instance_replicas_desired{labels}")), Some(1.0), "{text}");
        assert_eq!(sample(text, &format!("hangar_instance_replicas_ready{labels}")), Some(0.0));
        assert_eq!(sample(text, r#"hangar_runtime_info{driver="none"}"#), Some(1.0));
        // The process.
        assert!(sample(text, "process_resident_memory_bytes").is_some_and(|v| v > 0.0), "{text}");
        assert!(sample(text, "process_cpu_seconds_total").is_some());
        assert!(sample(text, "process_open_fds").is_some_and(|v| v > 0.0));

        // Another organization's key sees nothing of it; no key, 401.
        let r = h.get("/metrics", &h.b.key).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.code(), "FORBIDDEN");
        let r = h.raw(axum::http::Method::GET, "/metrics", None, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}
