//! Uploads, secrets and webhook endpoints: the records behind the `/v1`
//! extras. Secret values and webhook signing secrets are sealed ([`crate::seal`])
//! before they reach the database and are only opened for the server's own use.

use hangar_core::id::{new_id, IdKind};
use hangar_core::model::{SecretMeta, Timestamp, Upload, WebhookEndpoint};
use rand::RngCore;
use sqlx::any::AnyRow;

use crate::{from_ms, now_ms, to_json, to_ms, Result, RowExt, Store};

/// A webhook endpoint to create.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// Owning organization.
    pub organization_id: String,
    /// Receiver URL.
    pub url: String,
    /// Event types (empty: all).
    pub events: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// Signing secret; generated (`whsec_…`) when `None`.
    pub secret: Option<String>,
}

const WEBHOOK_COLUMNS: &str =
    "id, organization_id, url, events, description, enabled, created_at, updated_at";

fn webhook_from_row(r: &AnyRow) -> Result<WebhookEndpoint> {
    Ok(WebhookEndpoint {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        url: r.text("url")?,
        events: r.json("events")?,
        description: r.opt_text("description")?,
        enabled: r.flag("enabled")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn upload_from_row(r: &AnyRow) -> Result<Upload> {
    Ok(Upload {
        id: r.text("id")?,
        organization_id: r.text("organization_id")?,
        size_bytes: r.opt_int("size_bytes")?.and_then(|v| u64::try_from(v).ok()),
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        completed_at: r.opt_time("completed_at")?,
    })
}

fn secret_context(org_id: &str, name: &str) -> String {
    format!("secret/{org_id}/{name}")
}

fn webhook_context(org_id: &str, id: &str) -> String {
    format!("webhook/{org_id}/{id}")
}

impl Store {
    /// Opens an upload slot valid until `expires_at`.
    pub async fn create_upload(&self, org_id: &str, expires_at: Timestamp) -> Result<Upload> {
        let now = now_ms();
        let upload = Upload {
            id: new_id(IdKind::Upload),
            organization_id: org_id.to_owned(),
            size_bytes: None,
            created_at: from_ms(now),
            expires_at,
            completed_at: None,
        };
        sqlx::query("INSERT INTO uploads (id, organization_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(&upload.id)
            .bind(org_id)
            .bind(now)
            .bind(to_ms(expires_at))
            .execute(&self.pool)
            .await?;
        Ok(upload)
    }

    /// An upload by id alone, for the signed upload URL (which names no
    /// organization: its signature is the authority).
    pub async fn find_upload(&self, id: &str) -> Result<Option<Upload>> {
        let row = sqlx::query("SELECT id, organization_id, size_bytes, created_at, expires_at, completed_at FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(upload_from_row).transpose()
    }

    /// Records that an upload's archive arrived (`size` bytes). `false` when
    /// it had arrived before (an upload takes one archive) or does not exist.
    pub async fn complete_upload(&self, id: &str, size: u64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE uploads SET completed_at = $2, size_bytes = $3 WHERE id = $1 AND completed_at IS NULL",
        )
        .bind(id)
        .bind(now_ms())
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// An upload of the organization.
    pub async fn get_upload(&self, org_id: &str, id: &str) -> Result<Option<Upload>> {
        let row = sqlx::query("SELECT id, organization_id, size_bytes, created_at, expires_at, completed_at FROM uploads WHERE organization_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(upload_from_row).transpose()
    }

    /// Creates a secret, or replaces its value (one statement, so concurrent
    /// writers of one name cannot collide); `true` when it was created.
    pub async fn put_secret(
        &self,
        org_id: &str,
        name: &str,
        value: &str,
    ) -> Result<(SecretMeta, bool)> {
        let sealed = self.sealer.seal(&secret_context(org_id, name), value)?;
        let now = now_ms();
        let id = new_id(IdKind::Secret);
        let row = sqlx::query(
            "INSERT INTO secrets (id, organization_id, name, sealed_value, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (organization_id, name) DO UPDATE SET sealed_value = excluded.sealed_value, updated_at = excluded.updated_at \
             RETURNING id, created_at, updated_at",
        )
        .bind(&id)
        .bind(org_id)
        .bind(name)
        .bind(&sealed)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let meta = SecretMeta {
            id: row.text("id")?,
            organization_id: org_id.to_owned(),
            name: name.to_owned(),
            created_at: row.time("created_at")?,
            updated_at: row.time("updated_at")?,
        };
        // The row keeps the ID it was inserted with: ours only if it is new.
        let created = meta.id == id;
        Ok((meta, created))
    }

    /// The organization's secrets (names and times only), by name.
    pub async fn list_secrets(&self, org_id: &str) -> Result<Vec<SecretMeta>> {
        let rows = sqlx::query("SELECT id, organization_id, name, created_at, updated_at FROM secrets WHERE organization_id = $1 ORDER BY name")
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SecretMeta {
                    id: r.text("id")?,
                    organization_id: r.text("organization_id")?,
                    name: r.text("name")?,
                    created_at: r.time("created_at")?,
                    updated_at: r.time("updated_at")?,
                })
            })
            .collect()
    }

    /// A secret's value, for the server's own use (builds, replica environment).
    pub async fn reveal_secret(&self, org_id: &str, name: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT sealed_value FROM secrets WHERE organization_id = $1 AND name = $2",
        )
        .bind(org_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some(
                self.sealer
                    .open(&secret_context(org_id, name), &r.text("sealed_value")?)?,
            )),
            None => Ok(None),
        }
    }

    /// Deletes a secret by name or ID; `false` when there is none.
    pub async fn delete_secret(&self, org_id: &str, name_or_id: &str) -> Result<bool> {
        let n = sqlx::query(
            "DELETE FROM secrets WHERE organization_id = $1 AND (name = $2 OR id = $2)",
        )
        .bind(org_id)
        .bind(name_or_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Creates a webhook endpoint; returns it with its signing secret (shown once).
    pub async fn create_webhook(&self, new: NewWebhook) -> Result<(WebhookEndpoint, String)> {
        let secret = new.secret.unwrap_or_else(|| {
            let mut bytes = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut bytes);
            use base64::Engine;
            format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        });
        let now = now_ms();
        let hook = WebhookEndpoint {
            id: new_id(IdKind::Webhook),
            organization_id: new.organization_id,
            url: new.url,
            events: new.events,
            description: new.description,
            enabled: true,
            created_at: from_ms(now),
            updated_at: from_ms(now),
        };
        let sealed = self
            .sealer
            .seal(&webhook_context(&hook.organization_id, &hook.id), &secret)?;
        sqlx::query(
            "INSERT INTO webhooks (id, organization_id, url, events, description, enabled, sealed_secret, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $7)",
        )
        .bind(&hook.id)
        .bind(&hook.organization_id)
        .bind(&hook.url)
        .bind(to_json(&hook.events))
        .bind(&hook.description)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok((hook, secret))
    }

    /// A webhook endpoint of the organization.
    pub async fn get_webhook(&self, org_id: &str, id: &str) -> Result<Option<WebhookEndpoint>> {
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE organization_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    /// The organization's webhook endpoints, newest first.
    pub async fn list_webhooks(&self, org_id: &str) -> Result<Vec<WebhookEndpoint>> {
        let rows = sqlx::query(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE organization_id = $1 ORDER BY id DESC"
        ))
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(webhook_from_row).collect()
    }

    /// Writes a webhook endpoint's changeable fields back.
    pub async fn update_webhook(&self, hook: &WebhookEndpoint) -> Result<()> {
        sqlx::query(
            "UPDATE webhooks SET url = $3, events = $4, description = $5, enabled = $6, updated_at = $7 WHERE organization_id = $1 AND id = $2",
        )
        .bind(&hook.organization_id)
        .bind(&hook.id)
        .bind(&hook.url)
        .bind(to_json(&hook.events))
        .bind(&hook.description)
        .bind(i64::from(hook.enabled))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A webhook endpoint's signing secret, for the server's own use.
    pub async fn webhook_secret(&self, org_id: &str, id: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT sealed_secret FROM webhooks WHERE organization_id = $1 AND id = $2",
        )
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some(
                self.sealer
                    .open(&webhook_context(org_id, id), &r.text("sealed_secret")?)?,
            )),
            None => Ok(None),
        }
    }

    /// Deletes a webhook endpoint; `false` when there is none.
    /// Its deliveries go with it.
    pub async fn delete_webhook(&self, org_id: &str, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE organization_id = $1 AND webhook_id = $2",
        )
        .bind(org_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query("DELETE FROM webhooks WHERE organization_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }
}
