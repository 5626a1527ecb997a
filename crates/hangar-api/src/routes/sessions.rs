//! Sticky sessions as objects: `GET /v1/agents/{id}/sessions`,
//! `GET /v1/sessions/{id}` and `DELETE /v1/sessions/{id}`.
//!
//! A session starts with the first request that names it
//! (`options.session_id` on invoke, `X-Hangar-Session` on instance URLs)
//! and ends when it is deleted, when its agent is, or when no request
//! comes within the agent's `config.session_idle_timeout_seconds`. Any
//! node answers from the store; a `DELETE` reaches the node that runs the
//! session's instance (the hop), which stops the replica when asked to
//! (`?kill=true`).
//!
//! Not reported: CPU-seconds per session. Replicas serve several sessions
//! at once and the runtime measures CPU per replica, so a per-session
//! figure would be a guess; the replica's own figures are in the agent's
//! metrics.

use axum::extract::State;
use axum::Json;
use hangar_store::Session;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Caller, Path, Query};
use crate::render::{ok, ts, Envelope};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions))
        .routes(routes!(get_session, delete_session))
}

/// A live session: the replica that serves every request naming it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionObject {
    /// The caller's session ID (unique within the organization).
    pub id: String,
    /// The agent it invokes.
    pub agent_id: String,
    /// The instance that serves it.
    pub instance_id: String,
    /// The replica that serves it. It changes when that replica is gone
    /// (stopped, replaced, crashed): the next request moves the session to
    /// the least loaded ready replica, counted in `replica_changes`.
    pub replica_id: String,
    /// Its first request.
    pub started_at: String,
    /// Its latest request.
    pub last_active_at: String,
    /// When it ends unless another request comes (`last_active_at` plus
    /// the agent's `config.session_idle_timeout_seconds`, default 900).
    pub expires_at: String,
    /// Requests made in it.
    pub requests: u64,
    /// Times it moved to another replica because its own was gone.
    pub replica_changes: u64,
}

fn render(session: Session) -> SessionObject {
    SessionObject {
        id: session.id,
        agent_id: session.agent_id,
        instance_id: session.instance_id,
        replica_id: session.replica_id,
        started_at: ts(session.started_at),
        last_active_at: ts(session.last_active_at),
        expires_at: ts(session.expires_at),
        requests: session.requests,
        replica_changes: session.replica_changes,
    }
}

/// The agent's live sessions, the most recently active first. CPU-seconds
/// per session are not reported: replicas serve several sessions at once
/// and CPU is measured per replica (see the agent's metrics).
#[utoipa::path(get, path = "/v1/agents/{id}/sessions", tag = "sessions",
    params(("id" = String, Path, description = "Agent ID")),
    responses((status = 200, body = Envelope<Vec<SessionObject>>),
        (status = 404, description = "AGENT_NOT_FOUND")))]
async fn list_sessions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<Vec<SessionObject>>>> {
    state
        .store
        .get_agent(caller.org(), &id)
        .await?
        .found(Kind::Agent, &id)?;
    let sessions = state.store.agent_sessions(caller.org(), &id).await?;
    Ok(ok(sessions.into_iter().map(render).collect()))
}

/// A live session. Another organization's, or one that ended, is 404.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session ID")),
    responses((status = 200, body = Envelope<SessionObject>),
        (status = 404, description = "SESSION_NOT_FOUND")))]
async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<SessionObject>>> {
    let session = state
        .store
        .session(caller.org(), &id)
        .await?
        .found(Kind::Session, &id)?;
    Ok(ok(render(session)))
}

/// Query of `DELETE /v1/sessions/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct EndQuery {
    /// Also stop the session's replica (say, a runaway agent); the
    /// controller starts another in its place.
    #[serde(default)]
    kill: bool,
}

/// What ending a session answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionEnded {
    /// The session's ID.
    pub id: String,
    /// Always true.
    pub ended: bool,
    /// The replica that served it.
    pub replica_id: String,
    /// With `kill=true`: whether its replica was stopped (false: it was
    /// already gone). Without: false.
    pub replica_stopped: bool,
}

/// End a session: its next request starts a new one, on the least loaded
/// replica. With `?kill=true` its replica is stopped too (within the
/// server's stop grace), and the controller starts another in its place;
/// other sessions on that replica move on their next request.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session ID"), EndQuery),
    responses((status = 200, body = Envelope<SessionEnded>),
        (status = 400, description = "INVALID_REQUEST (+ field): a bad query parameter"),
        (status = 404, description = "SESSION_NOT_FOUND"),
        (status = 500, description = "INTERNAL_ERROR: the replica could not be stopped (the session has ended)"),
        (status = 503, description = "RUNTIME_UNAVAILABLE: `kill=true` on a server that runs no agents; \
            NODE_UNREACHABLE: another server on this database runs the session's instance, and it \
            did not answer this one (retryable)")))]
async fn delete_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<EndQuery>,
) -> ApiResult<Json<Envelope<SessionEnded>>> {
    let runtime = match (&state.runtime, query.kill) {
        (Some(runtime), true) => Some(runtime),
        (None, true) => {
            // Found first: a missing session is 404 wherever it is asked.
            state
                .store
                .session(caller.org(), &id)
                .await?
                .found(Kind::Session, &id)?;
            return Err(state.runtime_unavailable());
        }
        (_, false) => None,
    };
    let session = state
        .store
        .end_session(caller.org(), &id)
        .await?
        .found(Kind::Session, &id)?;
    let replica_stopped = match runtime {
        Some(runtime) => {
            // The session has ended whatever the driver says: a failure to
            // stop is the server's (logged, 500), the session stays ended.
            runtime
                .stop_replica(&session.instance_id, &session.replica_id)
                .await
                .map_err(ApiError::failure)?
        }
        None => false,
    };
    Ok(ok(SessionEnded {
        id: session.id,
        ended: true,
        replica_id: session.replica_id,
        replica_stopped,
    }))
}
