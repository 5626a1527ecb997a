//! Events: what happened to an organization's agents, instances, builds and
//! jobs, kept in the store as a log (`GET /v1/events`) and delivered to its
//! webhook endpoints.
//!
//! A delivery is one event for one endpoint. It is at least once: attempts
//! follow a retry schedule until the receiver answers 2xx or the schedule
//! runs out. It is in order per subject: an event about an agent is not sent
//! to an endpoint before the earlier events about that agent were delivered
//! there (or given up on).

use serde_json::Value;

use crate::model::Timestamp;

crate::string_enum! {
    /// Where a delivery stands.
    pub enum DeliveryStatus {
        /// Waiting for its (next) attempt.
        Pending = "pending",
        /// The receiver answered 2xx.
        Delivered = "delivered",
        /// The retry schedule ran out.
        Failed = "failed",
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `evt_…`
    pub id: String,
    /// Whose it is.
    pub organization_id: String,
    /// One of [`crate::model::EVENT_TYPES`].
    pub kind: String,
    /// The ID of what it is about (an agent, instance, build or job).
    pub subject: String,
    /// The event's details.
    pub data: Value,
    /// When it happened.
    pub created_at: Timestamp,
}

/// One event for one webhook endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `dlv_…`, also the `webhook-id` header (the same on every attempt).
    pub id: String,
    /// The endpoint.
    pub webhook_id: String,
    /// The event.
    pub event_id: String,
    /// The event's type.
    pub kind: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// The receiver's last HTTP status.
    pub last_status_code: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: Timestamp,
    /// When the receiver took it.
    pub delivered_at: Option<Timestamp>,
}
