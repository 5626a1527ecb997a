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
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_core::model::Instance;
use hangar_core::status::{agent_status, AgentStatus};
use hangar_gateway::{Gateway, InvokeError, RouteKey};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::agents::{find, not_running};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Caller, Path};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(invoke))
}

/// `options` of an invocation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InvokeOptions {
    /// Seconds to wait for the agent (1–3600, default 300).
    timeout: Option<f64>,
    /// Extra headers passed to the agent.
    #[serde(default)]
    headers: BTreeMap<String, String>,
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
/// returns the same job (async) or the same result (sync).
#[utoipa::path(post, path = "/v1/agents/{id}/invoke", tag = "agents", request_body = InvokeRequest,
    params(("id" = String, Path, description = "Agent ID")),
    responses((status = 200, description = "{success, data: {output, usage}, meta: {request_id, latency_ms, instance_id}}"),
        (status = 202, description = "Async: {success, data: {job_id, status, poll_url}}"),
        (status = 404, description = "AGENT_NOT_FOUND"), (status = 409, description = "AGENT_NOT_RUNNING, JOB_IN_PROGRESS (a repeated Idempotency-Key still running)")))]
async fn invoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<InvokeRequest>,
) -> ApiResult<Response> {
    let key = super::jobs::idempotency_key(&headers)?;
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
    let timeout = std::time::Duration::from_secs_f64(body.options.timeout.unwrap_or(300.0));
    if body.is_async && key.is_none() && running_route(&state, &caller, &id) {
        let invocation = super::jobs::Invocation {
            input: body.input,
            timeout,
            headers: body.options.headers,
            key,
        };
        return super::jobs::accept(&state, caller.org(), &id, invocation).await;
    }
    if body.is_async || key.is_some() {
        // Jobs: durable async invocations, and sync ones a repeated key answers.
        let view = find(&state, &caller, &id).await?;
        if !is_running(&view) {
            return Err(not_running(
                &view,
                if body.is_async {
                    "queue a job for"
                } else {
                    "invoke"
                },
            ));
        }
        if let (Some(gateway), Some(instance)) = (&state.gateway, &view.default_instance) {
            gateway.remember_route(RouteKey::Agent(id.clone()), instance.clone());
        }
        let invocation = super::jobs::Invocation {
            input: body.input,
            timeout,
            headers: body.options.headers,
            key,
        };
        return if body.is_async {
            super::jobs::accept(&state, caller.org(), &view.agent.id, invocation).await
        } else {
            super::jobs::invoke_keyed(&state, caller.org(), &view, invocation).await
        };
    }
    let (gateway, instance) = route(&state, &caller, &id).await?;
    if wants_stream(&headers) {
        let events = match gateway
            .invoke_stream(
                &instance,
                &body.input,
                timeout,
                &body.options.headers,
                crate::context::request_id(),
            )
            .await
        {
            Ok(events) => events,
            Err(err) => return Err(failed(&state, &caller, &id, err).await),
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
        .invoke(&instance, &body.input, timeout, &body.options.headers)
        .await
    {
        Ok(invoked) => invoked,
        Err(err) => return Err(failed(&state, &caller, &id, err).await),
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

/// The gateway and the agent's default instance: from the gateway's route
/// cache, else from the store. A missing agent is 404, one with no instance
/// (or a server with no runtime) 409.
async fn route(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<(Arc<Gateway>, Arc<Instance>)> {
    if let Some(gateway) = &state.gateway {
        if let Some(instance) = gateway.route(&RouteKey::Agent(id.to_owned())) {
            if instance.organization_id == caller.org() {
                return Ok((gateway.clone(), instance));
            }
        }
    }
    let view = find(state, caller, id).await?;
    match (&state.gateway, view.default_instance.clone()) {
        (Some(gateway), Some(instance)) => {
            let key = RouteKey::Agent(id.to_owned());
            Ok((gateway.clone(), gateway.remember_route(key, instance)))
        }
        _ => Err(not_running(&view, "invoke")),
    }
}

/// An invocation's failure in the envelope. With no replica to serve it,
/// a stopped (or failed, or deploying) agent answers 409 with its status.
async fn failed(state: &AppState, caller: &Caller, id: &str, err: InvokeError) -> ApiError {
    if matches!(err, InvokeError::NoReplica) {
        match find(state, caller, id).await {
            Ok(view) => {
                let status = agent_status(
                    view.agent.desired_state,
                    view.latest_build_status,
                    view.default_instance.as_ref().map(|i| i.status),
                );
                if status != AgentStatus::Running {
                    return not_running(&view, "invoke");
                }
            }
            Err(err) => return err,
        }
    }
    invoke_error(err)
}

/// Whether the gateway's route cache (at most a second old, cleared on every
/// change made through the API) has the agent's default instance running: an
/// async invoke is then accepted without reading the agent from the store.
/// Otherwise the store decides ([`is_running`]).
fn running_route(state: &AppState, caller: &Caller, id: &str) -> bool {
    state
        .gateway
        .as_ref()
        .and_then(|gateway| gateway.route(&RouteKey::Agent(id.to_owned())))
        .is_some_and(|instance| {
            instance.organization_id == caller.org()
                && instance.status == hangar_core::status::InstanceStatus::Running
        })
}

/// Whether the agent is running (jobs are only accepted for running agents,
/// like invocations).
fn is_running(view: &hangar_core::model::AgentView) -> bool {
    hangar_core::status::agent_status(
        view.agent.desired_state,
        view.latest_build_status,
        view.default_instance.as_ref().map(|i| i.status),
    ) == hangar_core::status::AgentStatus::Running
}

/// An invocation's failure in the envelope.
pub(crate) fn invoke_error(err: InvokeError) -> ApiError {
    let agent = |status: StatusCode, code: &'static str, details: Option<serde_json::Value>| {
        ApiError::Agent {
            status,
            code,
            message: err.to_string(),
            details,
        }
    };
    match &err {
        // Running, but no replica is ready this moment (restarting, say).
        InvokeError::NoReplica => agent(StatusCode::SERVICE_UNAVAILABLE, "AGENT_UNAVAILABLE", None),
        InvokeError::Timeout(_) => agent(StatusCode::GATEWAY_TIMEOUT, "INVOKE_TIMEOUT", None),
        InvokeError::AgentStatus { status, body } => agent(
            StatusCode::BAD_GATEWAY,
            "AGENT_ERROR",
            Some(serde_json::json!({"agent_status": status, "agent_body": body})),
        ),
        InvokeError::BadResponse(_) => agent(StatusCode::BAD_GATEWAY, "AGENT_BAD_RESPONSE", None),
        InvokeError::Unreachable(_) => agent(StatusCode::BAD_GATEWAY, "AGENT_UNREACHABLE", None),
        InvokeError::Overloaded => agent(StatusCode::SERVICE_UNAVAILABLE, "AGENT_OVERLOADED", None),
    }
}
