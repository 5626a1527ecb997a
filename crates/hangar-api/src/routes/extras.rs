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
        .routes(routes!(put_upload_content))
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
    /// Stream the log as SSE until the build ends (each event's `id` is the
    /// line's `seq`; a last `done` event carries the build's status).
    #[serde(default)]
    follow: bool,
    /// A stream token (`POST /v1/tokens`) instead of `Authorization`.
    #[allow(dead_code)] // read by the `Reader` extractor; named here for the OpenAPI document
    access_token: Option<String>,
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
    reader: super::tokens::Reader,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    Query(q): Query<BuildLogQuery>,
) -> ApiResult<axum::response::Response> {
    reader.check(Kind::Build, &id)?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 10000"));
    }
    if q.after.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid("after", "must not be negative"));
    }
    let b = state
        .store
        .get_build(reader.caller.org(), &id)
        .await?
        .found(Kind::Build, &id)?;
    if q.follow {
        let resume = super::logs::resume_after(&headers, None)?;
        let after = resume.max(q.after).unwrap_or(0);
        return Ok(follow_build(state, b, after));
    }
    let lines = state
        .store
        .build_log(&b.id, q.after.unwrap_or(0), limit)
        .await?;
    let logs = lines.into_iter().map(build_log_line).collect();
    Ok(ok(BuildLog {
        build_id: b.id,
        logs,
    })
    .into_response())
}

fn build_log_line(l: hangar_core::model::BuildLogLine) -> BuildLogLineObject {
    BuildLogLineObject {
        seq: l.seq,
        timestamp: l
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stream: l.stream,
        message: l.line,
    }
}

/// How often a followed build's log is read again. Builds write their log
/// to the store from whichever server builds them, so a follower polls it.
const BUILD_LOG_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// SSE of a build's log lines after `after`, as they are written, until the
/// build is `ready` or `failed`; then a `done` event with its status and
/// reason. Each line's event `id` is its `seq`, so `Last-Event-ID` resumes.
fn follow_build(
    state: AppState,
    build: hangar_core::model::Build,
    mut after: i64,
) -> axum::response::Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use hangar_core::status::BuildStatus;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let mut status = build.status;
        let mut reason = build.reason;
        loop {
            // The status is read before the lines: once it says the build
            // ended, the lines read after it are all there are.
            let ended = matches!(status, BuildStatus::Ready | BuildStatus::Failed);
            let lines = match state.store.build_log(&build.id, after, 1000).await {
                Ok(lines) => lines,
                Err(err) => {
                    tracing::warn!(build = %build.id, error = %err, "cannot read the build log");
                    return;
                }
            };
            let full_page = lines.len() == 1000;
            for line in lines {
                after = line.seq;
                let event = Event::default()
                    .id(line.seq.to_string())
                    .data(serde_json::to_string(&build_log_line(line)).unwrap_or_default());
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if full_page {
                continue;
            }
            if ended {
                let done = serde_json::json!({"status": status.as_str(), "reason": reason});
                let _ = tx
                    .send(Ok(Event::default().event("done").data(done.to_string())))
                    .await;
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(BUILD_LOG_POLL) => {}
                () = tx.closed() => return,
            }
            match state
                .store
                .get_build(&build.organization_id, &build.id)
                .await
            {
                Ok(Some(b)) => (status, reason) = (b.status, b.reason),
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(build = %build.id, error = %err, "cannot read the build");
                    return;
                }
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
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

/// Whether `signature` is the upload URL signature of `id` and `expires`
/// (compared in constant time).
fn signature_valid(key: &[u8], id: &str, expires: i64, signature: &str) -> bool {
    let Ok(given) = hex::decode(signature) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    mac.update(format!("{id}:{expires}").as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// Query of an upload URL: what the signature covers.
#[derive(Debug, Deserialize, IntoParams)]
struct UploadUrlQuery {
    /// When the URL stops working (Unix seconds).
    expires: i64,
    /// HMAC-SHA256 of the upload id and `expires`, hex.
    signature: String,
}

/// What a completed upload answers.
#[derive(Debug, Serialize, ToSchema)]
struct UploadReceived {
    /// `upl_…`
    id: String,
    /// Bytes received.
    size_bytes: u64,
    /// When it arrived.
    completed_at: String,
}

/// Removes a half-written upload file unless it was kept.
struct PartialFile(Option<std::path::PathBuf>);

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Take an upload's archive: the signed `upload_url` from `POST /v1/uploads`
/// (no API key: the signature is the authority). The body is the archive
/// (`.tar.gz`, `.tar` or `.zip`), streamed to disk; an upload takes one.
#[utoipa::path(put, path = "/v1/uploads/{id}/content", tag = "uploads",
    params(("id" = String, Path, description = "Upload ID"), UploadUrlQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Envelope<UploadReceived>), (status = 400, description = "not an archive"),
        (status = 403, description = "bad or expired signature"), (status = 404, description = "UPLOAD_NOT_FOUND"),
        (status = 409, description = "UPLOAD_ALREADY_COMPLETE"), (status = 413, description = "PAYLOAD_TOO_LARGE")))]
async fn put_upload_content(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<UploadUrlQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<Envelope<UploadReceived>>> {
    use futures_util::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;

    let well_formed = id.starts_with("upl_")
        && id.len() < 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed || !signature_valid(&state.config.signing_key, &id, q.expires, &q.signature) {
        return Err(ApiError::Forbidden(
            "the upload URL's signature is not valid",
        ));
    }
    if chrono::Utc::now().timestamp() > q.expires {
        return Err(ApiError::Forbidden(
            "the upload URL has expired: ask POST /v1/uploads for a new one",
        ));
    }
    let Some(dir) = state.config.uploads_dir.clone() else {
        return Err(ApiError::RuntimeUnavailable(
            "this server does not take uploads",
        ));
    };
    let upload = state
        .store
        .find_upload(&id)
        .await?
        .found(Kind::Upload, &id)?;
    if upload.completed_at.is_some() {
        return Err(ApiError::Conflict {
            code: "UPLOAD_ALREADY_COMPLETE",
            message: format!("upload {id} already has its archive: open another upload"),
        });
    }
    let limit = state.config.max_upload_bytes;
    let too_large = || ApiError::PayloadTooLarge {
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let part = dir.join(format!(
        "{id}.part-{}",
        hangar_core::id::new_id(hangar_core::id::IdKind::Request)
    ));
    let mut guard = PartialFile(Some(part.clone()));
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::Invalid {
            field: None,
            message: "the upload's body ended early".to_owned(),
        })?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    file.sync_all()
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    drop(file);
    let sniff = part.clone();
    let archive = tokio::task::spawn_blocking(move || {
        std::fs::File::open(sniff).is_ok_and(hangar_build::archive::looks_like_archive)
    })
    .await
    .unwrap_or(false);
    if !archive {
        return Err(ApiError::invalid(
            "body",
            "must be a .tar.gz, .tar or .zip archive",
        ));
    }
    if !state.store.complete_upload(&id, size).await? {
        return Err(ApiError::Conflict {
            code: "UPLOAD_ALREADY_COMPLETE",
            message: format!("upload {id} already has its archive: open another upload"),
        });
    }
    tokio::fs::rename(&part, dir.join(&id))
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    guard.0 = None;
    let completed = state
        .store
        .find_upload(&id)
        .await?
        .found(Kind::Upload, &id)?;
    Ok(ok(UploadReceived {
        id,
        size_bytes: size,
        completed_at: completed.completed_at.map(ts).unwrap_or_default(),
    }))
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
    /// Event types to deliver (default: all): `agent.deployed`, `agent.failed`, `agent.scaled`, `agent.health_changed`, `instance.started`, `instance.stopped`, `instance.crashed`, `build.succeeded`, `build.failed`, `job.completed`, `job.failed`.
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
    /// Event types (empty: all): `agent.deployed`, `agent.failed`, `agent.scaled`, `agent.health_changed`, `instance.started`, `instance.stopped`, `instance.crashed`, `build.succeeded`, `build.failed`, `job.completed`, `job.failed`.
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
