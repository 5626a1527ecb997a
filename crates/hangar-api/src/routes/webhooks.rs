//! Webhook endpoints under `/v1`: registering, reading, changing and
//! removing them. Events and deliveries are `routes::events`'; sending them
//! is `hangar_webhooks`'.
//!
//! A URL whose host is a literal loopback, private or link-local address
//! is refused here when this server's deliverer would refuse it, so the
//! mistake shows when it is made rather than as failed deliveries. Names
//! are not resolved here: what a name resolves to can change, so the
//! deliverer checks the addresses it connects to.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use hangar_core::model::EVENT_TYPES;
use hangar_core::validate;
use hangar_store::NewWebhook;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Deleted;
use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Body, Caller, Path};
use crate::render::{self, ok, Envelope, WebhookObject};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
}

/// `events` as the document shows it: known event types, as many as there
/// are kinds (what [`check_events`] takes).
fn event_types() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(EVENT_TYPES.iter().copied())),
        )
        .max_items(Some(EVENT_TYPES.len()))
        .description(Some(format!(
            "Event types to deliver (empty or absent: all): {}.",
            EVENT_TYPES
                .iter()
                .map(|kind| format!("`{kind}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
        .build()
}

/// `events` of an update: absent or `null` keeps the webhook's.
fn event_types_or_null() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{SchemaType, Type};
    let mut events = event_types();
    events.description = Some(format!(
        "{} Absent or null: unchanged.",
        events.description.unwrap_or_default()
    ));
    events.schema_type = SchemaType::from_iter([Type::Array, Type::Null]);
    events
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
    /// Receiver URL (http or https). A loopback, private or link-local IP
    /// address is refused unless the server allows private receivers
    /// (`--webhook-allow-private`); names are checked when delivering.
    #[schema(
        pattern = r"^https?://[A-Za-z][A-Za-z0-9-]*(\.[A-Za-z][A-Za-z0-9-]*)*(:[1-9][0-9]{0,3})?(/[!-~]*)?$",
        max_length = 2048
    )]
    url: String,
    /// Event types to deliver (default: all): `agent.deployed`, `agent.failed`, `agent.scaled`, `agent.health_changed`, `agent.policy_changed`, `instance.started`, `instance.stopped`, `instance.crashed`, `build.succeeded`, `build.failed`, `job.completed`, `job.failed`.
    #[serde(default)]
    #[schema(schema_with = event_types)]
    events: Vec<String>,
    /// Free text.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 512)]
    description: Option<String>,
    /// Signing secret (`whsec_` + base64 of 24–64 bytes); generated when absent.
    #[schema(
        pattern = r"^whsec_(([A-Za-z0-9+/]{4}){8,20}([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?|([A-Za-z0-9+/]{4}){21}([A-Za-z0-9+/][AQgw]==)?)$"
    )]
    secret: Option<String>,
}

/// Refuses a receiver URL whose host (as the URL parser normalized it:
/// `127.1` is `127.0.0.1`) is an address this server's deliverer would
/// refuse. A server that does not deliver has no say; the one that
/// delivers checks every connection anyway.
fn check_receiver(state: &AppState, host: Option<&str>) -> ApiResult<()> {
    let Some(policy) = state
        .deliverer
        .as_ref()
        .map(hangar_webhooks::Deliverer::policy)
    else {
        return Ok(());
    };
    let host = host.unwrap_or_default();
    let refused = hangar_webhooks::address::literal_ip(host)
        .and_then(|address| policy.refuses(host, address));
    match refused {
        Some(refused) => Err(ApiError::invalid(
            "url",
            format!(
                "{} is {}: this server delivers webhooks to loopback, private and link-local addresses only when started with --webhook-allow-private",
                refused.address, refused.range
            ),
        )),
        None => Ok(()),
    }
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
    responses((status = 201, body = Envelope<WebhookObject>),
        (status = 400, description = "INVALID_REQUEST: a field is invalid, or `url`'s host is a loopback, private or link-local IP address and the server was not started with `--webhook-allow-private`")))]
async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateWebhook>,
) -> ApiResult<impl IntoResponse> {
    let url = validate::http_url("url", &body.url)?;
    check_receiver(&state, url.host_str())?;
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
    /// Receiver URL; refused like `POST /v1/webhooks`'.
    #[schema(
        pattern = r"^https?://[A-Za-z][A-Za-z0-9-]*(\.[A-Za-z][A-Za-z0-9-]*)*(:[1-9][0-9]{0,3})?(/[!-~]*)?$",
        max_length = 2048
    )]
    url: Option<String>,
    /// Event types (empty: all): `agent.deployed`, `agent.failed`, `agent.scaled`, `agent.health_changed`, `agent.policy_changed`, `instance.started`, `instance.stopped`, `instance.crashed`, `build.succeeded`, `build.failed`, `job.completed`, `job.failed`.
    #[schema(schema_with = event_types_or_null)]
    events: Option<Vec<String>>,
    /// Free text.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 512)]
    description: Option<String>,
    /// Pause (false) or resume (true) deliveries.
    enabled: Option<bool>,
}

/// Change a webhook endpoint.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", request_body = UpdateWebhook, params(("id" = String, Path, description = "Webhook ID")),
    responses((status = 200, body = Envelope<WebhookObject>),
        (status = 400, description = "INVALID_REQUEST: a field is invalid, or `url`'s host is a loopback, private or link-local IP address and the server was not started with `--webhook-allow-private`"),
        (status = 404, description = "WEBHOOK_NOT_FOUND")))]
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
        let parsed = validate::http_url("url", &url)?;
        check_receiver(&state, parsed.host_str())?;
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
