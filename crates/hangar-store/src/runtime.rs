//! What the runtime controller reads and records: the instances it must act on,
//! their replicas' logs, and where ingestion of each replica's output stopped.
//!
//! An instance's log lines are numbered by the store, not by replicas: appending
//! bumps `instances.log_seq` in the transaction that inserts the lines, so writers
//! of one instance queue on its row and `seq` is gapless and strictly increasing
//! across all its replicas. Readers can therefore resume from the last `seq` they
//! saw. Each replica's shim numbers its own output lines from 1; the last number
//! stored is kept per replica in the same transaction, so a batch replayed after a
//! restart (of the server or of the connection) is stored once.
//!
//! Deleted instances stay visible to the controller until it has removed their
//! replicas and marked them reaped, which also drops their logs and cursors.
//!
//! The controller also announces deployments here ([`Store::record_deployed`]):
//! the instance row remembers the last build announced, so the event is
//! recorded once per build however many times (and by however many servers)
//! the running instance is observed.

use hangar_core::events::Event;
use hangar_core::id::IdKind;
use hangar_core::logs::{InstanceLogLine, LogLevel, NewLogLine};
use hangar_core::model::{DriverKind, Instance, Timestamp};
use hangar_core::spec::Scaling;
use hangar_core::status::{BuildStatus, DesiredState};
use sqlx::any::AnyRow;

use crate::instances::{instance_from_row, INSTANCE_COLUMNS};
use crate::{now_ms, to_ms, Backend, Result, RowExt, Store, StoreError};

/// Which lines of an instance's log to read. Lines always come back oldest first
/// (ascending `seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// Only the newest this many of the matching lines.
    pub tail: Option<u32>,
    /// Only lines printed at or after this time.
    pub since: Option<Timestamp>,
    /// Only lines after this `seq` (to resume a read).
    pub after_seq: Option<i64>,
    /// At most this many lines: the oldest matching ones, or with `tail` the
    /// newest. 0 reads nothing.
    pub limit: u32,
}

/// Which lines of those a [`LogQuery`] reads are wanted, decided in the
/// query itself: `tail` and `limit` count only matching lines, so a filter
/// reaches back over every kept line, not over the newest few.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Only lines printed at or before this time.
    pub until: Option<Timestamp>,
    /// Only lines at this level or above.
    pub min_level: Option<LogLevel>,
}

/// An instance as the runtime controller sees it: what to run and whether to run
/// it at all.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlledInstance {
    /// The instance (a tombstone when `deleted`).
    pub instance: Instance,
    /// Deleted: every replica must go, then the instance is marked reaped.
    pub deleted: bool,
    /// Replicas go with SIGKILL at once instead of SIGTERM and a grace period.
    pub force_stop: bool,
    /// Content address of the build's artifact (`builds.artifact` of
    /// `instance.build_id`), once the build is ready.
    pub artifact: Option<String>,
    /// Status of the instance's build.
    pub build_status: BuildStatus,
    /// The agent's scaling bounds, when this is an agent's default instance
    /// (an instance of the Instances API runs its `replicas`).
    pub agent_scaling: Option<Scaling>,
    /// The cloud the instance's agent runs in, and the driver that cloud
    /// asks for: where its replicas go. `None` only if the agent's row or
    /// its cloud is gone (neither is ever deleted).
    pub cloud: Option<(String, DriverKind)>,
}

/// The instance's columns, its controller flags, its build's artifact and
/// status, and its agent's cloud. The other tables' columns come through derived
/// tables under names of their own, so the instance columns need no qualifier
/// (`id`, `status`, … exist in several tables).
fn controlled_select() -> String {
    format!(
        "SELECT {INSTANCE_COLUMNS}, deleted_at, force_stop, b.artifact, b.build_status, s.agent_scaling, \
         c.cloud_ref, c.cloud_driver FROM instances \
         JOIN (SELECT id AS build_ref, artifact, status AS build_status FROM builds) b ON b.build_ref = instances.build_id \
         LEFT JOIN (SELECT default_instance_id AS scaled_ref, scaling AS agent_scaling FROM agents WHERE deleted_at IS NULL) s \
         ON s.scaled_ref = instances.id \
         LEFT JOIN (SELECT agents.id AS cloud_agent_ref, clouds.id AS cloud_ref, clouds.driver AS cloud_driver \
         FROM agents JOIN clouds ON clouds.id = agents.cloud_id) c ON c.cloud_agent_ref = instances.agent_id"
    )
}

fn controlled_from_row(r: &AnyRow) -> Result<ControlledInstance> {
    Ok(ControlledInstance {
        instance: instance_from_row(r)?,
        deleted: r.opt_int("deleted_at")?.is_some(),
        force_stop: r.flag("force_stop")?,
        artifact: r.opt_text("artifact")?,
        build_status: r.parsed("build_status")?,
        agent_scaling: r
            .opt_text("agent_scaling")?
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                what: "agent_scaling",
                detail: e.to_string(),
            })?,
        cloud: match (r.opt_text("cloud_ref")?, r.opt_text("cloud_driver")?) {
            (Some(id), Some(driver)) => Some((
                id,
                driver.parse().map_err(|_| StoreError::Corrupt {
                    what: "clouds.driver",
                    detail: driver,
                })?,
            )),
            _ => None,
        },
    })
}

fn log_line_from_row(r: &AnyRow) -> Result<InstanceLogLine> {
    Ok(InstanceLogLine {
        seq: r.int("seq")?,
        timestamp: r.time("ts")?,
        replica_id: r.text("replica_id")?,
        stream: r.parsed("stream")?,
        level: r.parsed("level")?,
        message: r.text("message")?,
    })
}

impl Store {
    /// Stores a batch of a replica's output lines in the instance's log and
    /// returns them as stored (with their `seq`s), for the caller to broadcast.
    ///
    /// `lines` are the replica's output lines numbered up to `through_output_seq`
    /// by its shim (the last of them is that number). In one transaction: the
    /// instance's row is locked, lines the replica's cursor says are already stored
    /// are skipped, the rest get the next `seq`s, and the cursor moves to
    /// `through_output_seq`. A batch the cursor already covers (a replay) changes
    /// nothing and returns no lines; of one that overlaps it, only the last
    /// `through_output_seq - cursor` lines are new. Messages are stored as given,
    /// except that NUL characters become U+FFFD (PostgreSQL's TEXT cannot hold
    /// them). Deleted instances still take lines until they are reaped; a reaped
    /// or unknown instance is [`StoreError::NotFound`].
    pub async fn append_instance_logs(
        &self,
        instance_id: &str,
        replica_id: &str,
        through_output_seq: u64,
        lines: &[NewLogLine],
    ) -> Result<Vec<InstanceLogLine>> {
        let through = i64::try_from(through_output_seq).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        // The lock comes first: SQLite takes its write lock before any read, and on
        // PostgreSQL every writer of this instance waits here, so the cursor read
        // below is the latest and the seqs handed out are not handed out twice.
        let Some(row) = sqlx::query(
            "UPDATE instances SET log_seq = log_seq WHERE id = $1 AND reaped_at IS NULL RETURNING log_seq",
        )
        .bind(instance_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(StoreError::NotFound {
                what: IdKind::Instance,
                id: instance_id.to_owned(),
            });
        };
        let last_seq = row.int("log_seq")?;
        let cursor = sqlx::query("SELECT seq FROM replica_log_cursors WHERE replica_id = $1")
            .bind(replica_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.int("seq"))
            .transpose()?
            .unwrap_or(0);
        if cursor >= through {
            // Dropping the transaction rolls the lock back.
            return Ok(Vec::new());
        }
        let unseen = usize::try_from(through - cursor).unwrap_or(usize::MAX);
        let fresh = &lines[lines.len().saturating_sub(unseen)..];
        let stored: Vec<InstanceLogLine> = fresh
            .iter()
            .zip(last_seq + 1..)
            .map(|(line, seq)| InstanceLogLine {
                seq,
                timestamp: line.timestamp,
                replica_id: replica_id.to_owned(),
                stream: line.stream,
                level: line.level,
                message: line.message.replace('\0', "\u{FFFD}"),
            })
            .collect();
        if !stored.is_empty() {
            sqlx::query("UPDATE instances SET log_seq = log_seq + $2 WHERE id = $1")
                .bind(instance_id)
                .bind(i64::try_from(stored.len()).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
        }
        if !stored.is_empty() {
            // The whole batch is one parameter, a JSON array of
            // `[ts, stream, level, message]`, unpacked by the database: sqlx's
            // SQLite driver looks up every parameter's name when binding,
            // which is quadratic in their number, and a statement per few
            // lines costs a hand-off to its worker thread each.
            let rows: Vec<(i64, &str, &str, &str)> = stored
                .iter()
                .map(|line| {
                    (
                        to_ms(line.timestamp),
                        line.stream.as_str(),
                        line.level.as_str(),
                        line.message.as_str(),
                    )
                })
                .collect();
            let rows = serde_json::to_string(&rows).map_err(|err| StoreError::Corrupt {
                what: "log lines",
                detail: err.to_string(),
            })?;
            let sql = match self.backend {
                Backend::Sqlite => {
                    "INSERT INTO instance_logs (instance_id, seq, replica_id, ts, stream, level, message) \
                     SELECT $1, $3 + j.key + 1, $2, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'), \
                     json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]') FROM json_each($4) AS j"
                }
                Backend::Postgres => {
                    "INSERT INTO instance_logs (instance_id, seq, replica_id, ts, stream, level, message) \
                     SELECT $1, $3 + e.ord, $2, (e.v->>0)::BIGINT, e.v->>1, e.v->>2, e.v->>3 \
                     FROM jsonb_array_elements($4::jsonb) WITH ORDINALITY AS e(v, ord)"
                }
            };
            sqlx::query(sql)
                .bind(instance_id)
                .bind(replica_id)
                .bind(last_seq)
                .bind(rows)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO replica_log_cursors (replica_id, instance_id, seq) VALUES ($1, $2, $3) \
             ON CONFLICT (replica_id) DO UPDATE SET instance_id = excluded.instance_id, seq = excluded.seq",
        )
        .bind(replica_id)
        .bind(instance_id)
        .bind(through)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Appends one line Hangar itself writes into an instance's log (a replica
    /// restarted, was OOM-killed, failed to start), attributed to `replica_id`
    /// without touching that replica's ingestion cursor.
    pub async fn append_system_log(
        &self,
        instance_id: &str,
        replica_id: &str,
        line: &NewLogLine,
    ) -> Result<InstanceLogLine> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "UPDATE instances SET log_seq = log_seq + 1 WHERE id = $1 AND reaped_at IS NULL RETURNING log_seq",
        )
        .bind(instance_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(StoreError::NotFound {
                what: IdKind::Instance,
                id: instance_id.to_owned(),
            });
        };
        let stored = InstanceLogLine {
            seq: row.int("log_seq")?,
            timestamp: line.timestamp,
            replica_id: replica_id.to_owned(),
            stream: line.stream,
            level: line.level,
            message: line.message.replace('\0', "\u{FFFD}"),
        };
        sqlx::query(
            "INSERT INTO instance_logs (instance_id, seq, replica_id, ts, stream, level, message) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(instance_id)
        .bind(stored.seq)
        .bind(replica_id)
        .bind(to_ms(stored.timestamp))
        .bind(stored.stream.as_str())
        .bind(stored.level.as_str())
        .bind(stored.message.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// The last output line number of the replica already stored (where its
    /// ingestion resumes after it), or `None` when nothing of it was stored.
    pub async fn replica_log_cursor(&self, replica_id: &str) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT seq FROM replica_log_cursors WHERE replica_id = $1")
            .bind(replica_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let seq = r.int("seq")?;
            u64::try_from(seq).map_err(|_| StoreError::Corrupt {
                what: "seq",
                detail: format!("{seq} is out of range"),
            })
        })
        .transpose()
    }

    /// Forgets a replica's cursor (the replica is gone and its output with it).
    pub async fn forget_replica_log_cursor(&self, replica_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM replica_log_cursors WHERE replica_id = $1")
            .bind(replica_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Lines of an instance's log, oldest first (see [`LogQuery`]).
    ///
    /// Every read is a range of the primary key `(instance_id, seq)`. `since` is
    /// first turned into the lowest `seq` printed at or after it, from the
    /// `(instance_id, ts, seq)` index, because timestamps only roughly follow `seq`
    /// and scanning by `seq` alone could walk the instance's whole log.
    pub async fn instance_logs(
        &self,
        instance_id: &str,
        query: &LogQuery,
    ) -> Result<Vec<InstanceLogLine>> {
        self.instance_logs_matching(instance_id, query, &LogFilter::default())
            .await
    }

    /// Lines of an instance's log that pass `filter`, oldest first: the
    /// newest `tail` (or oldest `limit`) of the matching ones.
    ///
    /// `until` bounds the range like `since` does (the highest `seq` printed
    /// at or before it, from the `(instance_id, ts, seq)` index), so reading
    /// back to an old time does not walk the newer lines. A level filter
    /// walks the range until it has found enough lines.
    pub async fn instance_logs_matching(
        &self,
        instance_id: &str,
        query: &LogQuery,
        filter: &LogFilter,
    ) -> Result<Vec<InstanceLogLine>> {
        let limit = query.tail.map_or(query.limit, |t| t.min(query.limit));
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "SELECT seq, ts, replica_id, stream, level, message FROM instance_logs WHERE instance_id = $1",
        );
        let mut binds: Vec<i64> = Vec::new();
        if let Some(after) = query.after_seq {
            binds.push(after);
            sql.push_str(&format!(" AND seq > ${}", binds.len() + 1));
        }
        if let Some(since) = query.since {
            binds.push(to_ms(since));
            let p = binds.len() + 1;
            sql.push_str(&format!(
                " AND seq >= (SELECT MIN(seq) FROM instance_logs WHERE instance_id = $1 AND ts >= ${p}) AND ts >= ${p}"
            ));
        }
        if let Some(until) = filter.until {
            binds.push(to_ms(until));
            let p = binds.len() + 1;
            sql.push_str(&format!(
                " AND seq <= (SELECT MAX(seq) FROM instance_logs WHERE instance_id = $1 AND ts <= ${p}) AND ts <= ${p}"
            ));
        }
        if let Some(min) = filter.min_level {
            // The names come from the enum, not from the request: literals
            // are safe, and keep the binds numeric.
            let names: Vec<String> = LogLevel::ALL
                .iter()
                .filter(|level| level.rank() >= min.rank())
                .map(|level| format!("'{}'", level.as_str()))
                .collect();
            sql.push_str(&format!(" AND level IN ({})", names.join(", ")));
        }
        let newest_first = query.tail.is_some();
        binds.push(i64::from(limit));
        sql.push_str(&format!(
            " ORDER BY seq {} LIMIT ${}",
            if newest_first { "DESC" } else { "ASC" },
            binds.len() + 1
        ));
        let mut q = sqlx::query(&sql).bind(instance_id);
        for b in binds {
            q = q.bind(b);
        }
        let mut lines = q
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(log_line_from_row)
            .collect::<Result<Vec<_>>>()?;
        if newest_first {
            lines.reverse();
        }
        Ok(lines)
    }

    /// The number of the newest line of an instance's log (0 before the
    /// first): where a follower that starts now starts counting.
    pub async fn instance_log_seq(&self, instance_id: &str) -> Result<i64> {
        sqlx::query("SELECT log_seq FROM instances WHERE id = $1")
            .bind(instance_id)
            .fetch_optional(&self.pool)
            .await?
            .map_or(Ok(0), |row| row.int("log_seq"))
    }

    /// Deletes all but the newest `keep` lines of an instance's log; returns how
    /// many went.
    ///
    /// An instance's stored seqs are always one range ending at its `log_seq`
    /// (lines are appended with the next seqs and only ever removed oldest first,
    /// or all at once), so the cut is `log_seq - keep` and the delete is one range
    /// of the primary key.
    pub async fn trim_instance_logs(&self, instance_id: &str, keep: u32) -> Result<u64> {
        let deleted = sqlx::query(
            "DELETE FROM instance_logs WHERE instance_id = $1 \
             AND seq <= (SELECT log_seq FROM instances WHERE id = $1) - $2",
        )
        .bind(instance_id)
        .bind(i64::from(keep))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted)
    }

    /// Deletes the log lines printed before `cutoff`, of every instance;
    /// returns how many went. Per instance the cut is the newest such line's
    /// `seq`, so each log stays one range of seqs (see
    /// [`Store::trim_instance_logs`]). Lines are numbered as they are stored,
    /// so a line stored late (its replica's output waited in the shim while
    /// the server was away) can carry an old time and a high number: lines
    /// numbered before it go with it, up to that delay before their time.
    pub async fn expire_instance_logs(&self, cutoff: Timestamp) -> Result<u64> {
        let cuts = sqlx::query(
            "SELECT instance_id, MAX(seq) AS cut FROM instance_logs WHERE ts < $1 GROUP BY instance_id",
        )
        .bind(to_ms(cutoff))
        .fetch_all(&self.pool)
        .await?;
        let mut deleted = 0;
        for cut in cuts {
            deleted +=
                sqlx::query("DELETE FROM instance_logs WHERE instance_id = $1 AND seq <= $2")
                    .bind(cut.text("instance_id")?)
                    .bind(cut.int("cut")?)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
        }
        Ok(deleted)
    }

    /// An instance the controller must look at, by ID alone (the controller acts
    /// for every organization): live, or deleted but not yet reaped. `None` for an
    /// unknown or reaped instance.
    pub async fn controlled_instance(&self, id: &str) -> Result<Option<ControlledInstance>> {
        let row = sqlx::query(&format!(
            "{} WHERE instances.id = $1 AND instances.reaped_at IS NULL",
            controlled_select()
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(controlled_from_row).transpose()
    }

    /// Every instance the controller must look at: live, or deleted but not yet
    /// reaped, in ID order.
    pub async fn controlled_instances(&self) -> Result<Vec<ControlledInstance>> {
        sqlx::query(&format!(
            "{} WHERE instances.reaped_at IS NULL ORDER BY instances.id",
            controlled_select()
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(controlled_from_row)
        .collect()
    }

    /// Records that every replica of a deleted instance is gone: the controller
    /// stops looking at it, and its logs, replica cursors and lease are deleted. Doing it
    /// again is harmless; an instance that is not deleted (or unknown) is
    /// [`StoreError::NotFound`], since reaping a live one would orphan its
    /// replicas.
    pub async fn mark_instance_reaped(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // The instance's row first, as in `append_instance_logs`: an append either
        // finished before (its lines are deleted here) or finds the instance reaped.
        let marked = sqlx::query(
            "UPDATE instances SET reaped_at = COALESCE(reaped_at, $2) WHERE id = $1 AND deleted_at IS NOT NULL",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            return Err(StoreError::NotFound {
                what: IdKind::Instance,
                id: id.to_owned(),
            });
        }
        sqlx::query("DELETE FROM instance_logs WHERE instance_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM replica_log_cursors WHERE instance_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // No node runs it any more.
        sqlx::query("DELETE FROM instance_leases WHERE instance_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Announces that an agent's default instance runs on `build_id`:
    /// records `agent.deployed` (subject: the agent) and notes the build as
    /// announced, in one transaction. Once per build and instance, however
    /// often it is called and by however many controllers: `None` when this
    /// build was announced already, is no longer the instance's build, or the
    /// instance is not (or no longer) an agent's default instance.
    pub async fn record_deployed(
        &self,
        instance_id: &str,
        build_id: &str,
    ) -> Result<Option<Event>> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query(
            "UPDATE instances SET deployed_build_id = $2 WHERE id = $1 AND build_id = $2 AND deleted_at IS NULL \
             AND (deployed_build_id IS NULL OR deployed_build_id <> $2) \
             AND id IN (SELECT default_instance_id FROM agents WHERE deleted_at IS NULL AND default_instance_id IS NOT NULL) \
             RETURNING organization_id, agent_id",
        )
        .bind(instance_id)
        .bind(build_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let agent_id = row.text("agent_id")?;
        let data = serde_json::json!({
            "agent_id": agent_id,
            "instance_id": instance_id,
            "build_id": build_id,
        });
        let event = Self::record_event_in(
            &mut tx,
            &row.text("organization_id")?,
            "agent.deployed",
            &agent_id,
            data,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(event))
    }

    /// Stops or starts an instance of the organization. Starting it also clears
    /// `force_stop`, so a later stop is graceful again. `None` when there is no
    /// such instance (deleted ones included: they stay stopped).
    pub async fn set_instance_desired_state(
        &self,
        org_id: &str,
        id: &str,
        desired: DesiredState,
    ) -> Result<Option<Instance>> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE instances SET desired_state = $3, \
             force_stop = CASE WHEN $3 = 'running' THEN 0 ELSE force_stop END, updated_at = $4 \
             WHERE organization_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind(org_id)
        .bind(id)
        .bind(desired.as_str())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let instance = instance_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(instance))
    }
}
