//! Hangar's `/v1` additions in the Agents API's style: builds, uploads,
//! secrets and webhook endpoints (jobs have `routes::jobs`). Here the records
//! and their routes; building, receiving archives and delivering events belong
//! to the builds and observability parts.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use hangar_core::model::EVENT_TYPES;
use hangar_core::validate;
use hangar_store::NewWebhook;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{page_size, PageQuery};
use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Body, Caller, OptionalBody, Path, Query};
use crate::render::{
    self, ok, ok_list, ts, BuildObject, Envelope, ListEnvelope, Pagination, SecretObject,
    WebhookObject,
};
use crate::{decode_cursor, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_builds))
        .routes(routes!(get_build))
        .routes(routes!(build_logs))
        .routes(routes!(create_upload))
        .routes(routes!(list_secrets, put_secret))
        .routes(routes!(delete_secret))
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
}

/// An agent's builds, newest first.
#[utoipa::path(get, path = "/v1/agents/{id}/builds", tag = "builds", params(("id" = String, Path, description = "Agent ID"), PageQuery),
    responses((status = 200, body = ListEnvelope<BuildObject>), (status = 404, description = "AGENT_NOT_FOUND")))]
async fn list_builds(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<ListEnvelope<BuildObject>>> {
    let limit = page_size(q.limit)?;
    let after = decode_cursor(q.cursor.as_deref(), "build_")?;
    super::agents::find(&state, &caller, &id).await?;
    let page = state
        .store
        .list_builds(caller.org(), &id, after.as_deref(), limit)
        .await?;
    Ok(ok_list(
        page.items.iter().map(render::build).collect(),
        Pagination::of(&page, limit),
    ))
}

/// A build.
#[utoipa::path(get, path = "/v1/builds/{id}", tag = "builds", params(("id" = String, Path, description = "Build ID")),
    responses((status = 200, body = Envelope<BuildObject>), (status = 404, description = "BUILD_NOT_FOUND")))]
async fn get_build(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<BuildObject>>> {
    let b = state
        .store
        .get_build(caller.org(), &id)
        .await?
        .found(Kind::Build, &id)?;
    Ok(ok(render::build(&b)))
}

/// Query of `GET /v1/builds/{id}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
struct BuildLogQuery {
    /// Only lines after this sequence number.
    after: Option<i64>,
    /// At most this many lines (1–10000, default 1000).
    limit: Option<u32>,
}

/// One build log line.
#[derive(Debug, Serialize, ToSchema)]
struct BuildLogLineObject {
    /// Position in the log, from 1.
    seq: i64,
    /// When written.
    timestamp: String,
    /// `stdout` or `stderr`.
    stream: String,
    /// The line.
    message: String,
}

/// A build's log.
#[derive(Debug, Serialize, ToSchema)]
struct BuildLog {
    /// The build.
    build_id: String,
    /// Lines in order.
    logs: Vec<BuildLogLineObject>,
}

/// A build's log lines.
#[utoipa::path(get, path = "/v1/builds/{id}/logs", tag = "builds", params(("id" = String, Path, description = "Build ID"), BuildLogQuery),
    responses((status = 200, body = Envelope<BuildLog>), (status = 404, description = "BUILD_NOT_FOUND")))]
async fn build_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<BuildLogQuery>,
) -> ApiResult<Json<Envelope<BuildLog>>> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 10000"));
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after", "must not be negative"));
    }
    let b = state
        .store
        .get_build(caller.org(), &id)
        .await?
        .found(Kind::Build, &id)?;
    let lines = state
        .store
        .build_log(&b.id, q.after.unwrap_or(0), limit)
        .await?;
    let logs = lines
        .into_iter()
        .map(|l| BuildLogLineObject {
            seq: l.seq,
            timestamp: l
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            stream: l.stream,
            message: l.line,
        })
        .collect();
    Ok(ok(BuildLog {
        build_id: b.id,
        logs,
    }))
}

/// Body of `POST /v1/uploads` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUpload {
    /// File name, informational.
    filename: Option<String>,
}

/// An upload slot.
#[derive(Debug, Serialize, ToSchema)]
struct UploadObject {
    /// `upl_…`
    id: String,
    /// Signed URL on this server that takes a `PUT` of the archive.
    upload_url: String,
    /// When the URL stops working.
    expires_at: String,
}

type HmacSha256 = Hmac<Sha256>;

/// Signature of an upload URL: HMAC-SHA256 over the upload id and expiry.
#[must_use]
pub fn upload_signature(key: &[u8], id: &str, expires: i64) -> String {
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| {
        HmacSha256::new_from_slice(b"hangar").expect("HMAC takes any key length")
    });
    mac.update(format!("{id}:{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Open an upload slot: `upload_url` takes the archive (`.tar.gz`, `.tar`, `.zip`)
/// and goes in `source.archive_url`.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads", request_body = Option<CreateUpload>,
    responses((status = 201, body = Envelope<UploadObject>)))]
async fn create_upload(
    State(state): State<AppState>,
    caller: Caller,
    OptionalBody(body): OptionalBody<CreateUpload>,
) -> ApiResult<impl IntoResponse> {
    if let Some(name) = body.and_then(|b| b.filename) {
        validate::text("filename", &name, 255)?;
    }
    let ttl = chrono::Duration::from_std(state.config.upload_ttl)
        .unwrap_or_else(|_| chrono::Duration::hours(1));
    let expires_at = chrono::Utc::now() + ttl;
    let upload = state.store.create_upload(caller.org(), expires_at).await?;
    let expires = upload.expires_at.timestamp();
    let signature = upload_signature(&state.config.signing_key, &upload.id, expires);
    let upload_url = format!(
        "{}/v1/uploads/{}/content?expires={expires}&signature={signature}",
        state.config.public_url, upload.id
    );
    Ok((
        StatusCode::CREATED,
        ok(UploadObject {
            id: upload.id,
            upload_url,
            expires_at: ts(upload.expires_at),
        }),
    ))
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
    name: String,
    /// The value (at most 64 KiB); stored encrypted.
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

/// What deleting answers.
#[derive(Debug, Serialize, ToSchema)]
struct Deleted {
    /// What was deleted.
    id: String,
    /// Always true.
    deleted: bool,
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

fn check_events(events: &[String]) -> ApiResult<()> {
    if events.len() > EVENT_TYPES.len() {
        return Err(ApiError::invalid("events", "lists an event more than once"));
    }
    for (i, e) in events.iter().enumerate() {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::invalid(
                format!("events[{i}]"),
                format!(
                    "unknown event type '{e}'; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The organization's webhook endpoints.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", responses((status = 200, body = Envelope<Vec<WebhookObject>>)))]
async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Envelope<Vec<WebhookObject>>>> {
    let hooks = state.store.list_webhooks(caller.org()).await?;
    Ok(ok(hooks.iter().map(|w| render::webhook(w, None)).collect()))
}

/// Body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    /// Receiver URL (http or https).
    url: String,
    /// Event types to deliver (default: all).
    #[serde(default)]
    events: Vec<String>,
    /// Free text.
    description: Option<String>,
    /// Signing secret (`whsec_` + base64 of 24–64 bytes); generated when absent.
    secret: Option<String>,
}

fn check_webhook_secret(secret: &str) -> ApiResult<()> {
    use base64::Engine;
    let ok = secret
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|bytes| (24..=64).contains(&bytes.len()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "secret",
            "must be 'whsec_' followed by base64 of 24 to 64 bytes",
        ))
    }
}

/// Register a webhook endpoint; its signing secret is in this response only.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = Envelope<WebhookObject>), (status = 400, description = "INVALID_REQUEST")))]
async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateWebhook>,
) -> ApiResult<impl IntoResponse> {
    validate::http_url("url", &body.url)?;
    check_events(&body.events)?;
    if let Some(d) = &body.description {
        validate::text("description", d, 512)?;
    }
    if let Some(s) = &body.secret {
        check_webhook_secret(s)?;
    }
    let (hook, secret) = state
        .store
        .create_webhook(NewWebhook {
            organization_id: caller.org().to_owned(),
            url: body.url,
            events: body.events,
            description: body.description,
            secret: body.secret,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        ok(render::webhook(&hook, Some(secret))),
    ))
}

/// A webhook endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Webhook ID")),
    responses((status = 200, body = Envelope<WebhookObject>), (status = 404, description = "WEBHOOK_NOT_FOUND")))]
async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<WebhookObject>>> {
    let w = state
        .store
        .get_webhook(caller.org(), &id)
        .await?
        .found(Kind::Webhook, &id)?;
    Ok(ok(render::webhook(&w, None)))
}

/// Body of `PATCH /v1/webhooks/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateWebhook {
    /// Receiver URL.
    url: Option<String>,
    /// Event types (empty: all).
    events: Option<Vec<String>>,
    /// Free text.
    description: Option<String>,
    /// Pause (false) or resume (true) deliveries.
    enabled: Option<bool>,
}

/// Change a webhook endpoint.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", request_body = UpdateWebhook, params(("id" = String, Path, description = "Webhook ID")),
    responses((status = 200, body = Envelope<WebhookObject>), (status = 404, description = "WEBHOOK_NOT_FOUND")))]
async fn update_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<UpdateWebhook>,
) -> ApiResult<Json<Envelope<WebhookObject>>> {
    let mut w = state
        .store
        .get_webhook(caller.org(), &id)
        .await?
        .found(Kind::Webhook, &id)?;
    if let Some(url) = body.url {
        validate::http_url("url", &url)?;
        w.url = url;
    }
    if let Some(events) = body.events {
        check_events(&events)?;
        w.events = events;
    }
    if let Some(d) = body.description {
        validate::text("description", &d, 512)?;
        w.description = Some(d);
    }
    if let Some(e) = body.enabled {
        w.enabled = e;
    }
    state.store.update_webhook(&w).await?;
    let w = state
        .store
        .get_webhook(caller.org(), &id)
        .await?
        .found(Kind::Webhook, &id)?;
    Ok(ok(render::webhook(&w, None)))
}

/// Remove a webhook endpoint.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path, description = "Webhook ID")),
    responses((status = 200, body = Envelope<Deleted>), (status = 404, description = "WEBHOOK_NOT_FOUND")))]
async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<Deleted>>> {
    if state.store.delete_webhook(caller.org(), &id).await? {
        Ok(ok(Deleted { id, deleted: true }))
    } else {
        Err(ApiError::not_found(Kind::Webhook, id))
    }
}
