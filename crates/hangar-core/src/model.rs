//! The records Hangar keeps. The store reads and writes them; the API renders them in
//! each API's shape. They hold facts (what was asked, what was observed), never a
//! derived status: those come from [`crate::status`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::resources::Resources;
use crate::spec::{Runtime, RuntimeConfig, Scaling, Source};
use crate::status::{BuildStatus, DesiredState, InstanceStatus, JobStatus};

/// A point in time, UTC.
pub type Timestamp = DateTime<Utc>;

/// Most instances an organization may have unless its quota says otherwise.
pub const DEFAULT_MAX_INSTANCES: u32 = 50;

crate::string_enum! {
    /// What a user may do in their organization.
    pub enum Role {
        /// Everything, including users, keys of others, clouds and quotas.
        Admin = "admin",
        /// Agents, instances, jobs, secrets, webhooks and their own keys.
        Member = "member",
    }
}

crate::string_enum! {
    /// Which driver runs a cloud's replicas.
    pub enum DriverKind {
        /// Sandboxes on this machine (youki libcontainer).
        Sandbox = "sandbox",
        /// Containers on a Docker engine.
        Docker = "docker",
        /// Deployments on a Kubernetes cluster.
        Kubernetes = "kubernetes",
    }
}

/// A tenant: everything else belongs to exactly one.
#[derive(Debug, Clone, PartialEq)]
pub struct Organization {
    /// `org_…`
    pub id: String,
    /// Display name.
    pub name: String,
    /// Quota: most instances at once.
    pub max_instances: u32,
    /// Whether this is the organization created at first start, whose admins
    /// operate the platform (create organizations, set quotas).
    pub is_operator: bool,
    /// When created.
    pub created_at: Timestamp,
}

/// A person (or robot) in an organization.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// `user_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// Unique per organization.
    pub email: String,
    /// Display name.
    pub name: Option<String>,
    /// What they may do.
    pub role: Role,
    /// When created.
    pub created_at: Timestamp,
}

/// An API key; the secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    /// `key_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// The user it acts as.
    pub user_id: String,
    /// Label.
    pub name: String,
    /// First characters of the key, to recognise it in listings.
    pub prefix: String,
    /// When created.
    pub created_at: Timestamp,
    /// Last time it authenticated a request (to the minute).
    pub last_used_at: Option<Timestamp>,
    /// When revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<Timestamp>,
}

/// A runtime target.
#[derive(Debug, Clone, PartialEq)]
pub struct Cloud {
    /// `cloud_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// Unique per organization (`local` is created at bootstrap).
    pub name: String,
    /// Which driver runs its replicas.
    pub driver: DriverKind,
    /// Driver-specific settings (Docker host, kubeconfig context, …).
    pub config: serde_json::Value,
    /// Where its agents' URLs live: an origin of its own
    /// ([`crate::agent_url::origin`]), or `None` for the server's public URL.
    pub base_url: Option<String>,
    /// When created.
    pub created_at: Timestamp,
}

/// An agent blueprint; its default instance is what the Agents API shows as running.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// `agent_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// Who created it.
    pub user_id: String,
    /// Where it runs.
    pub cloud_id: String,
    /// Unique within the cloud.
    pub name: String,
    /// DNS label of its URL, also used by its default instance.
    pub resource_name: String,
    /// Its cloud's own base URL when the cloud has one (`None`: the
    /// server's public URL), as it was when the agent was made; its agent URL
    /// is `<base>/agents/<name>` ([`crate::agent_url`]).
    pub url_base: Option<String>,
    /// What makes its agent URL unique ([`crate::agent_url::key`]); `None`
    /// for an agent with no agent URL (made before there were agent URLs,
    /// with a name an older agent had, until it is renamed).
    pub url_key: Option<String>,
    /// Free-text display name.
    pub display_name: Option<String>,
    /// Free-text version.
    pub version: Option<String>,
    /// Language runtime.
    pub runtime: Runtime,
    /// Default resources of its instances.
    pub resources: Resources,
    /// Replica bounds of its default instance.
    pub scaling: Scaling,
    /// How its replicas are run and reached.
    pub config: RuntimeConfig,
    /// Environment, values as given (secret references unresolved).
    pub environment: BTreeMap<String, String>,
    /// Where its code comes from.
    pub source: Source,
    /// User's labels.
    pub metadata: BTreeMap<String, String>,
    /// Run or stopped, as last asked.
    pub desired_state: DesiredState,
    /// Most recent build.
    pub latest_build_id: Option<String>,
    /// The instance the Agents API routes to.
    pub default_instance_id: Option<String>,
    /// When created.
    pub created_at: Timestamp,
    /// When last changed.
    pub updated_at: Timestamp,
    /// When it last became running.
    pub deployed_at: Option<Timestamp>,
}

/// An agent together with the facts its status is derived from.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    /// The blueprint.
    pub agent: Agent,
    /// Status of its latest build.
    pub latest_build_status: Option<BuildStatus>,
    /// Its default instance, when one exists.
    pub default_instance: Option<Instance>,
}

/// One build of an agent: an immutable artifact once ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    /// `build_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// The agent built.
    pub agent_id: String,
    /// Lifecycle.
    pub status: BuildStatus,
    /// Why it failed.
    pub reason: Option<String>,
    /// The source as it was when the build was queued.
    pub source: Source,
    /// Content address of the artifact, once ready.
    pub artifact: Option<String>,
    /// When queued.
    pub created_at: Timestamp,
    /// When a builder took it.
    pub started_at: Option<Timestamp>,
    /// When it became ready or failed.
    pub finished_at: Option<Timestamp>,
}

/// One timestamped line of a build's output.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildLogLine {
    /// Position in the build's log, from 1.
    pub seq: i64,
    /// When written.
    pub timestamp: Timestamp,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
}

/// A deployment of one build: desired replicas, resources and environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `inst_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// The blueprint deployed.
    pub agent_id: String,
    /// The build deployed.
    pub build_id: String,
    /// Who created it.
    pub user_id: String,
    /// Unique within the organization.
    pub name: String,
    /// DNS label of its URL.
    pub resource_name: String,
    /// How replicas are run and reached.
    pub config: RuntimeConfig,
    /// Per-replica resources.
    pub resources: Resources,
    /// Environment, values as given.
    pub env_vars: BTreeMap<String, String>,
    /// Replicas wanted.
    pub replicas: u32,
    /// Run or stopped, as last asked.
    pub desired_state: DesiredState,
    /// Status as last observed.
    pub status: InstanceStatus,
    /// Why it is in `error` (or what it is waiting for).
    pub status_reason: Option<String>,
    /// Replicas passing health checks, as last observed.
    pub ready_replicas: u32,
    /// Replica restarts so far.
    pub restart_count: u32,
    /// When created.
    pub created_at: Timestamp,
    /// When last changed.
    pub updated_at: Timestamp,
}

/// An invocation recorded in the store: every async invocation, and every
/// synchronous one made with an `Idempotency-Key` (so a repeat can be
/// answered from it). The queue's own bookkeeping (leases, backoff) stays in
/// the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `job_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// The agent invoked.
    pub agent_id: String,
    /// Lifecycle.
    pub status: JobStatus,
    /// The invocation's `input`.
    pub input: serde_json::Value,
    /// Extra headers passed to the agent (`options.headers`).
    pub headers: BTreeMap<String, String>,
    /// How long one attempt may wait for the agent, in milliseconds.
    pub timeout_ms: u64,
    /// The caller's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<String>,
    /// Whether a synchronous invocation recorded it (else it is async).
    pub sync: bool,
    /// The agent's output, once completed.
    pub output: Option<serde_json::Value>,
    /// The agent's `usage`, if it reported one.
    pub usage: Option<serde_json::Value>,
    /// The error (`{code, message, details?}`), once failed; while pending
    /// again after a failed attempt, that attempt's error.
    pub error: Option<serde_json::Value>,
    /// Attempts started so far (infrastructure failures are retried).
    pub attempts: u32,
    /// The instance that served the last attempt.
    pub instance_id: Option<String>,
    /// The replica that served the last attempt.
    pub replica_id: Option<String>,
    /// How long the agent took on the attempt that completed it, in ms.
    pub latency_ms: Option<u64>,
    /// When accepted.
    pub created_at: Timestamp,
    /// When the latest attempt started.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
}

/// A slot for one archive upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    /// `upl_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// Bytes received, once uploaded.
    pub size_bytes: Option<u64>,
    /// When created.
    pub created_at: Timestamp,
    /// After this the URL no longer accepts a PUT.
    pub expires_at: Timestamp,
    /// When the archive arrived.
    pub completed_at: Option<Timestamp>,
}

/// A named secret; its value is kept encrypted and never leaves the server.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretMeta {
    /// `sec_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// Referenced as `${secrets.NAME}`.
    pub name: String,
    /// When created.
    pub created_at: Timestamp,
    /// When its value last changed.
    pub updated_at: Timestamp,
}

/// Where events are POSTed.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEndpoint {
    /// `wh_…`
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// Receiver URL.
    pub url: String,
    /// Event types delivered; empty means all.
    pub events: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// Paused endpoints receive nothing.
    pub enabled: bool,
    /// When created.
    pub created_at: Timestamp,
    /// When last changed.
    pub updated_at: Timestamp,
}

/// Event types an organization can subscribe a webhook to (and filter
/// `GET /v1/events` by). Each event's subject is what it is about:
///
/// | type | subject | when |
/// |---|---|---|
/// | `agent.deployed` | agent | its default instance runs a new build (once per build) |
/// | `agent.failed` | agent¹ | an instance goes to `error` |
/// | `agent.scaled` | agent¹ | the replica count changes |
/// | `agent.health_changed` | agent¹ | the last ready replica fails its health checks, or one passes again |
/// | `instance.started` / `stopped` / `crashed` | instance | status `running`, `stopped`; a replica exits unasked |
/// | `build.succeeded` / `build.failed` | build | a build is `ready` / `failed` |
/// | `job.completed` / `job.failed` | job | an async job ends |
///
/// ¹ The instance, for instances that are not an agent's default one.
///
/// The OpenAPI descriptions of webhook `events` and `GET /v1/events?type=`
/// list these names too: keep them in step.
pub const EVENT_TYPES: &[&str] = &[
    "agent.deployed",
    "agent.failed",
    "agent.scaled",
    "agent.health_changed",
    "agent.policy_changed",
    "instance.started",
    "instance.stopped",
    "instance.crashed",
    "build.succeeded",
    "build.failed",
    "job.completed",
    "job.failed",
];
