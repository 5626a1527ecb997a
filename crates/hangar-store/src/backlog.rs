//! Work waiting across the platform: what an operator's dashboard watches
//! (jobs queued and running, builds queued and building, webhook deliveries
//! not yet delivered). Each count is one indexed query; none reads a row.

use crate::{Result, RowExt, Store};

/// Counts of work waiting or in progress, every organization together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Async jobs accepted and not yet running.
    pub jobs_pending: i64,
    /// Async jobs running now.
    pub jobs_running: i64,
    /// Builds waiting for a builder.
    pub builds_queued: i64,
    /// Builds being built.
    pub builds_building: i64,
    /// Webhook deliveries not yet answered with a 2xx (waiting for an attempt
    /// or a retry).
    pub deliveries_pending: i64,
}

impl Store {
    /// The platform's [`Backlog`].
    pub async fn backlog(&self) -> Result<Backlog> {
        let count = |sql: &'static str| async move {
            sqlx::query(sql).fetch_one(&self.pool).await?.int("n")
        };
        Ok(Backlog {
            jobs_pending: count("SELECT COUNT(*) AS n FROM jobs WHERE status = 'pending'").await?,
            jobs_running: count("SELECT COUNT(*) AS n FROM jobs WHERE status = 'running'").await?,
            builds_queued: count("SELECT COUNT(*) AS n FROM builds WHERE status = 'queued'")
                .await?,
            builds_building: count("SELECT COUNT(*) AS n FROM builds WHERE status = 'building'")
                .await?,
            deliveries_pending: count(
                "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status = 'pending'",
            )
            .await?,
        })
    }
}
