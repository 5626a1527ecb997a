//! Organizations, users, API keys and clouds: who is asking and where things run.
//!
//! API keys are random 192-bit strings; only their SHA-256 is stored, which is
//! enough for keys (unlike passwords they have full entropy, so a slow hash buys
//! nothing) and makes authentication one indexed lookup.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hangar_core::id::{new_id, IdKind};
use hangar_core::model::{ApiKey, Cloud, DriverKind, Organization, Role, User};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::{from_ms, name_taken, now_ms, to_json, Conditions, Result, RowExt, Store, StoreError};

/// How long a key that authenticated is trusted without asking the database.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(2);

/// The most keys remembered; past that the cache starts over. Only keys that
/// authenticated get in, so unknown keys cannot fill it.
const KEY_CACHE_SIZE: usize = 10_000;

/// Keys that authenticated lately, by hash, with when they were checked.
#[derive(Debug, Default)]
pub(crate) struct KeyCache(Mutex<HashMap<String, (Principal, Instant)>>);

impl KeyCache {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, (Principal, Instant)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, hash: &str) -> Option<Principal> {
        let entries = self.entries();
        let (principal, checked) = entries.get(hash)?;
        (checked.elapsed() < KEY_CACHE_TTL).then(|| principal.clone())
    }

    fn insert(&self, hash: String, principal: Principal) {
        let mut entries = self.entries();
        if entries.len() >= KEY_CACHE_SIZE {
            entries.clear();
        }
        entries.insert(hash, (principal, Instant::now()));
    }

    /// Forgets every key: after a revocation (or anything else that changes
    /// who a key is), the next request asks the database.
    pub(crate) fn clear(&self) {
        self.entries().clear();
    }
}

/// Who a request acts as, once its key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key used.
    pub key_id: String,
    /// The key's user.
    pub user_id: String,
    /// The user's organization.
    pub organization_id: String,
    /// The user's role.
    pub role: Role,
    /// Whether the organization operates the platform.
    pub is_operator: bool,
}

/// A key as created: its record and the secret, which is shown once.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The record.
    pub key: ApiKey,
    /// The secret itself.
    pub secret: String,
}

/// SHA-256 of a key, hex.
#[must_use]
pub fn hash_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn generate_key_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("hgr_{}", hex::encode(bytes))
}

fn key_prefix(secret: &str) -> String {
    secret.chars().take(12).collect()
}

const ORG_COLUMNS: &str = "id, name, max_instances, is_operator, created_at";
const USER_COLUMNS: &str = "id, organization_id, email, name, role, created_at";
const KEY_COLUMNS: &str =
    "id, organization_id, user_id, name, prefix, created_at, last_used_at, revoked_at";
const CLOUD_COLUMNS: &str = "id, organization_id, name, driver, config, base_url, created_at";

fn org_from_row(r: &AnyRow) -> Result<Organization> {
    Ok(Organization {
        id: r.text("id")?,
        name: r.text("name")?,
        max_instances: r.count("max_instances")?,
        is_operator: r.flag("is_operator")?,
        created_at: r.time("created_at")?,
    })
}

fn user_from_row(r: &AnyRow) -> Result<User> {
    Ok(User {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        email: r.text("email")?,
        name: r.opt_text("name")?,
        role: r.parsed("role")?,
        created_at: r.time("created_at")?,
    })
}

fn key_from_row(r: &AnyRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        user_id: r.text("user_id")?,
        name: r.text("name")?,
        prefix: r.text("prefix")?,
        created_at: r.time("created_at")?,
        last_used_at: r.opt_time("last_used_at")?,
        revoked_at: r.opt_time("revoked_at")?,
    })
}

fn cloud_from_row(r: &AnyRow) -> Result<Cloud> {
    Ok(Cloud {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        name: r.text("name")?,
        driver: r.parsed("driver")?,
        config: r.json("config")?,
        base_url: r.opt_text("base_url")?,
        created_at: r.time("created_at")?,
    })
}

/// Name of the key that `HANGAR_ADMIN_KEY` / `--admin-key` configures.
const CONFIGURED_KEY_NAME: &str = "admin key (configuration)";

/// What [`Store::bootstrap`] did.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The operator organization.
    pub organization: Organization,
    /// Its first admin.
    pub admin: User,
    /// The key created now, when this start created one and no key was given.
    pub generated_key: Option<String>,
}

/// An organization created with its first admin, its `local` cloud and a key.
#[derive(Debug, Clone)]
pub struct NewOrganization {
    /// The organization.
    pub organization: Organization,
    /// Its first admin.
    pub admin: User,
    /// The admin's key.
    pub key: NewApiKey,
}

impl Store {
    async fn insert_org_with_admin(
        tx: &mut Transaction<'static, Any>,
        name: &str,
        max_instances: u32,
        is_operator: bool,
        admin_email: &str,
        key_secret: Option<&str>,
    ) -> Result<NewOrganization> {
        let now = now_ms();
        let org = Organization {
            id: new_id(IdKind::Organization),
            name: name.to_owned(),
            max_instances,
            is_operator,
            created_at: from_ms(now),
        };
        sqlx::query("INSERT INTO organizations (id, name, max_instances, is_operator, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&org.id)
            .bind(&org.name)
            .bind(i64::from(max_instances))
            .bind(i64::from(is_operator))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        let admin = User {
            id: new_id(IdKind::User),
            organization_id: org.id.clone(),
            email: admin_email.to_owned(),
            name: Some("Administrator".to_owned()),
            role: Role::Admin,
            created_at: from_ms(now),
        };
        Self::insert_user(tx, &admin).await?;
        sqlx::query("INSERT INTO clouds (id, organization_id, name, driver, config, created_at) VALUES ($1, $2, 'local', $3, '{}', $4)")
            .bind(new_id(IdKind::Cloud))
            .bind(&org.id)
            .bind(DriverKind::Sandbox.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        let name = if key_secret.is_some() {
            CONFIGURED_KEY_NAME
        } else {
            "first admin key"
        };
        let key = Self::insert_key(tx, &org.id, &admin.id, name, key_secret).await?;
        Ok(NewOrganization {
            organization: org,
            admin,
            key,
        })
    }

    async fn insert_user(tx: &mut Transaction<'static, Any>, user: &User) -> Result<()> {
        sqlx::query("INSERT INTO users (id, organization_id, email, name, role, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&user.id)
            .bind(&user.organization_id)
            .bind(&user.email)
            .bind(&user.name)
            .bind(user.role.as_str())
            .bind(crate::to_ms(user.created_at))
            .execute(&mut **tx)
            .await
            .map_err(|e| name_taken(e, IdKind::User, &user.email))?;
        Ok(())
    }

    async fn insert_key(
        tx: &mut Transaction<'static, Any>,
        org_id: &str,
        user_id: &str,
        name: &str,
        secret: Option<&str>,
    ) -> Result<NewApiKey> {
        let secret = secret.map_or_else(generate_key_secret, str::to_owned);
        let now = now_ms();
        let key = ApiKey {
            id: new_id(IdKind::ApiKey),
            organization_id: org_id.to_owned(),
            user_id: user_id.to_owned(),
            name: name.to_owned(),
            prefix: key_prefix(&secret),
            created_at: from_ms(now),
            last_used_at: None,
            revoked_at: None,
        };
        sqlx::query("INSERT INTO api_keys (id, organization_id, user_id, name, prefix, key_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&key.id)
            .bind(org_id)
            .bind(user_id)
            .bind(name)
            .bind(&key.prefix)
            .bind(hash_key(&secret))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| name_taken(e, IdKind::ApiKey, &key.prefix))?;
        Ok(NewApiKey { key, secret })
    }

    /// First start: creates the operator organization, its admin, the `local` cloud
    /// and a key (`admin_key`, or a generated one). Later starts change nothing but
    /// make sure `admin_key`, when given, authenticates as that admin — and that a
    /// previously configured key no longer does (configuring a new key rotates it).
    pub async fn bootstrap(&self, admin_key: Option<&str>) -> Result<Bootstrap> {
        // Two servers starting on one empty PostgreSQL: the unique index on the
        // operator flag lets one create it; the other finds it on its second try.
        let booted = match self.try_bootstrap(admin_key).await {
            Err(StoreError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                self.try_bootstrap(admin_key).await
            }
            other => other,
        };
        // A newly configured admin key revokes the previous one.
        self.keys.clear();
        booted
    }

    async fn try_bootstrap(&self, admin_key: Option<&str>) -> Result<Bootstrap> {
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM organizations WHERE is_operator = 1"
        ))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = existing else {
            let created = Self::insert_org_with_admin(
                &mut tx,
                "default",
                hangar_core::model::DEFAULT_MAX_INSTANCES,
                true,
                "admin@localhost",
                admin_key,
            )
            .await?;
            tx.commit().await?;
            return Ok(Bootstrap {
                organization: created.organization,
                admin: created.admin,
                generated_key: admin_key.is_none().then_some(created.key.secret),
            });
        };
        let organization = org_from_row(&row)?;
        let admin_row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE organization_id = $1 AND role = 'admin' ORDER BY id LIMIT 1"
        ))
        .bind(&organization.id)
        .fetch_one(&mut *tx)
        .await?;
        let admin = user_from_row(&admin_row)?;
        if let Some(secret) = admin_key {
            let known = sqlx::query("SELECT id FROM api_keys WHERE key_hash = $1")
                .bind(hash_key(secret))
                .fetch_optional(&mut *tx)
                .await?;
            if known.is_none() {
                sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE organization_id = $1 AND name = $3 AND revoked_at IS NULL")
                    .bind(&organization.id)
                    .bind(now_ms())
                    .bind(CONFIGURED_KEY_NAME)
                    .execute(&mut *tx)
                    .await?;
                Self::insert_key(
                    &mut tx,
                    &organization.id,
                    &admin.id,
                    CONFIGURED_KEY_NAME,
                    Some(secret),
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Bootstrap {
            organization,
            admin,
            generated_key: None,
        })
    }

    /// Creates an organization with its first admin, `local` cloud and key.
    pub async fn create_organization(
        &self,
        name: &str,
        max_instances: u32,
        admin_email: &str,
    ) -> Result<NewOrganization> {
        let mut tx = self.pool.begin().await?;
        let created =
            Self::insert_org_with_admin(&mut tx, name, max_instances, false, admin_email, None)
                .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// An organization by ID.
    pub async fn get_organization(&self, id: &str) -> Result<Option<Organization>> {
        let row = sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM organizations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(org_from_row).transpose()
    }

    /// All organizations, oldest first (operators only).
    pub async fn list_organizations(&self) -> Result<Vec<Organization>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORG_COLUMNS} FROM organizations ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(org_from_row).collect()
    }

    /// Changes an organization's name or quota.
    pub async fn update_organization(
        &self,
        id: &str,
        name: Option<&str>,
        max_instances: Option<u32>,
    ) -> Result<Option<Organization>> {
        sqlx::query("UPDATE organizations SET name = COALESCE($2, name), max_instances = COALESCE($3, max_instances) WHERE id = $1")
            .bind(id)
            .bind(name)
            .bind(max_instances.map(i64::from))
            .execute(&self.pool)
            .await?;
        self.get_organization(id).await
    }

    /// Checks a key; `None` for unknown or revoked keys.
    ///
    /// A key that authenticated within the last [`KEY_CACHE_TTL`] is answered
    /// from memory: on the data plane, a lookup per request would cost more
    /// than the rest of the request. Revoking on this server takes effect at
    /// once; on another server sharing the database, within the TTL.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>> {
        let hash = hash_key(secret);
        if let Some(principal) = self.keys.get(&hash) {
            return Ok(Some(principal));
        }
        let row = sqlx::query(
            "SELECT k.id, k.user_id, k.organization_id, k.last_used_at, u.role, o.is_operator \
             FROM api_keys k JOIN users u ON u.id = k.user_id JOIN organizations o ON o.id = k.organization_id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let principal = principal_from_row(&row)?;
        // Recorded to the minute, so authentication is not a write on every request.
        let now = now_ms();
        if row
            .opt_int("last_used_at")?
            .is_none_or(|t| now - t > 60_000)
        {
            // Best effort: a busy or read-only database must not fail the request.
            let recorded = sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                .bind(&principal.key_id)
                .bind(now)
                .execute(&self.pool)
                .await;
            if let Err(e) = recorded {
                tracing::warn!(key = %principal.key_id, error = %e, "could not record key use");
            }
        }
        self.keys.insert(hash, principal.clone());
        Ok(Some(principal))
    }

    /// The principal of a live key, by the key's ID (`None` once revoked):
    /// what a credential derived from a key, such as a stream token, acts as.
    pub async fn principal_of_key(&self, key_id: &str) -> Result<Option<Principal>> {
        let row = sqlx::query(
            "SELECT k.id, k.user_id, k.organization_id, u.role, o.is_operator \
             FROM api_keys k JOIN users u ON u.id = k.user_id JOIN organizations o ON o.id = k.organization_id \
             WHERE k.id = $1 AND k.revoked_at IS NULL",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(principal_from_row).transpose()
    }

    /// Adds a user to an organization.
    pub async fn create_user(
        &self,
        org_id: &str,
        email: &str,
        name: Option<&str>,
        role: Role,
    ) -> Result<User> {
        let user = User {
            id: new_id(IdKind::User),
            organization_id: org_id.to_owned(),
            email: email.to_owned(),
            name: name.map(str::to_owned),
            role,
            created_at: from_ms(now_ms()),
        };
        let mut tx = self.pool.begin().await?;
        Self::insert_user(&mut tx, &user).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// A user of the organization.
    pub async fn get_user(&self, org_id: &str, id: &str) -> Result<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The organization's users, oldest first.
    pub async fn list_users(&self, org_id: &str) -> Result<Vec<User>> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE organization_id = $1 ORDER BY id"
        ))
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Creates a key for a user of the organization; `None` when no such user.
    pub async fn create_api_key(
        &self,
        org_id: &str,
        user_id: &str,
        name: &str,
    ) -> Result<Option<NewApiKey>> {
        if self.get_user(org_id, user_id).await?.is_none() {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        let key = Self::insert_key(&mut tx, org_id, user_id, name, None).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// The organization's keys (of one user, when given), newest first.
    pub async fn list_api_keys(&self, org_id: &str, user_id: Option<&str>) -> Result<Vec<ApiKey>> {
        let rows = Conditions::new("organization_id", org_id)
            .cmp("user_id", "=", user_id)
            .fetch_all(
                &self.pool,
                &format!("{KEY_COLUMNS} FROM api_keys"),
                "ORDER BY id DESC",
            )
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    /// A key of the organization.
    pub async fn get_api_key(&self, org_id: &str, id: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Revokes a key; revoking a revoked key changes nothing.
    pub async fn revoke_api_key(&self, org_id: &str, id: &str) -> Result<Option<ApiKey>> {
        sqlx::query("UPDATE api_keys SET revoked_at = $3 WHERE organization_id = $1 AND id = $2 AND revoked_at IS NULL")
            .bind(org_id)
            .bind(id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        self.keys.clear();
        self.get_api_key(org_id, id).await
    }

    /// Adds a cloud; `base_url` is its own origin for agent URLs (`None`:
    /// the server's public URL).
    pub async fn create_cloud(
        &self,
        org_id: &str,
        name: &str,
        driver: DriverKind,
        config: &serde_json::Value,
        base_url: Option<&str>,
    ) -> Result<Cloud> {
        let cloud = Cloud {
            id: new_id(IdKind::Cloud),
            organization_id: org_id.to_owned(),
            name: name.to_owned(),
            driver,
            config: config.clone(),
            base_url: base_url.map(str::to_owned),
            created_at: from_ms(now_ms()),
        };
        sqlx::query("INSERT INTO clouds (id, organization_id, name, driver, config, base_url, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&cloud.id)
            .bind(org_id)
            .bind(name)
            .bind(driver.as_str())
            .bind(to_json(config))
            .bind(base_url)
            .bind(crate::to_ms(cloud.created_at))
            .execute(&self.pool)
            .await
            .map_err(|e| name_taken(e, IdKind::Cloud, name))?;
        Ok(cloud)
    }

    /// A cloud of the organization by ID or by name.
    pub async fn get_cloud(&self, org_id: &str, id_or_name: &str) -> Result<Option<Cloud>> {
        let row = sqlx::query(&format!(
            "SELECT {CLOUD_COLUMNS} FROM clouds WHERE organization_id = $1 AND (id = $2 OR name = $2)"
        ))
        .bind(org_id)
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cloud_from_row).transpose()
    }

    /// The organization's clouds, oldest first.
    pub async fn list_clouds(&self, org_id: &str) -> Result<Vec<Cloud>> {
        let rows = sqlx::query(&format!(
            "SELECT {CLOUD_COLUMNS} FROM clouds WHERE organization_id = $1 ORDER BY id"
        ))
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cloud_from_row).collect()
    }

    /// Every organization's clouds run by `driver`, oldest first: what a
    /// server connects to at start.
    pub async fn clouds_of_driver(&self, driver: DriverKind) -> Result<Vec<Cloud>> {
        let rows = sqlx::query(&format!(
            "SELECT {CLOUD_COLUMNS} FROM clouds WHERE driver = $1 ORDER BY id"
        ))
        .bind(driver.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cloud_from_row).collect()
    }
}

/// A principal from a row of `api_keys` joined with its user and organization
/// (`id`, `user_id`, `organization_id`, `role`, `is_operator`).
fn principal_from_row(row: &AnyRow) -> Result<Principal> {
    Ok(Principal {
        key_id: row.text("id")?,
        user_id: row.text("user_id")?,
        organization_id: row.text("organization_id")?,
        role: row.parsed("role")?,
        is_operator: row.flag("is_operator")?,
    })
}
