//! Request figures per node: how many invocations of each instance a node
//! answered per minute, how many failed and how long they took, so that
//! any server can show the cluster's figures and not only its own.
//!
//! Each node adds its counts every few seconds ([`Store::add_request_counts`],
//! one row per instance, minute and node, incremented in place) and readers
//! sum the rows of every node ([`Store::request_counts`]). Latencies are
//! stored as sums beside the counts: means merge exactly across nodes and
//! minutes. The same write carries the rest of the minute's figures (a
//! latency histogram, the replicas' CPU and memory: see `history`). Rows
//! older than the metric retention are deleted
//! ([`Store::prune_request_counts`]).
//!
//! Not here: counting on the request path (the controller's `Traffic`,
//! which keeps what it has not written yet) and merging that in.

use std::collections::{BTreeMap, HashMap};

use crate::history::MinuteFigures;
use crate::{value_rows, FromRow, Result, RowExt, Store, INSERT_CHUNK};

/// Invocations counted together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Invocations answered (or failed).
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Their latencies, summed, µs.
    pub latency_us: u64,
}

impl std::ops::AddAssign for RequestCounts {
    fn add_assign(&mut self, other: Self) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency_us = self.latency_us.saturating_add(other.latency_us);
    }
}

impl std::ops::SubAssign for RequestCounts {
    fn sub_assign(&mut self, other: Self) {
        self.requests = self.requests.saturating_sub(other.requests);
        self.errors = self.errors.saturating_sub(other.errors);
        self.latency_us = self.latency_us.saturating_sub(other.latency_us);
    }
}

impl RequestCounts {
    /// Nothing counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What one node counted of one instance within one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMinute {
    /// The instance.
    pub instance_id: String,
    /// The minute, in minutes since the Unix epoch.
    pub minute: i64,
    /// What was counted.
    pub figures: MinuteFigures,
}

impl FromRow for RequestCounts {
    fn from_row(row: &impl RowExt) -> Result<Self> {
        Ok(Self {
            requests: unsigned(row.int("requests")?),
            errors: unsigned(row.int("errors")?),
            latency_us: unsigned(row.int("latency_us")?),
        })
    }
}

/// The sums of one instance's rows from a minute on: one row, whatever the
/// rows (zeros for none).
const ONE_INSTANCE: &str = "SELECT CAST(COALESCE(SUM(requests), 0) AS BIGINT) AS requests, \
     CAST(COALESCE(SUM(errors), 0) AS BIGINT) AS errors, \
     CAST(COALESCE(SUM(latency_us), 0) AS BIGINT) AS latency_us \
     FROM request_counts WHERE instance_id = $1 AND at_minute >= CAST($2 AS BIGINT)";

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Adds `node_id`'s figures to the stored ones, in one transaction:
    /// all added or none.
    pub async fn add_request_counts(&self, node_id: &str, minutes: &[RequestMinute]) -> Result<()> {
        // One row per key: a statement may not touch a row twice.
        let mut merged: BTreeMap<(&str, i64), MinuteFigures> = BTreeMap::new();
        for m in minutes.iter().filter(|m| !m.figures.is_empty()) {
            *merged
                .entry((m.instance_id.as_str(), m.minute))
                .or_default() += m.figures;
        }
        if merged.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = merged.into_iter().collect();
        let buckets: Vec<(&str, i64, usize, u64)> = rows
            .iter()
            .flat_map(|((instance_id, minute), figures)| {
                figures
                    .latency
                    .buckets()
                    .map(|(bucket, n)| (*instance_id, *minute, bucket, n))
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO request_counts (instance_id, at_minute, node_id, requests, errors, latency_us, \
                 cpu_us, cpu_wall_ms, memory_kib, memory_samples) \
                 VALUES {} ON CONFLICT (instance_id, at_minute, node_id) DO UPDATE SET \
                 requests = request_counts.requests + excluded.requests, \
                 errors = request_counts.errors + excluded.errors, \
                 latency_us = request_counts.latency_us + excluded.latency_us, \
                 cpu_us = request_counts.cpu_us + excluded.cpu_us, \
                 cpu_wall_ms = request_counts.cpu_wall_ms + excluded.cpu_wall_ms, \
                 memory_kib = request_counts.memory_kib + excluded.memory_kib, \
                 memory_samples = request_counts.memory_samples + excluded.memory_samples",
                value_rows(chunk.len(), 10)
            );
            let mut query = sqlx::query(&sql);
            for ((instance_id, minute), figures) in chunk {
                let (counts, usage) = (figures.counts, figures.usage);
                query = query
                    .bind(*instance_id)
                    .bind(*minute)
                    .bind(node_id)
                    .bind(signed(counts.requests))
                    .bind(signed(counts.errors))
                    .bind(signed(counts.latency_us))
                    .bind(signed(usage.cpu_us))
                    .bind(signed(usage.cpu_wall_ms))
                    .bind(signed(usage.memory_kib))
                    .bind(signed(usage.memory_samples));
            }
            query.execute(&mut *tx).await?;
        }
        for chunk in buckets.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO latency_buckets (instance_id, at_minute, node_id, bucket, requests) \
                 VALUES {} ON CONFLICT (instance_id, at_minute, node_id, bucket) DO UPDATE SET \
                 requests = latency_buckets.requests + excluded.requests",
                value_rows(chunk.len(), 5)
            );
            let mut query = sqlx::query(&sql);
            for (instance_id, minute, bucket, n) in chunk {
                query = query
                    .bind(*instance_id)
                    .bind(*minute)
                    .bind(node_id)
                    .bind(i64::try_from(*bucket).unwrap_or(i64::MAX))
                    .bind(signed(*n));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The stored counts of each of `instance_ids` from minute `since` on,
    /// summed over every node (instances with none are left out). One
    /// instance (what `GET /v1/agents/{id}` shows) is a point read: on
    /// SQLite on the request's own thread, without the pool's hand-offs.
    pub async fn request_counts(
        &self,
        instance_ids: &[&str],
        since: i64,
    ) -> Result<HashMap<String, RequestCounts>> {
        let mut out = HashMap::new();
        if let [id] = instance_ids {
            let since = since.to_string();
            let counts: Option<RequestCounts> =
                self.point_read(ONE_INSTANCE, &[id, &since]).await?;
            if let Some(counts) = counts.filter(|c| !c.is_empty()) {
                out.insert((*id).to_owned(), counts);
            }
            return Ok(out);
        }
        for chunk in instance_ids.chunks(INSERT_CHUNK) {
            let ids = (2..chunk.len() + 2)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT instance_id, CAST(SUM(requests) AS BIGINT) AS requests, \
                 CAST(SUM(errors) AS BIGINT) AS errors, CAST(SUM(latency_us) AS BIGINT) AS latency_us \
                 FROM request_counts WHERE at_minute >= $1 AND instance_id IN ({ids}) GROUP BY instance_id"
            );
            let mut query = sqlx::query(&sql).bind(since);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.insert(row.text("instance_id")?, RequestCounts::from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Deletes every node's figures (counts and latency buckets) of
    /// minutes before `before`; returns how many rows went.
    pub async fn prune_request_counts(&self, before: i64) -> Result<u64> {
        let mut deleted = 0;
        for sql in [
            "DELETE FROM request_counts WHERE at_minute < $1",
            "DELETE FROM latency_buckets WHERE at_minute < $1",
        ] {
            deleted += sqlx::query(sql)
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(deleted)
    }
}
