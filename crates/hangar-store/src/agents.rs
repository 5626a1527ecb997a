//! Agents (blueprints) and their builds.
//!
//! Creating an agent queues its first build in the same transaction, so an agent
//! never exists without the build that will deploy it. An agent's status is not
//! stored: reads return an [`AgentView`] with the facts it is derived from.
//!
//! Builders take queued builds with [`Store::claim_queued_build`] — a conditional
//! `UPDATE … WHERE status = 'queued'`, so of several builders (in one process or
//! in several Hangar processes on one PostgreSQL) exactly one gets each build —
//! and hand a ready one to [`Store::deploy_build`], which creates the agent's
//! default instance or points it at the new build. Transactions that write
//! several of these rows lock them agent → instance → organization.
//!
//! A build that reaches `ready` or `failed` — through its builder, as
//! abandoned, or because its agent was deleted first — records
//! `build.succeeded` or `build.failed` in the transaction that finishes it,
//! and a finished build is never changed again: one outcome, one event.

use std::collections::BTreeMap;

use hangar_core::id::{new_id, random_suffix, IdKind};
use hangar_core::model::{Agent, AgentView, Build, BuildLogLine, Instance};
use hangar_core::resources::Resources;
use hangar_core::spec::{Runtime, RuntimeConfig, Scaling, Source};
use hangar_core::status::{BuildStatus, DesiredState, InstanceStatus};
use hangar_core::validate::slug;
use sqlx::any::AnyRow;

use crate::instances::{instance_from_row, INSTANCE_COLUMNS};
use crate::{
    from_ms, name_taken, now_ms, page_limit, to_json, to_ms, Conditions, Page, Result, RowExt,
    Store, StoreError,
};
use sqlx::{Any, Transaction};

/// What creating an agent needs; the store fills in IDs and times.
#[derive(Debug, Clone)]
pub struct NewAgent {
    /// Owning organization.
    pub organization_id: String,
    /// Creator.
    pub user_id: String,
    /// Target cloud (its ID).
    pub cloud_id: String,
    /// Unique within the cloud.
    pub name: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Version label.
    pub version: Option<String>,
    /// Runtime.
    pub runtime: Runtime,
    /// Resources.
    pub resources: Resources,
    /// Scaling.
    pub scaling: Scaling,
    /// Runtime configuration.
    pub config: RuntimeConfig,
    /// Environment.
    pub environment: BTreeMap<String, String>,
    /// Source.
    pub source: Source,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
}

const AGENT_COLUMNS: &str = "a.id, a.organization_id, a.user_id, a.cloud_id, a.name, a.resource_name, a.display_name, a.version, \
    a.runtime, a.resources, a.scaling, a.config, a.environment, a.source, a.metadata, a.desired_state, \
    a.latest_build_id, a.default_instance_id, a.created_at, a.updated_at, a.deployed_at";
const BUILD_COLUMNS: &str = "id, organization_id, agent_id, status, reason, source, artifact, created_at, started_at, finished_at";

fn agent_from_row(r: &AnyRow) -> Result<Agent> {
    Ok(Agent {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        user_id: r.text("user_id")?,
        cloud_id: r.text("cloud_id")?,
        name: r.text("name")?,
        resource_name: r.text("resource_name")?,
        display_name: r.opt_text("display_name")?,
        version: r.opt_text("version")?,
        runtime: r.json("runtime")?,
        resources: r.json("resources")?,
        scaling: r.json("scaling")?,
        config: r.json("config")?,
        environment: r.json("environment")?,
        source: r.json("source")?,
        metadata: r.json("metadata")?,
        desired_state: r.parsed("desired_state")?,
        latest_build_id: r.opt_text("latest_build_id")?,
        default_instance_id: r.opt_text("default_instance_id")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        deployed_at: r.opt_time("deployed_at")?,
    })
}

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
    /// Creates an agent and queues its first build, in one transaction.
    pub async fn create_agent(&self, new: NewAgent) -> Result<(AgentView, Build)> {
        let now = now_ms();
        let id = new_id(IdKind::Agent);
        let resource_name = format!("{}-{}", slug(&new.name, 40), random_suffix(&id, 8));
        let build = Build {
            id: new_id(IdKind::Build),
            organization_id: new.organization_id.clone(),
            agent_id: id.clone(),
            status: BuildStatus::Queued,
            reason: None,
            source: new.source.clone(),
            artifact: None,
            created_at: from_ms(now),
            started_at: None,
            finished_at: None,
        };
        let agent = Agent {
            id,
            organization_id: new.organization_id,
            user_id: new.user_id,
            cloud_id: new.cloud_id,
            name: new.name,
            resource_name,
            display_name: new.display_name,
            version: new.version,
            runtime: new.runtime,
            resources: new.resources,
            scaling: new.scaling,
            config: new.config,
            environment: new.environment,
            source: new.source,
            metadata: new.metadata,
            desired_state: DesiredState::Running,
            latest_build_id: Some(build.id.clone()),
            default_instance_id: None,
            created_at: from_ms(now),
            updated_at: from_ms(now),
            deployed_at: None,
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO agents (id, organization_id, user_id, cloud_id, name, resource_name, display_name, version, runtime, \
             resources, scaling, config, environment, source, metadata, desired_state, latest_build_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18)",
        )
        .bind(&agent.id)
        .bind(&agent.organization_id)
        .bind(&agent.user_id)
        .bind(&agent.cloud_id)
        .bind(&agent.name)
        .bind(&agent.resource_name)
        .bind(&agent.display_name)
        .bind(&agent.version)
        .bind(to_json(&agent.runtime))
        .bind(to_json(&agent.resources))
        .bind(to_json(&agent.scaling))
        .bind(to_json(&agent.config))
        .bind(to_json(&agent.environment))
        .bind(to_json(&agent.source))
        .bind(to_json(&agent.metadata))
        .bind(agent.desired_state.as_str())
        .bind(&build.id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| name_taken(e, IdKind::Agent, &agent.name))?;
        Self::insert_build(&mut tx, &build).await?;
        tx.commit().await?;
        let view = AgentView {
            agent,
            latest_build_status: Some(BuildStatus::Queued),
            default_instance: None,
        };
        Ok((view, build))
    }

    async fn insert_build(
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

    async fn views(&self, rows: Vec<AnyRow>) -> Result<Vec<AgentView>> {
        let mut views = Vec::with_capacity(rows.len());
        let mut instance_ids = Vec::new();
        for r in &rows {
            let agent = agent_from_row(r)?;
            let latest_build_status = r
                .opt_text("build_status")?
                .map(|s| s.parse())
                .transpose()
                .map_err(
                    |e: hangar_core::UnknownVariant| crate::StoreError::Corrupt {
                        what: "build_status",
                        detail: e.to_string(),
                    },
                )?;
            if let Some(i) = &agent.default_instance_id {
                instance_ids.push(i.clone());
            }
            views.push(AgentView {
                agent,
                latest_build_status,
                default_instance: None,
            });
        }
        if instance_ids.is_empty() {
            return Ok(views);
        }
        let placeholders: Vec<String> = (1..=instance_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id IN ({})",
            placeholders.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for id in &instance_ids {
            q = q.bind(id);
        }
        let instances: Vec<Instance> = q
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(instance_from_row)
            .collect::<Result<_>>()?;
        for v in &mut views {
            if let Some(id) = &v.agent.default_instance_id {
                v.default_instance = instances.iter().find(|i| &i.id == id).cloned();
            }
        }
        Ok(views)
    }

    /// An agent of the organization with its status facts.
    pub async fn get_agent(&self, org_id: &str, id: &str) -> Result<Option<AgentView>> {
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS}, b.status AS build_status FROM agents a LEFT JOIN builds b ON b.id = a.latest_build_id \
             WHERE a.organization_id = $1 AND a.id = $2 AND a.deleted_at IS NULL"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(self.views(rows).await?.pop())
    }

    /// A page of the organization's agents, newest first, after the cursor ID.
    pub async fn list_agents(
        &self,
        org_id: &str,
        cloud_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<AgentView>> {
        let rows = Conditions::new("a.organization_id", org_id)
            .raw("a.deleted_at IS NULL")
            .cmp("a.cloud_id", "=", cloud_id)
            .cmp("a.id", "<", after)
            .fetch_all(
                &self.pool,
                &format!("{AGENT_COLUMNS}, b.status AS build_status FROM agents a LEFT JOIN builds b ON b.id = a.latest_build_id"),
                &format!("ORDER BY a.id DESC LIMIT {}", page_limit(limit)),
            )
            .await?;
        let views = self.views(rows).await?;
        Ok(Page::from_overfetch(views, limit.clamp(1, 100), |v| {
            &v.agent.id
        }))
    }

    /// Changes an agent's fields with `change`, one edit at a time: the row is
    /// write-locked before it is read, so concurrent edits apply in turn instead of
    /// overwriting each other. An error from `change` leaves everything as it was.
    /// `None` when there is no such agent. What the agent should be doing (desired
    /// state) and its build/instance links are not changed here.
    pub async fn modify_agent<E: From<StoreError>>(
        &self,
        org_id: &str,
        id: &str,
        change: impl FnOnce(&mut Agent) -> Result<(), E>,
    ) -> Result<Option<Agent>, E> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let Some(mut agent) = Self::lock_agent(&mut tx, org_id, id).await? else {
            return Ok(None);
        };
        change(&mut agent)?;
        sqlx::query(
            "UPDATE agents SET name = $3, display_name = $4, version = $5, runtime = $6, resources = $7, scaling = $8, \
             config = $9, environment = $10, source = $11, metadata = $12, updated_at = $13 \
             WHERE organization_id = $1 AND id = $2",
        )
        .bind(&agent.organization_id)
        .bind(&agent.id)
        .bind(&agent.name)
        .bind(&agent.display_name)
        .bind(&agent.version)
        .bind(to_json(&agent.runtime))
        .bind(to_json(&agent.resources))
        .bind(to_json(&agent.scaling))
        .bind(to_json(&agent.config))
        .bind(to_json(&agent.environment))
        .bind(to_json(&agent.source))
        .bind(to_json(&agent.metadata))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| name_taken(e, IdKind::Agent, &agent.name))?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Some(agent))
    }

    /// Write-locks a live agent of the organization (a no-op UPDATE: a row lock on
    /// PostgreSQL, the write lock on SQLite) and reads it.
    async fn lock_agent(
        tx: &mut Transaction<'static, Any>,
        org_id: &str,
        id: &str,
    ) -> Result<Option<Agent>> {
        let locked = sqlx::query(
            "UPDATE agents SET updated_at = updated_at WHERE organization_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind(org_id)
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if locked == 0 {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents a WHERE a.id = $1"
        ))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
        agent_from_row(&row).map(Some)
    }

    /// Sets what the agent (and its instances) should be doing.
    pub async fn set_agent_desired_state(
        &self,
        org_id: &str,
        id: &str,
        desired: DesiredState,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE agents SET desired_state = $3, updated_at = $4 WHERE organization_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind(org_id)
        .bind(id)
        .bind(desired.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            sqlx::query(
                "UPDATE instances SET desired_state = $3, updated_at = $4 \
                 WHERE organization_id = $1 AND id = (SELECT default_instance_id FROM agents WHERE id = $2) AND deleted_at IS NULL",
            )
            .bind(org_id)
            .bind(id)
            .bind(desired.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Deletes an agent and its instances (tombstones: the controller removes their
    /// replicas), returning their quota. `false` when there is no such agent.
    pub async fn delete_agent(&self, org_id: &str, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let deleted = sqlx::query("UPDATE agents SET deleted_at = $3 WHERE organization_id = $1 AND id = $2 AND deleted_at IS NULL")
            .bind(org_id)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 1 {
            let freed = sqlx::query("UPDATE instances SET deleted_at = $3, desired_state = 'stopped' WHERE organization_id = $1 AND agent_id = $2 AND deleted_at IS NULL")
                .bind(org_id)
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(
                "UPDATE organizations SET instance_count = instance_count - $2 WHERE id = $1",
            )
            .bind(org_id)
            .bind(i64::try_from(freed).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(deleted == 1)
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

    /// Takes the oldest queued build for a builder: marks it `building` (with
    /// `started_at`) and returns it as it now is; `None` when nothing is queued.
    ///
    /// Safe with any number of builders, in one process or in several Hangar
    /// processes on one PostgreSQL: the claim is a conditional `UPDATE … WHERE
    /// status = 'queued'`, which PostgreSQL re-checks on the row once it holds the
    /// row's lock and SQLite runs under its single write lock, so exactly one
    /// builder changes the row. A builder that loses the race looks for the next
    /// queued build. Queued builds of agents deleted meanwhile are not handed out:
    /// they are marked `failed` on the way.
    pub async fn claim_queued_build(&self) -> Result<Option<Build>> {
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
                "UPDATE builds SET status = 'building', started_at = $2, heartbeat_at = $2 WHERE id = $1 AND status = 'queued' \
                 RETURNING {BUILD_COLUMNS}"
            ))
            .bind(&id)
            .bind(now)
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

    /// A builder's sign of life for a build it is building (see
    /// [`Store::fail_abandoned_builds`]).
    pub async fn build_heartbeat(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE builds SET heartbeat_at = $2 WHERE id = $1 AND status = 'building'")
            .bind(id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Fails every `building` build whose builder has given no sign of life
    /// ([`Store::build_heartbeat`]) since `silent_since`: its builder died
    /// midway (the process was killed or the machine restarted), and nothing
    /// else would ever finish it. Returns the builds failed, as they now are.
    /// The reason, a log line and a `build.failed` event say what happened,
    /// all in one transaction; a redeploy builds again.
    pub async fn fail_abandoned_builds(
        &self,
        silent_since: hangar_core::model::Timestamp,
    ) -> Result<Vec<Build>> {
        const REASON: &str =
            "the builder stopped while building (the server was restarted or killed); redeploy to build again";
        let cutoff = to_ms(silent_since);
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "UPDATE builds SET status = 'failed', reason = $2, finished_at = $3 \
             WHERE status = 'building' AND COALESCE(heartbeat_at, started_at, 0) < $1 RETURNING {BUILD_COLUMNS}"
        ))
        .bind(cutoff)
        .bind(REASON)
        .bind(now_ms())
        .fetch_all(&mut *tx)
        .await?;
        let builds = rows
            .iter()
            .map(build_from_row)
            .collect::<Result<Vec<_>>>()?;
        for build in &builds {
            Self::append_build_log_in(&mut tx, &build.id, "stderr", &[REASON]).await?;
            Self::build_finished_in(&mut tx, build).await?;
        }
        tx.commit().await?;
        Ok(builds)
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
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE builds SET status = $2, reason = $3, artifact = COALESCE($4, artifact), \
             started_at = CASE WHEN $2 = 'building' THEN $5 ELSE started_at END, \
             finished_at = CASE WHEN $2 IN ('ready', 'failed') THEN $5 ELSE finished_at END \
             WHERE id = $1 AND status NOT IN ('ready', 'failed') RETURNING {BUILD_COLUMNS}"
        ))
        .bind(id)
        .bind(status.as_str())
        .bind(reason)
        .bind(artifact)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
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
