//! Instances and the organization's instance quota.
//!
//! The quota is a counter on the organization, reserved with one conditional
//! `UPDATE … WHERE instance_count < max_instances` in the same transaction as the
//! insert. Both SQLite (one writer) and PostgreSQL (row lock, re-checked `WHERE`)
//! make that atomic, so concurrent creates can never overshoot the quota.

use std::collections::BTreeMap;

use hangar_core::id::{new_id, random_suffix, IdKind};
use hangar_core::model::Instance;
use hangar_core::resources::Resources;
use hangar_core::spec::RuntimeConfig;
use hangar_core::status::{DesiredState, InstanceStatus};
use hangar_core::validate::slug;
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::{
    from_ms, name_taken, now_ms, page_limit, to_json, to_ms, Conditions, Page, Result, RowExt,
    Store, StoreError,
};

/// What creating an instance needs.
#[derive(Debug, Clone)]
pub struct NewInstance {
    /// Owning organization.
    pub organization_id: String,
    /// Blueprint.
    pub agent_id: String,
    /// Build deployed.
    pub build_id: String,
    /// Creator.
    pub user_id: String,
    /// Unique within the organization.
    pub name: String,
    /// DNS label; derived from the name when `None`.
    pub resource_name: Option<String>,
    /// Runtime configuration.
    pub config: RuntimeConfig,
    /// Per-replica resources.
    pub resources: Resources,
    /// Environment.
    pub env_vars: BTreeMap<String, String>,
    /// Replicas wanted.
    pub replicas: u32,
    /// Make it the agent's default instance (the one the Agents API routes to).
    pub make_default: bool,
}

/// Filters of an instance listing.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    /// Only these statuses (empty: all).
    pub statuses: Vec<InstanceStatus>,
    /// Only this agent's.
    pub agent_id: Option<String>,
    /// Only those this user created.
    pub user_id: Option<String>,
}

pub(crate) const INSTANCE_COLUMNS: &str = "id, organization_id, agent_id, build_id, user_id, name, resource_name, config, \
    resources, env_vars, replicas, desired_state, status, status_reason, ready_replicas, restart_count, created_at, updated_at";

pub(crate) fn instance_from_row(r: &AnyRow) -> Result<Instance> {
    instance_from_columns(r, &INSTANCE_NAMES)
}

/// The names [`INSTANCE_COLUMNS`] are read back by, in its order.
const INSTANCE_NAMES: [&str; 18] = [
    "id",
    "organization_id",
    "agent_id",
    "build_id",
    "user_id",
    "name",
    "resource_name",
    "config",
    "resources",
    "env_vars",
    "replicas",
    "desired_state",
    "status",
    "status_reason",
    "ready_replicas",
    "restart_count",
    "created_at",
    "updated_at",
];

/// An instance's columns joined beside another table's (`i.id AS i_id, …`),
/// for reads that fetch both in one query.
pub(crate) const JOINED_INSTANCE_COLUMNS: &str = "i.id AS i_id, i.organization_id AS i_organization_id, \
    i.agent_id AS i_agent_id, i.build_id AS i_build_id, i.user_id AS i_user_id, i.name AS i_name, \
    i.resource_name AS i_resource_name, i.config AS i_config, i.resources AS i_resources, \
    i.env_vars AS i_env_vars, i.replicas AS i_replicas, i.desired_state AS i_desired_state, \
    i.status AS i_status, i.status_reason AS i_status_reason, i.ready_replicas AS i_ready_replicas, \
    i.restart_count AS i_restart_count, i.created_at AS i_created_at, i.updated_at AS i_updated_at";

/// The names [`JOINED_INSTANCE_COLUMNS`] are read back by, in [`INSTANCE_NAMES`]' order.
const JOINED_INSTANCE_NAMES: [&str; 18] = [
    "i_id",
    "i_organization_id",
    "i_agent_id",
    "i_build_id",
    "i_user_id",
    "i_name",
    "i_resource_name",
    "i_config",
    "i_resources",
    "i_env_vars",
    "i_replicas",
    "i_desired_state",
    "i_status",
    "i_status_reason",
    "i_ready_replicas",
    "i_restart_count",
    "i_created_at",
    "i_updated_at",
];

/// The instance in a row's [`JOINED_INSTANCE_COLUMNS`]; `None` when the outer
/// join found none.
pub(crate) fn joined_instance_from_row(r: &impl RowExt) -> Result<Option<Instance>> {
    if r.opt_str(JOINED_INSTANCE_NAMES[0])?.is_none() {
        return Ok(None);
    }
    instance_from_columns(r, &JOINED_INSTANCE_NAMES).map(Some)
}

fn instance_from_columns(r: &impl RowExt, c: &[&'static str; 18]) -> Result<Instance> {
    Ok(Instance {
        id: r.text(c[0])?,
        organization_id: r.text(c[1])?,
        agent_id: r.text(c[2])?,
        build_id: r.text(c[3])?,
        user_id: r.text(c[4])?,
        name: r.text(c[5])?,
        resource_name: r.text(c[6])?,
        config: r.json(c[7])?,
        resources: r.json(c[8])?,
        env_vars: r.json(c[9])?,
        replicas: r.count(c[10])?,
        desired_state: r.parsed(c[11])?,
        status: r.parsed(c[12])?,
        status_reason: r.opt_text(c[13])?,
        ready_replicas: r.count(c[14])?,
        restart_count: r.count(c[15])?,
        created_at: r.time(c[16])?,
        updated_at: r.time(c[17])?,
    })
}

impl Store {
    /// Creates an instance, reserving a slot of the organization's quota.
    pub async fn create_instance(&self, new: NewInstance) -> Result<Instance> {
        let now = now_ms();
        let id = new_id(IdKind::Instance);
        let resource_name = new
            .resource_name
            .unwrap_or_else(|| format!("{}-{}", slug(&new.name, 40), random_suffix(&id, 8)));
        let instance = Instance {
            id,
            organization_id: new.organization_id,
            agent_id: new.agent_id,
            build_id: new.build_id,
            user_id: new.user_id,
            name: new.name,
            resource_name,
            config: new.config,
            resources: new.resources,
            env_vars: new.env_vars,
            replicas: new.replicas,
            desired_state: DesiredState::Running,
            status: InstanceStatus::Starting,
            status_reason: None,
            ready_replicas: 0,
            restart_count: 0,
            created_at: from_ms(now),
            updated_at: from_ms(now),
        };
        let mut tx = self.pool.begin().await?;
        // Writes come first so SQLite takes its write lock before any read. Locks
        // are taken agent → organization, the order every transaction here uses,
        // so PostgreSQL cannot deadlock. A deleted agent gets no new instance.
        let agent_live = sqlx::query(
            "UPDATE agents SET updated_at = updated_at WHERE organization_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind(&instance.organization_id)
        .bind(&instance.agent_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if agent_live == 0 {
            return Err(StoreError::NotFound {
                what: IdKind::Agent,
                id: instance.agent_id,
            });
        }
        Self::insert_instance(&mut tx, &instance).await?;
        if new.make_default {
            sqlx::query("UPDATE agents SET default_instance_id = $2 WHERE id = $1")
                .bind(&instance.agent_id)
                .bind(&instance.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(instance)
    }

    /// Reserves a slot of the instance's organization's quota and inserts the
    /// instance, inside the caller's transaction. The caller has already
    /// write-locked the agent (and any instance it changes): the organization's
    /// row is the last lock taken. [`StoreError::QuotaExceeded`] when no slot is
    /// free, [`StoreError::NameTaken`] when the name (or resource name) is used.
    pub(crate) async fn insert_instance(
        tx: &mut Transaction<'static, Any>,
        instance: &Instance,
    ) -> Result<()> {
        let now = to_ms(instance.created_at);
        let reserved = sqlx::query(
            "UPDATE organizations SET instance_count = instance_count + 1 WHERE id = $1 AND instance_count < max_instances",
        )
        .bind(&instance.organization_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if reserved == 0 {
            let row = sqlx::query(
                "SELECT instance_count, max_instances FROM organizations WHERE id = $1",
            )
            .bind(&instance.organization_id)
            .fetch_one(&mut **tx)
            .await?;
            return Err(StoreError::QuotaExceeded {
                current: row.count("instance_count")?,
                max: row.count("max_instances")?,
            });
        }
        sqlx::query(
            "INSERT INTO instances (id, organization_id, agent_id, build_id, user_id, name, resource_name, config, resources, \
             env_vars, replicas, desired_state, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
        )
        .bind(&instance.id)
        .bind(&instance.organization_id)
        .bind(&instance.agent_id)
        .bind(&instance.build_id)
        .bind(&instance.user_id)
        .bind(&instance.name)
        .bind(&instance.resource_name)
        .bind(to_json(&instance.config))
        .bind(to_json(&instance.resources))
        .bind(to_json(&instance.env_vars))
        .bind(i64::from(instance.replicas))
        .bind(instance.desired_state.as_str())
        .bind(instance.status.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(|e| name_taken(e, IdKind::Instance, &instance.name))?;
        Ok(())
    }

    /// An instance of the organization.
    pub async fn get_instance(&self, org_id: &str, id: &str) -> Result<Option<Instance>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE organization_id = $1 AND id = $2 AND deleted_at IS NULL"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// The live instance whose URL has `label` as its first DNS label: the
    /// instance with that resource name, else the default instance of the
    /// agent with that resource name. Any organization's: instance URLs are
    /// public.
    pub async fn instance_at_host(&self, label: &str) -> Result<Option<Instance>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE resource_name = $1 AND deleted_at IS NULL"
        ))
        .bind(label)
        .fetch_optional(&self.pool)
        .await?;
        let row = match row {
            Some(row) => Some(row),
            None => {
                sqlx::query(&format!(
                    "SELECT {INSTANCE_COLUMNS} FROM instances WHERE deleted_at IS NULL AND id = \
                     (SELECT default_instance_id FROM agents WHERE resource_name = $1 AND deleted_at IS NULL)"
                ))
                .bind(label)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref().map(instance_from_row).transpose()
    }

    /// The default instance of the live agent with one of the URL keys
    /// `keys` ([`hangar_core::agent_url::candidates`]), the first key's
    /// agent when both have one: what an agent URL leads to.
    pub async fn instance_at_agent_url(&self, keys: &[String; 2]) -> Result<Option<Instance>> {
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE deleted_at IS NULL AND id = \
             (SELECT default_instance_id FROM agents WHERE url_key IN ($1, $2) AND deleted_at IS NULL \
              ORDER BY CASE WHEN url_key = $1 THEN 0 ELSE 1 END LIMIT 1)"
        ))
        .bind(&keys[0])
        .bind(&keys[1])
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    /// A page of the organization's instances, newest first, after the cursor ID.
    pub async fn list_instances(
        &self,
        org_id: &str,
        filter: &InstanceFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Instance>> {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        let rows = Conditions::new("organization_id", org_id)
            .raw("deleted_at IS NULL")
            .cmp("agent_id", "=", filter.agent_id.as_deref())
            .cmp("user_id", "=", filter.user_id.as_deref())
            .any_of("status", &statuses)
            .cmp("id", "<", after)
            .fetch_all(
                &self.pool,
                &format!("{INSTANCE_COLUMNS} FROM instances"),
                &format!("ORDER BY id DESC LIMIT {}", page_limit(limit)),
            )
            .await?;
        let items = rows
            .iter()
            .map(instance_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, limit.clamp(1, 100), |i| &i.id))
    }

    /// Changes an instance's name, configuration, resources, environment or
    /// replicas with `change`, one edit at a time (the row is write-locked before it
    /// is read). An error from `change` leaves everything as it was. `None` when
    /// there is no such instance.
    pub async fn modify_instance<E: From<StoreError>>(
        &self,
        org_id: &str,
        id: &str,
        change: impl FnOnce(&mut Instance) -> Result<(), E>,
    ) -> Result<Option<Instance>, E> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let locked = sqlx::query(
            "UPDATE instances SET updated_at = updated_at WHERE organization_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind(org_id)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        if locked == 0 {
            return Ok(None);
        }
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let mut inst = instance_from_row(&row)?;
        let before = inst.config.network.clone();
        change(&mut inst)?;
        // Audited with the change itself, under the instance's agent.
        if let Some(data) =
            hangar_core::network::policy_change(before.as_ref(), inst.config.network.as_ref())
        {
            let data = serde_json::json!({
                "agent_id": inst.agent_id,
                "instance_id": inst.id,
                "policy": data,
            });
            Self::record_event_in(
                &mut tx,
                org_id,
                "agent.policy_changed",
                &inst.agent_id,
                data,
            )
            .await?;
        }
        sqlx::query(
            "UPDATE instances SET name = $2, config = $3, resources = $4, env_vars = $5, replicas = $6, updated_at = $7 WHERE id = $1",
        )
        .bind(&inst.id)
        .bind(&inst.name)
        .bind(to_json(&inst.config))
        .bind(to_json(&inst.resources))
        .bind(to_json(&inst.env_vars))
        .bind(i64::from(inst.replicas))
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| name_taken(e, IdKind::Instance, &inst.name))?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Some(inst))
    }

    /// Records what the runtime observed of an instance, deleted ones included
    /// (the controller reports their replicas going away). Only observations
    /// change: what the instance should be doing (desired state, `force_stop`) and
    /// whether it is deleted stay as they are.
    pub async fn record_instance_status(
        &self,
        id: &str,
        status: InstanceStatus,
        reason: Option<&str>,
        ready_replicas: u32,
        restart_count: u32,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE instances SET status = $2, status_reason = $3, ready_replicas = $4, restart_count = $5, updated_at = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(reason)
        .bind(i64::from(ready_replicas))
        .bind(i64::from(restart_count))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes an instance (a tombstone until its replicas are gone: with
    /// `force`, the controller kills them at once instead of giving them a grace
    /// period) and frees its quota slot and name. `false` when there is no such
    /// instance.
    pub async fn delete_instance(&self, org_id: &str, id: &str, force: bool) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        // Lock order agent → instance → organization, as everywhere.
        sqlx::query("UPDATE agents SET default_instance_id = NULL WHERE organization_id = $1 AND default_instance_id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query(
            "UPDATE instances SET deleted_at = $3, desired_state = 'stopped', force_stop = $4 \
             WHERE organization_id = $1 AND id = $2 AND deleted_at IS NULL",
        )
        .bind(org_id)
        .bind(id)
        .bind(now_ms())
        .bind(i64::from(force))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 1 {
            sqlx::query(
                "UPDATE organizations SET instance_count = instance_count - 1 WHERE id = $1",
            )
            .bind(org_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(deleted == 1)
    }

    /// Instances the organization has now.
    pub async fn instance_count(&self, org_id: &str) -> Result<u32> {
        let row = sqlx::query("SELECT instance_count FROM organizations WHERE id = $1")
            .bind(org_id)
            .fetch_one(&self.pool)
            .await?;
        row.count("instance_count")
    }
}
