//! The Agents API (seed 003), under `/v1`: deploy, list, get, update, delete,
//! invoke, start, stop, redeploy, logs and metrics. Responses use the
//! `{success, data, meta}` envelope.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use hangar_core::model::{Agent, AgentView};
use hangar_core::resources::{Resources, ResourcesInput};
use hangar_core::spec::{ConfigInput, Runtime, RuntimeConfig, Scaling, ScalingInput, Source};
use hangar_core::status::{agent_status, AgentStatus, BuildStatus, DesiredState};
use hangar_core::validate;
use hangar_store::{AgentSummary, InstanceSummary, NewAgent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::page_size;
use super::Deleted;
use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Body, Caller, OptionalBody, Path, Query};
use crate::render::{self, ok, ok_list, AgentObject, Envelope, ListEnvelope, Pagination};
use crate::{decode_cursor, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(get_agent, update_agent, delete_agent))
        .routes(routes!(start))
        .routes(routes!(stop))
        .routes(routes!(redeploy))
        .routes(routes!(logs))
        .routes(routes!(metrics))
}

/// An agent's request figures cover the last 24 hours.
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The request figures of the last 24 hours of these default instances,
/// through every server (see [`crate::Services::request_figures`]).
async fn day_figures(state: &AppState, instances: &[&str]) -> ApiResult<Figures> {
    state.request_figures(instances, DAY).await
}

type Figures = std::collections::HashMap<String, hangar_controller::scale::RequestStats>;

/// An agent as the Agents API shows it, with its request figures of the
/// last 24 hours.
async fn agent_object(state: &AppState, view: &AgentView) -> ApiResult<AgentObject> {
    let ids: Vec<&str> = view
        .default_instance
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    let figures = day_figures(state, &ids).await?;
    Ok(listed_object(state, view, &figures))
}

/// [`agent_object`] with figures already read (a page reads them at once).
fn listed_object(state: &AppState, view: &AgentView, figures: &Figures) -> AgentObject {
    let instance = view.default_instance.as_ref().map(InstanceSummary::from);
    shown(
        state,
        &view.agent,
        view.latest_build_status,
        instance.as_ref(),
        figures,
    )
}

/// [`agent_object`] of a summary read.
async fn summary_object(state: &AppState, view: &AgentSummary) -> ApiResult<AgentObject> {
    let ids: Vec<&str> = view
        .default_instance
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    let figures = day_figures(state, &ids).await?;
    Ok(shown(
        state,
        &view.agent,
        view.latest_build_status,
        view.default_instance.as_ref(),
        &figures,
    ))
}

fn shown(
    state: &AppState,
    agent: &Agent,
    latest_build_status: Option<BuildStatus>,
    instance: Option<&InstanceSummary>,
    figures: &Figures,
) -> AgentObject {
    let mut object = render::agent(agent, latest_build_status, instance, &state.config);
    if let Some(instance) = instance {
        let live = state.metrics(&instance.id);
        object.health.last_check = live.last_check.map(render::ts);
        object.health.uptime_percent = live.uptime_percent;
        let day = figures.get(&instance.id).copied().unwrap_or_default();
        object.metrics.requests_24h = day.requests;
        object.metrics.avg_latency_ms = day.avg_latency_ms;
        object.metrics.error_rate_percent = day.error_rate_percent();
    }
    object
}

pub(crate) async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<AgentView> {
    state
        .store
        .get_agent(caller.org(), id)
        .await?
        .found(Kind::Agent, id)
}

/// Query of `GET /v1/agents`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(agent_[A-Za-z0-9_]{0,57})?$")]
    cursor: Option<String>,
    /// Only agents on this cloud.
    #[param(pattern = r"^[A-Za-z0-9._-]+$", max_length = 128)]
    cloud_id: Option<String>,
}

/// List agents.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(ListQuery),
    responses((status = 200, body = ListEnvelope<AgentObject>),
        (status = 404, description = "CLOUD_NOT_FOUND: `cloud_id` names no cloud of the organization")))]
async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ListEnvelope<AgentObject>>> {
    let limit = page_size(q.limit)?;
    let after = decode_cursor(q.cursor.as_deref(), "agent_")?;
    // Like POST, the filter takes a cloud's ID or its name.
    let cloud_id = match &q.cloud_id {
        Some(c) => {
            validate::object_ref("cloud_id", c)?;
            Some(
                state
                    .store
                    .get_cloud(caller.org(), c)
                    .await?
                    .found(Kind::Cloud, c)?
                    .id,
            )
        }
        None => None,
    };
    let page = state
        .store
        .list_agents(caller.org(), cloud_id.as_deref(), after.as_deref(), limit)
        .await?;
    let ids: Vec<&str> = page
        .items
        .iter()
        .filter_map(|v| v.default_instance.as_ref().map(|i| i.id.as_str()))
        .collect();
    let figures = day_figures(&state, &ids).await?;
    let data = page
        .items
        .iter()
        .map(|v| listed_object(&state, v, &figures))
        .collect();
    Ok(ok_list(data, Pagination::of(&page, limit)))
}

/// Body of `POST /v1/agents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateAgent {
    /// Unique within the cloud.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 63)]
    name: String,
    /// Cloud to deploy to: its ID, or its name (`local`).
    #[schema(pattern = r"^[A-Za-z0-9._-]+$", max_length = 128)]
    cloud_id: String,
    /// Where the code comes from.
    source: Source,
    /// Language runtime.
    #[serde(default)]
    runtime: Runtime,
    /// CPU, memory, GPU per replica.
    #[serde(default)]
    resources: ResourcesInput,
    /// Environment; `${secrets.NAME}` references are resolved at start.
    #[serde(default)]
    #[schema(schema_with = validate::env_map_schema)]
    environment: BTreeMap<String, String>,
    /// Autoscaling.
    #[serde(default)]
    scaling: ScalingInput,
    /// Display name.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 128)]
    display_name: Option<String>,
    /// Version label.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 64)]
    version: Option<String>,
    /// Labels.
    #[serde(default)]
    #[schema(schema_with = validate::metadata_schema)]
    metadata: BTreeMap<String, String>,
    /// Port, paths and deployment type (Hangar's addition).
    #[serde(default)]
    config: ConfigInput,
}

fn check_labels(display_name: Option<&String>, version: Option<&String>) -> ApiResult<()> {
    if let Some(d) = display_name {
        validate::text("display_name", d, 128)?;
    }
    if let Some(v) = version {
        validate::text("version", v, 64)?;
    }
    Ok(())
}

/// Deploy a new agent: creates it and queues its first build.
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = CreateAgent,
    responses((status = 201, body = Envelope<AgentObject>), (status = 400, description = "INVALID_REQUEST"),
        (status = 404, description = "CLOUD_NOT_FOUND"), (status = 409, description = "AGENT_NAME_TAKEN: the cloud has an agent of that name, or another agent already answers at the same agent URL (`<cloud base_url>/agents/<name>`: clouds that share a base URL share agent names)"),
        (status = 422, description = "RESOURCE_LIMIT_EXCEEDED"),
        (status = 501, description = "DRIVER_UNAVAILABLE (+ `driver`): the cloud needs a driver this server does not have (kubernetes, on a server that runs no replicas)"),
        (status = 503, description = "RUNTIME_UNAVAILABLE: this server runs no agents; the message says why (not running as root) — `hangar doctor` on the server tells what to fix")))]
async fn create_agent(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateAgent>,
) -> ApiResult<impl IntoResponse> {
    validate::name("name", &body.name)?;
    validate::object_ref("cloud_id", &body.cloud_id)?;
    let source = check_source(&state, &caller, body.source).await?;
    body.runtime.validate().map_err(|e| e.under("runtime"))?;
    let resources = body
        .resources
        .apply(Resources::default())
        .map_err(|e| e.under("resources"))?;
    let scaling = body
        .scaling
        .apply(Scaling::default())
        .map_err(|e| e.under("scaling"))?;
    if body.config.replicas.is_some() {
        return Err(ApiError::invalid(
            "config.replicas",
            "an agent's replicas are set by scaling.min_instances and scaling.max_instances",
        ));
    }
    let config = body
        .config
        .apply(&RuntimeConfig::default())
        .map_err(|e| e.under("config"))?;
    validate::env_map("environment", &body.environment)?;
    validate::metadata("metadata", &body.metadata)?;
    check_labels(body.display_name.as_ref(), body.version.as_ref())?;
    let cloud = state
        .store
        .get_cloud(caller.org(), &body.cloud_id)
        .await?
        .found(Kind::Cloud, &body.cloud_id)?;
    super::tenancy::driver_available(&state, &cloud.name, cloud.driver)?;
    // Accepted, it would build and then stay `starting` for ever.
    state.runs_agents()?;
    // The agent will need an instance once built; refuse now rather than fail later.
    let org = state
        .store
        .get_organization(caller.org())
        .await?
        .found(Kind::Organization, caller.org())?;
    let current = state.store.instance_count(caller.org()).await?;
    if current >= org.max_instances {
        return Err(ApiError::InstanceQuota {
            current,
            max: org.max_instances,
        });
    }
    let (view, _build) = state
        .store
        .create_agent(NewAgent {
            organization_id: caller.org().to_owned(),
            user_id: caller.0.user_id.clone(),
            cloud_id: cloud.id,
            url_base: cloud.base_url,
            name: body.name,
            display_name: body.display_name,
            version: body.version,
            runtime: body.runtime,
            resources,
            scaling,
            config,
            environment: body.environment,
            source,
            metadata: body.metadata,
        })
        .await?;
    state.build_queued();
    Ok((StatusCode::CREATED, ok(agent_object(&state, &view).await?)))
}

/// Get an agent.
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path, description = "Agent ID")),
    responses((status = 200, body = Envelope<AgentObject>), (status = 404, description = "AGENT_NOT_FOUND")))]
async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<AgentObject>>> {
    // The summary read: of the default instance, only what is shown.
    let view = state
        .store
        .get_agent_summary(caller.org(), &id)
        .await?
        .found(Kind::Agent, &id)?;
    Ok(ok(summary_object(&state, &view).await?))
}

/// Validates a source and ties it to the caller: an upload must be one of the
/// caller's organization's (by `upload_id` or by this server's `upload_url`), and
/// `file://` repositories — paths on the server itself — are for the operator's
/// admins only.
async fn check_source(state: &AppState, caller: &Caller, source: Source) -> ApiResult<Source> {
    source.validate().map_err(|e| e.under("source"))?;
    match source {
        Source::Upload { archive_url, upload_id } => {
            let from_url = archive_url.as_deref().map(|u| {
                upload_id_from_url(u).ok_or_else(|| ApiError::invalid("source.archive_url", "must be an upload_url from POST /v1/uploads"))
            });
            let id = match (upload_id, from_url.transpose()?) {
                (Some(id), Some(url_id)) if id != url_id => {
                    return Err(ApiError::invalid("source.upload_id", "names another upload than archive_url"))
                }
                (Some(id), _) | (None, Some(id)) => id,
                (None, None) => return Err(ApiError::invalid("source.archive_url", "give archive_url or upload_id")),
            };
            validate::object_ref("source.upload_id", &id)?;
            let upload = state.store.get_upload(caller.org(), &id).await?.found(Kind::Upload, &id)?;
            Ok(Source::Upload { archive_url, upload_id: Some(upload.id) })
        }
        Source::Github { repo, .. } if repo.starts_with("file://") && caller.require_operator().is_err() => {
            Err(ApiError::invalid("source.repo", "file:// repositories are paths on the server: only the operator organization's admins may use them"))
        }
        other => Ok(other),
    }
}

/// The upload id in an `upload_url` (`…/v1/uploads/{id}/content?…`).
fn upload_id_from_url(url: &str) -> Option<String> {
    let rest = &url[url.find("/v1/uploads/")? + "/v1/uploads/".len()..];
    let id = rest.split(['/', '?']).next()?;
    id.starts_with("upl_").then(|| id.to_owned())
}

/// Body of `PATCH /v1/agents/{id}`: fields to change. `environment` and `metadata`
/// are merged (a `null` value removes the key); the other objects replace the
/// fields they name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateAgent {
    /// New name.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 63)]
    name: Option<String>,
    /// Display name.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 128)]
    display_name: Option<String>,
    /// Version label.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 64)]
    version: Option<String>,
    /// New source (used by the next redeploy).
    source: Option<Source>,
    /// Runtime fields to change.
    runtime: Option<Runtime>,
    /// Resource fields to change.
    resources: Option<ResourcesInput>,
    /// Scaling fields to change.
    scaling: Option<ScalingInput>,
    /// Configuration fields to change.
    config: Option<ConfigInput>,
    /// Variables to set; `null` removes one.
    #[schema(schema_with = validate::env_map_patch_schema)]
    environment: Option<BTreeMap<String, Option<String>>>,
    /// Labels to set; `null` removes one.
    #[schema(schema_with = validate::metadata_patch_schema)]
    metadata: Option<BTreeMap<String, Option<String>>>,
}

fn merge(target: &mut BTreeMap<String, String>, patch: BTreeMap<String, Option<String>>) {
    for (k, v) in patch {
        match v {
            Some(v) => target.insert(k, v),
            None => target.remove(&k),
        };
    }
}

/// Update an agent's configuration.
#[utoipa::path(patch, path = "/v1/agents/{id}", tag = "agents", request_body = UpdateAgent,
    params(("id" = String, Path, description = "Agent ID")),
    responses((status = 200, body = Envelope<AgentObject>), (status = 400, description = "INVALID_REQUEST"), (status = 404, description = "AGENT_NOT_FOUND"),
        (status = 409, description = "AGENT_NAME_TAKEN: a new name the cloud already has, or that another agent already answers at (`<cloud base_url>/agents/<name>`)")))]
async fn update_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<UpdateAgent>,
) -> ApiResult<Json<Envelope<AgentObject>>> {
    let source = match body.source {
        Some(source) => Some(check_source(&state, &caller, source).await?),
        None => None,
    };
    check_labels(body.display_name.as_ref(), body.version.as_ref())?;
    if let Some(name) = &body.name {
        validate::name("name", name)?;
    }
    if body.config.as_ref().is_some_and(|c| c.replicas.is_some()) {
        return Err(ApiError::invalid(
            "config.replicas",
            "an agent's replicas are set by scaling",
        ));
    }
    let changed = state
        .store
        .modify_agent(caller.org(), &id, |agent| -> ApiResult<()> {
            if let Some(name) = body.name {
                agent.name = name;
            }
            if body.display_name.is_some() {
                agent.display_name = body.display_name;
            }
            if body.version.is_some() {
                agent.version = body.version;
            }
            if let Some(source) = source {
                agent.source = source;
            }
            if let Some(r) = body.runtime {
                agent.runtime = agent.runtime.merged(&r);
                agent.runtime.validate().map_err(|e| e.under("runtime"))?;
            }
            if let Some(r) = body.resources {
                agent.resources = r.apply(agent.resources).map_err(|e| e.under("resources"))?;
            }
            if let Some(s) = body.scaling {
                agent.scaling = s.apply(agent.scaling).map_err(|e| e.under("scaling"))?;
            }
            if let Some(c) = body.config {
                agent.config = c.apply(&agent.config).map_err(|e| e.under("config"))?;
            }
            if let Some(env) = body.environment {
                merge(&mut agent.environment, env);
                validate::env_map("environment", &agent.environment)?;
            }
            if let Some(meta) = body.metadata {
                merge(&mut agent.metadata, meta);
                validate::metadata("metadata", &agent.metadata)?;
            }
            Ok(())
        })
        .await?;
    changed.found(Kind::Agent, &id)?;
    let view = find(&state, &caller, &id).await?;
    if let Some(instance) = &view.default_instance {
        // Its scaling bounds may have changed.
        state.wake(&instance.id);
    }
    Ok(ok(agent_object(&state, &view).await?))
}

/// Delete an agent and its instances.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "agents", params(("id" = String, Path, description = "Agent ID")),
    responses((status = 200, body = Envelope<Deleted>), (status = 404, description = "AGENT_NOT_FOUND")))]
async fn delete_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<Deleted>>> {
    if state.store.delete_agent(caller.org(), &id).await? {
        state.routes_changed();
        if let Some(runtime) = &state.runtime {
            // Its instances are tombstones now: their replicas go.
            runtime.resync();
        }
        Ok(ok(Deleted { id, deleted: true }))
    } else {
        Err(ApiError::not_found(Kind::Agent, id))
    }
}

/// Why a request that needs the agent running cannot be served: it is not
/// running, or (running, on a server without a runtime) nothing here
/// could serve it.
pub(crate) fn not_running(state: &AppState, view: &AgentView, action: &str) -> ApiError {
    let status = agent_status(
        view.agent.desired_state,
        view.latest_build_status,
        view.default_instance.as_ref().map(|i| i.status),
    );
    if status == AgentStatus::Running {
        state.runtime_unavailable()
    } else {
        ApiError::NotRunning {
            kind: Kind::Agent,
            message: format!("Cannot {action} {status} agent"),
            current_status: status.to_string(),
        }
    }
}

async fn set_desired(
    state: &AppState,
    caller: &Caller,
    id: &str,
    desired: DesiredState,
) -> ApiResult<Json<Envelope<AgentObject>>> {
    if !state
        .store
        .set_agent_desired_state(caller.org(), id, desired)
        .await?
    {
        return Err(ApiError::not_found(Kind::Agent, id));
    }
    let view = find(state, caller, id).await?;
    if let Some(instance) = &view.default_instance {
        state.wake(&instance.id);
    }
    Ok(ok(agent_object(state, &view).await?))
}

/// Start a stopped agent.
#[utoipa::path(post, path = "/v1/agents/{id}/start", tag = "agents", params(("id" = String, Path, description = "Agent ID")),
    responses((status = 200, body = Envelope<AgentObject>), (status = 404, description = "AGENT_NOT_FOUND"),
        (status = 503, description = "RUNTIME_UNAVAILABLE: this server runs no agents; the message says why (not running as root) — `hangar doctor` on the server tells what to fix")))]
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<AgentObject>>> {
    find(&state, &caller, &id).await?;
    state.runs_agents()?;
    set_desired(&state, &caller, &id, DesiredState::Running).await
}

/// Stop a running agent.
#[utoipa::path(post, path = "/v1/agents/{id}/stop", tag = "agents", params(("id" = String, Path, description = "Agent ID")),
    responses((status = 200, body = Envelope<AgentObject>), (status = 404, description = "AGENT_NOT_FOUND")))]
async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<AgentObject>>> {
    set_desired(&state, &caller, &id, DesiredState::Stopped).await
}

/// Body of `POST /v1/agents/{id}/redeploy` (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RedeployRequest {
    /// Build from this source instead of the agent's (it becomes the agent's).
    source: Option<Source>,
}

/// Redeploy with the latest code: queues a build; the instance rolls onto it once ready.
#[utoipa::path(post, path = "/v1/agents/{id}/redeploy", tag = "agents", request_body = Option<RedeployRequest>,
    params(("id" = String, Path, description = "Agent ID")),
    responses((status = 202, body = Envelope<AgentObject>), (status = 404, description = "AGENT_NOT_FOUND"),
        (status = 503, description = "RUNTIME_UNAVAILABLE: this server runs no agents; the message says why (not running as root) — `hangar doctor` on the server tells what to fix")))]
async fn redeploy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<RedeployRequest>,
) -> ApiResult<impl IntoResponse> {
    find(&state, &caller, &id).await?;
    state.runs_agents()?;
    let source = match body.and_then(|b| b.source) {
        Some(source) => Some(check_source(&state, &caller, source).await?),
        None => None,
    };
    state
        .store
        .queue_build(caller.org(), &id, source)
        .await?
        .found(Kind::Agent, &id)?;
    state.build_queued();
    let view = find(&state, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, ok(agent_object(&state, &view).await?)))
}

/// Query of `GET /v1/agents/{id}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
    /// Only lines after this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only lines before this RFC 3339 time.
    #[param(format = DateTime)]
    until: Option<String>,
    /// Most recent lines to return (1–10000).
    #[param(minimum = 1, maximum = 10000)]
    tail: Option<u32>,
    /// Stream live lines (SSE).
    #[serde(default)]
    follow: bool,
    /// `debug`, `info`, `warn` or `error`: that level and above.
    #[param(pattern = "^(debug|info|warn|error)$")]
    level: Option<String>,
    /// With `follow`: resume after this line (what `Last-Event-ID` says).
    #[param(pattern = r"^[^\S\x00-\x1f\x7f-\x9f]*(\+?[0-9]{1,18})?[^\S\x00-\x1f\x7f-\x9f]*$")]
    last_event_id: Option<String>,
    /// A stream token (`POST /v1/tokens`) instead of `Authorization`.
    #[allow(dead_code)] // read by the `Reader` extractor; named here for the OpenAPI document
    access_token: Option<String>,
}

/// Retrieve or stream an agent's logs.
#[utoipa::path(get, path = "/v1/agents/{id}/logs", tag = "agents", params(("id" = String, Path, description = "Agent ID"), LogsQuery),
    responses((status = 200, description = "Log lines, or SSE with follow=true"), (status = 404, description = "AGENT_NOT_FOUND"),
        (status = 409, description = "AGENT_NOT_RUNNING"),
        (status = 503, description = "RUNTIME_UNAVAILABLE (follow=true): no runtime here to follow the agent's replicas; the message says why")))]
async fn logs(
    State(state): State<AppState>,
    reader: super::tokens::Reader,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    Query(q): Query<LogsQuery>,
) -> ApiResult<axum::response::Response> {
    reader.check(Kind::Agent, &id)?;
    let caller = &reader.caller;
    let resume = super::logs::resume_after(&headers, q.last_event_id.as_deref())?;
    let mut times = [None, None];
    for (slot, (field, v)) in times
        .iter_mut()
        .zip([("since", &q.since), ("until", &q.until)])
    {
        if let Some(v) = v {
            *slot = Some(
                chrono::DateTime::parse_from_rfc3339(v)
                    .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 time"))?
                    .with_timezone(&chrono::Utc),
            );
        }
    }
    if q.tail.is_some_and(|t| !(1..=10_000).contains(&t)) {
        return Err(ApiError::invalid("tail", "must be between 1 and 10000"));
    }
    if let Some(level) = &q.level {
        if !["debug", "info", "warn", "error"].contains(&level.as_str()) {
            return Err(ApiError::invalid(
                "level",
                "must be one of debug, info, warn, error",
            ));
        }
    }
    let view = find(&state, caller, &id).await?;
    // The agent's log is its default instance's.
    let Some(instance) = &view.default_instance else {
        return Err(not_running(&state, &view, "read logs of"));
    };
    let live = match (&state.runtime, q.follow) {
        (Some(runtime), true) => Some(runtime.subscribe_logs(&instance.id)),
        (None, true) if state.no_agents_reason.is_some() => return Err(state.runtime_unavailable()),
        (None, true) => return Err(not_running(&state, &view, "follow logs of")),
        (_, false) => None,
    };
    let level = q
        .level
        .as_deref()
        .and_then(hangar_core::logs::LogLevel::from_name);
    let request = super::logs::LogRequest {
        tail: q.tail.unwrap_or(100),
        since: times[0],
        until: times[1],
        level,
    };
    // Where a follow without a resume point starts counting: read before
    // the backlog, so nothing between the two is missed (and lines the level
    // filter passed over count as seen).
    let newest = match (resume, &live) {
        (None, Some(_)) => state.store.instance_log_seq(&instance.id).await?,
        _ => 0,
    };
    let lines = match (resume, &live) {
        (Some(after), Some(_)) => {
            super::logs::stored_after(&state, &instance.id, after, level).await?
        }
        _ => super::logs::stored(&state, &instance.id, &request).await?,
    };
    match live {
        Some(live) => {
            let start = super::logs::Follow {
                instance_id: instance.id.clone(),
                backlog: lines,
                last: resume.unwrap_or(newest),
                level,
                limit: reader.limit(),
            };
            Ok(super::logs::follow(&state, start, live))
        }
        None => Ok(ok(lines.iter().map(super::logs::entry).collect::<Vec<_>>()).into_response()),
    }
}

/// An agent's metrics.
#[derive(Debug, Serialize, ToSchema)]
struct AgentMetrics {
    /// The agent.
    agent_id: String,
    /// The window the request figures cover.
    window: String,
    /// Invocations in the window, through every server on the database.
    requests: u64,
    /// Invocations in the last 24 hours.
    requests_24h: u64,
    /// Mean latency in the window.
    avg_latency_ms: f64,
    /// Share of failed invocations in the window.
    error_rate_percent: f64,
    /// CPU use across replicas now.
    cpu_percent: f64,
    /// Memory use across replicas now.
    memory_mb: u64,
    /// Replicas running now.
    replicas: u32,
    /// Share of health checks that passed since this server started (of
    /// replicas once they had been ready); `null` before the first.
    uptime_percent: Option<f64>,
    /// Length of each point of `series`, seconds.
    step_seconds: u64,
    /// The agent's metric history over the window, one point per step,
    /// oldest first (see `GET /v1/instances/{id}/metrics`).
    series: Vec<super::history::MetricPoint>,
}

/// Get an agent's metrics. Request figures are those of every server on the
/// database (each server's gateway counts what it answered, all are summed)
/// and resource figures come from the replicas; an agent that has served
/// nothing reports zeros. `series` plots the window by `step` from the
/// stored metric history, which survives restarts.
#[utoipa::path(get, path = "/v1/agents/{id}/metrics", tag = "agents", params(("id" = String, Path, description = "Agent ID"), super::history::SeriesQuery),
    responses((status = 200, body = Envelope<AgentMetrics>), (status = 400, description = "INVALID_REQUEST (field `window` or `step`)"), (status = 404, description = "AGENT_NOT_FOUND")))]
async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<super::history::SeriesQuery>,
) -> ApiResult<Json<Envelope<AgentMetrics>>> {
    let window = super::history::Window::parse(q.window.as_deref())?;
    let step_seconds = window.step(q.step.as_deref())?;
    let view = find(&state, &caller, &id).await?;
    let span = Duration::from_secs(window.seconds);
    let (requests, day) = match &view.default_instance {
        Some(i) => {
            let ids = [i.id.as_str()];
            let of = |figures: Figures| figures.get(&i.id).copied().unwrap_or_default();
            (
                of(state.request_figures(&ids, span).await?),
                of(day_figures(&state, &ids).await?),
            )
        }
        None => Default::default(),
    };
    let replicas = view
        .default_instance
        .as_ref()
        .map_or(0, |i| i.ready_replicas);
    let live = view
        .default_instance
        .as_ref()
        .map(|i| state.metrics(&i.id))
        .unwrap_or_default();
    let instance = view.default_instance.as_ref().map(|i| i.id.as_str());
    let series = super::history::series(&state, instance, window, step_seconds).await?;
    Ok(ok(AgentMetrics {
        agent_id: view.agent.id,
        window: window.name.to_owned(),
        requests: requests.requests,
        requests_24h: day.requests,
        avg_latency_ms: requests.avg_latency_ms,
        error_rate_percent: requests.error_rate_percent(),
        cpu_percent: live.cpu_usage_percent,
        memory_mb: live.memory_usage_mb.round() as u64,
        replicas,
        uptime_percent: live.uptime_percent,
        step_seconds,
        series,
    }))
}
