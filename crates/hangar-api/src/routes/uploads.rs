//! Uploads under `/v1`: a slot for an agent's archive (`POST /v1/uploads`)
//! and the signed URL its bytes are `PUT` to, checked and stored whole or
//! not at all. What an archive holds is checked when it is built.
//!
//! The body is received into a file of this server's; once whole and
//! sniffed it is kept in the blob store ([`hangar_store::blobs`]): the data
//! dir of a server alone, or the database every server's builder reads, so
//! an archive PUT to one server is built by whichever claims the build.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use hangar_core::validate;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Caller, OptionalBody, Path, Query};
use crate::render::{ok, ts, Envelope};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_upload))
        .routes(routes!(put_upload_content))
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
#[into_params(parameter_in = Query)]
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

/// Keeps the whole archive at `part` as upload `id`'s: in the blob store,
/// where every server's builder finds it, or as `<id>` beside it. (The
/// part file left behind by a blob store that copies is removed by its
/// guard.)
async fn keep_archive(
    state: &AppState,
    dir: &std::path::Path,
    id: &str,
    part: &std::path::Path,
) -> ApiResult<()> {
    let Some(blobs) = &state.config.blobs else {
        return tokio::fs::rename(part, dir.join(id))
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)));
    };
    let key = hangar_store::blobs::BlobKey::upload(id)
        .ok_or_else(|| ApiError::invalid("id", "is not an upload ID"))?;
    blobs
        .put_file(&key, part)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::Internal(Box::new(e)))
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
            "this server does not take uploads".into(),
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
    let _guard = PartialFile(Some(part.clone()));
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
    keep_archive(&state, &dir, &id, &part).await?;
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
