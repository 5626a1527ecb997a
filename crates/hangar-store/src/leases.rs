//! Instance leases: which node runs each instance. One row per instance
//! names its holder, a fencing generation and an expiry. A node acts on an
//! instance (starts, stops, records its status) only while it holds the
//! instance's lease; the controller's `leases` module says how it keeps to
//! that, and why no two nodes act on one instance at once.
//!
//! Every write here is one statement, or one transaction whose first
//! statement writes, so it is atomic under concurrency on both backends:
//! on PostgreSQL `INSERT … ON CONFLICT DO UPDATE … WHERE` locks the row and
//! judges the newest version of it, so of two nodes acquiring at once one
//! wins and the other sees the winner's fresh lease; on SQLite the writer
//! lock serializes them.
//!
//! Times are the writer's clock in ms, as heartbeats are ([`crate::nodes`]).
//! Every lease write also counts as the writer's heartbeat: a node whose
//! lease write succeeded is not dead for another `node_dead_after`, so a
//! lease taken because its holder was dead was not renewed within that
//! time either.

use std::time::Duration;

use hangar_core::model::Timestamp;

use crate::{now_ms, Result, RowExt, Store, INSERT_CHUNK};

/// An instance's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLease {
    /// The instance.
    pub instance_id: String,
    /// The node that holds it; `None` once released.
    pub node_id: Option<String>,
    /// The fencing token: grows by one on every acquisition.
    pub generation: i64,
    /// When it runs out unless renewed (the holder's clock).
    pub expires_at: Timestamp,
}

/// How long leases last and when a silent holder counts as dead: what
/// every acquisition and renewal is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    /// A lease runs out this long after it was last written.
    pub duration: Duration,
    /// A holder silent this long is dead: its leases may be taken at once.
    pub node_dead_after: Duration,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Takes instance `instance_id`'s lease for `node_id` when it is free
    /// (never held, or released), ran out, is this node's own (from before
    /// a restart), or its holder is stopped or dead. Returns the new
    /// generation, or `None` when another node holds it (or the instance
    /// is reaped or unknown).
    pub async fn acquire_instance_lease(
        &self,
        instance_id: &str,
        node_id: &str,
        terms: LeaseTerms,
    ) -> Result<Option<i64>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let acquired = sqlx::query(
            "INSERT INTO instance_leases (instance_id, node_id, generation, expires_at) \
             SELECT $1, $2, 1, $3 WHERE EXISTS \
               (SELECT 1 FROM instances WHERE id = $1 AND reaped_at IS NULL) \
             ON CONFLICT (instance_id) DO UPDATE SET node_id = $2, \
               generation = instance_leases.generation + 1, expires_at = $3 \
             WHERE instance_leases.node_id IS NULL OR instance_leases.node_id = $2 \
               OR instance_leases.expires_at < $4 \
               OR EXISTS (SELECT 1 FROM nodes WHERE nodes.id = instance_leases.node_id \
                 AND (nodes.stopped_at IS NOT NULL OR nodes.heartbeat_at < $5)) \
             RETURNING generation",
        )
        .bind(instance_id)
        .bind(node_id)
        .bind(now.saturating_add(ms(terms.duration)))
        .bind(now)
        .bind(now.saturating_sub(ms(terms.node_dead_after)))
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.int("generation"))
        .transpose()?;
        if acquired.is_some() {
            beat(&mut tx, node_id, now).await?;
        }
        tx.commit().await?;
        Ok(acquired)
    }

    /// Extends the leases `node_id` holds at these generations to
    /// `duration` from now. Returns, for each, whether it is still held: a
    /// lease another node took since (a new generation), or that was
    /// released, is not renewed.
    pub async fn renew_instance_leases(
        &self,
        node_id: &str,
        held: &[(String, i64)],
        duration: Duration,
    ) -> Result<Vec<bool>> {
        let now = now_ms();
        let until = now.saturating_add(ms(duration));
        let mut tx = self.pool.begin().await?;
        // The heartbeat first: the transaction's first statement writes, so
        // SQLite takes its write lock at once (no upgrade from a read).
        beat(&mut tx, node_id, now).await?;
        let mut renewed = std::collections::HashSet::new();
        for chunk in held.chunks(INSERT_CHUNK) {
            let sql = format!(
                "UPDATE instance_leases SET expires_at = $1 WHERE node_id = $2 \
                 AND (instance_id, generation) IN (VALUES {}) RETURNING instance_id, generation",
                pairs(3, chunk.len()),
            );
            let mut query = sqlx::query(&sql).bind(until).bind(node_id);
            for (instance, generation) in chunk {
                query = query.bind(instance.as_str()).bind(*generation);
            }
            for row in query.fetch_all(&mut *tx).await? {
                renewed.insert((row.text("instance_id")?, row.int("generation")?));
            }
        }
        tx.commit().await?;
        Ok(held
            .iter()
            .map(|(instance, generation)| renewed.contains(&(instance.clone(), *generation)))
            .collect())
    }

    /// Extends one lease (see [`Store::renew_instance_leases`]); whether
    /// `node_id` still holds it at `generation`.
    pub async fn renew_instance_lease(
        &self,
        instance_id: &str,
        node_id: &str,
        generation: i64,
        duration: Duration,
    ) -> Result<bool> {
        let held = [(instance_id.to_owned(), generation)];
        Ok(self
            .renew_instance_leases(node_id, &held, duration)
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// Gives up the leases `node_id` holds at these generations, so another
    /// node may take them at once. Returns how many it gave up.
    pub async fn release_instance_leases(
        &self,
        node_id: &str,
        held: &[(String, i64)],
    ) -> Result<u64> {
        let mut released = 0;
        for chunk in held.chunks(INSERT_CHUNK) {
            let sql = format!(
                "UPDATE instance_leases SET node_id = NULL, expires_at = 0 WHERE node_id = $1 \
                 AND (instance_id, generation) IN (VALUES {})",
                pairs(2, chunk.len()),
            );
            let mut query = sqlx::query(&sql).bind(node_id);
            for (instance, generation) in chunk {
                query = query.bind(instance.as_str()).bind(*generation);
            }
            released += query.execute(&self.pool).await?.rows_affected();
        }
        Ok(released)
    }

    /// Hands instance `instance_id`'s lease from `from`, which holds it at
    /// `generation`, straight to node `to` (a drain): a new generation,
    /// running out `duration` from now unless `to` renews it. Returns the
    /// new generation, or `None` when `from` no longer holds it at that
    /// generation. `to` takes it up at its next reconcile of the instance
    /// (an acquisition of its own lease). The instance's count of ready
    /// replicas goes to zero with it: those were `from`'s.
    pub async fn transfer_instance_lease(
        &self,
        instance_id: &str,
        from: &str,
        generation: i64,
        to: &str,
        duration: Duration,
    ) -> Result<Option<i64>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE instance_leases SET node_id = $4, generation = generation + 1, expires_at = $5 \
             WHERE instance_id = $1 AND node_id = $2 AND generation = $3 RETURNING generation",
        )
        .bind(instance_id)
        .bind(from)
        .bind(generation)
        .bind(to)
        .bind(now.saturating_add(ms(duration)))
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_some() {
            // The ready replicas counted so far are the old node's: only
            // the new node's own count says it runs the instance (what the
            // old node waits for before it stops its replicas).
            sqlx::query("UPDATE instances SET ready_replicas = 0 WHERE id = $1")
                .bind(instance_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        row.map(|r| r.int("generation")).transpose()
    }

    /// The leases `node_id` holds (by the store: some may have run out), or
    /// with `None` every lease, by instance.
    pub async fn instance_leases(&self, node_id: Option<&str>) -> Result<Vec<InstanceLease>> {
        let columns = "instance_id, node_id, generation, expires_at";
        let rows = match node_id {
            Some(node) => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM instance_leases WHERE node_id = $1 ORDER BY instance_id"
                ))
                .bind(node)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {columns} FROM instance_leases ORDER BY instance_id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(InstanceLease {
                    instance_id: r.text("instance_id")?,
                    node_id: r.opt_text("node_id")?,
                    generation: r.int("generation")?,
                    expires_at: r.time("expires_at")?,
                })
            })
            .collect()
    }
}

/// Whose lease is asked for: an instance's, or an agent's default instance's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseOf<'a> {
    /// The instance with this ID.
    Instance(&'a str),
    /// The default instance of the live agent with this ID.
    Agent(&'a str),
}

/// Who holds an instance's lease, as the store has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// The instance.
    pub instance_id: String,
    /// The holding node, as it last said of itself.
    pub node: crate::Node,
    /// The lease's fencing generation.
    pub generation: i64,
    /// When the lease runs out unless renewed (the holder's clock).
    pub expires_at: Timestamp,
}

impl Store {
    /// The node holding the lease of `of`, with the lease's expiry: where
    /// requests for an instance another node runs are sent. `None` when no
    /// node holds it (never taken, released, reaped, or unknown).
    pub async fn lease_holder(&self, of: LeaseOf<'_>) -> Result<Option<LeaseHolder>> {
        let (filter, id) = match of {
            LeaseOf::Instance(id) => ("l.instance_id = $1", id),
            LeaseOf::Agent(id) => (
                "l.instance_id = (SELECT default_instance_id FROM agents WHERE id = $1 AND deleted_at IS NULL)",
                id,
            ),
        };
        let row = sqlx::query(&format!(
            "SELECT l.instance_id, l.generation, l.expires_at AS lease_expires_at, {} \
             FROM instance_leases l JOIN nodes n ON n.id = l.node_id WHERE {filter}",
            crate::nodes::NODE_COLUMNS
                .split(", ")
                .map(|c| format!("n.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(LeaseHolder {
                instance_id: r.text("instance_id")?,
                node: crate::nodes::node_from_row(&r)?,
                generation: r.int("generation")?,
                expires_at: r.time("lease_expires_at")?,
            })
        })
        .transpose()
    }
}

/// Records `node_id`'s heartbeat time (a node that stopped cleanly stays
/// stopped).
async fn beat(tx: &mut sqlx::Transaction<'_, sqlx::Any>, node_id: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE nodes SET heartbeat_at = $2 WHERE id = $1 AND stopped_at IS NULL")
        .bind(node_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `($first, $first+1), …`: `n` rows of (instance, generation) parameters.
fn pairs(first: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("(${}, ${})", first + 2 * i, first + 2 * i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_rows_follow_the_fixed_parameters() {
        assert_eq!(pairs(3, 2), "($3, $4), ($5, $6)");
    }
}
