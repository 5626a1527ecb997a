//! Instance and agent URLs, which are not API calls but traffic for a
//! replica, handed to the gateway's proxy:
//! - a request whose `Host` is `<label>.<base domain>` (any port) goes to
//!   the instance (or the agent's default instance) with that resource
//!   name, path as is: the Instances API's `deployment.url`;
//! - on any other host, a request whose path is under `/agents/<name>` goes
//!   to that agent's default instance with the prefix stripped and
//!   `X-Forwarded-Prefix` set: the Agents API's `endpoints.base_url`
//!   ([`hangar_core::agent_url`] says which agent a host and name mean).
//!
//! Every other request reaches the API. Both kinds of URL are public, as
//! the seeds' "public URL for this instance" says: no API key is asked for,
//! and the agent authenticates its callers itself if it wants to.
//!
//! An `X-Hangar-Session` header makes the request part of a sticky session
//! ([`hangar_gateway::sessions`]); a malformed one is refused here, 400
//! `INVALID_REQUEST` with field `X-Hangar-Session`, before any hop.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_core::agent_url;
use hangar_gateway::hop::HopKey;
use hangar_gateway::sessions::{invalid_session_id, SESSION_HEADER};
use hangar_gateway::{Resolved, RouteKey};

use crate::error::{ApiError, Kind};
use crate::AppState;

/// The first label of `host` when it is `<label>.<base_domain>[:port]`.
pub(super) fn instance_label<'h>(host: &'h str, base_domain: &str) -> Option<&'h str> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let label = name
        .len()
        .checked_sub(base_domain.len() + 1)
        .filter(|&cut| {
            name.is_char_boundary(cut)
                && name.as_bytes()[cut] == b'.'
                && name[cut + 1..].eq_ignore_ascii_case(base_domain)
        })
        .map(|cut| &name[..cut])?;
    let ok = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then_some(label)
}

/// Middleware (outermost): instance hosts and agent URLs go to the proxy,
/// the rest on.
pub(crate) async fn instance_hosts(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    if let Some(label) = host
        .as_deref()
        .and_then(|h| instance_label(h, &state.config.base_domain))
        .map(str::to_ascii_lowercase)
    {
        let target = Target {
            key: RouteKey::Host(label.clone()),
            missing: (Kind::Instance, label),
            strip: None,
        };
        return crate::context::with_request_id(proxy(state, target, request)).await;
    }
    let Some((name, path)) = agent_url::split_path(request.uri().path())
        .map(|(name, path)| (name.to_owned(), path.to_owned()))
    else {
        return next.run(request).await;
    };
    let (name, path) = (name.as_str(), path.as_str());
    let target = Target {
        key: RouteKey::AgentUrl(agent_url::candidates(host.as_deref(), name)),
        missing: (Kind::Agent, name.to_owned()),
        strip: Some((name.to_owned(), path.to_owned())),
    };
    crate::context::with_request_id(proxy(state, target, request)).await
}

/// Where a request goes, and what to call it when nothing is there.
struct Target {
    key: RouteKey,
    missing: (Kind, String),
    /// For an agent URL, its name and the path under it: the prefix is
    /// stripped where the request is served (a node it is forwarded to
    /// gets it as it came).
    strip: Option<(String, String)>,
}

/// `/agents/<name>/rest?q` → `/rest?q`, with `X-Forwarded-Prefix:
/// /agents/<name>` so the agent can build its own links.
fn strip_agent_prefix(mut request: Request, name: &str, path: &str) -> Result<Request, ApiError> {
    let uri = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let prefix = format!("{}{name}", agent_url::PREFIX);
    let bad = |_| ApiError::invalid("path", "is not a valid request target");
    *request.uri_mut() = uri.parse::<Uri>().map_err(bad)?;
    let prefix = HeaderValue::try_from(prefix)
        .map_err(|_| ApiError::invalid("path", "is not a valid request target"))?;
    request.headers_mut().insert("x-forwarded-prefix", prefix);
    Ok(request)
}

async fn proxy(state: AppState, target: Target, request: Request) -> Response {
    let Some(gateway) = state.gateway.clone() else {
        return state.runtime_unavailable().into_response();
    };
    let instance = match gateway.resolve(&target.key, None).await {
        Ok(Some(Resolved {
            instance: Some(instance),
            ..
        })) => instance,
        Ok(_) => {
            let (kind, name) = target.missing;
            return ApiError::not_found(kind, name).into_response();
        }
        Err(err) => return ApiError::from(err).into_response(),
    };
    if let Some(value) = request.headers().get(SESSION_HEADER) {
        let why = match value.to_str() {
            Ok(id) => invalid_session_id(id),
            Err(_) => Some("must be visible ASCII".to_owned()),
        };
        if let Some(why) = why {
            return ApiError::invalid("X-Hangar-Session", why).into_response();
        }
    }
    let key = Some(HopKey::Instance(instance.id.clone()));
    let request = match crate::hop::here(&state, key, false, request).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let request = match &target.strip {
        Some((name, path)) => match strip_agent_prefix(request, name, path) {
            Ok(request) => request,
            Err(err) => return err.into_response(),
        },
        None => request,
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match gateway.proxy(&instance, request, client).await {
        Ok(response) => response.into_response(),
        Err(err) => ApiError::from(err).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_under_the_base_domain_are_instance_hosts() {
        let l = |h| instance_label(h, "localhost");
        assert_eq!(l("bot-1a2b.localhost:7070"), Some("bot-1a2b"));
        assert_eq!(l("Bot-1a2b.LOCALHOST"), Some("Bot-1a2b"));
        assert_eq!(l("bot.localhost."), Some("bot"));
        assert_eq!(l("localhost:7070"), None);
        assert_eq!(l("127.0.0.1:7070"), None);
        assert_eq!(l("a.b.localhost"), None);
        assert_eq!(l("evillocalhost"), None);
        assert_eq!(l(".localhost"), None);
        assert_eq!(l("bot_x.localhost"), None);
        assert_eq!(
            instance_label("x.agents.example.com", "agents.example.com"),
            Some("x")
        );
    }
}
