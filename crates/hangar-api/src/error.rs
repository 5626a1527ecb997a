//! The one place errors become HTTP.
//!
//! Every handler returns [`ApiError`]; [`IntoResponse`] renders the seeds' envelope
//! `{"error": {"code", "message", …extra}}` (with `"success": false` beside it, so
//! Agents API clients that branch on `success` work too). Internal causes are
//! logged with the request id and answered with a generic 500 that carries the id,
//! never the cause.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hangar_core::Invalid;
use hangar_store::StoreError;
use serde_json::{json, Map, Value};

use crate::context;

/// Kinds of object a `…_NOT_FOUND` or `…_NAME_TAKEN` code names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An organization.
    Organization,
    /// A user.
    User,
    /// An API key.
    ApiKey,
    /// A cloud.
    Cloud,
    /// An agent.
    Agent,
    /// A build.
    Build,
    /// An instance.
    Instance,
    /// A job.
    Job,
    /// An upload.
    Upload,
    /// A secret.
    Secret,
    /// A webhook endpoint.
    Webhook,
    /// A webhook delivery.
    Delivery,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Organization => "ORGANIZATION",
            Kind::User => "USER",
            Kind::ApiKey => "API_KEY",
            Kind::Cloud => "CLOUD",
            Kind::Agent => "AGENT",
            Kind::Build => "BUILD",
            Kind::Instance => "INSTANCE",
            Kind::Job => "JOB",
            Kind::Upload => "UPLOAD",
            Kind::Secret => "SECRET",
            Kind::Webhook => "WEBHOOK",
            Kind::Delivery => "DELIVERY",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Organization => "Organization",
            Kind::User => "User",
            Kind::ApiKey => "API key",
            Kind::Cloud => "Cloud",
            Kind::Agent => "Agent",
            Kind::Build => "Build",
            Kind::Instance => "Instance",
            Kind::Job => "Job",
            Kind::Upload => "Upload",
            Kind::Secret => "Secret",
            Kind::Webhook => "Webhook",
            Kind::Delivery => "Delivery",
        }
    }

    fn from_store(what: &str) -> Self {
        match what {
            "agent" => Kind::Agent,
            "instance" => Kind::Instance,
            "cloud" => Kind::Cloud,
            "user" => Kind::User,
            "secret" => Kind::Secret,
            "api key" => Kind::ApiKey,
            "build" => Kind::Build,
            "job" => Kind::Job,
            "upload" => Kind::Upload,
            "webhook" => Kind::Webhook,
            _ => Kind::Organization,
        }
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
    #[error("{} with ID '{id}' not found", kind.noun())]
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
    #[error("{} name '{name}' is already taken", kind.noun())]
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
    /// 501 `DRIVER_UNAVAILABLE` (+ `driver`): the cloud asks for a driver
    /// this Hangar does not have yet.
    #[error("{message}")]
    DriverUnavailable {
        /// The missing driver (`kubernetes`).
        driver: String,
        /// For a person.
        message: String,
    },
    /// 502 or 504: the agent failed an invocation (`AGENT_ERROR`,
    /// `AGENT_BAD_RESPONSE`, `AGENT_UNREACHABLE`, `INVOKE_TIMEOUT`), with
    /// `details` when there are any.
    #[error("{message}")]
    Agent {
        /// 502, or 504 for a timeout.
        status: StatusCode,
        /// Machine-readable code.
        code: &'static str,
        /// For a person.
        message: String,
        /// The agent's status and the start of its answer, for `AGENT_ERROR`.
        details: Option<Value>,
    },
    /// 503 `RUNTIME_UNAVAILABLE`: the operation needs a runtime this server lacks.
    #[error("{0}")]
    RuntimeUnavailable(&'static str),
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

    /// 404 for `kind` `id`.
    pub fn not_found(kind: Kind, id: impl Into<String>) -> Self {
        ApiError::NotFound {
            kind,
            id: id.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NameTaken { .. }
            | ApiError::NotRunning { .. }
            | ApiError::BuildNotReady { .. }
            | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InstanceQuota { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::DriverUnavailable { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::Agent { status, .. } => *status,
            ApiError::RuntimeUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    #[must_use]
    pub fn code(&self) -> String {
        match self {
            ApiError::Invalid { .. } => "INVALID_REQUEST".into(),
            ApiError::Unauthorized(_) => "UNAUTHORIZED".into(),
            ApiError::Forbidden(_) => "FORBIDDEN".into(),
            ApiError::NotFound { kind, .. } => format!("{}_NOT_FOUND", kind.code()),
            ApiError::NoRoute { .. } => "NOT_FOUND".into(),
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED".into(),
            ApiError::NameTaken { kind, .. } => format!("{}_NAME_TAKEN", kind.code()),
            ApiError::NotRunning { kind, .. } => format!("{}_NOT_RUNNING", kind.code()),
            ApiError::BuildNotReady { .. } => "BUILD_NOT_READY".into(),
            ApiError::Conflict { code, .. } => (*code).into(),
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE".into(),
            ApiError::InstanceQuota { .. } => "RESOURCE_LIMIT_EXCEEDED".into(),
            ApiError::RateLimited { .. } => "RATE_LIMITED".into(),
            ApiError::DriverUnavailable { .. } => "DRIVER_UNAVAILABLE".into(),
            ApiError::Agent { code, .. } => (*code).into(),
            ApiError::RuntimeUnavailable(_) => "RUNTIME_UNAVAILABLE".into(),
            ApiError::Internal(_) => "INTERNAL_ERROR".into(),
        }
    }

    /// The `error` object of the envelope.
    #[must_use]
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), Value::String(self.code()));
        let message = match self {
            ApiError::Internal(_) => {
                "An internal error occurred; quote the request_id when reporting it".to_owned()
            }
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
            ApiError::Agent {
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
            StoreError::NameTaken { what, name } => ApiError::NameTaken {
                kind: Kind::from_store(what),
                name,
            },
            StoreError::QuotaExceeded { current, max } => ApiError::InstanceQuota { current, max },
            StoreError::NotFound { what, id } => ApiError::NotFound {
                kind: Kind::from_store(what),
                id,
            },
            other => ApiError::Internal(Box::new(other)),
        }
    }
}
