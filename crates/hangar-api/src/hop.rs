//! Requests for an instance another node runs go there
//! ([`hangar_gateway::hop`] says how and why). Which instance a request is
//! about is read from its path: every route under `/v1/agents/{id}` (the
//! agent's default instance) and the Instances API's routes that name an
//! instance (and a session's `DELETE`, which may stop its replica). Those
//! are the routes whose answers depend on the replicas,
//! live logs and figures only the holder has, or whose writes the holder
//! must act on at once; everything else any node answers from the store.
//!
//! The layer sits inside the rate limit (a forwarded request counts once,
//! where it arrived; the receiver does not limit it again) and outside the
//! handlers; instance and agent URLs, which never reach it, are forwarded
//! by [`crate::routes::proxy`] the same way.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_gateway::hop::{HopError, HopKey, HOP_HEADER};

use crate::error::ApiError;
use crate::AppState;

/// The instance (or agent) `path` is about, when it is one whose requests
/// go to the node that holds it.
pub(crate) fn key_of(path: &str) -> Option<HopKey> {
    let mut segments = path.strip_prefix('/')?.split('/');
    let key = match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some("v1"), Some("agents"), Some(id), _) if id.starts_with("agent_") => {
            HopKey::Agent(id.to_owned())
        }
        (Some("instances"), Some("status"), Some(_org), Some(id))
        | (Some("instances"), Some(_org), Some(id), Some("exec" | "stdin" | "logs")) => {
            HopKey::Instance(id.to_owned())
        }
        (Some("instances"), Some(id), None, None) if id.starts_with("inst_") => {
            HopKey::Instance(id.to_owned())
        }
        _ => return None,
    };
    Some(key)
}

/// Middleware: see the module docs.
pub(crate) async fn to_holder(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let key = match key_of(request.uri().path()) {
        Some(key) => Some(key),
        None => session_key(&state, request.method(), request.uri().path()).await,
    };
    match here(&state, key, true, request).await {
        Ok(request) => next.run(request).await,
        Err(answered) => answered,
    }
}

/// A session's `DELETE` goes to the node that runs its instance, which
/// stops its replica when asked to (`?kill=true`). Read by ID alone: the
/// holder checks the caller's organization, so a session of the same ID in
/// another organization costs a hop, never an answer about it.
async fn session_key(state: &AppState, method: &axum::http::Method, path: &str) -> Option<HopKey> {
    if state.hops.is_none() || method != axum::http::Method::DELETE {
        return None;
    }
    let id = path.strip_prefix("/v1/sessions/")?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    match state.store.session_instance(id).await {
        Ok(instance) => instance.map(HopKey::Instance),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read a session's instance; serving here");
            None
        }
    }
}

/// The request back, to serve here; or the answer of the node that runs
/// what `key` leads to, when that is another and the request was not
/// forwarded already; or the refusal of a wrong hop token.
///
/// With `buffered` (API routes, whose bodies are bounded), a request whose
/// holder does not take the connection waits for the instance's takeover
/// rather than fail; otherwise (instance URLs, whose bodies stream through)
/// it answers `503 NODE_UNREACHABLE`.
pub(crate) async fn here(
    state: &AppState,
    key: Option<HopKey>,
    buffered: bool,
    mut request: Request,
) -> Result<Request, Response> {
    let Some(hops) = &state.hops else {
        return Ok(request);
    };
    match hops.received(request.headers()) {
        Ok(true) => {
            // The token goes no further (not to an agent, not to a log).
            request.headers_mut().remove(HOP_HEADER);
            return Ok(request);
        }
        Ok(false) => {}
        Err(_) => return Err(wrong_token().into_response()),
    }
    let Some(key) = key else {
        return Ok(request);
    };
    let node = match hops.elsewhere(&key).await {
        Ok(None) => return Ok(request),
        Ok(Some(node)) => node,
        Err(err) => return Err(ApiError::from(err).into_response()),
    };
    if !buffered {
        return Err(match hops.forward(&node, request).await {
            Ok(response) => response,
            Err(err) => ApiError::failure(err).into_response(),
        });
    }
    // The body is kept (an API request's is bounded) so that the request can
    // go again, or be served here, when the holder is not there to take it.
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return Err(ApiError::PayloadTooLarge {
                limit: state.config.max_body_bytes,
            }
            .into_response())
        }
    };
    let again = |parts: &axum::http::request::Parts| {
        let mut request = Request::new(axum::body::Body::from(body.clone()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        if let Some(client) = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        {
            request.extensions_mut().insert(*client);
        }
        request
    };
    let deadline = tokio::time::Instant::now() + HOLDER_GONE_WAIT;
    let mut node = node;
    loop {
        match hops.forward(&node, again(&parts)).await {
            Ok(response) => return Err(response),
            Err(HopError::Unreachable { connect: true, .. })
                if tokio::time::Instant::now() < deadline =>
            {
                // The holder is gone (killed, its address dead): the request
                // waits for the database to say who runs the instance now —
                // another node, or this one once the holder counts as dead
                // or its lease ran out (it is then served here, a takeover).
                tokio::time::sleep(HOLDER_POLL).await;
                match hops.reread(&key).await {
                    Ok(Some(next)) => node = next,
                    // As it came, with what routing put in its extensions.
                    Ok(None) => return Ok(Request::from_parts(parts, body.into())),
                    Err(err) => return Err(ApiError::from(err).into_response()),
                }
            }
            Err(err) => return Err(ApiError::failure(err).into_response()),
        }
    }
}

/// How long a request whose holder is gone waits for another node to run
/// the instance: the default failure detection (15 s) and a cold start.
const HOLDER_GONE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How often such a request asks the database again.
const HOLDER_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// A request that says another node forwarded it, with a token that is
/// not this cluster's.
fn wrong_token() -> ApiError {
    ApiError::Unauthorized("the request's hop token is not this cluster's")
}

/// Whether another node forwarded `headers`' request (with the right
/// token): it was counted by that node's rate limit.
pub(crate) fn forwarded(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    state
        .hops
        .as_ref()
        .is_some_and(|hops| hops.received(headers) == Ok(true))
}

/// Documents the hop's own failure on every operation it may forward: a
/// 503 `NODE_UNREACHABLE` when the node that runs the instance does not
/// answer (added to the operation's 503 where it has one).
pub(crate) fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, ResponseBuilder};
    const WHY: &str = "NODE_UNREACHABLE: another server on this database runs the \
        instance, and it did not answer this one (retryable)";
    for (path, item) in &mut doc.paths.paths {
        // A concrete path of the template, as key_of reads paths.
        let concrete = path
            .replace("{id}", "agent_0")
            .replace("{instance_id}", "inst_0")
            .replace("{org_id}", "org_0");
        if key_of(&concrete).is_none() {
            continue;
        }
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut operation.responses.responses;
            match responses.get_mut("503") {
                Some(RefOr::T(response)) => {
                    response.description = format!("{}; {WHY}", response.description);
                }
                _ => {
                    responses.insert(
                        "503".to_owned(),
                        ResponseBuilder::new().description(WHY).build().into(),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_about_one_instance_name_it() {
        let agent = |id: &str| Some(HopKey::Agent(id.to_owned()));
        let instance = |id: &str| Some(HopKey::Instance(id.to_owned()));
        assert_eq!(key_of("/v1/agents/agent_1/invoke"), agent("agent_1"));
        assert_eq!(key_of("/v1/agents/agent_1"), agent("agent_1"));
        assert_eq!(key_of("/v1/agents/agent_1/logs"), agent("agent_1"));
        assert_eq!(key_of("/v1/agents"), None);
        assert_eq!(key_of("/v1/agents/"), None);
        assert_eq!(key_of("/instances/inst_1"), instance("inst_1"));
        assert_eq!(key_of("/instances/org_1/inst_1/exec"), instance("inst_1"));
        assert_eq!(key_of("/instances/org_1/inst_1/stdin"), instance("inst_1"));
        assert_eq!(key_of("/instances/org_1/inst_1/logs"), instance("inst_1"));
        assert_eq!(key_of("/instances/status/org_1/inst_1"), instance("inst_1"));
        assert_eq!(key_of("/instances/by_org_id/org_1"), None);
        assert_eq!(key_of("/instances"), None);
        assert_eq!(key_of("/v1/jobs/job_1"), None);
        assert_eq!(key_of("/healthz"), None);
    }
}
