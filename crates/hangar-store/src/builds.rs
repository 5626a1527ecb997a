//! Builds: an agent's source turned into an artifact, and the queue of them.
//!
//! Builders take queued builds with [`Store::claim_queued_build`] — a conditional
//! `UPDATE … WHERE status = 'queued'`, so of several builders (in one process or
//! in several Hangar processes on one PostgreSQL) exactly one gets each build —
//! and hand a ready one to [`Store::deploy_build`], which creates the agent's
//! default instance or points it at the new build. Transactions that write
//! several of these rows lock them agent → instance → organization.
//!
//! A claim is a lease: it names the builder and counts an attempt; the
//! builder keeps it with [`Store::build_heartbeat`] and ends it with
//! [`Store::finish_build`], both conditional on the build still being its
//! own. A build whose builder fell silent (its server was killed, or lost
//! the database) is queued again by [`Store::reclaim_abandoned_builds`] for
//! any builder to take, and failed only after [`MAX_BUILD_ATTEMPTS`]; the
//! silent builder, should it come back, learns at its next heartbeat that
//! the build is no longer its own and records nothing of it.
//!
//! A build that reaches `ready` or `failed` — through its builder, as
//! abandoned, or because its agent was deleted first — records
//! `build.succeeded` or `build.failed` in the transaction that finishes it,
//! and a finished build is never changed again: one outcome, one event.

use hangar_core::id::{new_id, random_suffix, IdKind};
use hangar_core::model::{Agent, Build, BuildLogLine, Instance};
use hangar_core::spec::Source;
use hangar_core::status::{BuildStatus, InstanceStatus};
use hangar_core::validate::slug;
use sqlx::any::AnyRow;

use crate::agents::{agent_from_row, AGENT_COLUMNS};
use crate::instances::{instance_from_row, INSTANCE_COLUMNS};
use crate::{from_ms, now_ms, page_limit, to_json, to_ms, Conditions, Page, Result, RowExt, Store};
use sqlx::{Any, Transaction};

/// Claims of one build before a builder that falls silent fails it instead
/// of queueing it again: a build that takes its server down with it (say,
/// by exhausting the machine) does not take every server down in turn.
pub const MAX_BUILD_ATTEMPTS: i64 = 3;

/// What [`Store::reclaim_abandoned_builds`] did, as the builds now are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reclaimed {
    /// Queued again, to be built from the start by any builder.
    pub requeued: Vec<Build>,
    /// Failed: their attempts were used up.
    pub failed: Vec<Build>,
}

pub(crate) const BUILD_COLUMNS: &str = "id, organization_id, agent_id, status, reason, source, artifact, created_at, started_at, finished_at";

pub(crate) fn build_from_row(r: &AnyRow) -> Result<Build> {
    Ok(Build {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        agent_id: r.text("agent_id")?,
        status: r.parsed("status")?,
        reason: r.opt_text("reason")?,
        source: r.json("source")?,
        artifact: r.opt_text("artifact")?,
        created_at: r.time("created_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

impl Store {
    /// Writes a new build row in `tx` (a first build with its agent, or a
    /// redeploy's).
    pub(crate) async fn insert_build(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        build: &Build,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO builds (id, organization_id, agent_id, status, source, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&build.id)
        .bind(&build.organization_id)
        .bind(&build.agent_id)
        .bind(build.status.as_str())
        .bind(to_json(&build.source))
        .bind(to_ms(build.created_at))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Queues a build of the agent's source — replaced by `new_source` first, when
    /// given — in one transaction (redeploy). `None` when there is no such agent.
    pub async fn queue_build(
        &self,
        org_id: &str,
        agent_id: &str,
        new_source: Option<Source>,
    ) -> Result<Option<Build>> {
        let mut tx = self.pool.begin().await?;
        let Some(agent) = Self::lock_agent(&mut tx, org_id, agent_id).await? else {
            return Ok(None);
        };
        let now = now_ms();
        if let Some(source) = &new_source {
            sqlx::query("UPDATE agents SET source = $2, updated_at = $3 WHERE id = $1")
                .bind(agent_id)
                .bind(to_json(source))
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let build = Build {
            id: new_id(IdKind::Build),
            organization_id: agent.organization_id,
            agent_id: agent.id,
            status: BuildStatus::Queued,
            reason: None,
            source: new_source.unwrap_or(agent.source),
            artifact: None,
            created_at: from_ms(now),
            started_at: None,
            finished_at: None,
        };
        Self::insert_build(&mut tx, &build).await?;
        sqlx::query("UPDATE agents SET latest_build_id = $2, updated_at = $3 WHERE id = $1")
            .bind(&build.agent_id)
            .bind(&build.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(build))
    }

    /// Takes the oldest queued build for `builder` (`<node>/<boot>`): marks it
    /// `building` (with `started_at`), leased to that builder, one more
    /// attempt, and returns it as it now is; `None` when nothing is queued.
    ///
    /// Safe with any number of builders, in one process or in several Hangar
    /// processes on one PostgreSQL: the claim is a conditional `UPDATE … WHERE
    /// status = 'queued'`, which PostgreSQL re-checks on the row once it holds the
    /// row's lock and SQLite runs under its single write lock, so exactly one
    /// builder changes the row. A builder that loses the race looks for the next
    /// queued build. Queued builds of agents deleted meanwhile are not handed out:
    /// they are marked `failed` on the way.
    pub async fn claim_queued_build(&self, builder: &str) -> Result<Option<Build>> {
        loop {
            let Some(row) = sqlx::query(
                "SELECT b.id, a.deleted_at FROM builds b JOIN agents a ON a.id = b.agent_id \
                 WHERE b.status = 'queued' ORDER BY b.id LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await?
            else {
                return Ok(None);
            };
            let id = row.text("id")?;
            let now = now_ms();
            if row.opt_int("deleted_at")?.is_some() {
                let mut tx = self.pool.begin().await?;
                let failed = sqlx::query(&format!(
                    "UPDATE builds SET status = 'failed', reason = $2, finished_at = $3 WHERE id = $1 AND status = 'queued' \
                     RETURNING {BUILD_COLUMNS}"
                ))
                .bind(&id)
                .bind("the agent was deleted before the build started")
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = failed {
                    Self::build_finished_in(&mut tx, &build_from_row(&row)?).await?;
                }
                tx.commit().await?;
                continue;
            }
            let claimed = sqlx::query(&format!(
                "UPDATE builds SET status = 'building', started_at = $2, heartbeat_at = $2, builder = $3, \
                 attempts = attempts + 1 WHERE id = $1 AND status = 'queued' RETURNING {BUILD_COLUMNS}"
            ))
            .bind(&id)
            .bind(now)
            .bind(builder)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = claimed {
                return build_from_row(&row).map(Some);
            }
            // Another builder took it between the read and the update.
        }
    }

    /// Deploys a ready build to its agent's default instance, in one transaction,
    /// and returns that instance.
    ///
    /// - The agent has no default instance: one is created, as
    ///   [`Store::create_instance`] would — a slot of the organization's quota is
    ///   reserved atomically ([`StoreError::QuotaExceeded`] when none is left, and
    ///   nothing changes). It takes the agent's name (or, when another instance of
    ///   the organization has it, the name with a suffix), the agent's resource
    ///   name when no instance uses it (else one derived from the name), the
    ///   agent's configuration, resources, environment and desired state, and
    ///   `max(scaling.min_instances, 1)` replicas, and becomes the agent's default
    ///   instance.
    /// - The agent has one: it is pointed at this build (`build_id`,
    ///   `updated_at`), which the controller sees as a new generation and rolls.
    ///   Nothing else of the instance changes.
    ///
    /// Either way the agent's `deployed_at` becomes now. `None`, changing nothing,
    /// when the build is not `ready`, its agent is deleted, or it is no longer the
    /// agent's latest build: a build that finishes after a newer one was queued
    /// must not roll the agent back. Calling it again for the same build changes
    /// nothing but the times.
    pub async fn deploy_build(&self, build_id: &str) -> Result<Option<Instance>> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        // The agent's lock comes first (lock order agent → instance →
        // organization; on SQLite the write lock before any read), and only when
        // this ready build is still the agent's latest: on PostgreSQL the
        // condition is re-checked once the lock is held, so a build queued
        // meanwhile (which also locks the agent) wins.
        let Some(row) = sqlx::query(
            "UPDATE agents SET updated_at = updated_at WHERE latest_build_id = $1 AND deleted_at IS NULL \
             AND id = (SELECT agent_id FROM builds WHERE id = $1 AND status = 'ready') RETURNING id",
        )
        .bind(build_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let agent_id = row.text("id")?;
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents a WHERE a.id = $1"
        ))
        .bind(&agent_id)
        .fetch_one(&mut *tx)
        .await?;
        let agent = agent_from_row(&row)?;
        let mut deployed = None;
        if let Some(current) = &agent.default_instance_id {
            let row = sqlx::query(&format!(
                "UPDATE instances SET build_id = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL \
                 RETURNING {INSTANCE_COLUMNS}"
            ))
            .bind(current)
            .bind(build_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            deployed = row.as_ref().map(instance_from_row).transpose()?;
        }
        let instance = match deployed {
            Some(instance) => instance,
            None => {
                let instance = Self::default_instance(&mut tx, &agent, build_id, now).await?;
                Self::insert_instance(&mut tx, &instance).await?;
                instance
            }
        };
        sqlx::query("UPDATE agents SET default_instance_id = $2, deployed_at = $3 WHERE id = $1")
            .bind(&agent.id)
            .bind(&instance.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(instance))
    }

    /// The default instance `deploy_build` creates for `agent` (not stored yet).
    async fn default_instance(
        tx: &mut Transaction<'static, Any>,
        agent: &Agent,
        build_id: &str,
        now: i64,
    ) -> Result<Instance> {
        let id = new_id(IdKind::Instance);
        let name_used = sqlx::query(
            "SELECT id FROM instances WHERE organization_id = $1 AND name = $2 AND deleted_at IS NULL",
        )
        .bind(&agent.organization_id)
        .bind(&agent.name)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
        let name = if name_used {
            format!("{}-{}", agent.name, random_suffix(&id, 8))
        } else {
            agent.name.clone()
        };
        let resource_name_used =
            sqlx::query("SELECT id FROM instances WHERE resource_name = $1 AND deleted_at IS NULL")
                .bind(&agent.resource_name)
                .fetch_optional(&mut **tx)
                .await?
                .is_some();
        let resource_name = if resource_name_used {
            format!("{}-{}", slug(&name, 40), random_suffix(&id, 8))
        } else {
            agent.resource_name.clone()
        };
        Ok(Instance {
            id,
            organization_id: agent.organization_id.clone(),
            agent_id: agent.id.clone(),
            build_id: build_id.to_owned(),
            user_id: agent.user_id.clone(),
            name,
            resource_name,
            config: agent.config.clone(),
            resources: agent.resources,
            env_vars: agent.environment.clone(),
            replicas: agent.scaling.min_instances.max(1),
            desired_state: agent.desired_state,
            status: InstanceStatus::Starting,
            status_reason: None,
            ready_replicas: 0,
            restart_count: 0,
            created_at: from_ms(now),
            updated_at: from_ms(now),
        })
    }

    /// A build of the organization.
    pub async fn get_build(&self, org_id: &str, id: &str) -> Result<Option<Build>> {
        let row = sqlx::query(&format!(
            "SELECT {BUILD_COLUMNS} FROM builds WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(build_from_row).transpose()
    }

    /// A page of an agent's builds, newest first.
    pub async fn list_builds(
        &self,
        org_id: &str,
        agent_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Build>> {
        let rows = Conditions::new("organization_id", org_id)
            .cmp("agent_id", "=", Some(agent_id))
            .cmp("id", "<", after)
            .fetch_all(
                &self.pool,
                &format!("{BUILD_COLUMNS} FROM builds"),
                &format!("ORDER BY id DESC LIMIT {}", page_limit(limit)),
            )
            .await?;
        let builds = rows
            .iter()
            .map(build_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(builds, limit.clamp(1, 100), |b| &b.id))
    }

    /// `builder`'s sign of life for a build it is building (see
    /// [`Store::reclaim_abandoned_builds`]). `false` when the build is no
    /// longer its own (queued again after the builder fell silent, taken by
    /// another, or finished): the builder stops working on it.
    pub async fn build_heartbeat(&self, id: &str, builder: &str) -> Result<bool> {
        let beat = sqlx::query(
            "UPDATE builds SET heartbeat_at = $2 WHERE id = $1 AND status = 'building' AND builder = $3",
        )
        .bind(id)
        .bind(now_ms())
        .bind(builder)
        .execute(&self.pool)
        .await?;
        Ok(beat.rows_affected() > 0)
    }

    /// Takes back every `building` build whose builder has given no sign of
    /// life ([`Store::build_heartbeat`]) since `silent_since`: its builder
    /// died midway (the server was killed or the machine restarted), and
    /// nothing else would ever finish it. A build with attempts left is
    /// queued again, a log line saying why the log starts over; one that
    /// used up [`MAX_BUILD_ATTEMPTS`] is failed, with a reason, a log line
    /// and a `build.failed` event. All in one transaction.
    pub async fn reclaim_abandoned_builds(
        &self,
        silent_since: hangar_core::model::Timestamp,
    ) -> Result<Reclaimed> {
        const FAILED: &str =
            "the builder stopped while building (the server was restarted or killed), and this build's attempts are used up; redeploy to build again";
        const REQUEUED: &str =
            "the builder stopped while building (the server was restarted or killed): the build is queued again and starts over";
        let cutoff = to_ms(silent_since);
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "UPDATE builds SET status = 'failed', reason = $2, finished_at = $3, builder = NULL \
             WHERE status = 'building' AND COALESCE(heartbeat_at, started_at, 0) < $1 AND attempts >= $4 \
             RETURNING {BUILD_COLUMNS}"
        ))
        .bind(cutoff)
        .bind(FAILED)
        .bind(now)
        .bind(MAX_BUILD_ATTEMPTS)
        .fetch_all(&mut *tx)
        .await?;
        let failed = rows
            .iter()
            .map(build_from_row)
            .collect::<Result<Vec<_>>>()?;
        for build in &failed {
            Self::append_build_log_in(&mut tx, &build.id, "stderr", &[FAILED]).await?;
            Self::build_finished_in(&mut tx, build).await?;
        }
        let rows = sqlx::query(&format!(
            "UPDATE builds SET status = 'queued', builder = NULL \
             WHERE status = 'building' AND COALESCE(heartbeat_at, started_at, 0) < $1 \
             RETURNING {BUILD_COLUMNS}"
        ))
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        let requeued = rows
            .iter()
            .map(build_from_row)
            .collect::<Result<Vec<_>>>()?;
        for build in &requeued {
            Self::append_build_log_in(&mut tx, &build.id, "stderr", &[REQUEUED]).await?;
        }
        tx.commit().await?;
        Ok(Reclaimed { requeued, failed })
    }

    /// Records a build's progress (used by builders, and by tests). A build
    /// that reaches `ready` or `failed` records `build.succeeded` or
    /// `build.failed` in the same transaction, so the event exists exactly
    /// when the outcome does.
    ///
    /// A finished build is final: returns `false`, changing nothing, when the
    /// build is already `ready` or `failed` (say, failed as abandoned while a
    /// slow builder was still at work), or does not exist.
    pub async fn set_build_status(
        &self,
        id: &str,
        status: BuildStatus,
        reason: Option<&str>,
        artifact: Option<&str>,
    ) -> Result<bool> {
        self.write_build_status(id, None, status, reason, artifact)
            .await
    }

    /// [`Store::set_build_status`] by the builder holding the build: `false`,
    /// changing nothing, unless the build is `building` under `builder`
    /// (one that was queued again after the builder fell silent is another
    /// builder's now). The end of a build (`ready`, `failed`) or its return
    /// to the queue (`queued`, at a clean stop) releases the claim; a build
    /// returned to the queue gives its attempt back, since nothing failed.
    pub async fn finish_build(
        &self,
        id: &str,
        builder: &str,
        status: BuildStatus,
        reason: Option<&str>,
        artifact: Option<&str>,
    ) -> Result<bool> {
        self.write_build_status(id, Some(builder), status, reason, artifact)
            .await
    }

    async fn write_build_status(
        &self,
        id: &str,
        builder: Option<&str>,
        status: BuildStatus,
        reason: Option<&str>,
        artifact: Option<&str>,
    ) -> Result<bool> {
        let now = now_ms();
        let held = if builder.is_some() {
            "status = 'building' AND builder = $6"
        } else {
            "status NOT IN ('ready', 'failed')"
        };
        let mut tx = self.pool.begin().await?;
        let query = format!(
            "UPDATE builds SET status = $2, reason = $3, artifact = COALESCE($4, artifact), \
             started_at = CASE WHEN $2 = 'building' THEN $5 ELSE started_at END, \
             finished_at = CASE WHEN $2 IN ('ready', 'failed') THEN $5 ELSE finished_at END, \
             builder = CASE WHEN $2 = 'building' THEN builder ELSE NULL END, \
             attempts = CASE WHEN $2 = 'queued' AND attempts > 0 THEN attempts - 1 ELSE attempts END \
             WHERE id = $1 AND {held} RETURNING {BUILD_COLUMNS}"
        );
        let mut query = sqlx::query(&query)
            .bind(id)
            .bind(status.as_str())
            .bind(reason)
            .bind(artifact)
            .bind(now);
        if let Some(builder) = builder {
            query = query.bind(builder);
        }
        let row = query.fetch_optional(&mut *tx).await?;
        let Some(row) = row else {
            return Ok(false);
        };
        Self::build_finished_in(&mut tx, &build_from_row(&row)?).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// `build.succeeded` or `build.failed` for a build that has just reached
    /// `ready` or `failed` (nothing for other statuses), in the transaction
    /// that finished it. The subject is the build.
    async fn build_finished_in(tx: &mut Transaction<'static, Any>, build: &Build) -> Result<()> {
        let mut data = serde_json::json!({
            "build_id": build.id,
            "agent_id": build.agent_id,
            "status": build.status,
        });
        let kind = match build.status {
            BuildStatus::Ready => "build.succeeded",
            BuildStatus::Failed => {
                data["reason"] = build.reason.clone().into();
                "build.failed"
            }
            BuildStatus::Queued | BuildStatus::Building => return Ok(()),
        };
        if let (Some(started), Some(finished)) = (build.started_at, build.finished_at) {
            data["duration_ms"] = (finished - started).num_milliseconds().max(0).into();
        }
        Self::record_event_in(tx, &build.organization_id, kind, &build.id, data).await?;
        Ok(())
    }

    /// Appends lines to a build's log (one writer per build: its builder).
    pub async fn append_build_log(
        &self,
        build_id: &str,
        stream: &str,
        lines: &[&str],
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::append_build_log_in(&mut tx, build_id, stream, lines).await?;
        tx.commit().await?;
        Ok(())
    }

    /// [`Store::append_build_log`] inside the caller's transaction.
    async fn append_build_log_in(
        tx: &mut Transaction<'static, Any>,
        build_id: &str,
        stream: &str,
        lines: &[&str],
    ) -> Result<()> {
        let now = now_ms();
        for line in lines {
            // One statement computes the next position and writes it, so the
            // transaction never reads before it writes.
            sqlx::query(
                "INSERT INTO build_logs (build_id, seq, ts, stream, line) \
                 SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM build_logs WHERE build_id = $1",
            )
            .bind(build_id)
            .bind(now)
            .bind(stream)
            .bind(*line)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// A build's log lines after `after_seq`, at most `limit`.
    pub async fn build_log(
        &self,
        build_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<BuildLogLine>> {
        let rows = sqlx::query("SELECT seq, ts, stream, line FROM build_logs WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(build_id)
            .bind(after_seq)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(BuildLogLine {
                    seq: r.int("seq")?,
                    timestamp: r.time("ts")?,
                    stream: r.text("stream")?,
                    line: r.text("line")?,
                })
            })
            .collect()
    }
}
