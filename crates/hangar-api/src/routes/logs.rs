//! Serving an instance's log, shared by both APIs: stored lines (the newest
//! N, after a time, before a time, at a level and above) and, to follow, the
//! same followed by live lines as SSE events whose `id` is the line's seq.

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
        request.until.is_none_or(|until| line.timestamp <= until)
            && request
                .level
                .is_none_or(|level| line.level.rank() >= level.rank())
    });
    let tail = usize::try_from(request.tail).unwrap_or(usize::MAX);
    if lines.len() > tail {
        lines.drain(..lines.len() - tail);
    }
    Ok(lines)
}

/// A log line as the seeds show it (plus its stream and replica).
pub(crate) fn entry(line: &InstanceLogLine) -> serde_json::Value {
    serde_json::json!({
        "timestamp": line.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "level": line.level.as_str(),
        "message": line.message,
        "stream": line.stream.as_str(),
        "replica_id": line.replica_id,
    })
}

fn event(line: &InstanceLogLine) -> Event {
    Event::default()
        .id(line.seq.to_string())
        .data(entry(line).to_string())
}

/// SSE of `backlog`, then of the lines `live` receives that pass `level`
/// (subscribed before the backlog was read: duplicates are dropped by seq).
pub(crate) fn follow(
    backlog: Vec<InstanceLogLine>,
    mut live: broadcast::Receiver<InstanceLogLine>,
    level: Option<LogLevel>,
) -> Response {
    let mut last = backlog.last().map_or(0, |line| line.seq);
    let first: Vec<Result<Event, Infallible>> = backlog.iter().map(|l| Ok(event(l))).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(256);
    tokio::spawn(async move {
        loop {
            match live.recv().await {
                Ok(line) if line.seq > last => {
                    last = line.seq;
                    if level.is_some_and(|level| line.level.rank() < level.rank()) {
                        continue;
                    }
                    if tx.send(Ok(event(&line))).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    use tokio_stream::StreamExt as _;
    let stream = tokio_stream::iter(first).chain(tokio_stream::wrappers::ReceiverStream::new(rx));
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
