//! Metric history through the API on real databases: the series of
//! `GET /v1/agents/{id}/metrics` and `GET /v1/instances/{id}/metrics`,
//! their validation, and figures two nodes stored read back as one series.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::each_backend;
use hangar_store::{LatencyHistogram, MinuteFigures, RequestCounts, RequestMinute, ResourceUse};
use serde_json::Value;

#[tokio::test]
async fn window_and_step_are_validated_naming_the_field() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "plotted").await;
        let instance = h.instance(&h.a, &agent, &build, "plotted-1").await;
        for base in [
            format!("/v1/agents/{agent}/metrics"),
            format!("/v1/instances/{instance}/metrics"),
        ] {
            for (query, field) in [
                ("window=1y", "window"),
                ("window=", "window"),
                ("step=30", "step"),
                ("step=90s", "step"),
                ("step=0", "step"),
                ("step=5x", "step"),
                ("step=-60", "step"),
                ("window=1h&step=2h", "step"),
                ("window=7d&step=60", "step"),
                ("window=7d&step=10m", "step"),
                ("window=24h&step=1m", "step"),
            ] {
                let r = h.get(&format!("{base}?{query}"), &h.a.key).await;
                assert_eq!(
                    r.status,
                    StatusCode::BAD_REQUEST,
                    "{base}?{query}: {}",
                    r.text
                );
                assert_eq!(r.code(), "INVALID_REQUEST", "{query}");
                assert_eq!(r.body["error"]["field"], field, "{query}: {}", r.text);
                assert!(r.body["error"]["message"].is_string(), "{query}");
            }
        }
        // Another organization's instance, and none, are not found.
        let r = h
            .get(&format!("/v1/instances/{instance}/metrics"), &h.b.key)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        assert_eq!(r.code(), "INSTANCE_NOT_FOUND");
        let r = h.get("/v1/instances/inst_nothing/metrics", &h.a.key).await;
        assert_eq!(r.code(), "INSTANCE_NOT_FOUND");
    })
    .await;
}

#[tokio::test]
async fn a_series_has_a_point_per_step_across_the_window() {
    each_backend(|h| async move {
        let (agent, _) = h.ready_agent(&h.a, "idle").await;
        for (query, window, step, points) in [
            ("", "24h", 300, 288),
            ("?window=1h", "1h", 60, 60),
            ("?window=7d", "7d", 3600, 168),
            ("?window=1h&step=5m", "1h", 300, 12),
            ("?window=24h&step=3600", "24h", 3600, 24),
            ("?window=7d&step=1d", "7d", 86_400, 7),
        ] {
            let r = h
                .get(&format!("/v1/agents/{agent}/metrics{query}"), &h.a.key)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.text);
            let data = &r.body["data"];
            // The fields there were stay as they were.
            for field in [
                "agent_id",
                "requests",
                "requests_24h",
                "avg_latency_ms",
                "error_rate_percent",
                "cpu_percent",
                "memory_mb",
                "replicas",
                "uptime_percent",
            ] {
                assert!(
                    data.as_object().expect("object").contains_key(field),
                    "{field}"
                );
            }
            assert_eq!(data["window"], window);
            assert_eq!(data["step_seconds"], step, "{query}");
            let series = data["series"].as_array().expect("series");
            assert_eq!(series.len(), points, "{query}");
            let starts: Vec<i64> = series
                .iter()
                .map(|p| {
                    chrono::DateTime::parse_from_rfc3339(p["at"].as_str().expect("at"))
                        .expect("RFC 3339")
                        .timestamp()
                })
                .collect();
            for pair in starts.windows(2) {
                assert_eq!(pair[1] - pair[0], step, "oldest first, a step apart");
            }
            assert_eq!(starts[0] % step, 0, "aligned to the step");
            let now = chrono::Utc::now().timestamp();
            assert!(
                starts[points - 1] <= now && now < starts[points - 1] + step + 60,
                "the last step holds now"
            );
            // Nothing ran: zeros for counts, null for what is not known.
            for point in series {
                assert_eq!(point["requests"], 0);
                assert_eq!(point["errors"], 0);
                assert_eq!(point["error_rate_percent"], 0.0);
                for unknown in [
                    "p50_latency_ms",
                    "p95_latency_ms",
                    "cpu_percent",
                    "memory_mb",
                ] {
                    assert!(point[unknown].is_null(), "{unknown}: {point}");
                }
            }
        }
    })
    .await;
}

/// `n` invocations of `latency`, `errors` of them failed, with a replica
/// using `cpu_percent` of a CPU and `mib` of memory all minute.
fn figures(
    instance: &str,
    minute: i64,
    n: u64,
    errors: u64,
    latency: Duration,
    cpu_percent: u64,
    mib: u64,
) -> RequestMinute {
    let mut histogram = LatencyHistogram::default();
    for _ in 0..n {
        histogram.record(latency);
    }
    RequestMinute {
        instance_id: instance.to_owned(),
        minute,
        figures: MinuteFigures {
            counts: RequestCounts {
                requests: n,
                errors,
                latency_us: n * u64::try_from(latency.as_micros()).expect("µs"),
            },
            latency: histogram,
            usage: ResourceUse {
                cpu_us: cpu_percent * 600_000,
                cpu_wall_ms: 60_000,
                memory_kib: mib * 1024,
                memory_samples: 1,
            },
        },
    }
}

#[tokio::test]
async fn figures_two_nodes_stored_are_one_series() {
    each_backend(|h| async move {
        let (agent, build) = h.ready_agent(&h.a, "busy").await;
        let instance = h.instance(&h.a, &agent, &build, "busy-1").await;
        let now = hangar_controller::scale::unix_minute();
        h.db.store
            .add_request_counts(
                "node-a",
                &[figures(
                    &instance,
                    now,
                    19,
                    0,
                    Duration::from_millis(2),
                    40,
                    100,
                )],
            )
            .await
            .expect("node a");
        h.db.store
            .add_request_counts(
                "node-b",
                &[figures(
                    &instance,
                    now,
                    1,
                    1,
                    Duration::from_millis(800),
                    10,
                    60,
                )],
            )
            .await
            .expect("node b");
        let r = h
            .get(
                &format!("/v1/instances/{instance}/metrics?window=1h"),
                &h.a.key,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let data = &r.body["data"];
        assert_eq!(data["instance_id"], instance.as_str());
        assert_eq!(
            (data["window"].as_str(), data["step_seconds"].as_u64()),
            (Some("1h"), Some(60))
        );
        let series = data["series"].as_array().expect("series");
        assert_eq!(series.len(), 60);
        // The minute may have turned since: the figures are in one of the
        // last two points, and only there.
        let busy: Vec<&Value> = series.iter().filter(|p| p["requests"] != 0).collect();
        assert_eq!(busy.len(), 1, "{series:?}");
        let point = busy[0];
        assert_eq!(point["requests"], 20);
        assert_eq!(point["errors"], 1);
        assert_eq!(point["error_rate_percent"], 5.0);
        let p50 = point["p50_latency_ms"].as_f64().expect("p50");
        assert!((1.414..=2.0).contains(&p50), "{point}");
        // The 95th percentile is the 19th of 20: still node a's.
        let p95 = point["p95_latency_ms"].as_f64().expect("p95");
        assert!((p50..=2.0).contains(&p95), "{point}");
        assert_eq!(
            point["cpu_percent"], 50.0,
            "40% + 10%: the nodes' replicas add up"
        );
        assert_eq!(point["memory_mb"], 160.0);

        // The agent's own series is its default instance's; this one is not
        // its default, so the agent shows nothing.
        let r = h
            .get(&format!("/v1/agents/{agent}/metrics?window=1h"), &h.a.key)
            .await;
        let series = r.body["data"]["series"].as_array().expect("series").clone();
        assert!(series.iter().all(|p| p["requests"] == 0), "{series:?}");
    })
    .await;
}
