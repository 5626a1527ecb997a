//! Response shapes of both APIs, built from store records.
//!
//! The Instances API shows an instance as in seed 000 (quantities as strings,
//! `env_vars` redacted as `***REDACTED***`); the Agents API wraps everything in
//! `{success, data, meta}` and shows an agent as in seed 003 (numbers, `****`).
//! Fields beyond the seeds (`status_reason`, `config.replicas`, `latest_build_id`,
//! …) are additions; nothing a seed shows is missing or renamed.

use std::collections::BTreeMap;

use chrono::SecondsFormat;
use hangar_core::model::{
    Agent, ApiKey, Build, Cloud, Instance, Job, Organization, SecretMeta, Timestamp, User,
    WebhookEndpoint,
};
use hangar_core::resources::{AgentResources, InstanceResources};
use hangar_core::spec::{DeploymentType, Runtime, RuntimeConfig, Source};
use hangar_core::status::{
    agent_status, endpoint_status, AgentStatus, BuildStatus, EndpointStatus, InstanceStatus,
};
use hangar_core::validate::redact_env;
use hangar_store::{InstanceSummary, Page};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{context, encode_cursor, ApiConfig};

/// RFC 3339, seconds, `Z` — as the seeds show times.
#[must_use]
pub fn ts(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `meta` of every `/v1` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Meta {
    /// This request's id (also in `x-request-id`).
    pub request_id: String,
}

/// `{success, data, meta}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// Always true here (errors carry false).
    pub success: bool,
    /// The payload.
    pub data: T,
    /// Request metadata.
    pub meta: Meta,
}

/// Wraps `data` in the Agents API envelope.
pub fn ok<T>(data: T) -> axum::Json<Envelope<T>> {
    axum::Json(Envelope {
        success: true,
        data,
        meta: Meta {
            request_id: context::request_id(),
        },
    })
}

/// A page's position.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    /// Page size asked for.
    pub limit: u32,
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass as `cursor` to get the next page.
    pub next_cursor: Option<String>,
}

impl Pagination {
    /// The pagination object of a store page.
    pub fn of<T>(page: &Page<T>, limit: u32) -> Self {
        Pagination {
            limit,
            has_more: page.has_more,
            next_cursor: page.next_cursor.as_deref().map(encode_cursor),
        }
    }
}

/// `{success, data: [...], pagination, meta}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListEnvelope<T> {
    /// Always true.
    pub success: bool,
    /// The items, newest first.
    pub data: Vec<T>,
    /// Where this page is.
    pub pagination: Pagination,
    /// Request metadata.
    pub meta: Meta,
}

/// Wraps a list in the Agents API envelope.
pub fn ok_list<T>(data: Vec<T>, pagination: Pagination) -> axum::Json<ListEnvelope<T>> {
    axum::Json(ListEnvelope {
        success: true,
        data,
        pagination,
        meta: Meta {
            request_id: context::request_id(),
        },
    })
}

/// `deployment` of an instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deployment {
    /// Public URL.
    pub url: String,
    /// DNS label of the URL.
    pub resource_name: String,
    /// How it runs.
    pub deployment_type: DeploymentType,
    /// Replicas running and ready now.
    pub replicas: u32,
    /// Replica restarts so far.
    pub restart_count: u32,
}

/// `config` of an instance: the runtime configuration and the replicas wanted.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceConfig {
    /// Replicas wanted.
    pub replicas: u32,
    /// Port, paths and deployment flags.
    #[serde(flatten)]
    pub runtime: RuntimeConfig,
}

/// `metrics` of an instance, from its replicas (zero while none has run).
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceMetrics {
    /// Seconds since its oldest replica started.
    pub uptime_seconds: u64,
    /// Requests served, through this server since it started.
    pub requests_total: u64,
    /// CPU use across replicas.
    pub cpu_usage_percent: f64,
    /// Memory use across replicas.
    pub memory_usage_mb: u64,
    /// Bytes received across replicas.
    pub network_rx_bytes: u64,
    /// Bytes sent across replicas.
    pub network_tx_bytes: u64,
}

impl InstanceMetrics {
    /// The controller's live figures in this shape.
    #[must_use]
    pub fn live(m: &hangar_controller::InstanceMetrics) -> Self {
        Self {
            uptime_seconds: m.uptime_seconds,
            requests_total: m.requests_total,
            cpu_usage_percent: m.cpu_usage_percent,
            memory_usage_mb: m.memory_usage_mb.round() as u64,
            network_rx_bytes: m.network_rx_bytes,
            network_tx_bytes: m.network_tx_bytes,
        }
    }
}

/// An instance as the Instances API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceObject {
    /// `inst_…`
    pub id: String,
    /// Unique within the organization.
    pub name: String,
    /// Blueprint.
    pub agent_id: String,
    /// Build deployed.
    pub build_id: String,
    /// Owning organization.
    pub organization_id: String,
    /// Creator.
    pub user_id: String,
    /// When created.
    pub created_at: String,
    /// When last changed.
    pub updated_at: String,
    /// `starting`, `running`, `stopping`, `stopped` or `error`.
    pub status: InstanceStatus,
    /// Why it is in this status, when there is more to say.
    pub status_reason: Option<String>,
    /// How it is deployed.
    pub deployment: Deployment,
    /// Runtime configuration.
    pub config: InstanceConfig,
    /// Per-replica resources.
    pub resources: InstanceResources,
    /// Environment, sensitive values redacted.
    pub env_vars: BTreeMap<String, String>,
    /// Live metrics.
    pub metrics: InstanceMetrics,
}

/// An instance in the Instances API's shape.
#[must_use]
pub fn instance(i: &Instance, cfg: &ApiConfig) -> InstanceObject {
    InstanceObject {
        id: i.id.clone(),
        name: i.name.clone(),
        agent_id: i.agent_id.clone(),
        build_id: i.build_id.clone(),
        organization_id: i.organization_id.clone(),
        user_id: i.user_id.clone(),
        created_at: ts(i.created_at),
        updated_at: ts(i.updated_at),
        status: i.status,
        status_reason: i.status_reason.clone(),
        deployment: Deployment {
            url: cfg.resource_url(&i.resource_name),
            resource_name: i.resource_name.clone(),
            deployment_type: i.config.deployment_type(),
            replicas: i.ready_replicas,
            restart_count: i.restart_count,
        },
        config: InstanceConfig {
            replicas: i.replicas,
            runtime: i.config.clone(),
        },
        resources: i.resources.to_instance_api(),
        env_vars: redact_env(&i.env_vars, "***REDACTED***"),
        metrics: InstanceMetrics::live(&hangar_controller::InstanceMetrics::default()),
    }
}

/// `GET /instances/by_org_id/{org_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceList {
    /// Instances, newest first.
    pub data: Vec<InstanceObject>,
    /// Where this page is.
    pub pagination: Pagination,
}

/// `health_checks` of the status endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthChecks {
    /// Time of the last check, if any.
    pub last_check: Option<String>,
    /// `healthy`, `unhealthy` or `unknown` (no check yet).
    pub status: String,
    /// Duration of the last check.
    pub response_time_ms: Option<u64>,
}

/// `resource_usage` of the status endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceUsage {
    /// CPU use.
    pub cpu_percent: f64,
    /// Memory use.
    pub memory_mb: u64,
    /// Bytes received.
    pub network_rx_bytes: u64,
    /// Bytes sent.
    pub network_tx_bytes: u64,
}

/// `GET /instances/status/{org_id}/{instance_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceStatusObject {
    /// Status value (see the seed's table; `STOPPED` is Hangar's addition).
    pub status: EndpointStatus,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Replicas running and ready.
    pub replicas: u32,
    /// Replica restarts.
    pub restart_count: u32,
    /// Last health check.
    pub health_checks: HealthChecks,
    /// Resource use now.
    pub resource_usage: ResourceUsage,
}

/// An instance's status in the status endpoint's shape.
#[must_use]
pub fn instance_status(
    i: &Instance,
    live: &hangar_controller::InstanceMetrics,
) -> InstanceStatusObject {
    InstanceStatusObject {
        status: endpoint_status(i.status, i.ready_replicas),
        created_at: i.created_at.timestamp(),
        replicas: i.ready_replicas,
        restart_count: i.restart_count,
        health_checks: HealthChecks {
            last_check: live
                .last_check
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            status: health_of(Some((i.status, i.ready_replicas))).to_owned(),
            response_time_ms: live.response_time_ms,
        },
        resource_usage: ResourceUsage {
            cpu_percent: live.cpu_usage_percent,
            memory_mb: live.memory_usage_mb.round() as u64,
            network_rx_bytes: live.network_rx_bytes,
            network_tx_bytes: live.network_tx_bytes,
        },
    }
}

/// The health of an instance of this status and ready replicas (`None`:
/// no instance).
fn health_of(i: Option<(InstanceStatus, u32)>) -> &'static str {
    match i {
        Some((InstanceStatus::Error, _)) => "unhealthy",
        Some((_, ready)) if ready > 0 => "healthy",
        _ => "unknown",
    }
}

/// `scaling` of an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScalingObject {
    /// Fewest replicas.
    pub min_instances: u32,
    /// Most replicas.
    pub max_instances: u32,
    /// Replicas running now.
    pub current_instances: u32,
    /// Target CPU percent.
    pub target_cpu_percent: u32,
}

/// `endpoints` of an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Endpoints {
    /// The agent's URL: `<its cloud's base URL>/agents/<name>`; any method
    /// and path under it reaches a replica (the prefix stripped). An agent
    /// made before agent URLs whose name an older agent had shows its
    /// host-style URL until renamed.
    pub base_url: String,
    /// Health path.
    pub health: String,
    /// Invoke path.
    pub invoke: String,
}

/// `health` of an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentHealth {
    /// `healthy`, `unhealthy` or `unknown`.
    pub status: String,
    /// Time of the last check.
    pub last_check: Option<String>,
    /// Share of checks that passed, once there are checks.
    pub uptime_percent: Option<f64>,
}

/// `metrics` of an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentMetricsSummary {
    /// Invocations in the last 24 hours, through every server on the
    /// database.
    pub requests_24h: u64,
    /// Mean latency of those.
    pub avg_latency_ms: f64,
    /// Share of those that failed.
    pub error_rate_percent: f64,
}

/// An agent as the Agents API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentObject {
    /// `agent_…`
    pub id: String,
    /// Unique within its cloud.
    pub name: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Derived status.
    pub status: AgentStatus,
    /// Cloud it runs on.
    pub cloud_id: String,
    /// Version label.
    pub version: Option<String>,
    /// When created.
    pub created_at: String,
    /// When last changed.
    pub updated_at: String,
    /// When it last became running.
    pub deployed_at: Option<String>,
    /// Language runtime.
    pub runtime: Runtime,
    /// Resources per replica.
    pub resources: AgentResources,
    /// Scaling.
    pub scaling: ScalingObject,
    /// Where to reach it.
    pub endpoints: Endpoints,
    /// Health.
    pub health: AgentHealth,
    /// Request metrics.
    pub metrics: AgentMetricsSummary,
    /// Where its code comes from (credentials redacted).
    pub source: Source,
    /// Environment, sensitive values as `****`.
    pub environment: BTreeMap<String, String>,
    /// User labels.
    pub metadata: BTreeMap<String, String>,
    /// Runtime configuration (Hangar's addition).
    pub config: RuntimeConfig,
    /// Most recent build (Hangar's addition).
    pub latest_build_id: Option<String>,
    /// The instance invocations go to (Hangar's addition).
    pub instance_id: Option<String>,
}

/// An agent in the Agents API's shape, from the facts its status is
/// derived from: its latest build's status and its default instance.
#[must_use]
pub fn agent(
    a: &Agent,
    latest_build_status: Option<BuildStatus>,
    inst: Option<&InstanceSummary>,
    cfg: &ApiConfig,
) -> AgentObject {
    AgentObject {
        id: a.id.clone(),
        name: a.name.clone(),
        display_name: a.display_name.clone(),
        status: agent_status(a.desired_state, latest_build_status, inst.map(|i| i.status)),
        cloud_id: a.cloud_id.clone(),
        version: a.version.clone(),
        created_at: ts(a.created_at),
        updated_at: ts(a.updated_at),
        deployed_at: a.deployed_at.map(ts),
        runtime: a.runtime.clone(),
        resources: a.resources.to_agent_api(),
        scaling: ScalingObject {
            min_instances: a.scaling.min_instances,
            max_instances: a.scaling.max_instances,
            current_instances: inst.map_or(0, |i| i.ready_replicas),
            target_cpu_percent: a.scaling.target_cpu_percent,
        },
        endpoints: Endpoints {
            base_url: match &a.url_key {
                Some(_) => hangar_core::agent_url::url(
                    a.url_base.as_deref().unwrap_or(&cfg.public_url),
                    &a.name,
                ),
                None => cfg.resource_url(&a.resource_name),
            },
            health: a.config.health_path.clone(),
            invoke: a.config.invoke_path.clone(),
        },
        health: AgentHealth {
            status: health_of(inst.map(|i| (i.status, i.ready_replicas))).to_owned(),
            last_check: None,
            uptime_percent: None,
        },
        metrics: AgentMetricsSummary {
            requests_24h: 0,
            avg_latency_ms: 0.0,
            error_rate_percent: 0.0,
        },
        source: a.source.redacted(),
        environment: redact_env(&a.environment, "****"),
        metadata: a.metadata.clone(),
        config: a.config.clone(),
        latest_build_id: a.latest_build_id.clone(),
        instance_id: a.default_instance_id.clone(),
    }
}

/// A build.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildObject {
    /// `build_…`
    pub id: String,
    /// Agent built.
    pub agent_id: String,
    /// `queued`, `building`, `ready` or `failed`.
    pub status: hangar_core::status::BuildStatus,
    /// Why it failed.
    pub reason: Option<String>,
    /// Source snapshot (credentials redacted).
    pub source: Source,
    /// Content address of the artifact.
    pub artifact: Option<String>,
    /// When queued.
    pub created_at: String,
    /// When started.
    pub started_at: Option<String>,
    /// When finished.
    pub finished_at: Option<String>,
}

/// A build in its response shape.
#[must_use]
pub fn build(b: &Build) -> BuildObject {
    BuildObject {
        id: b.id.clone(),
        agent_id: b.agent_id.clone(),
        status: b.status,
        reason: b.reason.clone(),
        source: b.source.redacted(),
        artifact: b.artifact.clone(),
        created_at: ts(b.created_at),
        started_at: b.started_at.map(ts),
        finished_at: b.finished_at.map(ts),
    }
}

/// A job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobObject {
    /// `job_…`
    pub id: String,
    /// Same as `id` (the invoke response calls it `job_id`).
    pub job_id: String,
    /// Agent invoked.
    pub agent_id: String,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: hangar_core::status::JobStatus,
    /// `async`, or `sync` for a synchronous invocation recorded because it
    /// carried an `Idempotency-Key`.
    pub mode: &'static str,
    /// The agent's output, once completed.
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    /// The agent's `usage`, if it reported one.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<serde_json::Value>,
    /// `{code, message, details?}` once failed (while pending again after a
    /// failed attempt: that attempt's error). `code` is the synchronous
    /// invoke's for the same failure (AGENT_ERROR, AGENT_BAD_RESPONSE,
    /// AGENT_UNREACHABLE, AGENT_UNAVAILABLE, AGENT_OVERLOADED,
    /// INVOKE_TIMEOUT), or AGENT_NOT_FOUND (the agent was deleted) or
    /// JOB_ATTEMPTS_EXHAUSTED.
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    /// Attempts started so far (infrastructure failures are retried).
    pub attempts: u32,
    /// The caller's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// The instance that served the last attempt.
    pub instance_id: Option<String>,
    /// When accepted.
    pub created_at: String,
    /// When the latest attempt started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// How long the agent took on the attempt that completed it, in ms.
    pub latency_ms: Option<u64>,
    /// From acceptance to the end, queueing and retries included, in ms.
    pub duration_ms: Option<u64>,
    /// Where to poll.
    pub poll_url: String,
}

/// A job in its response shape (times to the millisecond: jobs are short).
#[must_use]
pub fn job(j: &Job) -> JobObject {
    let ms = |t: Timestamp| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    JobObject {
        id: j.id.clone(),
        job_id: j.id.clone(),
        agent_id: j.agent_id.clone(),
        status: j.status,
        mode: if j.sync { "sync" } else { "async" },
        output: j.output.clone(),
        usage: j.usage.clone(),
        error: j.error.clone(),
        attempts: j.attempts,
        idempotency_key: j.idempotency_key.clone(),
        instance_id: j.instance_id.clone(),
        created_at: ms(j.created_at),
        started_at: j.started_at.map(ms),
        finished_at: j.finished_at.map(ms),
        latency_ms: j.latency_ms,
        duration_ms: j
            .finished_at
            .and_then(|f| u64::try_from((f - j.created_at).num_milliseconds()).ok()),
        poll_url: format!("/v1/jobs/{}", j.id),
    }
}

/// An organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationObject {
    /// `org_…`
    pub id: String,
    /// Name.
    pub name: String,
    /// Quotas.
    pub quotas: Quotas,
    /// Whether it operates the platform.
    pub is_operator: bool,
    /// When created.
    pub created_at: String,
}

/// An organization's quotas.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quotas {
    /// Most instances at once.
    pub max_instances: u32,
}

/// An organization in its response shape.
#[must_use]
pub fn organization(o: &Organization) -> OrganizationObject {
    OrganizationObject {
        id: o.id.clone(),
        name: o.name.clone(),
        quotas: Quotas {
            max_instances: o.max_instances,
        },
        is_operator: o.is_operator,
        created_at: ts(o.created_at),
    }
}

/// A user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserObject {
    /// `user_…`
    pub id: String,
    /// Organization.
    pub organization_id: String,
    /// Email.
    pub email: String,
    /// Name.
    pub name: Option<String>,
    /// Role.
    pub role: hangar_core::model::Role,
    /// When created.
    pub created_at: String,
}

/// A user in its response shape.
#[must_use]
pub fn user(u: &User) -> UserObject {
    UserObject {
        id: u.id.clone(),
        organization_id: u.organization_id.clone(),
        email: u.email.clone(),
        name: u.name.clone(),
        role: u.role,
        created_at: ts(u.created_at),
    }
}

/// An API key (its secret is only in the response that created it).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyObject {
    /// `key_…`
    pub id: String,
    /// Label.
    pub name: String,
    /// First characters, to recognise it.
    pub prefix: String,
    /// The user it acts as.
    pub user_id: String,
    /// When created.
    pub created_at: String,
    /// Last use (to the minute).
    pub last_used_at: Option<String>,
    /// When revoked.
    pub revoked_at: Option<String>,
    /// The key itself: present only when just created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A key in its response shape; `secret` only when just created.
#[must_use]
pub fn api_key(k: &ApiKey, secret: Option<String>) -> ApiKeyObject {
    ApiKeyObject {
        id: k.id.clone(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        user_id: k.user_id.clone(),
        created_at: ts(k.created_at),
        last_used_at: k.last_used_at.map(ts),
        revoked_at: k.revoked_at.map(ts),
        key: secret,
    }
}

/// A cloud.
#[derive(Debug, Serialize, ToSchema)]
pub struct CloudObject {
    /// `cloud_…`
    pub id: String,
    /// Name (`local` is the default).
    pub name: String,
    /// Driver.
    pub driver: hangar_core::model::DriverKind,
    /// Driver settings.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Where its agents' URLs live (`<base_url>/agents/<name>`): its own
    /// origin, or the server's public URL.
    pub base_url: String,
    /// When created.
    pub created_at: String,
}

/// A cloud in its response shape.
#[must_use]
pub fn cloud(c: &Cloud, cfg: &ApiConfig) -> CloudObject {
    CloudObject {
        id: c.id.clone(),
        name: c.name.clone(),
        driver: c.driver,
        config: c.config.clone(),
        base_url: c.base_url.clone().unwrap_or_else(|| cfg.public_url.clone()),
        created_at: ts(c.created_at),
    }
}

/// A secret (never its value).
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretObject {
    /// `sec_…`
    pub id: String,
    /// Name, referenced as `${secrets.NAME}`.
    pub name: String,
    /// Always `****`.
    pub value: String,
    /// When created.
    pub created_at: String,
    /// When its value last changed.
    pub updated_at: String,
}

/// A secret in its response shape.
#[must_use]
pub fn secret(s: &SecretMeta) -> SecretObject {
    SecretObject {
        id: s.id.clone(),
        name: s.name.clone(),
        value: "****".into(),
        created_at: ts(s.created_at),
        updated_at: ts(s.updated_at),
    }
}

/// A webhook endpoint (its secret only in the response that created it).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookObject {
    /// `wh_…`
    pub id: String,
    /// Receiver URL.
    pub url: String,
    /// Event types (empty: all).
    pub events: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// When created.
    pub created_at: String,
    /// When last changed.
    pub updated_at: String,
    /// Signing secret (`whsec_…`): present only when just created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A webhook endpoint in its response shape.
#[must_use]
pub fn webhook(w: &WebhookEndpoint, secret: Option<String>) -> WebhookObject {
    WebhookObject {
        id: w.id.clone(),
        url: w.url.clone(),
        events: w.events.clone(),
        description: w.description.clone(),
        enabled: w.enabled,
        created_at: ts(w.created_at),
        updated_at: ts(w.updated_at),
        secret,
    }
}
