//! Instance URLs: a request whose `Host` is `<label>.<base domain>` (any
//! port) is not an API call but traffic for the instance (or the agent's
//! default instance) with that resource name, handed to the gateway's
//! proxy. Every other host reaches the API.
//!
//! Instance URLs are public, as the seeds' "public URL for this instance"
//! says: no API key is asked for, and the agent authenticates its callers
//! itself if it wants to.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_gateway::{Resolved, RouteKey};

use crate::error::{ApiError, Kind};
use crate::AppState;

/// The first label of `host` when it is `<label>.<base_domain>[:port]`.
fn instance_label<'h>(host: &'h str, base_domain: &str) -> Option<&'h str> {
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

/// Middleware (outermost): instance hosts go to the proxy, the rest on.
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
    let Some(label) = host
        .as_deref()
        .and_then(|h| instance_label(h, &state.config.base_domain))
        .map(str::to_ascii_lowercase)
    else {
        return next.run(request).await;
    };
    crate::context::with_request_id(proxy(state, label, request)).await
}

async fn proxy(state: AppState, label: String, request: Request) -> Response {
    let Some(gateway) = state.gateway.clone() else {
        return state.runtime_unavailable().into_response();
    };
    let instance = match gateway.resolve(&RouteKey::Host(label.clone()), None).await {
        Ok(Some(Resolved {
            instance: Some(instance),
            ..
        })) => instance,
        Ok(_) => return ApiError::not_found(Kind::Instance, label).into_response(),
        Err(err) => return ApiError::from(err).into_response(),
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
