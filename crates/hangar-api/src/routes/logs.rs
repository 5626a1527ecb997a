//! Serving an instance's log, shared by both APIs: stored lines (the newest
//! N, after a time, before a time, at a level and above) and, to follow, the
//! same followed by live lines as SSE events whose `id` is the line's seq — so
//! a client that reconnects with `Last-Event-ID` resumes after the last line
//! it saw, and a follower that fell behind reads what it missed from the store.
//!
//! A follow's body is written here rather than with axum's `Sse`: each live
//! line's whole SSE event is rendered once for every follower of the
//! instance, and a follower sends the lines that are waiting as one chunk,
//! not one body frame (and task hand-off) per line.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use hangar_core::logs::{InstanceLogLine, LiveLine, LogLevel};
use hangar_core::model::Timestamp;
use tokio::sync::broadcast;
use tokio_stream::StreamExt as _;

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

/// Most stored lines a resumed follow sends before going live (the rest
/// it reads a page at a time, as a follower that fell behind does).
const BACKLOG_LIMIT: u32 = 10_000;

/// The stored lines `request` selects, oldest first. Every filter is the
/// store's, so `until` and `level` reach back over every kept line.
pub(crate) async fn stored(
    state: &AppState,
    instance_id: &str,
    request: &LogRequest,
) -> ApiResult<Vec<InstanceLogLine>> {
    let query = hangar_store::LogQuery {
        tail: Some(request.tail),
        since: request.since,
        after_seq: None,
        limit: request.tail,
    };
    let filter = hangar_store::LogFilter {
        until: request.until,
        min_level: request.level,
    };
    Ok(state
        .store
        .instance_logs_matching(instance_id, &query, &filter)
        .await?)
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

/// A line's SSE event: `id` its seq, `data` its [`entry`] as JSON (one
/// line: JSON text has no raw newlines).
fn event(line: &InstanceLogLine) -> String {
    let data = serde_json::to_string(&entry(line)).unwrap_or_default();
    format!("id: {}\ndata: {data}\n\n", line.seq)
}

/// Lines a follower gathers into one chunk of its body, at most.
const CHUNK_LINES: usize = 256;

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

/// The stored lines after `after` (oldest first, up to [`BACKLOG_LIMIT`])
/// that pass `level`: what a resumed follow sends before going live.
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
        limit: BACKLOG_LIMIT,
    };
    let filter = hangar_store::LogFilter {
        until: None,
        min_level: level,
    };
    Ok(state
        .store
        .instance_logs_matching(instance_id, &query, &filter)
        .await?)
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
    /// the level filter): live lines up to it are duplicates, and anything
    /// after it not yet sent is read from the store.
    pub last: i64,
    /// Only lines at this level or above.
    pub level: Option<LogLevel>,
    /// For a stream token: when it expires and the key that made it; the
    /// stream ends at the expiry or soon after the key is revoked.
    pub limit: Option<super::tokens::StreamLimit>,
}

/// How often a token's stream checks that its key is still live.
const KEY_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// What a follower's task sends into: the SSE body, and where it reads from.
struct Follower {
    store: hangar_store::Store,
    instance_id: String,
    level: Option<LogLevel>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    last: i64,
    /// Events not sent yet.
    chunk: BytesMut,
    lines_in_chunk: usize,
}

impl Follower {
    /// Sends the stored lines after `last` and below `below` (all of them
    /// with `None`), a page at a time. `false`: the client left.
    async fn catch_up(&mut self, below: Option<i64>) -> bool {
        loop {
            let query = hangar_store::LogQuery {
                tail: None,
                since: None,
                after_seq: Some(self.last),
                limit: GAP_PAGE,
            };
            let page = match self.store.instance_logs(&self.instance_id, &query).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(instance = %self.instance_id, error = %err, "cannot read missed log lines");
                    return true;
                }
            };
            let full = page.len() == GAP_PAGE as usize;
            for line in page {
                if below.is_some_and(|below| line.seq >= below) {
                    return self.flush().await;
                }
                self.add(&line);
            }
            if !self.flush().await {
                return false;
            }
            if !full {
                return true;
            }
        }
    }

    /// Adds `line` to the chunk unless it was already accounted for.
    fn add(&mut self, line: &InstanceLogLine) {
        if line.seq <= self.last {
            return;
        }
        self.last = line.seq;
        if passes(line, self.level) {
            self.chunk.extend_from_slice(event(line).as_bytes());
            self.lines_in_chunk += 1;
        }
    }

    /// [`Follower::add`] of a live line, rendered once for all followers.
    fn add_live(&mut self, live: &LiveLine) {
        let line = &live.line;
        if line.seq <= self.last {
            return;
        }
        self.last = line.seq;
        if passes(line, self.level) {
            let event = live.rendered.get_or_init(|| event(line));
            self.chunk.extend_from_slice(event.as_bytes());
            self.lines_in_chunk += 1;
        }
    }

    /// Sends the chunk, if anything is in it. `false`: the client left.
    async fn flush(&mut self) -> bool {
        if self.chunk.is_empty() {
            return true;
        }
        self.lines_in_chunk = 0;
        let chunk = self.chunk.split().freeze();
        self.tx.send(chunk).await.is_ok()
    }
}

/// SSE of the backlog, then of the live lines `live` receives (subscribed
/// before the backlog was read), every event's `id` its line number.
///
/// Lines are numbered without gaps per instance, so a follower knows when it
/// missed some — it fell behind the broadcast, the backlog was one page of a
/// longer resume, or lines came between the backlog read and the first live
/// line — and reads those from the store first: a follower sees every line
/// once, in order. The task ends when the client leaves (even while nothing
/// is logged), or when its stream token expires or loses its key.
pub(crate) fn follow(
    state: &AppState,
    start: Follow,
    mut live: broadcast::Receiver<std::sync::Arc<LiveLine>>,
) -> Response {
    let Follow {
        instance_id,
        backlog,
        last,
        level,
        limit,
    } = start;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut follower = Follower {
        store: state.store.clone(),
        instance_id,
        level,
        tx,
        last,
        chunk: BytesMut::new(),
        lines_in_chunk: 0,
    };
    // The backlog is sent as it is (it was read with the request's filters).
    for line in &backlog {
        follower.chunk.extend_from_slice(event(line).as_bytes());
    }
    follower.last = backlog.last().map_or(last, |l| l.seq.max(last));
    tokio::spawn(async move {
        let expiry = limit.as_ref().map_or_else(
            || tokio::time::Instant::now() + std::time::Duration::from_secs(100 * 365 * 86_400),
            super::tokens::StreamLimit::deadline,
        );
        let mut recheck = tokio::time::interval(KEY_RECHECK);
        recheck.tick().await;
        if !follower.flush().await || !follower.catch_up(None).await {
            return;
        }
        let mut heartbeat = tokio::time::Instant::now() + HEARTBEAT;
        loop {
            let first = tokio::select! {
                received = live.recv() => received,
                () = follower.tx.closed() => return,
                () = tokio::time::sleep_until(expiry) => return,
                () = tokio::time::sleep_until(heartbeat) => {
                    // A comment line, so proxies and browsers keep it open.
                    if follower.tx.send(Bytes::from_static(b":\n\n")).await.is_err() {
                        return;
                    }
                    heartbeat = tokio::time::Instant::now() + HEARTBEAT;
                    continue;
                }
                _ = recheck.tick() => {
                    if let Some(limit) = &limit {
                        if !limit.key_is_live(&follower.store).await {
                            return;
                        }
                    }
                    continue;
                }
            };
            // This line and those already waiting behind it, as one chunk.
            let mut received = first;
            loop {
                match received {
                    Ok(line) => {
                        if line.line.seq > follower.last + 1
                            && (!follower.flush().await
                                || !follower.catch_up(Some(line.line.seq)).await)
                        {
                            return;
                        }
                        follower.add_live(&line);
                    }
                    // Missed lines are read from the store.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !follower.flush().await || !follower.catch_up(None).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        follower.flush().await;
                        return;
                    }
                }
                if follower.lines_in_chunk >= CHUNK_LINES {
                    break;
                }
                received = match live.try_recv() {
                    Ok(line) => Ok(line),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                    Err(broadcast::error::TryRecvError::Empty) => break,
                };
            }
            if !follower.flush().await {
                return;
            }
            heartbeat = tokio::time::Instant::now() + HEARTBEAT;
        }
    });
    let body =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
