//! Extractors whose rejections speak the API's error envelope.
//!
//! - [`Body`] reads JSON whatever the `Content-Type` (the seeds' async-invoke curl
//!   example sends none), rejects unknown fields and names the offending field's
//!   path (`resources.cpu`) using `serde_path_to_error`.
//! - [`Query`] does the same for query strings.
//! - [`Caller`] authenticates `Authorization: Bearer <key>`.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use hangar_core::model::Role;
use hangar_store::Principal;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct Body<T>(pub T);

/// A JSON request body that may be absent (empty body or `null` → `None`).
#[derive(Debug)]
pub struct OptionalBody<T>(pub Option<T>);

async fn read_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.config.max_body_bytes,
            }
        } else {
            ApiError::Invalid {
                field: None,
                message: format!("could not read the request body: {rejection}"),
            }
        }
    })
}

/// Parses JSON, naming the path of the first offending field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // The plain parser first: tracking the path costs an allocation per key,
    // and only a body that fails needs it (then it is parsed again).
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    // JSON Schema's `integer` is any number without a fraction, so `3.0`
    // is a valid count: read such numbers as integers and try again. Only
    // a body that failed is rewritten, so an agent's `input` that parsed
    // keeps its numbers as they were sent.
    if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if integral_floats_as_integers(&mut value) {
            if let Ok(parsed) = serde_json::from_value(value) {
                return Ok(parsed);
            }
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("request body is not valid JSON: {inner}")
        } else {
            inner.to_string()
        };
        let field = (path != "." && !path.is_empty()).then_some(path);
        let message = match &field {
            Some(f) => format!("{f}: {message}"),
            None => message,
        };
        ApiError::Invalid { field, message }
    })
}

/// Rewrites every float without a fraction (`3.0`) that fits an integer
/// as that integer; whether any was.
fn integral_floats_as_integers(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let Some(f) = n.as_f64() else { return false };
            // Within ±2^53 every integral f64 is exact.
            const EXACT: f64 = 9_007_199_254_740_992.0;
            if f.fract() != 0.0 || f.abs() > EXACT {
                return false;
            }
            #[allow(clippy::cast_possible_truncation, reason = "integral and within ±2^53")]
            let i = f as i64;
            *value = Value::from(i);
            true
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, v| integral_floats_as_integers(v) | any),
        Value::Object(fields) => fields
            .values_mut()
            .fold(false, |any, v| integral_floats_as_integers(v) | any),
        _ => false,
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::Invalid {
                field: None,
                message: "a JSON request body is required".into(),
            });
        }
        parse_json(&bytes).map(Body)
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = read_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(None));
        }
        // JSON `null` is no body too: that is how a generated client sends
        // an optional body it was given none for.
        parse_json::<Option<T>>(&bytes).map(OptionalBody)
    }
}

/// Path parameters of type `T`; a segment that cannot be read (invalid UTF-8, a
/// wrong type) answers in the envelope rather than as plain text.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| ApiError::Invalid {
                field: None,
                message: format!("path: {}", e.body_text()),
            })
    }
}

/// Query parameters of type `T`.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        if let Some((key, _)) =
            form_urlencoded::parse(query.as_bytes()).find(|(_, v)| v.chars().any(char::is_control))
        {
            return Err(ApiError::invalid(
                key.clone(),
                format!("query parameter {key} contains control characters"),
            ));
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                let field = e.path().to_string();
                let message = format!("query parameter {field}: {}", e.into_inner());
                ApiError::Invalid {
                    field: Some(field),
                    message,
                }
            })
    }
}

/// The characters [`Query`] refuses in any value, as a JSON Schema pattern.
const NO_CONTROL_CHARACTERS: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// Shows on every string query parameter that [`Query`] refuses control
/// characters, unless the parameter's own pattern is stricter already.
pub(crate) fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    use utoipa::openapi::RefOr;
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
            for parameter in operation.parameters.iter_mut().flatten() {
                if !matches!(parameter.parameter_in, ParameterIn::Query) {
                    continue;
                }
                let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema else {
                    continue;
                };
                let is_string = match &schema.schema_type {
                    SchemaType::Type(t) => *t == Type::String,
                    SchemaType::Array(types) => types.contains(&Type::String),
                    SchemaType::AnyValue => false,
                };
                if is_string && schema.pattern.is_none() {
                    schema.pattern = Some(NO_CONTROL_CHARACTERS.to_owned());
                }
            }
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// The caller's organization.
    #[must_use]
    pub fn org(&self) -> &str {
        &self.0.organization_id
    }

    /// Fails with 403 unless the caller is an admin of their organization.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this needs the admin role"))
        }
    }

    /// Fails with 403 unless the caller is an admin of the operator organization.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.0.role == Role::Admin && self.0.is_operator {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this needs an admin of the operator organization",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let header =
            parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .ok_or(ApiError::Unauthorized(
                    "missing Authorization: Bearer <api key>",
                ))?;
        let value = header
            .to_str()
            .map_err(|_| ApiError::Unauthorized("malformed Authorization header"))?;
        let key = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized(
                "Authorization must be 'Bearer <api key>'",
            ))?;
        let principal = state
            .store
            .authenticate(key)
            .await?
            .ok_or(ApiError::Unauthorized("invalid or revoked API key"))?;
        let caller = Caller(principal);
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// Middleware: a path naming an object with control characters in its ID
/// answers 404, before any handler or query sees it.
pub async fn reject_control_paths(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if has_control_chars(request.uri().path()) {
        return ApiError::NoRoute {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
        }
        .into_response();
    }
    next.run(request).await
}

/// Whether the percent-decoded path holds a NUL or another control character: no
/// object has such an ID or name (and PostgreSQL refuses NUL in text).
fn has_control_chars(path: &str) -> bool {
    path.contains('%')
        && percent_encoding::percent_decode_str(path)
            .decode_utf8_lossy()
            .chars()
            .any(char::is_control)
}
