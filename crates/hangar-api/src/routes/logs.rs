//! Serving an instance's log, shared by both APIs: stored lines (the newest
//! N, after a time, before a time, at a level and above) and, to follow, the
//! same followed by live lines as SSE events whose `id` is the line's seq — so
//! a client that reconnects with `Last-Event-ID` resumes after the last line
//! it saw, and a follower that fell behind reads what it missed from the store.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use hangar_core::logs::{InstanceLogLine, LogLevel};
use hangar_core::model::Timestamp;
use tokio::sync::broadcast;

use crate::error::ApiResult;
use crate::AppState;

/// What a log request asks for.
pub(crate) struct LogRequest {
    /// The newest this many (after the filters).
    pub tail: u32,
    /// Only lines at or after this time.
    pub since: Option<Timestamp>,
    /// Only lines at or before this time.
    pub until: Option<Timestamp>,
    /// Only lines at this level or above.
    pub level: Option<LogLevel>,
}

/// How many stored lines a filtered request looks through, at most.
const SCAN_LIMIT: u32 = 10_000;

/// The stored lines `request` selects, oldest first.
pub(crate) async fn stored(
    state: &AppState,
    instance_id: &str,
    request: &LogRequest,
) -> ApiResult<Vec<InstanceLogLine>> {
    let filtered = request.until.is_some() || request.level.is_some();
    let query = hangar_store::LogQuery {
        tail: Some(if filtered { SCAN_LIMIT } else { request.tail }),
        since: request.since,
        after_seq: None,
        limit: SCAN_LIMIT,
    };
    let mut lines = state.store.instance_logs(instance_id, &query).await?;
    lines.retain(|line| {
        request.until.is_none_or(|until| line.timestamp <= until) && passes(line, request.level)
    });
    let tail = usize::try_from(request.tail).unwrap_or(usize::MAX);
    if lines.len() > tail {
        lines.drain(..lines.len() - tail);
    }
    Ok(lines)
}

/// A log line as the seeds show it (plus its stream and replica). A struct,
/// not a `serde_json::Value`: every follower serializes every line, and a
/// map of owned values per line was most of what following cost.
#[derive(serde::Serialize)]
pub(crate) struct Entry<'a> {
    timestamp: String,
    level: &'a str,
    message: &'a str,
    stream: &'a str,
    replica_id: &'a str,
}

pub(crate) fn entry(line: &InstanceLogLine) -> Entry<'_> {
    Entry {
        timestamp: line
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        level: line.level.as_str(),
        message: &line.message,
        stream: line.stream.as_str(),
        replica_id: &line.replica_id,
    }
}

fn event(line: &InstanceLogLine) -> Event {
    Event::default()
        .id(line.seq.to_string())
        .data(serde_json::to_string(&entry(line)).unwrap_or_default())
}

/// How often an idle stream gets a comment line, so proxies and browsers
/// keep it open.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// Lines read from the store per query when a follower fills a gap.
const GAP_PAGE: u32 = 1_000;

/// The line after which a reconnecting client resumes: the `Last-Event-ID`
/// header an `EventSource` sends when it reconnects, or `?last_event_id=`
/// (for the first connection of a client that kept the id). `None` for a
/// fresh follow; an id that is not a line number is a 400.
pub(crate) fn resume_after(
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
) -> ApiResult<Option<i64>> {
    let given = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().unwrap_or("x").to_owned()),
        None => query.map(str::to_owned),
    };
    given
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    crate::error::ApiError::invalid(
                        "last_event_id",
                        "must be the id of an event of this stream (a line number)",
                    )
                })
        })
        .transpose()
}

/// The stored lines after `after` (oldest first, up to [`SCAN_LIMIT`]) that
/// pass `level`: what a resumed follow sends before going live.
pub(crate) async fn stored_after(
    state: &AppState,
    instance_id: &str,
    after: i64,
    level: Option<LogLevel>,
) -> ApiResult<Vec<InstanceLogLine>> {
    let query = hangar_store::LogQuery {
        tail: None,
        since: None,
        after_seq: Some(after),
        limit: SCAN_LIMIT,
    };
    let mut lines = state.store.instance_logs(instance_id, &query).await?;
    lines.retain(|line| passes(line, level));
    Ok(lines)
}

fn passes(line: &InstanceLogLine, level: Option<LogLevel>) -> bool {
    level.is_none_or(|level| line.level.rank() >= level.rank())
}

/// What a follow starts from.
pub(crate) struct Follow {
    /// The instance followed.
    pub instance_id: String,
    /// Stored lines sent first, oldest first.
    pub backlog: Vec<InstanceLogLine>,
    /// The highest line number already accounted for (sent, or passed over by
    /// the level filter): live lines up to it are duplicates, and a live line
    /// beyond the next one means lines were missed and are read from the
    /// store. `None`: nothing read yet, the first live line starts the count.
    pub last: Option<i64>,
    /// Only lines at this level or above.
    pub level: Option<LogLevel>,
}

/// SSE of the backlog, then of the live lines `live` receives (subscribed
/// before the backlog was read), every event's `id` its line number.
///
/// Lines are numbered without gaps per instance, so a follower knows when it
/// missed some — it fell behind the broadcast (`Lagged`), or lines came
/// between the backlog read and the first live line — and reads those from
/// the store before the live line: a follower sees every line once, in order.
pub(crate) fn follow(
    state: &AppState,
    start: Follow,
    mut live: broadcast::Receiver<std::sync::Arc<InstanceLogLine>>,
) -> Response {
    let Follow {
        instance_id,
        backlog,
        mut last,
        level,
    } = start;
    let store = state.store.clone();
    let first: Vec<Result<Event, Infallible>> = backlog.iter().map(|l| Ok(event(l))).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(256);
    tokio::spawn(async move {
        loop {
            let line = match live.recv().await {
                Ok(line) => line,
                // Missed lines are found by the next line's number.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if last.is_some_and(|last| line.seq <= last) {
                continue;
            }
            while let Some(after) = last.filter(|last| line.seq > last + 1) {
                let query = hangar_store::LogQuery {
                    tail: None,
                    since: None,
                    after_seq: Some(after),
                    limit: GAP_PAGE.min(u32::try_from(line.seq - after - 1).unwrap_or(GAP_PAGE)),
                };
                let missed = match store.instance_logs(&instance_id, &query).await {
                    Ok(missed) if !missed.is_empty() => missed,
                    // Trimmed away, or the store is unreachable: go on live.
                    Ok(_) => break,
                    Err(err) => {
                        tracing::warn!(instance = %instance_id, error = %err, "cannot read missed log lines");
                        break;
                    }
                };
                for missed in missed {
                    last = Some(missed.seq);
                    if passes(&missed, level) && tx.send(Ok(event(&missed))).await.is_err() {
                        return;
                    }
                }
            }
            last = Some(line.seq);
            if passes(&line, level) && tx.send(Ok(event(&line))).await.is_err() {
                return;
            }
        }
    });
    use tokio_stream::StreamExt as _;
    let stream = tokio_stream::iter(first).chain(tokio_stream::wrappers::ReceiverStream::new(rx));
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response()
}
