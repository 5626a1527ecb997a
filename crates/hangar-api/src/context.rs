//! Per-request context: the request id (a `req_…` ULID, also sent back as
//! `x-request-id`) and which route family is answering, kept in a task-local so
//! that error rendering and response envelopes can read them without threading
//! them through every handler.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use hangar_core::id::{new_id, IdKind};

#[derive(Clone)]
struct RequestContext {
    id: String,
    status_endpoint: bool,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// The current request's id (`req_unknown` outside a request).
#[must_use]
pub fn request_id() -> String {
    CONTEXT
        .try_with(|c| c.id.clone())
        .unwrap_or_else(|_| "req_unknown".to_owned())
}

/// Whether the current request is `GET /instances/status/…`, whose not-found answer
/// also carries the documented `"status": "NOT_FOUND"`.
#[must_use]
pub fn is_status_endpoint() -> bool {
    CONTEXT.try_with(|c| c.status_endpoint).unwrap_or(false)
}

/// Middleware: gives the request an id, runs it inside the context, and returns the
/// id in `x-request-id`.
pub async fn with_context(request: Request, next: Next) -> Response {
    let ctx = RequestContext {
        id: new_id(IdKind::Request),
        status_endpoint: request.uri().path().starts_with("/instances/status/"),
    };
    let id = ctx.id.clone();
    let mut response = CONTEXT.scope(ctx, next.run(request)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Runs `handle` in a fresh request context (for traffic that bypasses the
/// API's layers, such as instance URLs), and returns the id in
/// `x-request-id` unless the response already carries one.
pub async fn with_request_id(handle: impl std::future::Future<Output = Response>) -> Response {
    let ctx = RequestContext {
        id: new_id(IdKind::Request),
        status_endpoint: false,
    };
    let id = ctx.id.clone();
    let mut response = CONTEXT.scope(ctx, handle).await;
    if !response.headers().contains_key("x-request-id") {
        if let Ok(v) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", v);
        }
    }
    response
}
