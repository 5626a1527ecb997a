//! Nodes: the servers on this database, each keeping its row fresh with a
//! heartbeat. A node's status is not stored: [`Node::status`] derives it
//! from the last heartbeat and the caller's idea of how long silence may
//! last, so that every server reading the same rows agrees.

use hangar_core::model::Timestamp;

use crate::{from_ms, now_ms, Result, RowExt, Store};

/// What a node says of itself on every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBeat {
    /// Its ID (kept in its data dir).
    pub id: String,
    /// Where other nodes and clients reach it (`http://10.0.0.5:7070`).
    pub address: String,
    /// The `hangar` version it runs.
    pub version: String,
    /// CPUs it has, in millicores.
    pub cpu_millis: u64,
    /// Memory it has, in bytes.
    pub memory_bytes: u64,
    /// Replicas it runs now.
    pub replicas: u64,
}

/// A node as last heard of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What it said last.
    pub beat: NodeBeat,
    /// When it started (its first heartbeat since its last start).
    pub started_at: Timestamp,
    /// Its last heartbeat.
    pub heartbeat_at: Timestamp,
    /// When it stopped, if it stopped cleanly and has not started again.
    pub stopped_at: Option<Timestamp>,
    /// Since when it is being drained, if it is.
    pub draining_at: Option<Timestamp>,
}

/// Whether a node is there, as any node on the database sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Heard from within the allowed silence.
    Ready,
    /// Stopped cleanly.
    Stopped,
    /// Silent for longer than allowed, without saying it stopped.
    Dead,
}

impl NodeStatus {
    /// As the API writes it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Stopped => "stopped",
            Self::Dead => "dead",
        }
    }
}

impl Node {
    /// Its status at `now`, a node silent for more than `dead_after` being
    /// dead.
    #[must_use]
    pub fn status(&self, now: Timestamp, dead_after: std::time::Duration) -> NodeStatus {
        if self.stopped_at.is_some() {
            return NodeStatus::Stopped;
        }
        let silent = now.signed_duration_since(self.heartbeat_at);
        match silent.to_std() {
            Ok(silent) if silent > dead_after => NodeStatus::Dead,
            _ => NodeStatus::Ready,
        }
    }
}

pub(crate) const NODE_COLUMNS: &str = "id, address, version, cpu_millis, memory_bytes, replicas, started_at, heartbeat_at, stopped_at, draining_at";

pub(crate) fn node_from_row(r: &impl RowExt) -> Result<Node> {
    let unsigned = |col| r.int(col).map(|v| u64::try_from(v).unwrap_or(0));
    Ok(Node {
        beat: NodeBeat {
            id: r.text("id")?,
            address: r.text("address")?,
            version: r.text("version")?,
            cpu_millis: unsigned("cpu_millis")?,
            memory_bytes: unsigned("memory_bytes")?,
            replicas: unsigned("replicas")?,
        },
        started_at: r.time("started_at")?,
        heartbeat_at: r.time("heartbeat_at")?,
        stopped_at: r.opt_time("stopped_at")?,
        draining_at: r.opt_time("draining_at")?,
    })
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Store {
    /// Records a node's heartbeat; with `starting`, also that it (re)started
    /// now, which clears a clean stop. Returns whether the node is being
    /// drained (an operator's word, which outlives restarts).
    pub async fn node_heartbeat(&self, beat: &NodeBeat, starting: bool) -> Result<bool> {
        let now = now_ms();
        let sql = if starting {
            "INSERT INTO nodes (id, address, version, cpu_millis, memory_bytes, replicas, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (id) DO UPDATE SET address = $2, version = $3, \
             cpu_millis = $4, memory_bytes = $5, replicas = $6, started_at = $7, heartbeat_at = $7, stopped_at = NULL \
             RETURNING draining_at"
        } else {
            "INSERT INTO nodes (id, address, version, cpu_millis, memory_bytes, replicas, started_at, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (id) DO UPDATE SET address = $2, version = $3, \
             cpu_millis = $4, memory_bytes = $5, replicas = $6, heartbeat_at = $7 RETURNING draining_at"
        };
        let row = sqlx::query(sql)
            .bind(&beat.id)
            .bind(&beat.address)
            .bind(&beat.version)
            .bind(signed(beat.cpu_millis))
            .bind(signed(beat.memory_bytes))
            .bind(signed(beat.replicas))
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.opt_int("draining_at")?.is_some())
    }

    /// Marks node `id` draining (since now, unless it already was) or not;
    /// returns it as it is then, `None` when there is no such node.
    pub async fn set_node_draining(&self, id: &str, draining: bool) -> Result<Option<Node>> {
        let since = draining.then(now_ms);
        sqlx::query(
            "UPDATE nodes SET draining_at = CASE WHEN $2 IS NULL THEN NULL ELSE COALESCE(draining_at, $2) END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(since)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(node_from_row).transpose()
    }

    /// Records that a node stopped cleanly.
    pub async fn node_stopped(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE nodes SET stopped_at = $2, replicas = 0 WHERE id = $1")
            .bind(id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every node ever heard of, by ID.
    pub async fn list_nodes(&self) -> Result<Vec<Node>> {
        let rows = sqlx::query(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(node_from_row).collect()
    }
}

/// Now, as the store writes times (for [`Node::status`]).
#[must_use]
pub fn store_now() -> Timestamp {
    from_ms(now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_node_is_ready_while_heard_from_dead_after_silence_stopped_when_it_said_so() {
        let at = |ms| from_ms(ms);
        let mut node = Node {
            beat: NodeBeat {
                id: "n".into(),
                address: "http://a".into(),
                version: "0".into(),
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
                replicas: 0,
            },
            started_at: at(0),
            heartbeat_at: at(10_000),
            stopped_at: None,
            draining_at: None,
        };
        let dead_after = Duration::from_secs(15);
        assert_eq!(node.status(at(25_000), dead_after), NodeStatus::Ready);
        assert_eq!(node.status(at(25_001), dead_after), NodeStatus::Dead);
        assert_eq!(
            node.status(at(5_000), dead_after),
            NodeStatus::Ready,
            "a clock behind"
        );
        node.stopped_at = Some(at(26_000));
        assert_eq!(node.status(at(99_000), dead_after), NodeStatus::Stopped);
    }
}
