//! Stream tokens: `POST /v1/tokens`.
//!
//! A browser's `EventSource` cannot send an `Authorization` header, and an API
//! key in a page's URL would be a key in every proxy's log. So the streaming
//! read endpoints (the log follows of both APIs and build logs) also take
//! `?access_token=<stream token>`: a short-lived (at most an hour), read-only
//! token for one object — an agent, an instance or a build — minted with an
//! API key. It is stateless (HMAC-SHA256 with the server's signing key over
//! the minting key's ID, the organization, the object and the expiry), and it
//! dies with the key that minted it: every use checks that key is still live,
//! so revoking the key revokes its tokens at once, and a stream opened with
//! one ends when the token expires or within 30 s of the key's revocation.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Body, Caller};
use crate::render::{ok, Envelope};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_token))
}

/// Stream tokens start with this, so a leaked one is recognizable.
const PREFIX: &str = "hgt_";
/// Separates the signed message from others signed with the same key.
const DOMAIN: &[u8] = b"hangar stream token v1\n";
/// Default and bounds of `ttl_seconds`.
const DEFAULT_TTL: i64 = 300;
const MAX_TTL: i64 = 3600;
const MIN_TTL: i64 = 10;

/// Body of `POST /v1/tokens`: exactly one object the token reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    /// The agent whose logs the token follows.
    agent_id: Option<String>,
    /// The instance whose logs the token follows.
    instance_id: Option<String>,
    /// The build whose log the token reads.
    build_id: Option<String>,
    /// Lifetime, 10–3600 seconds (default 300).
    ttl_seconds: Option<i64>,
}

/// The document shows "exactly one of" as one shape per object: its id
/// given, the other two absent or `null`.
impl utoipa::PartialSchema for CreateToken {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        const OBJECTS: [(&str, &str); 3] = [
            ("agent_id", "The agent whose logs the token follows."),
            ("instance_id", "The instance whose logs the token follows."),
            ("build_id", "The build whose log the token reads."),
        ];
        let mut shapes = OneOfBuilder::new().description(Some(
            "Body of `POST /v1/tokens`: exactly one object the token reads.",
        ));
        for (named, description) in OBJECTS {
            let mut shape = ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ))
                .required(named)
                .property(
                    named,
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some(description)),
                );
            for (other, _) in OBJECTS.iter().filter(|(o, _)| *o != named) {
                shape = shape.property(*other, ObjectBuilder::new().schema_type(Type::Null));
            }
            shape = shape.property(
                "ttl_seconds",
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
                    .minimum(Some(MIN_TTL))
                    .maximum(Some(MAX_TTL))
                    .description(Some("Lifetime, 10–3600 seconds (default 300).")),
            );
            shapes = shapes.item(shape);
        }
        shapes.into()
    }
}

impl ToSchema for CreateToken {}

/// A stream token as created.
#[derive(Debug, Serialize, ToSchema)]
struct TokenObject {
    /// Pass as `?access_token=` to the object's streaming read endpoints.
    token: String,
    /// When it stops working (RFC 3339).
    expires_at: String,
    /// The object it reads (`agent_…`, `inst_…` or `build_…`).
    object_id: String,
    /// What it allows: always `["read"]`.
    permissions: Vec<&'static str>,
}

/// What a token carries (signed, not secret).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The API key that minted it.
    k: String,
    /// Its organization.
    o: String,
    /// The one object it reads.
    r: String,
    /// Expiry, Unix seconds.
    e: i64,
}

fn mac(key: &[u8], payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(b"hangar").expect("any length"));
    mac.update(DOMAIN);
    mac.update(payload);
    mac
}

fn mint(key: &[u8], claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let signature = mac(key, &payload).finalize().into_bytes();
    format!(
        "{PREFIX}{}.{}",
        B64URL.encode(&payload),
        B64URL.encode(signature)
    )
}

/// The claims of a token this server signed that has not expired.
fn verify(key: &[u8], token: &str, now: i64) -> Option<Claims> {
    let (payload, signature) = token.strip_prefix(PREFIX)?.split_once('.')?;
    let payload = B64URL.decode(payload).ok()?;
    let signature = B64URL.decode(signature).ok()?;
    mac(key, &payload).verify_slice(&signature).ok()?;
    let claims: Claims = serde_json::from_slice(&payload).ok()?;
    (claims.e > now).then_some(claims)
}

/// Create a stream token: read-only access to one object's streams, for
/// clients that cannot send `Authorization` (a browser's `EventSource`).
#[utoipa::path(post, path = "/v1/tokens", tag = "tenancy", request_body = CreateToken,
    responses((status = 201, body = Envelope<TokenObject>), (status = 400, description = "INVALID_REQUEST"),
        (status = 404, description = "AGENT_NOT_FOUND, INSTANCE_NOT_FOUND or BUILD_NOT_FOUND")))]
async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateToken>,
) -> ApiResult<impl IntoResponse> {
    let ttl = body.ttl_seconds.unwrap_or(DEFAULT_TTL);
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(ApiError::invalid(
            "ttl_seconds",
            format!("must be between {MIN_TTL} and {MAX_TTL}"),
        ));
    }
    let object_id = match (body.agent_id, body.instance_id, body.build_id) {
        (Some(id), None, None) => {
            let view = state
                .store
                .get_agent(caller.org(), &id)
                .await?
                .found(Kind::Agent, &id)?;
            view.agent.id
        }
        (None, Some(id), None) => {
            state
                .store
                .get_instance(caller.org(), &id)
                .await?
                .found(Kind::Instance, &id)?
                .id
        }
        (None, None, Some(id)) => {
            state
                .store
                .get_build(caller.org(), &id)
                .await?
                .found(Kind::Build, &id)?
                .id
        }
        _ => {
            return Err(ApiError::Invalid {
                field: None,
                message: "name exactly one of agent_id, instance_id and build_id".into(),
            })
        }
    };
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(ttl);
    let claims = Claims {
        k: caller.0.key_id.clone(),
        o: caller.org().to_owned(),
        r: object_id.clone(),
        e: expires_at.timestamp(),
    };
    Ok((
        StatusCode::CREATED,
        ok(TokenObject {
            token: mint(&state.config.signing_key, &claims),
            expires_at: expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            object_id,
            permissions: vec!["read"],
        }),
    ))
}

/// The `?access_token=` of a query, if any.
fn access_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// The ID of the API key that minted the valid stream token of `query`:
/// whose rate a request with the token counts against.
pub(crate) fn minting_key(signing_key: &[u8], query: Option<&str>) -> Option<String> {
    let token = access_token(query)?;
    verify(signing_key, &token, chrono::Utc::now().timestamp()).map(|claims| claims.k)
}

/// The caller of a streaming read: an API key's (any object of its
/// organization), or a stream token's (one object).
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    /// Who reads, as the API key that minted the token (or was sent).
    pub caller: Caller,
    /// With a stream token, the one object it reads.
    only: Option<String>,
    /// With a stream token, how long a stream it opens may last.
    limit: Option<StreamLimit>,
}

/// How long a stream opened with a token may last: until the token expires,
/// and while the key that made it is live (streams check it every 30 s, so
/// revoking the key ends them within that).
#[derive(Debug, Clone)]
pub(crate) struct StreamLimit {
    expires: i64,
    key_id: String,
}

impl StreamLimit {
    /// When the token expires, on the runtime's clock.
    pub fn deadline(&self) -> tokio::time::Instant {
        let left = self.expires - chrono::Utc::now().timestamp();
        tokio::time::Instant::now()
            + std::time::Duration::from_secs(u64::try_from(left).unwrap_or(0))
    }

    /// Whether the key that made the token is still live (a store that
    /// cannot answer does not end the stream).
    pub async fn key_is_live(&self, store: &hangar_store::Store) -> bool {
        !matches!(store.principal_of_key(&self.key_id).await, Ok(None))
    }
}

impl Reader {
    /// With a stream token, how long its streams may last.
    pub fn limit(&self) -> Option<StreamLimit> {
        self.limit.clone()
    }

    /// Fails with the object's 404 unless this reader may read `id`: a token
    /// for another object finds nothing, exactly like an ID of another
    /// organization.
    pub fn check(&self, kind: Kind, id: &str) -> ApiResult<()> {
        match &self.only {
            Some(only) if only != id => Err(ApiError::NotFound {
                kind,
                id: id.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = access_token(parts.uri.query());
        let Some(token) = token.filter(|_| {
            !parts
                .headers
                .contains_key(axum::http::header::AUTHORIZATION)
        }) else {
            let caller = Caller::from_request_parts(parts, state).await?;
            return Ok(Reader {
                caller,
                only: None,
                limit: None,
            });
        };
        let claims = verify(
            &state.config.signing_key,
            &token,
            chrono::Utc::now().timestamp(),
        )
        .ok_or(ApiError::Unauthorized("invalid or expired stream token"))?;
        let principal = state
            .store
            .principal_of_key(&claims.k)
            .await?
            .filter(|p| p.organization_id == claims.o)
            .ok_or(ApiError::Unauthorized(
                "the API key that made this stream token was revoked",
            ))?;
        Ok(Reader {
            caller: Caller(principal),
            only: Some(claims.r),
            limit: Some(StreamLimit {
                expires: claims.e,
                key_id: claims.k,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(e: i64) -> Claims {
        Claims {
            k: "key_a".into(),
            o: "org_a".into(),
            r: "agent_a".into(),
            e,
        }
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let token = mint(b"k1", &claims(100));
        assert!(token.starts_with(PREFIX));
        let read = verify(b"k1", &token, 99).expect("valid");
        assert_eq!((read.k.as_str(), read.r.as_str()), ("key_a", "agent_a"));
        assert!(verify(b"k1", &token, 100).is_none(), "expired");
    }

    #[test]
    fn another_key_a_changed_claim_or_garbage_does_not_verify() {
        let token = mint(b"k1", &claims(100));
        assert!(verify(b"k2", &token, 0).is_none());
        let (payload, signature) = token[PREFIX.len()..].split_once('.').expect("dot");
        let mut forged: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(payload).expect("b64")).expect("json");
        forged["r"] = "agent_b".into();
        let forged = format!("{PREFIX}{}.{signature}", B64URL.encode(forged.to_string()));
        assert!(verify(b"k1", &forged, 0).is_none());
        for junk in ["", "hgt_", "hgt_a.b", "hgs_x.y", &token[..token.len() - 2]] {
            assert!(verify(b"k1", junk, 0).is_none(), "{junk}");
        }
    }
}
