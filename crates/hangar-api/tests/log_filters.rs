//! `GET /v1/agents/{id}/logs` filters over a log longer than one read: the
//! `until` and `level` filters are the store's, so they reach every kept
//! line, not only the newest 10,000. The lines are stored as the controller
//! stores a replica's output.

mod common;

use chrono::{Duration, TimeZone, Utc};
use common::{each_backend, Harness};
use hangar_core::logs::{LogLevel, NewLogLine, Stream};
use hangar_core::model::Timestamp;
use hangar_core::status::InstanceStatus;
use serde_json::Value;

/// Lines stored: more than one read of 10,000.
const LINES: i64 = 12_000;

fn t0() -> Timestamp {
    Utc.timestamp_millis_opt(1_700_000_000_000)
        .single()
        .expect("a time")
}

/// Line `n` (1-based) is printed `n` seconds after [`t0`]; line 5 is the
/// only error, lines 7 and 11 000 the only warnings.
fn line(n: i64) -> NewLogLine {
    let level = match n {
        5 => LogLevel::Error,
        7 | 11_000 => LogLevel::Warn,
        _ => LogLevel::Info,
    };
    NewLogLine {
        timestamp: t0() + Duration::seconds(n),
        stream: Stream::Stdout,
        level,
        message: format!("line {n}"),
    }
}

/// An agent whose default instance has [`LINES`] lines of log.
async fn agent_with_a_long_log(h: &Harness) -> String {
    let (agent, build) = h.ready_agent(&h.a, "chatty").await;
    let instance =
        h.db.store
            .deploy_build(&build)
            .await
            .expect("deploy")
            .expect("instance");
    h.db.store
        .record_instance_status(&instance.id, InstanceStatus::Running, None, 1, 0)
        .await
        .expect("running");
    let lines: Vec<NewLogLine> = (1..=LINES).map(line).collect();
    for (batch, chunk) in lines.chunks(2_000).enumerate() {
        let through = u64::try_from((batch + 1) * 2_000).expect("fits");
        h.db.store
            .append_instance_logs(&instance.id, "rep_1", through, chunk)
            .await
            .expect("append");
    }
    agent
}

async fn messages(h: &Harness, agent: &str, query: &str) -> Vec<String> {
    let r = h
        .get(&format!("/v1/agents/{agent}/logs?{query}"), &h.a.key)
        .await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    r.body["data"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l: &Value| l["message"].as_str().expect("message").to_owned())
        .collect()
}

fn at(n: i64) -> String {
    (t0() + Duration::seconds(n))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .replace('+', "%2B")
}

#[tokio::test]
async fn until_and_level_reach_lines_older_than_the_newest_ten_thousand() {
    each_backend(|h| async move {
        let agent = agent_with_a_long_log(&h).await;

        // A rare level, printed long ago.
        assert_eq!(messages(&h, &agent, "level=error").await, ["line 5"]);
        assert_eq!(
            messages(&h, &agent, "level=warn").await,
            ["line 5", "line 7", "line 11000"]
        );
        // An old time: the newest lines printed by then.
        assert_eq!(
            messages(&h, &agent, &format!("until={}&tail=3", at(100))).await,
            ["line 98", "line 99", "line 100"]
        );
        // Both, and with `since`.
        assert_eq!(
            messages(&h, &agent, &format!("until={}&level=warn", at(10))).await,
            ["line 5", "line 7"]
        );
        assert_eq!(
            messages(
                &h,
                &agent,
                &format!("since={}&until={}", at(1_999), at(2_001))
            )
            .await,
            ["line 1999", "line 2000", "line 2001"]
        );
        // Before the first line: nothing.
        assert!(messages(&h, &agent, &format!("until={}", at(0)))
            .await
            .is_empty());
        // Without filters, the newest `tail` as before.
        assert_eq!(
            messages(&h, &agent, "tail=2").await,
            ["line 11999", "line 12000"]
        );
    })
    .await;
}
