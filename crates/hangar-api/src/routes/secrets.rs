//! An organization's secrets under `/v1`: names listed, values set and
//! deleted, never read back (they reach replicas' environments only, as
//! `${secrets.NAME}` is resolved when a replica starts).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use hangar_core::validate;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Deleted;
use crate::error::{ApiError, ApiResult, Kind};
use crate::extract::{Body, Caller, Path};
use crate::render::{self, ok, Envelope, SecretObject};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_secrets, put_secret))
        .routes(routes!(delete_secret))
}

/// The organization's secrets (names only; values never leave the server).
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets", responses((status = 200, body = Envelope<Vec<SecretObject>>)))]
async fn list_secrets(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Envelope<Vec<SecretObject>>>> {
    let secrets = state.store.list_secrets(caller.org()).await?;
    Ok(ok(secrets.iter().map(render::secret).collect()))
}

/// Body of `POST /v1/secrets`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    /// `[A-Za-z_][A-Za-z0-9_]*`, referenced as `${secrets.NAME}`.
    #[schema(
        pattern = r"^([A-Za-rt-z_][A-Za-z0-9_]*|s([A-Za-df-z0-9_][A-Za-z0-9_]*)?|se([A-Zabd-z0-9_][A-Za-z0-9_]*)?|sec([A-Za-z0-9][A-Za-z0-9_]*)?)$",
        max_length = 63
    )]
    name: String,
    /// The value (at most 64 KiB); stored encrypted.
    #[schema(max_length = 65536)]
    value: String,
}

/// Create a secret, or replace its value (201 when created, 200 when replaced).
#[utoipa::path(post, path = "/v1/secrets", tag = "secrets", request_body = PutSecret,
    responses((status = 201, body = Envelope<SecretObject>), (status = 200, body = Envelope<SecretObject>)))]
async fn put_secret(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<PutSecret>,
) -> ApiResult<impl IntoResponse> {
    validate::secret_name("name", &body.name)?;
    // Secrets are deleted by name or ID: a name must not look like an ID.
    if body.name.starts_with("sec_") {
        return Err(ApiError::invalid(
            "name",
            "must not start with 'sec_' (secret IDs do)",
        ));
    }
    if body.value.len() > 64 * 1024 {
        return Err(ApiError::invalid("value", "must be at most 64 KiB"));
    }
    let (meta, created) = state
        .store
        .put_secret(caller.org(), &body.name, &body.value)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, ok(render::secret(&meta))))
}

/// Delete a secret by name or ID.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path, description = "Secret name or ID")),
    responses((status = 200, body = Envelope<Deleted>), (status = 404, description = "SECRET_NOT_FOUND")))]
async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Envelope<Deleted>>> {
    if state.store.delete_secret(caller.org(), &name).await? {
        Ok(ok(Deleted {
            id: name,
            deleted: true,
        }))
    } else {
        Err(ApiError::not_found(Kind::Secret, name))
    }
}
