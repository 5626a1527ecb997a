//! An agent's builds and their logs under `/v1` (Hangar's addition in the
//! Agents API's style): listing, reading, and a build's log, whole or
//! followed as it is written. Building itself is `hangar_build`'s.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{page_size, PageQuery};
use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Caller, Path, Query};
use crate::render::{self, ok, ok_list, BuildObject, Envelope, ListEnvelope, Pagination};
use crate::{decode_cursor, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_builds))
        .routes(routes!(get_build))
        .routes(routes!(build_logs))
}

/// An agent's builds, newest first.
#[utoipa::path(get, path = "/v1/agents/{id}/builds", tag = "builds", params(("id" = String, Path, description = "Agent ID"), PageQuery),
    responses((status = 200, body = ListEnvelope<BuildObject>), (status = 404, description = "AGENT_NOT_FOUND")))]
async fn list_builds(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<ListEnvelope<BuildObject>>> {
    let limit = page_size(q.limit)?;
    let after = decode_cursor(q.cursor.as_deref(), "build_")?;
    super::agents::find(&state, &caller, &id).await?;
    let page = state
        .store
        .list_builds(caller.org(), &id, after.as_deref(), limit)
        .await?;
    Ok(ok_list(
        page.items.iter().map(render::build).collect(),
        Pagination::of(&page, limit),
    ))
}

/// A build.
#[utoipa::path(get, path = "/v1/builds/{id}", tag = "builds", params(("id" = String, Path, description = "Build ID")),
    responses((status = 200, body = Envelope<BuildObject>), (status = 404, description = "BUILD_NOT_FOUND")))]
async fn get_build(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<BuildObject>>> {
    let b = state
        .store
        .get_build(caller.org(), &id)
        .await?
        .found(Kind::Build, &id)?;
    Ok(ok(render::build(&b)))
}

/// Query of `GET /v1/builds/{id}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct BuildLogQuery {
    /// Only lines after this sequence number.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many lines (1–10000, default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// Stream the log as SSE until the build ends (each event's `id` is the
    /// line's `seq`; a last `done` event carries the build's status).
    #[serde(default)]
    follow: bool,
    /// A stream token (`POST /v1/tokens`) instead of `Authorization`.
    #[allow(dead_code)] // read by the `Reader` extractor; named here for the OpenAPI document
    access_token: Option<String>,
}

/// One build log line.
#[derive(Debug, Serialize, ToSchema)]
struct BuildLogLineObject {
    /// Position in the log, from 1.
    seq: i64,
    /// When written.
    timestamp: String,
    /// `stdout` or `stderr`.
    stream: String,
    /// The line.
    message: String,
}

/// A build's log.
#[derive(Debug, Serialize, ToSchema)]
struct BuildLog {
    /// The build.
    build_id: String,
    /// Lines in order.
    logs: Vec<BuildLogLineObject>,
}

/// A build's log lines.
#[utoipa::path(get, path = "/v1/builds/{id}/logs", tag = "builds", params(("id" = String, Path, description = "Build ID"), BuildLogQuery),
    responses((status = 200, body = Envelope<BuildLog>), (status = 404, description = "BUILD_NOT_FOUND")))]
async fn build_logs(
    State(state): State<AppState>,
    reader: super::tokens::Reader,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    Query(q): Query<BuildLogQuery>,
) -> ApiResult<axum::response::Response> {
    reader.check(Kind::Build, &id)?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 10000"));
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after", "must not be negative"));
    }
    let b = state
        .store
        .get_build(reader.caller.org(), &id)
        .await?
        .found(Kind::Build, &id)?;
    if q.follow {
        let resume = super::logs::resume_after(&headers, None)?;
        let after = resume.max(q.after).unwrap_or(0);
        return Ok(follow_build(state, b, after));
    }
    let lines = state
        .store
        .build_log(&b.id, q.after.unwrap_or(0), limit)
        .await?;
    let logs = lines.into_iter().map(build_log_line).collect();
    Ok(ok(BuildLog {
        build_id: b.id,
        logs,
    })
    .into_response())
}

fn build_log_line(l: hangar_core::model::BuildLogLine) -> BuildLogLineObject {
    BuildLogLineObject {
        seq: l.seq,
        timestamp: l
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stream: l.stream,
        message: l.line,
    }
}

/// How often a followed build's log is read again. Builds write their log
/// to the store from whichever server builds them, so a follower polls it.
const BUILD_LOG_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// SSE of a build's log lines after `after`, as they are written, until the
/// build is `ready` or `failed`; then a `done` event with its status and
/// reason. Each line's event `id` is its `seq`, so `Last-Event-ID` resumes.
fn follow_build(
    state: AppState,
    build: hangar_core::model::Build,
    mut after: i64,
) -> axum::response::Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use hangar_core::status::BuildStatus;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let mut status = build.status;
        let mut reason = build.reason;
        loop {
            // The status is read before the lines: once it says the build
            // ended, the lines read after it are all there are.
            let ended = matches!(status, BuildStatus::Ready | BuildStatus::Failed);
            let lines = match state.store.build_log(&build.id, after, 1000).await {
                Ok(lines) => lines,
                Err(err) => {
                    tracing::warn!(build = %build.id, error = %err, "cannot read the build log");
                    return;
                }
            };
            let full_page = lines.len() == 1000;
            for line in lines {
                after = line.seq;
                let event = Event::default()
                    .id(line.seq.to_string())
                    .data(serde_json::to_string(&build_log_line(line)).unwrap_or_default());
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if full_page {
                continue;
            }
            if ended {
                let done = serde_json::json!({"status": status.as_str(), "reason": reason});
                let _ = tx
                    .send(Ok(Event::default().event("done").data(done.to_string())))
                    .await;
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(BUILD_LOG_POLL) => {}
                () = tx.closed() => return,
            }
            match state
                .store
                .get_build(&build.organization_id, &build.id)
                .await
            {
                Ok(Some(b)) => (status, reason) = (b.status, b.reason),
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(build = %build.id, error = %err, "cannot read the build");
                    return;
                }
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}
