//! The event log and the webhook outbox ([`hangar_core::events`]).
//!
//! Recording an event writes, in the same transaction, one pending delivery
//! per enabled endpoint of the organization that subscribes to its type: an
//! event that is in the log is also on its way to every endpoint, whatever
//! happens to the process afterwards.
//!
//! A deliverer takes due deliveries under a lease (so two servers do not send
//! the same attempt at once), and a delivery is only due when no earlier
//! delivery of the same subject to the same endpoint is still pending: the
//! receiver sees an agent's events in the order they happened.

use std::collections::BTreeMap;

use hangar_core::events::{Delivery, DeliveryStatus, Event};
use hangar_core::id::{new_id, IdKind};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::{from_ms, now_ms, value_rows, Result, RowExt, Store, StoreError, INSERT_CHUNK};

/// An event to record: what [`Store::record_events_in`] is given.
pub(crate) struct PendingEvent {
    pub(crate) organization_id: String,
    pub(crate) kind: String,
    pub(crate) subject: String,
    pub(crate) data: Value,
}

const EVENT_COLUMNS: &str = "id, organization_id, kind, subject, data, created_at";
const DELIVERY_COLUMNS: &str =
    "id, webhook_id, event_id, kind, status, attempts, next_attempt_at, \
     last_status_code, last_error, created_at, delivered_at";

fn event_from_row(r: &AnyRow) -> Result<Event> {
    Ok(Event {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        kind: r.text("kind")?,
        subject: r.text("subject")?,
        data: r.json("data")?,
        created_at: r.time("created_at")?,
    })
}

fn delivery_from_row(r: &AnyRow) -> Result<Delivery> {
    Ok(Delivery {
        id: r.text("id")?,
        webhook_id: r.text("webhook_id")?,
        event_id: r.text("event_id")?,
        kind: r.text("kind")?,
        status: r.parsed("status")?,
        attempts: r.count("attempts")?,
        next_attempt_at: r.opt_time("next_attempt_at")?,
        last_status_code: r
            .opt_int("last_status_code")?
            .and_then(|c| u16::try_from(c).ok()),
        last_error: r.opt_text("last_error")?,
        created_at: r.time("created_at")?,
        delivered_at: r.opt_time("delivered_at")?,
    })
}

/// A delivery to attempt now, with what the attempt needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The delivery (its attempts so far).
    pub delivery: Delivery,
    /// The event.
    pub event: Event,
    /// The endpoint's URL.
    pub url: String,
    /// The endpoint's signing secret (`whsec_…`).
    pub secret: String,
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered(u16),
    /// It answered something else, or could not be reached; try again at
    /// `retry_at` (ms since the epoch), or never (`None`: the schedule ran
    /// out).
    Failed {
        /// Its HTTP status, if it answered.
        status: Option<u16>,
        /// What went wrong.
        error: String,
        /// When to try again.
        retry_at: Option<i64>,
    },
}

impl Store {
    /// Records an event, and queues its deliveries in the same transaction.
    pub async fn record_event(
        &self,
        organization_id: &str,
        kind: &str,
        subject: &str,
        data: Value,
    ) -> Result<Event> {
        let mut tx = self.pool.begin().await?;
        let event = Self::record_event_in(&mut tx, organization_id, kind, subject, data).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// [`Store::record_event`] inside the caller's transaction: the event
    /// exists exactly when what it tells of was written.
    pub(crate) async fn record_event_in(
        tx: &mut Transaction<'static, Any>,
        organization_id: &str,
        kind: &str,
        subject: &str,
        data: Value,
    ) -> Result<Event> {
        let event = PendingEvent {
            organization_id: organization_id.to_owned(),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            data,
        };
        let mut events = Self::record_events_in(tx, vec![event]).await?;
        events.pop().ok_or(StoreError::Corrupt {
            what: "event",
            detail: "recording one event returned none".into(),
        })
    }

    /// Several events in the caller's transaction, in order: each
    /// organization's webhook subscriptions are read once, and rows go in
    /// as multi-row `INSERT`s (a finished batch of jobs records its events
    /// in a few statements, not a few per job).
    pub(crate) async fn record_events_in(
        tx: &mut Transaction<'static, Any>,
        pending: Vec<PendingEvent>,
    ) -> Result<Vec<Event>> {
        let now = now_ms();
        let events: Vec<Event> = pending
            .into_iter()
            .map(|p| Event {
                id: new_id(IdKind::Event),
                organization_id: p.organization_id,
                kind: p.kind,
                subject: p.subject,
                data: p.data,
                created_at: from_ms(now),
            })
            .collect();
        for chunk in events.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO events (id, organization_id, kind, subject, data, created_at) VALUES {}",
                value_rows(chunk.len(), 6)
            );
            let mut query = sqlx::query(&sql);
            for event in chunk {
                query = query
                    .bind(&event.id)
                    .bind(&event.organization_id)
                    .bind(&event.kind)
                    .bind(&event.subject)
                    .bind(event.data.to_string())
                    .bind(now);
            }
            query.execute(&mut **tx).await?;
        }
        // Each organization's enabled endpoints: (id, the types it takes;
        // none listed means every type).
        let mut hooks: BTreeMap<&str, Vec<(String, Vec<String>)>> = BTreeMap::new();
        for event in &events {
            if hooks.contains_key(event.organization_id.as_str()) {
                continue;
            }
            let rows = sqlx::query(
                "SELECT id, events FROM webhooks WHERE organization_id = $1 AND enabled = 1 ORDER BY id",
            )
            .bind(&event.organization_id)
            .fetch_all(&mut **tx)
            .await?;
            let endpoints = rows
                .iter()
                .map(|hook| Ok((hook.text("id")?, hook.json::<Vec<String>>("events")?)))
                .collect::<Result<Vec<_>>>()?;
            hooks.insert(&event.organization_id, endpoints);
        }
        let deliveries: Vec<(&Event, &str)> = events
            .iter()
            .flat_map(|event| {
                hooks
                    .get(event.organization_id.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|(_, kinds)| kinds.is_empty() || kinds.contains(&event.kind))
                    .map(move |(hook, _)| (event, hook.as_str()))
            })
            .collect();
        for chunk in deliveries.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO webhook_deliveries (id, organization_id, webhook_id, event_id, kind, subject, status, \
                 attempts, next_attempt_at, created_at) VALUES {}",
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, _)| {
                        let b = i * 8;
                        format!(
                            "(${}, ${}, ${}, ${}, ${}, ${}, 'pending', 0, ${}, ${})",
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 4,
                            b + 5,
                            b + 6,
                            b + 7,
                            b + 8
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (event, hook) in chunk {
                query = query
                    .bind(new_id(IdKind::Delivery))
                    .bind(&event.organization_id)
                    .bind(*hook)
                    .bind(&event.id)
                    .bind(&event.kind)
                    .bind(&event.subject)
                    .bind(now)
                    .bind(now);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(events)
    }

    /// The organization's events, newest first, before the cursor ID, of
    /// one type if given.
    pub async fn list_events(
        &self,
        organization_id: &str,
        before: Option<&str>,
        kind: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE organization_id = $1");
        let mut n = 1;
        if before.is_some() {
            n += 1;
            sql.push_str(&format!(" AND id < ${n}"));
        }
        if kind.is_some() {
            n += 1;
            sql.push_str(&format!(" AND kind = ${n}"));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut query = sqlx::query(&sql).bind(organization_id);
        if let Some(before) = before {
            query = query.bind(before);
        }
        if let Some(kind) = kind {
            query = query.bind(kind);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    /// Takes up to `limit` due deliveries for `lease_ms`: pending, their
    /// time come, not leased by another deliverer, and the oldest pending
    /// one of their subject at their endpoint.
    pub async fn take_due_deliveries(&self, limit: u32, lease_ms: i64) -> Result<Vec<DueDelivery>> {
        let now = now_ms();
        let candidates = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.status = 'pending' \
             AND d.next_attempt_at <= $1 AND (d.lease_until IS NULL OR d.lease_until < $1) \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.webhook_id = d.webhook_id \
               AND e.subject = d.subject AND e.status = 'pending' AND e.id < d.id) \
             ORDER BY d.next_attempt_at, d.id LIMIT {limit}"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut due = Vec::new();
        for row in &candidates {
            let delivery = delivery_from_row(row)?;
            // The lease is the claim: of two deliverers, one updates the row.
            // Due is judged again on the row as it is now: the candidates
            // were read before, and since then another deliverer may have
            // made an attempt that failed and set the next one for later.
            let claimed = sqlx::query(
                "UPDATE webhook_deliveries SET lease_until = $2 WHERE id = $1 AND status = 'pending' \
                 AND next_attempt_at <= $3 AND (lease_until IS NULL OR lease_until < $3)",
            )
            .bind(&delivery.id)
            .bind(now + lease_ms)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if claimed == 0 {
                continue;
            }
            let Some(event_row) =
                sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
                    .bind(&delivery.event_id)
                    .fetch_optional(&self.pool)
                    .await?
            else {
                continue;
            };
            let event = event_from_row(&event_row)?;
            let Some(hook) = sqlx::query("SELECT url FROM webhooks WHERE id = $1")
                .bind(&delivery.webhook_id)
                .fetch_optional(&self.pool)
                .await?
            else {
                continue;
            };
            let Some(secret) = self
                .webhook_secret(&event.organization_id, &delivery.webhook_id)
                .await?
            else {
                continue;
            };
            due.push(DueDelivery {
                delivery,
                url: hook.text("url")?,
                secret,
                event,
            });
        }
        Ok(due)
    }

    /// Records an attempt's outcome and releases the lease.
    pub async fn record_attempt(&self, delivery_id: &str, attempt: &Attempt) -> Result<()> {
        let now = now_ms();
        let (status, code, error, next, delivered) = match attempt {
            Attempt::Delivered(code) => (
                DeliveryStatus::Delivered,
                Some(*code),
                None,
                None,
                Some(now),
            ),
            Attempt::Failed {
                status,
                error,
                retry_at,
            } => (
                if retry_at.is_some() {
                    DeliveryStatus::Pending
                } else {
                    DeliveryStatus::Failed
                },
                *status,
                Some(error.as_str()),
                *retry_at,
                None,
            ),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1, last_status_code = $3, \
             last_error = $4, next_attempt_at = $5, delivered_at = $6, lease_until = NULL WHERE id = $1",
        )
        .bind(delivery_id)
        .bind(status.as_str())
        .bind(code.map(i64::from))
        .bind(error)
        .bind(next)
        .bind(delivered)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An endpoint's deliveries, newest first, before the cursor ID.
    pub async fn list_deliveries(
        &self,
        organization_id: &str,
        webhook_id: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let mut sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE organization_id = $1 AND webhook_id = $2"
        );
        if before.is_some() {
            sql.push_str(" AND id < $3");
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut query = sqlx::query(&sql).bind(organization_id).bind(webhook_id);
        if let Some(before) = before {
            query = query.bind(before);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(delivery_from_row)
            .collect()
    }

    /// Queues a delivery again, now (its attempts so far are kept).
    pub async fn redeliver(
        &self,
        organization_id: &str,
        webhook_id: &str,
        delivery_id: &str,
    ) -> Result<Option<Delivery>> {
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $4, lease_until = NULL \
             WHERE organization_id = $1 AND webhook_id = $2 AND id = $3",
        )
        .bind(organization_id)
        .bind(webhook_id)
        .bind(delivery_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE organization_id = $1 AND webhook_id = $2 AND id = $3"
        ))
        .bind(organization_id)
        .bind(webhook_id)
        .bind(delivery_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }
}
