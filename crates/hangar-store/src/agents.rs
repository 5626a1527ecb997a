//! Agents (blueprints): created with their first build queued in the same
//! transaction, so an agent never exists without the build that will deploy
//! it; read, listed, changed, started and stopped, deleted. An agent's
//! status is not stored: reads return an [`AgentView`] with the facts it is
//! derived from. Its builds are [`crate::builds`]'.

use std::collections::BTreeMap;

use hangar_core::id::{new_id, random_suffix, IdKind};
use hangar_core::model::{Agent, AgentView, Build, Instance};
use hangar_core::resources::Resources;
use hangar_core::spec::{Runtime, RuntimeConfig, Scaling, Source};
use hangar_core::status::{BuildStatus, DesiredState, InstanceStatus};
use hangar_core::validate::slug;
use sqlx::any::AnyRow;

use crate::instances::{
    instance_from_row, joined_instance_from_row, INSTANCE_COLUMNS, JOINED_INSTANCE_COLUMNS,
};
use crate::{
    from_ms, name_taken, now_ms, page_limit, to_json, Conditions, FromRow, Page, Result, RowExt,
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
    /// The cloud's own base URL for agent URLs (`None`: the server's).
    pub url_base: Option<String>,
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

pub(crate) const AGENT_COLUMNS: &str = "a.id, a.organization_id, a.user_id, a.cloud_id, a.name, a.resource_name, a.url_base, a.url_key, a.display_name, a.version, \
    a.runtime, a.resources, a.scaling, a.config, a.environment, a.source, a.metadata, a.desired_state, \
    a.latest_build_id, a.default_instance_id, a.created_at, a.updated_at, a.deployed_at";

pub(crate) fn agent_from_row(r: &impl RowExt) -> Result<Agent> {
    Ok(Agent {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        user_id: r.text("user_id")?,
        cloud_id: r.text("cloud_id")?,
        name: r.text("name")?,
        resource_name: r.text("resource_name")?,
        url_base: r.opt_text("url_base")?,
        url_key: r.opt_text("url_key")?,
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

/// The status of the agent's latest build, joined as `build_status`.
fn build_status(r: &impl RowExt) -> Result<Option<BuildStatus>> {
    let status: Option<&str> = r.opt_str("build_status")?;
    status
        .map(str::parse)
        .transpose()
        .map_err(|e: hangar_core::UnknownVariant| StoreError::Corrupt {
            what: "build_status",
            detail: e.to_string(),
        })
}

/// An agent as the Agents API shows it: the agent and the facts its status
/// is derived from — its latest build's status, and of its default instance
/// only what is shown (an [`AgentView`] less the rest of the instance, which
/// a read would copy and parse for nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSummary {
    /// The blueprint.
    pub agent: Agent,
    /// Status of its latest build.
    pub latest_build_status: Option<BuildStatus>,
    /// Its default instance, when one exists.
    pub default_instance: Option<InstanceSummary>,
}

/// What an agent's summary shows of its default instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSummary {
    /// `inst_…`
    pub id: String,
    /// Status as last observed.
    pub status: InstanceStatus,
    /// Replicas passing health checks, as last observed.
    pub ready_replicas: u32,
}

impl From<&Instance> for InstanceSummary {
    fn from(instance: &Instance) -> Self {
        Self {
            id: instance.id.clone(),
            status: instance.status,
            ready_replicas: instance.ready_replicas,
        }
    }
}

/// An agent's summary by organization (`$1`) and ID (`$2`).
static GET_AGENT_SUMMARY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {AGENT_COLUMNS}, b.status AS build_status, i.status AS i_status, i.ready_replicas AS i_ready_replicas \
         FROM agents a LEFT JOIN builds b ON b.id = a.latest_build_id LEFT JOIN instances i ON i.id = a.default_instance_id \
         WHERE a.organization_id = $1 AND a.id = $2 AND a.deleted_at IS NULL"
    )
});

impl FromRow for AgentSummary {
    fn from_row(row: &impl RowExt) -> Result<Self> {
        let agent = agent_from_row(row)?;
        let default_instance = match (&agent.default_instance_id, row.opt_str("i_status")?) {
            (Some(id), Some(status)) => Some(InstanceSummary {
                id: id.clone(),
                status: status.parse().map_err(|e: hangar_core::UnknownVariant| {
                    StoreError::Corrupt {
                        what: "i_status",
                        detail: e.to_string(),
                    }
                })?,
                ready_replicas: row.count("i_ready_replicas")?,
            }),
            _ => None,
        };
        Ok(AgentSummary {
            latest_build_status: build_status(row)?,
            agent,
            default_instance,
        })
    }
}

/// An agent with its latest build's status and its default instance
/// ([`JOINED_INSTANCE_COLUMNS`]), by organization (`$1`) and ID (`$2`).
static GET_AGENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {AGENT_COLUMNS}, b.status AS build_status, {JOINED_INSTANCE_COLUMNS} FROM agents a \
         LEFT JOIN builds b ON b.id = a.latest_build_id LEFT JOIN instances i ON i.id = a.default_instance_id \
         WHERE a.organization_id = $1 AND a.id = $2 AND a.deleted_at IS NULL"
    )
});

impl FromRow for AgentView {
    fn from_row(row: &impl RowExt) -> Result<Self> {
        Ok(AgentView {
            agent: agent_from_row(row)?,
            latest_build_status: build_status(row)?,
            default_instance: joined_instance_from_row(row)?,
        })
    }
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
            url_key: Some(hangar_core::agent_url::key(
                new.url_base.as_deref(),
                &new.name,
            )),
            url_base: new.url_base,
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
             resources, scaling, config, environment, source, metadata, desired_state, latest_build_id, created_at, updated_at, \
             url_base, url_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18, $19, $20)",
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
        .bind(&agent.url_base)
        .bind(&agent.url_key)
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

    async fn views(&self, rows: Vec<AnyRow>) -> Result<Vec<AgentView>> {
        let mut views = Vec::with_capacity(rows.len());
        let mut instance_ids = Vec::new();
        for r in &rows {
            let agent = agent_from_row(r)?;
            let latest_build_status = build_status(r)?;
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

    /// An agent of the organization with its status facts: the agent, its
    /// latest build's status and its default instance in one query, since
    /// every API read of an agent (and the gateway's route lookups) pays for
    /// each round trip to the database.
    pub async fn get_agent(&self, org_id: &str, id: &str) -> Result<Option<AgentView>> {
        self.point_read(&GET_AGENT, &[org_id, id]).await
    }

    /// An agent of the organization as the Agents API shows it (see
    /// [`AgentSummary`]), in one query; cheaper than [`Store::get_agent`].
    pub async fn get_agent_summary(&self, org_id: &str, id: &str) -> Result<Option<AgentSummary>> {
        self.point_read(&GET_AGENT_SUMMARY, &[org_id, id]).await
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
        let before = agent.config.network.clone();
        let name_before = agent.name.clone();
        change(&mut agent)?;
        if agent.name != name_before {
            agent.url_key = Some(hangar_core::agent_url::key(
                agent.url_base.as_deref(),
                &agent.name,
            ));
        }
        // Audited with the change itself: no policy changes unrecorded.
        if let Some(data) =
            hangar_core::network::policy_change(before.as_ref(), agent.config.network.as_ref())
        {
            let data = serde_json::json!({"agent_id": agent.id, "policy": data});
            Self::record_event_in(&mut tx, org_id, "agent.policy_changed", &agent.id, data).await?;
        }
        sqlx::query(
            "UPDATE agents SET name = $3, display_name = $4, version = $5, runtime = $6, resources = $7, scaling = $8, \
             config = $9, environment = $10, source = $11, metadata = $12, updated_at = $13, url_key = $14 \
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
        .bind(&agent.url_key)
        .execute(&mut *tx)
        .await
        .map_err(|e| name_taken(e, IdKind::Agent, &agent.name))?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Some(agent))
    }

    /// Write-locks a live agent of the organization (a no-op UPDATE: a row lock on
    /// PostgreSQL, the write lock on SQLite) and reads it.
    pub(crate) async fn lock_agent(
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
            // Its sessions go with it: nothing serves them any more.
            sqlx::query("DELETE FROM sessions WHERE organization_id = $1 AND agent_id = $2")
                .bind(org_id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
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
}
