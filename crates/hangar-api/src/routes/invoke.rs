//! `POST /v1/agents/{id}/invoke`: the Agents API's door to the gateway.
//!
//! One route, three ways to answer: synchronously (the default), as a job to
//! poll (`"async": true`), or as Server-Sent Events (`Accept:
//! text/event-stream`). Validation of the request is shared by all three.
//! Async invocations and synchronous ones with an `Idempotency-Key` are jobs
//! (`routes::jobs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_core::model::Instance;
use hangar_core::status::{agent_status, AgentStatus};
use hangar_gateway::sessions::{invalid_session_id, SESSION_HEADER};
use hangar_gateway::{Gateway, InvokeError, RouteKey};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Body, Caller, Path};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(invoke))
}

/// `options.headers`: names are HTTP tokens, values any text but control
/// characters (tab aside), as the `http` crate takes them.
fn header_map() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[^\x00-\x08\x0a-\x1f\x7f]*$")),
        ))
        .build()
}

/// `options` of an invocation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InvokeOptions {
    /// Seconds to wait for the agent (1–3600, default 300).
    #[schema(minimum = 1, maximum = 3600)]
    timeout: Option<f64>,
    /// Extra headers passed to the agent.
    #[serde(default)]
    #[schema(schema_with = header_map)]
    headers: BTreeMap<String, String>,
    /// A sticky session (1–128 characters of `A–Z a–z 0–9 . _ : -`, unique
    /// within the organization): every invocation naming it goes to the
    /// same replica while the session lives (see `/v1/sessions`). The
    /// agent receives it as the `X-Hangar-Session` header. A new session
    /// goes to the least loaded replica; one whose replica is gone moves.
    session_id: Option<String>,
}

/// Body of `POST /v1/agents/{id}/invoke`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InvokeRequest {
    /// Data passed to the agent as the JSON body of its invoke path.
    #[serde(default)]
    #[schema(value_type = Object)]
    input: serde_json::Value,
    /// Invocation options.
    #[serde(default)]
    options: InvokeOptions,
    /// Return at once with a job to poll.
    #[serde(default, rename = "async")]
    is_async: bool,
}

/// Invoke an agent (sync, async with `"async": true`, or SSE with
/// `Accept: text/event-stream`). With an `Idempotency-Key` header, a repeat
/// returns the same job (async) or the same result (sync); a key cannot be
/// combined with streaming (400): a repeat is answered from the job's
/// record, which keeps a whole answer, not a stream.
#[utoipa::path(post, path = "/v1/agents/{id}/invoke", tag = "agents", request_body = InvokeRequest,
    params(("id" = String, Path, description = "Agent ID"),
        ("Idempotency-Key" = Option<String>, Header, pattern = r"^[ -~]{1,255}$", description = "1–255 printable ASCII characters: a repeat answers from the first request's job. Not with `Accept: text/event-stream` (400 INVALID_REQUEST, field `Idempotency-Key`).")),
    responses((status = 200, description = "{success, data: {output, usage}, meta: {request_id, latency_ms, instance_id}}; with `Accept: text/event-stream`, SSE: start, chunk…, done — or an `error` event `{code, message}` with one of the codes below when the agent fails after the start"),
        (status = 202, description = "Async: {success, data: {job_id, status, poll_url}}"),
        (status = 400, description = "INVALID_REQUEST (+ field): a bad body, `options` (`options.session_id`: not 1–128 characters of `A–Z a–z 0–9 . _ : -`, or differing from an `X-Hangar-Session` in `options.headers`), or `Idempotency-Key` (also: a key with `Accept: text/event-stream`)"),
        (status = 404, description = "AGENT_NOT_FOUND"),
        (status = 409, description = "AGENT_NOT_RUNNING (+ current_status); JOB_IN_PROGRESS, JOB_CANCELLED (a repeated Idempotency-Key)"),
        (status = 502, description = "AGENT_ERROR (+ details.agent_status, details.agent_body): the agent answered non-2xx; AGENT_BAD_RESPONSE: its answer could not be read; AGENT_UNREACHABLE: its replica could not be reached or broke the connection"),
        (status = 503, description = "AGENT_UNAVAILABLE: no replica ready and none coming; AGENT_OVERLOADED: every replica busy and the queue full; RUNTIME_UNAVAILABLE: this server runs no agents, the message says why (not running as root; `hangar doctor` on the server tells what to fix)"),
        (status = 504, description = "INVOKE_TIMEOUT: no answer within options.timeout")))]
async fn invoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<InvokeRequest>,
) -> ApiResult<Response> {
    let key = super::jobs::idempotency_key(&headers)?;
    let stream = !body.is_async && wants_stream(&headers);
    if stream && key.is_some() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "cannot be combined with Accept: text/event-stream: a repeated key is answered \
             from the first request's record, which keeps a whole answer, not a stream; \
             send the key without streaming, or stream without a key",
        ));
    }
    if let Some(t) = body.options.timeout {
        if !(t.is_finite() && (1.0..=3600.0).contains(&t)) {
            return Err(ApiError::invalid(
                "options.timeout",
                "must be between 1 and 3600 seconds",
            ));
        }
    }
    for (k, v) in &body.options.headers {
        if axum::http::HeaderName::try_from(k.as_str()).is_err()
            || axum::http::HeaderValue::try_from(v.as_str()).is_err()
        {
            return Err(ApiError::invalid(
                format!("options.headers.{k}"),
                "is not a valid HTTP header",
            ));
        }
    }
    let mut agent_headers = body.options.headers;
    session(body.options.session_id, &mut agent_headers)?;
    let timeout = std::time::Duration::from_secs_f64(body.options.timeout.unwrap_or(300.0));
    let invocation = super::jobs::Invocation {
        input: body.input,
        timeout,
        headers: agent_headers,
        key,
    };
    if body.is_async || invocation.key.is_some() {
        // Jobs: durable async invocations, and sync ones a repeated key
        // answers. Only a running agent takes them.
        let action = if body.is_async {
            "queue a job for"
        } else {
            "invoke"
        };
        let here = match target(&state, &caller, &id, action, true).await? {
            Target::Here(gateway, instance) => Some((gateway, instance)),
            Target::Elsewhere => None,
        };
        return if body.is_async {
            super::jobs::accept(&state, caller.org(), &id, invocation).await
        } else {
            super::jobs::invoke_keyed(&state, caller.org(), &id, here, invocation).await
        };
    }
    let Target::Here(gateway, instance) = target(&state, &caller, &id, "invoke", false).await?
    else {
        return Err(state.runtime_unavailable());
    };
    if stream {
        let events = match gateway
            .invoke_stream(
                &instance,
                &invocation.input,
                timeout,
                &invocation.headers,
                crate::context::request_id(),
            )
            .await
        {
            Ok(events) => events,
            Err(err) => return Err(failed(&gateway, &caller, &id, err).await),
        };
        return Ok((
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
                // Tells a buffering reverse proxy in front (nginx) to pass
                // events on as they come.
                (HeaderName::from_static("x-accel-buffering"), "no"),
            ],
            axum::body::Body::from_stream(events),
        )
            .into_response());
    }
    let invoked = match gateway
        .invoke(&instance, &invocation.input, timeout, &invocation.headers)
        .await
    {
        Ok(invoked) => invoked,
        Err(err) => return Err(failed(&gateway, &caller, &id, err).await),
    };
    Ok(Json(serde_json::json!({
        "success": true,
        "data": {"output": invoked.output, "usage": invoked.usage},
        "meta": {
            "request_id": crate::context::request_id(),
            "latency_ms": u64::try_from(invoked.latency.as_millis()).unwrap_or(u64::MAX),
            "instance_id": instance.id,
        },
    }))
    .into_response())
}

/// Checks `options.session_id` and puts it in the agent's headers, where
/// the gateway reads it (a job keeps it with its headers). A session named
/// in `options.headers` is checked the same way; naming two is refused.
fn session(session_id: Option<String>, headers: &mut BTreeMap<String, String>) -> ApiResult<()> {
    let named = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(SESSION_HEADER))
        .map(|(name, value)| (name.clone(), value.clone()));
    if let Some((name, value)) = &named {
        if let Some(why) = invalid_session_id(value) {
            return Err(ApiError::invalid(format!("options.headers.{name}"), why));
        }
    }
    let Some(id) = session_id else {
        return Ok(());
    };
    if let Some(why) = invalid_session_id(&id) {
        return Err(ApiError::invalid("options.session_id", why));
    }
    if let Some((name, value)) = named {
        if value != id {
            return Err(ApiError::invalid(
                "options.session_id",
                format!("differs from options.headers.{name}; name the session once"),
            ));
        }
        headers.remove(&name);
    }
    headers.insert(SESSION_HEADER.to_owned(), id);
    Ok(())
}

/// Whether the caller asked for Server-Sent Events.
fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Where an invocation of an agent goes.
enum Target {
    /// Through this server's gateway, to the agent's default instance.
    Here(Arc<Gateway>, Arc<Instance>),
    /// The agent runs, but this server has no runtime: only a job (run by
    /// a server that has one) can reach it.
    Elsewhere,
}

/// The agent's route, resolved by the gateway (its cache, then the store).
/// A missing agent is 404; one with no instance — or, with `must_run`, one
/// that is not running — 409 with its status. On a server without a
/// runtime the store says whether the agent runs; one that runs no agents
/// (not root) takes no invocation, not even a job, rather than queue work
/// that may never run.
async fn target(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: &str,
    must_run: bool,
) -> ApiResult<Target> {
    let Some(gateway) = &state.gateway else {
        let view = state
            .store
            .get_agent(caller.org(), id)
            .await?
            .found(Kind::Agent, id)?;
        state.runs_agents()?;
        let status = agent_status(
            view.agent.desired_state,
            view.latest_build_status,
            view.default_instance.as_ref().map(|i| i.status),
        );
        return if status == AgentStatus::Running {
            Ok(Target::Elsewhere)
        } else {
            Err(ApiError::agent_not_running(status, action))
        };
    };
    let resolved = gateway
        .resolve(&RouteKey::Agent(id.to_owned()), Some(caller.org()))
        .await?
        .found(Kind::Agent, id)?;
    let status = resolved.agent_status.unwrap_or(AgentStatus::Created);
    match resolved.instance {
        Some(instance) if !must_run || status == AgentStatus::Running => {
            Ok(Target::Here(gateway.clone(), instance))
        }
        _ => Err(ApiError::agent_not_running(status, action)),
    }
}

/// An invocation's failure in the envelope. With no replica to serve it,
/// a stopped (or failed, or deploying) agent answers 409 with its status,
/// as it is now rather than as the route cache had it.
async fn failed(gateway: &Gateway, caller: &Caller, id: &str, err: InvokeError) -> ApiError {
    if matches!(err, InvokeError::NoReplica) {
        match gateway
            .reread(&RouteKey::Agent(id.to_owned()), Some(caller.org()))
            .await
        {
            Ok(Some(resolved)) => match resolved.agent_status {
                Some(status) if status != AgentStatus::Running => {
                    return ApiError::agent_not_running(status, "invoke");
                }
                _ => {}
            },
            Ok(None) => return ApiError::not_found(Kind::Agent, id),
            Err(err) => return err.into(),
        }
    }
    err.into()
}
