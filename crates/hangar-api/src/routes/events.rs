//! Events and webhook deliveries, under `/v1` in the Agents API's style:
//! `GET /v1/events` (the organization's event log, newest first, cursor
//! pagination, `?type=`), `GET /v1/webhooks/{id}/deliveries` and
//! `POST /v1/webhooks/{id}/deliveries/{delivery_id}/redeliver`.

use axum::extract::State;
use axum::Json;
use hangar_core::events::{Delivery, DeliveryStatus, Event};
use hangar_core::model::EVENT_TYPES;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::page_size;
use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Caller, Path, Query};
use crate::render::{ok, ok_list, Envelope, ListEnvelope, Pagination};
use crate::{decode_cursor, encode_cursor, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_events))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}

/// An event as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventObject {
    /// `evt_…`
    pub id: String,
    /// Its type: `agent.deployed`, `agent.failed`, `agent.scaled`, `agent.health_changed`, `agent.policy_changed`, `instance.started`, `instance.stopped`, `instance.crashed`, `build.succeeded`, `build.failed`, `job.completed`, `job.failed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What it is about (an agent, instance, build or job ID).
    pub subject: String,
    /// Details.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// When it happened (RFC 3339).
    pub created_at: String,
}

fn event(e: &Event) -> EventObject {
    EventObject {
        id: e.id.clone(),
        kind: e.kind.clone(),
        subject: e.subject.clone(),
        data: e.data.clone(),
        created_at: e
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// A webhook delivery as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryObject {
    /// `dlv_…`, the `webhook-id` header of every attempt.
    pub id: String,
    /// The endpoint.
    pub webhook_id: String,
    /// The event.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: DeliveryStatus,
    /// Attempts so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_at: Option<String>,
    /// The receiver's last HTTP status.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: String,
    /// When the receiver took it.
    pub delivered_at: Option<String>,
}

fn delivery(d: &Delivery) -> DeliveryObject {
    let ts =
        |t: &hangar_core::model::Timestamp| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    DeliveryObject {
        id: d.id.clone(),
        webhook_id: d.webhook_id.clone(),
        event_id: d.event_id.clone(),
        event_type: d.kind.clone(),
        status: d.status,
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at.as_ref().map(ts),
        last_status_code: d.last_status_code,
        last_error: d.last_error.clone(),
        created_at: ts(&d.created_at),
        delivered_at: d.delivered_at.as_ref().map(ts),
    }
}

/// A page from `limit + 1` items.
fn page<T, O>(
    mut items: Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> &str,
    render: impl Fn(&T) -> O,
) -> (Vec<O>, Pagination) {
    let has_more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = has_more
        .then(|| items.last().map(|i| encode_cursor(id(i))))
        .flatten();
    (
        items.iter().map(render).collect(),
        Pagination {
            limit,
            has_more,
            next_cursor,
        },
    )
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(evt_[A-Za-z0-9_]{0,59})?$")]
    cursor: Option<String>,
    /// Only events of this type (`agent.deployed`, `agent.failed`, `agent.scaled`, `agent.health_changed`, `agent.policy_changed`, `instance.started`, `instance.stopped`, `instance.crashed`, `build.succeeded`, `build.failed`, `job.completed`, `job.failed`).
    #[param(
        pattern = "^(agent\\.(deployed|failed|scaled|health_changed|policy_changed)|instance\\.(started|stopped|crashed)|build\\.(succeeded|failed)|job\\.(completed|failed))$"
    )]
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The organization's events, newest first.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = ListEnvelope<EventObject>), (status = 400, description = "INVALID_REQUEST")))]
async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<ListEnvelope<EventObject>>> {
    let limit = page_size(q.limit)?;
    let before = decode_cursor(q.cursor.as_deref(), "evt_")?;
    if let Some(kind) = &q.kind {
        if !EVENT_TYPES.contains(&kind.as_str()) {
            return Err(ApiError::invalid(
                "type",
                format!("must be one of {}", EVENT_TYPES.join(", ")),
            ));
        }
    }
    let events = state
        .store
        .list_events(
            caller.org(),
            before.as_deref(),
            q.kind.as_deref(),
            limit + 1,
        )
        .await?;
    let (data, pagination) = page(events, limit, |e| &e.id, event);
    Ok(ok_list(data, pagination))
}

/// Query of delivery lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeliveriesQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(dlv_[A-Za-z0-9_]{0,59})?$")]
    cursor: Option<String>,
}

/// A webhook endpoint's deliveries, newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook ID"), DeliveriesQuery),
    responses((status = 200, body = ListEnvelope<DeliveryObject>), (status = 404, description = "WEBHOOK_NOT_FOUND")))]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> ApiResult<Json<ListEnvelope<DeliveryObject>>> {
    let limit = page_size(q.limit)?;
    let before = decode_cursor(q.cursor.as_deref(), "dlv_")?;
    state
        .store
        .get_webhook(caller.org(), &id)
        .await?
        .found(Kind::Webhook, &id)?;
    let deliveries = state
        .store
        .list_deliveries(caller.org(), &id, before.as_deref(), limit + 1)
        .await?;
    let (data, pagination) = page(deliveries, limit, |d| &d.id, delivery);
    Ok(ok_list(data, pagination))
}

/// Queue a delivery again, now.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook ID"), ("delivery_id" = String, Path, description = "Delivery ID")),
    responses((status = 200, body = Envelope<DeliveryObject>), (status = 404, description = "WEBHOOK_NOT_FOUND or DELIVERY_NOT_FOUND")))]
async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, delivery_id)): Path<(String, String)>,
) -> ApiResult<Json<Envelope<DeliveryObject>>> {
    state
        .store
        .get_webhook(caller.org(), &id)
        .await?
        .found(Kind::Webhook, &id)?;
    let queued = state
        .store
        .redeliver(caller.org(), &id, &delivery_id)
        .await?
        .found(Kind::Delivery, &delivery_id)?;
    if let Some(deliverer) = &state.deliverer {
        deliverer.wake();
    }
    Ok(ok(delivery(&queued)))
}
