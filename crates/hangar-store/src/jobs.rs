//! The durable job queue: accepting invocations, leasing them to servers,
//! recording how they ended.
//!
//! A job is a row from the moment it is accepted, so an accepted job survives
//! any crash of the server that accepted it. Servers take work with
//! [`Store::claim_jobs`], which moves pending rows to `running` under a lease
//! (`lease_owner`, `lease_until`) and counts an attempt. The owner renews the
//! lease while the agent works ([`Store::renew_job_leases`]) and records the
//! end in batches ([`Store::finish_jobs`]); every write of a running job is
//! conditional on the lease still being the writer's, so a server that lost
//! its lease (the job was cancelled, or reclaimed after the lease ran out)
//! cannot overwrite what happened since. A lease that runs out puts the job
//! back to pending ([`Store::reclaim_expired_jobs`]): delivery to the agent is
//! therefore *at least once*, and agents dedupe on the job id they are sent.
//!
//! The per-agent concurrency cap is enforced where claims happen, so it holds
//! across servers sharing one database: on SQLite one statement picks and
//! claims (SQLite has one writer at a time); on PostgreSQL claimers lock the
//! candidate rows with `FOR UPDATE SKIP LOCKED` (two claimers never wait on or
//! take the same row) and serialize per agent on a transaction-scoped advisory
//! lock while they count that agent's running jobs.
//!
//! Not here: running jobs (the gateway's job runner) and their HTTP shape
//! (the API).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hangar_core::id::{new_id, IdKind};
use hangar_core::model::Job;
use hangar_core::status::JobStatus;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Any;

use crate::events::PendingEvent;
use crate::{
    from_ms, now_ms, page_limit, to_json, value_rows, Backend, Conditions, Page, Result, RowExt,
    Store, StoreError, INSERT_CHUNK,
};

/// An invocation to accept.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// Owning organization.
    pub organization_id: String,
    /// The agent invoked.
    pub agent_id: String,
    /// The invocation's input.
    pub input: Value,
    /// Extra headers for the agent.
    pub headers: BTreeMap<String, String>,
    /// How long one attempt may wait for the agent (0: the default, 300 s).
    pub timeout: Duration,
    /// Client-chosen key that makes a repeated request return the same job.
    pub idempotency_key: Option<String>,
    /// A synchronous invocation recorded as a job: it is created `running`,
    /// leased to this owner (the request that runs it) for `timeout` plus
    /// [`SYNC_LEASE_MARGIN`], instead of `pending`.
    pub run_by: Option<String>,
}

/// How long past its timeout a synchronous invocation's job stays leased to
/// the request running it; if that server dies, the job runs from the queue.
pub const SYNC_LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Default time one attempt may wait for the agent.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// The agent answered.
    Completed {
        /// Its output.
        output: Value,
        /// Its `usage`, if any.
        usage: Option<Value>,
        /// The instance invoked.
        instance_id: String,
        /// The replica that answered.
        replica_id: String,
        /// How long the agent took.
        latency: Duration,
    },
    /// Failed for good (the agent's error, a timeout, retries used up).
    Failed {
        /// `{code, message, details?}`.
        error: Value,
        /// The instance invoked, if one was.
        instance_id: Option<String>,
    },
    /// An infrastructure failure: pending again, not before `after` from now.
    Retry {
        /// `{code, message}` of this attempt.
        error: Value,
        /// The backoff.
        after: Duration,
    },
}

/// An attempt's end, for [`Store::finish_jobs`].
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    /// The job.
    pub job_id: String,
    /// How it ended.
    pub outcome: JobOutcome,
}

/// The error object stored in a job (`{code, message}`).
#[must_use]
pub fn job_error(code: &str, message: impl Into<String>) -> Value {
    serde_json::json!({"code": code, "message": message.into()})
}

/// Candidates a claim looks at per call, as a multiple of the batch asked
/// for: pending jobs of agents at their cap are passed over within this
/// window (a window, not the whole queue, keeps the claim an index range).
const CLAIM_WINDOW_FACTOR: u32 = 4;

const JOB_COLUMNS: &str = "id, organization_id, agent_id, status, input, headers, timeout_ms, idempotency_key, sync, \
     output, usage, error, attempts, instance_id, replica_id, latency_ms, created_at, started_at, finished_at";

fn opt_json(r: &AnyRow, col: &'static str) -> Result<Option<Value>> {
    r.opt_text(col)?
        .map(|s| {
            serde_json::from_str(&s).map_err(|e| StoreError::Corrupt {
                what: col,
                detail: e.to_string(),
            })
        })
        .transpose()
}

fn non_negative(v: i64, col: &'static str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        what: col,
        detail: format!("{v} is negative"),
    })
}

pub(crate) fn job_from_row(r: &AnyRow) -> Result<Job> {
    Ok(Job {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        agent_id: r.text("agent_id")?,
        status: r.parsed("status")?,
        input: r.json("input")?,
        headers: r.json("headers")?,
        timeout_ms: non_negative(r.int("timeout_ms")?, "timeout_ms")?,
        idempotency_key: r.opt_text("idempotency_key")?,
        sync: r.flag("sync")?,
        output: opt_json(r, "output")?,
        usage: opt_json(r, "usage")?,
        error: opt_json(r, "error")?,
        attempts: r.count("attempts")?,
        instance_id: r.opt_text("instance_id")?,
        replica_id: r.opt_text("replica_id")?,
        latency_ms: r
            .opt_int("latency_ms")?
            .map(|v| non_negative(v, "latency_ms"))
            .transpose()?,
        created_at: r.time("created_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

/// The event a finished attempt records (`job.completed` or `job.failed`;
/// none for a retry), from its outcome and the job's row (`organization_id`,
/// `agent_id`, as the finishing `UPDATE` returned them).
fn job_event(row: &AnyRow, result: &JobResult) -> Result<Option<PendingEvent>> {
    let (kind, mut data) = match &result.outcome {
        JobOutcome::Completed {
            instance_id,
            latency,
            ..
        } => (
            "job.completed",
            serde_json::json!({"instance_id": instance_id, "latency_ms": ms(*latency)}),
        ),
        JobOutcome::Failed { error, instance_id } => (
            "job.failed",
            serde_json::json!({"instance_id": instance_id, "error": error}),
        ),
        JobOutcome::Retry { .. } => return Ok(None),
    };
    if let Some(object) = data.as_object_mut() {
        object.insert("job_id".to_owned(), result.job_id.clone().into());
        object.insert("agent_id".to_owned(), row.text("agent_id")?.into());
    }
    Ok(Some(PendingEvent {
        organization_id: row.text("organization_id")?,
        kind: kind.to_owned(),
        subject: result.job_id.clone(),
        data,
    }))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `$first, $first+1, …` for `n` parameters.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns a new job's row sets (14 values per row).
const INSERT_JOB: &str =
    "INSERT INTO jobs (id, organization_id, agent_id, status, input, headers, timeout_ms, \
     idempotency_key, sync, attempts, created_at, started_at, lease_owner, lease_until)";
type JobQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// A job about to be inserted: its row, and what the row holds beyond it.
/// Its ID is fixed here, so storing it again after a failure cannot make a
/// second job.
pub(crate) struct PreparedJob {
    pub(crate) job: Job,
    timeout: Duration,
    run_by: Option<String>,
    lease_until: Option<i64>,
    now: i64,
}

impl PreparedJob {
    pub(crate) fn new(new: NewJob) -> Self {
        let now = now_ms();
        let timeout = if new.timeout.is_zero() {
            DEFAULT_JOB_TIMEOUT
        } else {
            new.timeout
        };
        let running = new.run_by.is_some();
        let job = Job {
            id: new_id(IdKind::Job),
            organization_id: new.organization_id,
            agent_id: new.agent_id,
            status: if running {
                JobStatus::Running
            } else {
                JobStatus::Pending
            },
            input: new.input,
            headers: new.headers,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            idempotency_key: new.idempotency_key,
            sync: running,
            output: None,
            usage: None,
            error: None,
            attempts: u32::from(running),
            instance_id: None,
            replica_id: None,
            latency_ms: None,
            created_at: from_ms(now),
            started_at: running.then(|| from_ms(now)),
            finished_at: None,
        };
        let lease_until = running.then(|| now.saturating_add(ms(timeout + SYNC_LEASE_MARGIN)));
        Self {
            job,
            timeout,
            run_by: new.run_by,
            lease_until,
            now,
        }
    }

    /// Binds this job's 14 values (in [`INSERT_JOB`]'s column order).
    fn bind<'q>(&'q self, query: JobQuery<'q>) -> JobQuery<'q> {
        let job = &self.job;
        query
            .bind(&job.id)
            .bind(&job.organization_id)
            .bind(&job.agent_id)
            .bind(job.status.as_str())
            .bind(to_json(&job.input))
            .bind(to_json(&job.headers))
            .bind(ms(self.timeout))
            .bind(job.idempotency_key.as_deref())
            .bind(i64::from(job.sync))
            .bind(i64::from(job.attempts))
            .bind(self.now)
            .bind(job.sync.then_some(self.now))
            .bind(self.run_by.as_deref())
            .bind(self.lease_until)
    }
}

/// The condition on a `jobs` row that its agent's default instance is not
/// held by another running node ([`Store::claim_jobs`]): `$3` is now, `$7`
/// this node's ID.
const HELD_ELSEWHERE: &str = "NOT EXISTS (SELECT 1 FROM agents a \
     JOIN instance_leases l ON l.instance_id = a.default_instance_id \
     JOIN nodes n ON n.id = l.node_id \
     WHERE a.id = jobs.agent_id AND l.node_id <> $7 AND l.expires_at > $3 AND n.stopped_at IS NULL)";

impl Store {
    /// Accepts a job; with an idempotency key already used for this agent,
    /// returns the existing job instead (`false` in the second field).
    /// Concurrent requests with one key get one job: the unique index decides,
    /// and the losers read the winner's row.
    pub async fn create_job(&self, new: NewJob) -> Result<(Job, bool)> {
        if let Some(key) = &new.idempotency_key {
            if let Some(job) = self
                .job_by_idempotency_key(&new.organization_id, &new.agent_id, key)
                .await?
            {
                return Ok((job, false));
            }
        }
        let prepared = PreparedJob::new(new);
        let sql = format!("{INSERT_JOB} VALUES {}", value_rows(1, 14));
        let inserted = prepared.bind(sqlx::query(&sql)).execute(&self.pool).await;
        let job = prepared.job;
        match (inserted, &job.idempotency_key) {
            (Ok(_), _) => Ok((job, true)),
            // A concurrent request with the same key won the race: answer with its job.
            (Err(sqlx::Error::Database(e)), Some(key)) if e.is_unique_violation() => {
                let existing = self
                    .job_by_idempotency_key(&job.organization_id, &job.agent_id, key)
                    .await?;
                existing.map(|j| (j, false)).ok_or(StoreError::NotFound {
                    what: IdKind::Job,
                    id: job.id,
                })
            }
            (Err(e), _) => Err(e.into()),
        }
    }

    /// Inserts prepared jobs (without idempotency keys) in one transaction:
    /// one commit (on SQLite, one turn of the single write lock) for the lot,
    /// all stored or none. Keyed jobs belong to [`Store::create_job`], which
    /// resolves key races.
    pub(crate) async fn insert_prepared(&self, prepared: &[PreparedJob]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for chunk in prepared.chunks(INSERT_CHUNK) {
            let sql = format!("{INSERT_JOB} VALUES {}", value_rows(chunk.len(), 14));
            let mut query = sqlx::query(&sql);
            for p in chunk {
                query = p.bind(query);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Inserts one prepared job (without an idempotency key), after its
    /// batch failed: its ID already stored means that batch's commit went
    /// through after all (a connection lost while committing), and that job
    /// is the answer — never a second one.
    pub(crate) async fn insert_prepared_one(&self, prepared: &PreparedJob) -> Result<Job> {
        let sql = format!("{INSERT_JOB} VALUES {}", value_rows(1, 14));
        match prepared.bind(sqlx::query(&sql)).execute(&self.pool).await {
            Ok(_) => Ok(prepared.job.clone()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => self
                .get_job(&prepared.job.organization_id, &prepared.job.id)
                .await?
                .ok_or(StoreError::NotFound {
                    what: IdKind::Job,
                    id: prepared.job.id.clone(),
                }),
            Err(e) => Err(e.into()),
        }
    }

    async fn job_by_idempotency_key(
        &self,
        org_id: &str,
        agent_id: &str,
        key: &str,
    ) -> Result<Option<Job>> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE organization_id = $1 AND agent_id = $2 AND idempotency_key = $3"
        ))
        .bind(org_id)
        .bind(agent_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// A job of the organization.
    pub async fn get_job(&self, org_id: &str, id: &str) -> Result<Option<Job>> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// The organization's jobs, newest first — all of them, or one
    /// agent's, or those in one status — a page after job `after`.
    pub async fn list_jobs(
        &self,
        org_id: &str,
        agent_id: Option<&str>,
        status: Option<JobStatus>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Job>> {
        let rows = Conditions::new("organization_id", org_id)
            .cmp("agent_id", "=", agent_id)
            .cmp("status", "=", status.map(JobStatus::as_str))
            .cmp("id", "<", after)
            .fetch_all(
                &self.pool,
                &format!("{JOB_COLUMNS} FROM jobs"),
                &format!("ORDER BY id DESC LIMIT {}", page_limit(limit)),
            )
            .await?;
        let jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(jobs, limit.clamp(1, 100), |j| &j.id))
    }

    /// Cancels a job that has not finished; a finished job is returned
    /// unchanged. A running job's lease is left as it is: its owner notices
    /// the cancellation when it renews (or at once, when told in-process) and
    /// aborts the request to the agent; its result would be discarded anyway.
    pub async fn cancel_job(&self, org_id: &str, id: &str) -> Result<Option<Job>> {
        sqlx::query(
            "UPDATE jobs SET status = 'cancelled', finished_at = $3 WHERE organization_id = $1 AND id = $2 AND status IN ('pending', 'running')",
        )
        .bind(org_id)
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.get_job(org_id, id).await
    }

    /// Claims up to `limit` pending jobs (oldest first, due ones only) for
    /// `owner`, leased for `lease`, such that no agent has more than
    /// `per_agent_cap` running jobs afterwards, counting those of every server.
    /// Each claimed job's `attempts` goes up by one and `started_at` is now.
    ///
    /// A job runs where its agent runs: a job whose agent's default
    /// instance is leased to another node (one that has not stopped, under
    /// a lease that has not run out) is left for that node, which can reach
    /// the agent's replicas. `owner` is `<node ID>/<process>`, as the job
    /// runner names itself; the node is the part before the first `/`. A
    /// holder that dies stops renewing, so once its lease runs out its
    /// agents' jobs are anyone's again.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        limit: u32,
        per_agent_cap: u32,
        lease: Duration,
    ) -> Result<Vec<Job>> {
        if limit == 0 || per_agent_cap == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let until = now.saturating_add(ms(lease));
        let window = i64::from(limit.saturating_mul(CLAIM_WINDOW_FACTOR));
        let node = owner.split('/').next().unwrap_or(owner);
        match self.backend {
            Backend::Sqlite => {
                // One statement: SQLite runs one writer at a time, so the
                // counts it reads are the ones it writes against. Candidates
                // are numbered per agent; an agent with `running` jobs takes
                // at most `cap - running` of them.
                let rows = sqlx::query(&format!(
                    "UPDATE jobs SET status = 'running', lease_owner = $1, lease_until = $2, \
                     attempts = attempts + 1, started_at = $3 \
                     WHERE id IN ( \
                       SELECT id FROM ( \
                         SELECT c.id, c.agent_id, ROW_NUMBER() OVER (PARTITION BY c.agent_id ORDER BY c.id) AS rn \
                         FROM (SELECT id, agent_id FROM jobs WHERE status = 'pending' AND not_before <= $3 \
                               AND {HELD_ELSEWHERE} ORDER BY id LIMIT $5) c \
                       ) ranked \
                       WHERE ranked.rn + (SELECT COUNT(*) FROM jobs r WHERE r.agent_id = ranked.agent_id AND r.status = 'running') <= $4 \
                       ORDER BY ranked.id LIMIT $6 \
                     ) RETURNING {JOB_COLUMNS}"
                ))
                .bind(owner)
                .bind(until)
                .bind(now)
                .bind(i64::from(per_agent_cap))
                .bind(window)
                .bind(i64::from(limit))
                .bind(node)
                .fetch_all(&self.pool)
                .await?;
                let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
                jobs.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(jobs)
            }
            Backend::Postgres => {
                self.claim_jobs_postgres(owner, node, limit, per_agent_cap, now, until, window)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn claim_jobs_postgres(
        &self,
        owner: &str,
        node: &str,
        limit: u32,
        per_agent_cap: u32,
        now: i64,
        until: i64,
        window: i64,
    ) -> Result<Vec<Job>> {
        let mut tx = self.pool.begin().await?;
        // Rows another claimer holds are skipped, never waited for: two
        // claimers never take the same job.
        let candidates = sqlx::query(&format!(
            "SELECT id, agent_id FROM jobs WHERE status = 'pending' AND not_before <= $1 \
             AND {} ORDER BY id LIMIT $2 FOR UPDATE OF jobs SKIP LOCKED",
            HELD_ELSEWHERE.replace("$3", "$1").replace("$7", "$3")
        ))
        .bind(now)
        .bind(window)
        .bind(node)
        .fetch_all(&mut *tx)
        .await?;
        let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in &candidates {
            by_agent
                .entry(row.text("agent_id")?)
                .or_default()
                .push(row.text("id")?);
        }
        let mut chosen = BTreeSet::new();
        // Agents in one order for every claimer, so advisory locks cannot
        // deadlock; each is held to the end of the transaction, so the next
        // claimer of the agent counts this one's claims.
        for (agent, ids) in &by_agent {
            sqlx::query("SELECT pg_advisory_xact_lock(7301, hashtext($1))")
                .bind(agent)
                .execute(&mut *tx)
                .await?;
            let running = sqlx::query(
                "SELECT COUNT(*) AS n FROM jobs WHERE agent_id = $1 AND status = 'running'",
            )
            .bind(agent)
            .fetch_one(&mut *tx)
            .await?
            .int("n")?;
            let free = i64::from(per_agent_cap).saturating_sub(running).max(0);
            chosen.extend(ids.iter().take(usize::try_from(free).unwrap_or(0)).cloned());
        }
        let chosen: Vec<String> = chosen
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        if chosen.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_until = $2, \
             attempts = attempts + 1, started_at = $3 WHERE id IN ({}) RETURNING {JOB_COLUMNS}",
            placeholders(4, chosen.len())
        );
        let mut q = sqlx::query(&sql).bind(owner).bind(until).bind(now);
        for id in &chosen {
            q = q.bind(id.as_str());
        }
        let rows = q.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(jobs)
    }

    /// Extends the lease of every job `owner` runs to `lease` from now;
    /// returns the IDs of those jobs. A job its owner believes it runs but
    /// that is missing here was cancelled or reclaimed: the owner drops it.
    pub async fn renew_job_leases(&self, owner: &str, lease: Duration) -> Result<Vec<String>> {
        let until = now_ms().saturating_add(ms(lease));
        sqlx::query(
            "UPDATE jobs SET lease_until = $2 WHERE lease_owner = $1 AND status = 'running' RETURNING id",
        )
        .bind(owner)
        .bind(until)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.text("id"))
        .collect()
    }

    /// Records how attempts of `owner`'s jobs ended, in one transaction.
    /// Returns, per result, whether it was recorded: `false` when the job is
    /// no longer running under `owner` (cancelled, or reclaimed after its
    /// lease ran out), whose state is then left as it is.
    pub async fn finish_jobs(&self, owner: &str, results: &[JobResult]) -> Result<Vec<bool>> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut applied = Vec::with_capacity(results.len());
        let mut events = Vec::new();
        let mut tx = self.pool.begin().await?;
        for result in results {
            let query = match &result.outcome {
                JobOutcome::Completed {
                    output,
                    usage,
                    instance_id,
                    replica_id,
                    latency,
                } => sqlx::query(
                    "UPDATE jobs SET status = 'completed', output = $3, usage = $4, error = NULL, \
                     instance_id = $5, replica_id = $6, latency_ms = $7, finished_at = $8, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND status = 'running' \
                     RETURNING organization_id, agent_id",
                )
                .bind(&result.job_id)
                .bind(owner)
                .bind(to_json(output))
                .bind(usage.as_ref().map(to_json))
                .bind(instance_id.as_str())
                .bind(replica_id.as_str())
                .bind(ms(*latency))
                .bind(now),
                JobOutcome::Failed { error, instance_id } => sqlx::query(
                    "UPDATE jobs SET status = 'failed', error = $3, instance_id = COALESCE($4, instance_id), \
                     finished_at = $5, lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND status = 'running' \
                     RETURNING organization_id, agent_id",
                )
                .bind(&result.job_id)
                .bind(owner)
                .bind(to_json(error))
                .bind(instance_id.as_deref())
                .bind(now),
                JobOutcome::Retry { error, after } => sqlx::query(
                    "UPDATE jobs SET status = 'pending', error = $3, not_before = $4, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND lease_owner = $2 AND status = 'running' \
                     RETURNING organization_id, agent_id",
                )
                .bind(&result.job_id)
                .bind(owner)
                .bind(to_json(error))
                .bind(now.saturating_add(ms(*after))),
            };
            let row = query.fetch_optional(&mut *tx).await?;
            if let Some(row) = &row {
                events.extend(job_event(row, result)?);
            }
            applied.push(row.is_some());
        }
        Self::record_events_in(&mut tx, events).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// `job.completed` or `job.failed` for a job that just ended (nothing for
    /// a retry), in the transaction that ended it.
    /// Puts running jobs whose lease ran out back to pending (their server
    /// died or lost the database); returns how many.
    pub async fn reclaim_expired_jobs(&self) -> Result<u64> {
        let now = now_ms();
        Ok(sqlx::query(
            "UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL, not_before = $1 \
             WHERE status = 'running' AND lease_until < $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Puts the running jobs leased to owners that start with `owner_prefix`,
    /// except `except_owner`, back to pending at once, without waiting for
    /// their leases: a restarted server releases what its previous process
    /// held (owners start with the server's node ID, kept in its data dir).
    /// Returns how many.
    pub async fn release_jobs(&self, owner_prefix: &str, except_owner: &str) -> Result<u64> {
        let now = now_ms();
        let prefix_len = i64::try_from(owner_prefix.len()).unwrap_or(i64::MAX);
        Ok(sqlx::query(
            "UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL, not_before = $1 \
             WHERE status = 'running' AND substr(lease_owner, 1, CAST($3 AS INTEGER)) = $2 AND lease_owner <> $4",
        )
        .bind(now)
        .bind(owner_prefix)
        .bind(prefix_len)
        .bind(except_owner)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// How many jobs of the agent are running now, on every server.
    pub async fn running_job_count(&self, agent_id: &str) -> Result<u32> {
        sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE agent_id = $1 AND status = 'running'")
            .bind(agent_id)
            .fetch_one(&self.pool)
            .await?
            .count("n")
    }
}
