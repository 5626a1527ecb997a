//! The one place errors become HTTP.
//!
//! Every handler returns [`ApiError`]; [`IntoResponse`] renders the seeds' envelope
//! `{"error": {"code", "message", …extra}}` (with `"success": false` beside it, so
//! Agents API clients that branch on `success` work too). Internal causes are
//! logged with the request id and answered with a generic 500 that carries the id,
//! never the cause.
//!
//! The status and code of an invocation's, the controller's or the store's
//! failure are not decided here but read from their one table
//! ([`hangar_gateway::error`]); [`ApiError::class`] answers the API's own
//! errors from the same rows where they mean the same thing.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hangar_core::status::AgentStatus;
use hangar_core::Invalid;
use hangar_gateway::error::INTERNAL_MESSAGE;
use hangar_gateway::{Classify, ErrorClass, InvokeError};
use hangar_store::StoreError;
use serde_json::{json, Map, Value};

use crate::context;

/// Kinds of object a `…_NOT_FOUND` or `…_NAME_TAKEN` code names: the ID
/// kinds, so the store's errors name theirs the same way.
pub use hangar_core::id::IdKind as Kind;

/// How a message names a kind of object.
fn noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Organization => "Organization",
        Kind::User => "User",
        Kind::ApiKey => "API key",
        Kind::Cloud => "Cloud",
        Kind::Agent => "Agent",
        Kind::Build => "Build",
        Kind::Instance => "Instance",
        Kind::Replica => "Replica",
        Kind::Job => "Job",
        Kind::Request => "Request",
        Kind::Upload => "Upload",
        Kind::Secret => "Secret",
        Kind::Webhook => "Webhook",
        Kind::Delivery => "Delivery",
        Kind::Event => "Event",
        Kind::Node => "Node",
        Kind::Session => "Session",
    }
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `INVALID_REQUEST`: malformed JSON, unknown or mistyped fields, bad values.
    #[error("{message}")]
    Invalid {
        /// Dotted path of the field, when one is to blame.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// 401 `UNAUTHORIZED`.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403 `FORBIDDEN`: authenticated, but the role does not allow it.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404 `<KIND>_NOT_FOUND`: missing, or another organization's.
    #[error("{} with ID '{id}' not found", noun(*kind))]
    NotFound {
        /// What was looked for.
        kind: Kind,
        /// The ID asked for.
        id: String,
    },
    /// 404 `NOT_FOUND`: no such route.
    #[error("no route for {method} {path}")]
    NoRoute {
        /// Method.
        method: String,
        /// Path.
        path: String,
    },
    /// 405 `METHOD_NOT_ALLOWED`.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// Method.
        method: String,
        /// Path.
        path: String,
    },
    /// 409 `<KIND>_NAME_TAKEN`.
    #[error("{} name '{name}' is already taken", noun(*kind))]
    NameTaken {
        /// What kind of name.
        kind: Kind,
        /// The name.
        name: String,
    },
    /// 409 `INSTANCE_NOT_RUNNING` / `AGENT_NOT_RUNNING`, with `current_status`.
    #[error("{message}")]
    NotRunning {
        /// Instance or agent.
        kind: Kind,
        /// What could not be done.
        message: String,
        /// Its status now.
        current_status: String,
    },
    /// 409 `BUILD_NOT_READY`, with `build_status`.
    #[error("Cannot create instance from incomplete build")]
    BuildNotReady {
        /// The build's status now.
        build_status: String,
    },
    /// 409 with a specific code (state conflicts other than the above).
    #[error("{message}")]
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// For a person.
        message: String,
    },
    /// 413 `PAYLOAD_TOO_LARGE`.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit.
        limit: usize,
    },
    /// 422 `RESOURCE_LIMIT_EXCEEDED` with `details.current_instances/max_instances`.
    #[error("Organization has reached maximum instance count")]
    InstanceQuota {
        /// Instances the organization has.
        current: u32,
        /// Instances it may have.
        max: u32,
    },
    /// 429 `RATE_LIMITED` (+ `retry_after_seconds`, and the `Retry-After`
    /// header): the API key sent more requests than its rate allows.
    #[error("Too many requests with this API key (its limit is {limit}); retry in {retry_after_seconds} s")]
    RateLimited {
        /// Whole seconds until the key's next request is taken.
        retry_after_seconds: u64,
        /// The key's limit, for a person (`50 per second, in bursts of 100`).
        limit: String,
    },
    /// 422 `CLOUD_UNREACHABLE`: a new cloud's cluster, namespace or
    /// registry cannot be used; the message says which and why.
    #[error("{0}")]
    CloudUnreachable(String),
    /// 501 `DRIVER_UNAVAILABLE` (+ `driver`): the cloud asks for a driver
    /// this Hangar does not have yet.
    #[error("{message}")]
    DriverUnavailable {
        /// The missing driver (`kubernetes`).
        driver: String,
        /// For a person.
        message: String,
    },
    /// An invocation's (or the controller's) failure, as its row of the one
    /// table ([`hangar_gateway::error`]) says, with `details` when there
    /// are any.
    #[error("{message}")]
    Failed {
        /// Status and code.
        class: ErrorClass,
        /// For a person (never internal text).
        message: String,
        /// The agent's status and the start of its answer, for `AGENT_ERROR`.
        details: Option<Value>,
    },
    /// 503 `RUNTIME_UNAVAILABLE`: the operation needs a runtime this server
    /// lacks; the message says why (not running as root, say) when the
    /// server knows.
    #[error("{0}")]
    RuntimeUnavailable(std::borrow::Cow<'static, str>),
    /// 500 `INTERNAL_ERROR`: logged, never shown.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Result of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// Turns a lookup's `None` into the 404 for that kind of object.
pub trait Found<T> {
    /// `Some(t)` → `t`; `None` → `<KIND>_NOT_FOUND` naming `id`.
    fn found(self, kind: Kind, id: &str) -> ApiResult<T>;
}

impl<T> Found<T> for Option<T> {
    fn found(self, kind: Kind, id: &str) -> ApiResult<T> {
        self.ok_or_else(|| ApiError::not_found(kind, id))
    }
}

impl ApiError {
    /// 400 naming a field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// 409 `AGENT_NOT_RUNNING`: `action` (say, "invoke") needs a running
    /// agent, and this one is `status`.
    #[must_use]
    pub fn agent_not_running(status: AgentStatus, action: &str) -> Self {
        ApiError::NotRunning {
            kind: Kind::Agent,
            message: format!("Cannot {action} {status} agent"),
            current_status: status.to_string(),
        }
    }

    /// 404 for `kind` `id`.
    pub fn not_found(kind: Kind, id: impl Into<String>) -> Self {
        ApiError::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// Status and code. The rows shared with the invoke, control and store
    /// errors come from their table, so an `INSTANCE_NOT_RUNNING` or an
    /// `AGENT_NOT_FOUND` is the same whichever path raised it.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        let own = |status, code| ErrorClass::new(status, code, false);
        match self {
            ApiError::Invalid { .. } => ErrorClass::INVALID_REQUEST,
            ApiError::Unauthorized(_) => own(StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::Forbidden(_) => own(StatusCode::FORBIDDEN, "FORBIDDEN"),
            ApiError::NotFound { kind, .. } => ErrorClass::not_found(*kind),
            ApiError::NoRoute { .. } => own(StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::MethodNotAllowed { .. } => {
                own(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
            }
            ApiError::NameTaken { kind, .. } => ErrorClass::name_taken(*kind),
            ApiError::NotRunning {
                kind: Kind::Agent, ..
            } => ErrorClass::AGENT_NOT_RUNNING,
            ApiError::NotRunning { .. } => ErrorClass::INSTANCE_NOT_RUNNING,
            ApiError::BuildNotReady { .. } => own(StatusCode::CONFLICT, "BUILD_NOT_READY"),
            ApiError::Conflict { code, .. } => own(StatusCode::CONFLICT, code),
            ApiError::PayloadTooLarge { .. } => {
                own(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
            }
            ApiError::InstanceQuota { .. } => ErrorClass::RESOURCE_LIMIT_EXCEEDED,
            ApiError::RateLimited { .. } => own(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            ApiError::CloudUnreachable(_) => {
                own(StatusCode::UNPROCESSABLE_ENTITY, "CLOUD_UNREACHABLE")
            }
            ApiError::DriverUnavailable { .. } => {
                own(StatusCode::NOT_IMPLEMENTED, "DRIVER_UNAVAILABLE")
            }
            ApiError::Failed { class, .. } => *class,
            ApiError::RuntimeUnavailable(_) => {
                own(StatusCode::SERVICE_UNAVAILABLE, "RUNTIME_UNAVAILABLE")
            }
            ApiError::Internal(_) => ErrorClass::INTERNAL_ERROR,
        }
    }

    fn status(&self) -> StatusCode {
        self.class().status
    }

    /// The machine-readable code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.class().code
    }

    /// A failure of the invoke, control or store table, with its public
    /// message; an internal cause is logged here (with the request id) and
    /// an internal row answers the generic 500.
    pub fn failure<E: Classify + Send + Sync + 'static>(err: E) -> Self {
        let class = err.class();
        if class == ErrorClass::INTERNAL_ERROR {
            return ApiError::Internal(Box::new(err));
        }
        if let Some(cause) = err.internal_cause() {
            tracing::warn!(request_id = %context::request_id(), code = class.code, error = %cause, "request failed");
        }
        ApiError::Failed {
            class,
            message: err.public_message(),
            details: None,
        }
    }

    /// The `error` object of the envelope.
    #[must_use]
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), Value::String(self.code().to_owned()));
        let message = match self {
            ApiError::Internal(_) => INTERNAL_MESSAGE.to_owned(),
            other => other.to_string(),
        };
        error.insert("message".into(), Value::String(message));
        match self {
            ApiError::Invalid {
                field: Some(field), ..
            } => {
                error.insert("field".into(), Value::String(field.clone()));
            }
            ApiError::NotRunning { current_status, .. } => {
                error.insert(
                    "current_status".into(),
                    Value::String(current_status.clone()),
                );
            }
            ApiError::BuildNotReady { build_status } => {
                error.insert("build_status".into(), Value::String(build_status.clone()));
            }
            ApiError::InstanceQuota { current, max } => {
                error.insert(
                    "details".into(),
                    json!({"current_instances": current, "max_instances": max}),
                );
            }
            ApiError::RateLimited {
                retry_after_seconds,
                ..
            } => {
                error.insert("retry_after_seconds".into(), json!(retry_after_seconds));
            }
            ApiError::DriverUnavailable { driver, .. } => {
                error.insert("driver".into(), Value::String(driver.clone()));
            }
            ApiError::Internal(_) => {
                error.insert("request_id".into(), Value::String(context::request_id()));
            }
            ApiError::Failed {
                details: Some(details),
                ..
            } => {
                error.insert("details".into(), details.clone());
            }
            _ => {}
        }
        json!({ "success": false, "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(request_id = %context::request_id(), error = %cause, "request failed");
        }
        let mut body = self.body();
        // The status endpoint's documented value for a missing instance.
        if context::is_status_endpoint() {
            if let ApiError::NotFound {
                kind: Kind::Instance,
                ..
            } = self
            {
                body["status"] = Value::String("NOT_FOUND".into());
            }
        }
        let mut response = (self.status(), axum::Json(body)).into_response();
        match self {
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited {
                retry_after_seconds,
                ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
            }
            _ => {}
        }
        response
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::Invalid {
            field: (!e.field.is_empty()).then_some(e.field.clone()),
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken { what, name } => ApiError::NameTaken { kind: what, name },
            StoreError::QuotaExceeded { current, max } => ApiError::InstanceQuota { current, max },
            StoreError::NotFound { what, id } => ApiError::NotFound { kind: what, id },
            other => ApiError::failure(other),
        }
    }
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        let details = match &e {
            InvokeError::AgentStatus { status, body } => {
                Some(json!({"agent_status": status, "agent_body": body}))
            }
            _ => None,
        };
        match ApiError::failure(e) {
            ApiError::Failed { class, message, .. } => ApiError::Failed {
                class,
                message,
                details,
            },
            other => other,
        }
    }
}

/// The envelope every error answers in, as the document shows it: `code` and
/// `message` always, the other fields where the code says so.
#[derive(utoipa::ToSchema)]
#[schema(as = Error)]
#[allow(
    dead_code,
    reason = "only its schema is used: errors are built as JSON in ApiError::body"
)]
struct ErrorEnvelope {
    /// Always `false`, for Agents API clients that branch on it.
    success: bool,
    error: ErrorObject,
}

/// The `error` object of the envelope.
#[derive(utoipa::ToSchema)]
#[allow(
    dead_code,
    reason = "only its schema is used: errors are built as JSON in ApiError::body"
)]
struct ErrorObject {
    /// Machine-readable (`INVALID_REQUEST`, `AGENT_NOT_FOUND`, …).
    code: String,
    /// For a person; never internal text.
    message: String,
    /// `INVALID_REQUEST`: the dotted path of the field to blame.
    field: Option<String>,
    /// `INSTANCE_NOT_RUNNING` / `AGENT_NOT_RUNNING`: the status now.
    current_status: Option<String>,
    /// `BUILD_NOT_READY`: the build's status now.
    build_status: Option<String>,
    /// `RATE_LIMITED`: whole seconds until the key's next request is taken.
    retry_after_seconds: Option<u64>,
    /// `DRIVER_UNAVAILABLE`: the missing driver.
    driver: Option<String>,
    /// `INTERNAL_ERROR`: the id the server logged the cause under.
    request_id: Option<String>,
    /// `RESOURCE_LIMIT_EXCEEDED`, `AGENT_ERROR`: what the code is about.
    #[schema(value_type = Option<Object>)]
    details: Option<Value>,
}

/// Completes every operation's error answers from what the extractors and
/// this enum do on every route, so the document lists each status the server
/// can answer without each handler repeating it:
/// - 401 `UNAUTHORIZED` (with `WWW-Authenticate`) where an API key is taken;
/// - 400 `INVALID_REQUEST` where a body, a query or a path segment is read
///   ([`crate::extract`] answers it for a malformed one);
/// - 413 `PAYLOAD_TOO_LARGE` where a body is read;
/// - and every error answer (4xx, 5xx) carries the [`ErrorEnvelope`] schema.
///
/// Runs after the other `document` passes, so their answers get the schema too.
pub(crate) fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    use utoipa::{PartialSchema, ToSchema};

    let components = doc.components.get_or_insert_with(Default::default);
    let mut schemas = Vec::new();
    <ErrorEnvelope as ToSchema>::schemas(&mut schemas);
    components.schemas.extend(schemas);
    components.schemas.insert(
        <ErrorEnvelope as ToSchema>::name().into_owned(),
        ErrorEnvelope::schema(),
    );
    let envelope = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(
            <ErrorEnvelope as ToSchema>::name(),
        )))
        .build();
    let unauthorized = ResponseBuilder::new()
        .description("UNAUTHORIZED: no API key, a malformed one, or one that is unknown or revoked")
        .header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some("`Bearer`"))
                .build(),
        )
        .build();
    let invalid = ResponseBuilder::new()
        .description(
            "INVALID_REQUEST (+ `field`): a malformed body, query or path, or a value out of range",
        )
        .build();
    let too_large = ResponseBuilder::new()
        .description("PAYLOAD_TOO_LARGE: the body is larger than the server's limit")
        .build();
    for item in doc.paths.paths.values_mut() {
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
            let keyless = operation.security.as_ref().is_some_and(Vec::is_empty);
            let reads_input = operation.request_body.is_some()
                || operation.parameters.as_ref().is_some_and(|p| {
                    p.iter()
                        .any(|p| matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Path))
                });
            let responses = &mut operation.responses.responses;
            if !keyless {
                responses
                    .entry("401".to_owned())
                    .or_insert_with(|| unauthorized.clone().into());
            }
            if reads_input {
                responses
                    .entry("400".to_owned())
                    .or_insert_with(|| invalid.clone().into());
            }
            if operation.request_body.is_some() {
                responses
                    .entry("413".to_owned())
                    .or_insert_with(|| too_large.clone().into());
            }
            for (status, response) in responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                let is_error = status.starts_with('4') || status.starts_with('5');
                if is_error && response.content.is_empty() {
                    response
                        .content
                        .insert("application/json".to_owned(), envelope.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_answer_their_rows_of_the_table() {
        let cases = [
            StoreError::NotFound {
                what: Kind::Agent,
                id: "agent_x".into(),
            },
            StoreError::NameTaken {
                what: Kind::Instance,
                name: "bot".into(),
            },
            StoreError::QuotaExceeded { current: 5, max: 5 },
            StoreError::Corrupt {
                what: "seq",
                detail: "not a number".into(),
            },
        ];
        for err in cases {
            let class = err.class();
            let api = ApiError::from(err);
            assert_eq!(api.class(), class);
        }
    }

    #[test]
    fn an_unreachable_replica_answers_a_fixed_message() {
        let api = ApiError::from(InvokeError::Unreachable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)".into(),
        ));
        assert_eq!(api.code(), "AGENT_UNREACHABLE");
        let body = api.body().to_string();
        assert!(!body.contains("os error"), "{body}");
        assert!(!body.contains("tcp connect"), "{body}");
    }
}
