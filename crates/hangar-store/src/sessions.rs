//! Sticky sessions: which replica serves a caller's session, how many
//! requests it made and when it was last active.
//!
//! The gateway of the node that runs an instance picks the replica and
//! records every request here ([`Store::visit_session`]); any node reads
//! sessions back, so they are listable wherever a request lands and
//! survive a restart of the server that serves them. A session lives while
//! requests keep coming: each visit pushes its `expires_at` out by the
//! agent's idle timeout, and reads pass over rows past it (an ended
//! session is gone, as if deleted). Expired rows are deleted now and then
//! ([`Store::prune_sessions`]).
//!
//! Session IDs are the caller's own, unique within an organization; every
//! read is scoped by organization, so another organization's session of
//! the same ID is not seen.
//!
//! Not here: choosing the replica (the gateway) and stopping one (the
//! controller).

use std::collections::HashMap;
use std::time::Duration;

use hangar_core::model::Timestamp;

use crate::{now_ms, FromRow, Result, RowExt, Store};

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The caller's session ID.
    pub id: String,
    /// Whose it is.
    pub organization_id: String,
    /// The agent it invokes.
    pub agent_id: String,
    /// The instance that serves it.
    pub instance_id: String,
    /// The replica that serves it.
    pub replica_id: String,
    /// Its first request.
    pub started_at: Timestamp,
    /// Its latest request.
    pub last_active_at: Timestamp,
    /// When it ends unless another request comes.
    pub expires_at: Timestamp,
    /// Requests made in it.
    pub requests: u64,
    /// Times it moved to another replica because its own was gone.
    pub replica_changes: u64,
}

/// One request of a session, served by `replica_id`.
#[derive(Debug, Clone, Copy)]
pub struct SessionVisit<'a> {
    /// Whose it is.
    pub organization_id: &'a str,
    /// The caller's session ID.
    pub id: &'a str,
    /// The agent invoked.
    pub agent_id: &'a str,
    /// The instance that serves it.
    pub instance_id: &'a str,
    /// The replica that served the request.
    pub replica_id: &'a str,
    /// How long the session lives without another request.
    pub idle_timeout: Duration,
}

impl FromRow for Session {
    fn from_row(row: &impl RowExt) -> Result<Self> {
        Ok(Self {
            id: row.text("id")?,
            organization_id: row.text("organization_id")?,
            agent_id: row.text("agent_id")?,
            instance_id: row.text("instance_id")?,
            replica_id: row.text("replica_id")?,
            started_at: row.time("started_at")?,
            last_active_at: row.time("last_active_at")?,
            expires_at: row.time("expires_at")?,
            requests: u64::try_from(row.int("requests")?).unwrap_or(0),
            replica_changes: u64::try_from(row.int("replica_changes")?).unwrap_or(0),
        })
    }
}

const COLUMNS: &str = "id, organization_id, agent_id, instance_id, replica_id, started_at, \
     last_active_at, expires_at, requests, replica_changes";

impl Store {
    /// The organization's live session `id`, if there is one.
    pub async fn session(&self, org_id: &str, id: &str) -> Result<Option<Session>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions WHERE organization_id = $1 AND id = $2 \
             AND expires_at > $3"
        );
        let row = sqlx::query(&sql)
            .bind(org_id)
            .bind(id)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Session::from_row).transpose()
    }

    /// Records a request of a session served by `visit.replica_id`: starts
    /// the session (or a new one by an ID whose session ended), or counts
    /// the request in it, moving it to the replica (a change when it is
    /// another) and pushing its end out by its idle timeout.
    pub async fn visit_session(&self, visit: &SessionVisit<'_>) -> Result<()> {
        let now = now_ms();
        let idle = i64::try_from(visit.idle_timeout.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO sessions (organization_id, id, agent_id, instance_id, replica_id, \
             started_at, last_active_at, expires_at, requests, replica_changes) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, 1, 0) \
             ON CONFLICT (organization_id, id) DO UPDATE SET \
             started_at = CASE WHEN sessions.expires_at <= $6 THEN $6 ELSE sessions.started_at END, \
             requests = CASE WHEN sessions.expires_at <= $6 THEN 1 ELSE sessions.requests + 1 END, \
             replica_changes = CASE WHEN sessions.expires_at <= $6 THEN 0 \
               WHEN sessions.replica_id <> excluded.replica_id THEN sessions.replica_changes + 1 \
               ELSE sessions.replica_changes END, \
             agent_id = excluded.agent_id, instance_id = excluded.instance_id, \
             replica_id = excluded.replica_id, last_active_at = $6, expires_at = excluded.expires_at",
        )
        .bind(visit.organization_id)
        .bind(visit.id)
        .bind(visit.agent_id)
        .bind(visit.instance_id)
        .bind(visit.replica_id)
        .bind(now)
        .bind(now.saturating_add(idle))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The agent's live sessions, the most recently active first.
    pub async fn agent_sessions(&self, org_id: &str, agent_id: &str) -> Result<Vec<Session>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions WHERE organization_id = $1 AND agent_id = $2 \
             AND expires_at > $3 ORDER BY last_active_at DESC, id"
        );
        sqlx::query(&sql)
            .bind(org_id)
            .bind(agent_id)
            .bind(now_ms())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Session::from_row)
            .collect()
    }

    /// Ends the organization's live session `id`, returning it as it was;
    /// `None` when there is none.
    pub async fn end_session(&self, org_id: &str, id: &str) -> Result<Option<Session>> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions WHERE organization_id = $1 AND id = $2 \
             AND expires_at > $3"
        );
        let row = sqlx::query(&sql)
            .bind(org_id)
            .bind(id)
            .bind(now_ms())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(session) = row.as_ref().map(Session::from_row).transpose()? else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM sessions WHERE organization_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(session))
    }

    /// The instance serving a live session of this ID, in any organization:
    /// where a request about it is sent (the holder checks the caller's
    /// organization).
    pub async fn session_instance(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT instance_id FROM sessions WHERE id = $1 AND expires_at > $2 \
             ORDER BY last_active_at DESC LIMIT 1",
        )
        .bind(id)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|row| row.text("instance_id")).transpose()
    }

    /// Live sessions per replica of an instance: what scale-down keeps.
    pub async fn sessions_per_replica(&self, instance_id: &str) -> Result<HashMap<String, u32>> {
        let rows = sqlx::query(
            "SELECT replica_id, CAST(COUNT(*) AS BIGINT) AS sessions FROM sessions \
             WHERE instance_id = $1 AND expires_at > $2 GROUP BY replica_id",
        )
        .bind(instance_id)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.text("replica_id")?, row.count("sessions")?)))
            .collect()
    }

    /// Deletes every ended session; returns how many went.
    pub async fn prune_sessions(&self) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now_ms())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
