//! The Instances API (seed 000), at the root: list, get, create, update, delete,
//! status, exec, stdin and logs. Routes that carry an `org_id` answer 404 for any
//! organization but the caller's, exactly as for a missing one.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use hangar_core::model::Instance;
use hangar_core::resources::ResourcesInput;
use hangar_core::spec::ConfigInput;
use hangar_core::status::{BuildStatus, InstanceStatus};
use hangar_core::validate;
use hangar_store::{InstanceFilter, NewInstance};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::page_size;
use hangar_gateway::ErrorClass;

use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Body, Caller, Path, Query};
use crate::render::{self, InstanceList, InstanceObject, InstanceStatusObject, Pagination};
use crate::{decode_cursor, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_instances))
        .routes(routes!(create_instance))
        .routes(routes!(get_instance, update_instance, delete_instance))
        .routes(routes!(instance_status))
        .routes(routes!(exec))
        .routes(routes!(stdin))
        .routes(routes!(logs))
}

/// Query of `GET /instances/by_org_id/{org_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// 1–100, default 50.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(inst_[A-Za-z0-9_]{0,58})?$")]
    cursor: Option<String>,
    /// `running`, `stopped`, `error`, `starting`, `stopping` or `all` (default).
    #[param(pattern = "^(starting|running|stopping|stopped|error|all)$")]
    status: Option<String>,
    /// Only this agent's instances.
    agent_id: Option<String>,
    /// Only instances this user created.
    user_id: Option<String>,
}

fn own_org(caller: &Caller, org_id: &str) -> ApiResult<()> {
    if caller.org() == org_id {
        Ok(())
    } else {
        Err(ApiError::not_found(Kind::Organization, org_id))
    }
}

/// An instance with its live metrics.
fn object(state: &AppState, inst: &Instance) -> render::InstanceObject {
    let mut object = render::instance(inst, &state.config);
    object.metrics = render::InstanceMetrics::live(&state.metrics(&inst.id));
    object
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Instance> {
    state
        .store
        .get_instance(caller.org(), id)
        .await?
        .found(Kind::Instance, id)
}

/// Like [`find`], for routes with the organization in the path: another
/// organization's instance is as missing as a missing one.
async fn find_in(state: &AppState, caller: &Caller, org_id: &str, id: &str) -> ApiResult<Instance> {
    if caller.org() != org_id {
        return Err(ApiError::not_found(Kind::Instance, id));
    }
    find(state, caller, id).await
}

/// List an organization's instances.
#[utoipa::path(get, path = "/instances/by_org_id/{org_id}", tag = "instances",
    params(("org_id" = String, Path, description = "Organization ID"), ListQuery),
    responses((status = 200, body = InstanceList), (status = 404, description = "ORGANIZATION_NOT_FOUND")))]
async fn list_instances(
    State(state): State<AppState>,
    caller: Caller,
    Path(org_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<InstanceList>> {
    own_org(&caller, &org_id)?;
    let limit = page_size(q.limit)?;
    let statuses = match q.status.as_deref() {
        None | Some("all") => vec![],
        Some(s) => vec![s
            .parse::<InstanceStatus>()
            .map_err(|e| ApiError::invalid("status", format!("{e} or all")))?],
    };
    let after = decode_cursor(q.cursor.as_deref(), "inst_")?;
    let filter = InstanceFilter {
        statuses,
        agent_id: q.agent_id,
        user_id: q.user_id,
    };
    let page = state
        .store
        .list_instances(&org_id, &filter, after.as_deref(), limit)
        .await?;
    let data = page.items.iter().map(|i| object(&state, i)).collect();
    Ok(Json(InstanceList {
        data,
        pagination: Pagination::of(&page, limit),
    }))
}

/// Get an instance.
#[utoipa::path(get, path = "/instances/{instance_id}", tag = "instances",
    params(("instance_id" = String, Path, description = "Instance ID")),
    responses((status = 200, body = InstanceObject), (status = 404, description = "INSTANCE_NOT_FOUND")))]
async fn get_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<InstanceObject>> {
    let inst = find(&state, &caller, &id).await?;
    Ok(Json(object(&state, &inst)))
}

/// Body of `POST /instances`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateInstance {
    /// Unique within the organization.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 63)]
    name: String,
    /// Blueprint to deploy.
    #[schema(pattern = r"^[A-Za-z0-9._-]+$", max_length = 128)]
    agent_id: String,
    /// Build to deploy; must be ready.
    #[schema(pattern = r"^[A-Za-z0-9._-]+$", max_length = 128)]
    build_id: String,
    /// Must be the caller's organization.
    #[schema(pattern = r"^[A-Za-z0-9._-]+$", max_length = 128)]
    organization_id: String,
    /// Overrides of the agent's configuration, and `replicas`.
    #[serde(default)]
    config: ConfigInput,
    /// Overrides of the agent's resources.
    #[serde(default)]
    resources: ResourcesInput,
    /// Environment, laid over the agent's.
    #[serde(default)]
    #[schema(schema_with = validate::env_map_schema)]
    env_vars: BTreeMap<String, String>,
}

/// Deploy a new instance of a ready build.
#[utoipa::path(post, path = "/instances", tag = "instances", request_body = CreateInstance,
    responses((status = 201, body = InstanceObject), (status = 400, description = "INVALID_REQUEST"),
        (status = 404, description = "AGENT_NOT_FOUND / BUILD_NOT_FOUND / ORGANIZATION_NOT_FOUND"),
        (status = 409, description = "BUILD_NOT_READY / INSTANCE_NAME_TAKEN"), (status = 422, description = "RESOURCE_LIMIT_EXCEEDED"),
        (status = 501, description = "DRIVER_UNAVAILABLE (+ `driver`): the agent's cloud needs a driver this server does not have (kubernetes, on a server that runs no replicas)"),
        (status = 503, description = "RUNTIME_UNAVAILABLE: this server runs no agents; the message says why (not running as root) — `hangar doctor` on the server tells what to fix")))]
async fn create_instance(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateInstance>,
) -> ApiResult<impl IntoResponse> {
    validate::name("name", &body.name)?;
    for (field, id) in [
        ("agent_id", &body.agent_id),
        ("build_id", &body.build_id),
        ("organization_id", &body.organization_id),
    ] {
        validate::object_ref(field, id)?;
    }
    validate::env_map("env_vars", &body.env_vars)?;
    own_org(&caller, &body.organization_id)?;
    let agent = state
        .store
        .get_agent(caller.org(), &body.agent_id)
        .await?
        .found(Kind::Agent, &body.agent_id)?
        .agent;
    // An agent of a kubernetes cloud, on a server without the driver.
    if let Some(cloud) = state.store.get_cloud(caller.org(), &agent.cloud_id).await? {
        super::tenancy::driver_available(&state, &cloud.name, cloud.driver)?;
    }
    // Accepted, it would stay `starting` for ever.
    state.runs_agents()?;
    let config = body
        .config
        .apply(&agent.config)
        .map_err(|e| e.under("config"))?;
    let resources = body
        .resources
        .apply(agent.resources)
        .map_err(|e| e.under("resources"))?;
    let build = state
        .store
        .get_build(caller.org(), &body.build_id)
        .await?
        .filter(|b| b.agent_id == agent.id)
        .found(Kind::Build, &body.build_id)?;
    if build.status != BuildStatus::Ready {
        return Err(ApiError::BuildNotReady {
            build_status: build.status.to_string(),
        });
    }
    let mut env_vars = agent.environment.clone();
    env_vars.extend(body.env_vars);
    validate::env_map("env_vars", &env_vars)?;
    let inst = state
        .store
        .create_instance(NewInstance {
            organization_id: caller.org().to_owned(),
            agent_id: agent.id,
            build_id: build.id,
            user_id: caller.0.user_id.clone(),
            name: body.name,
            resource_name: None,
            config,
            resources,
            env_vars,
            // Config defaults come from the agent: its floor of replicas, and
            // at least one, as for the agent's own instance. An instance runs
            // its `replicas` (its bounds are `replicas..=replicas`), so a
            // floor of 0 taken as is would make one that never runs anything
            // yet reports itself running and ready to start.
            replicas: body
                .config
                .replicas
                .unwrap_or(agent.scaling.min_instances.max(1)),
            make_default: false,
        })
        .await?;
    state.wake(&inst.id);
    Ok((StatusCode::CREATED, Json(object(&state, &inst))))
}

/// Body of `PUT /instances/{instance_id}`: only the fields to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateInstance {
    /// New name.
    #[schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length = 63)]
    name: Option<String>,
    /// Configuration changes (`replicas` scales without a restart).
    config: Option<ConfigInput>,
    /// Resource changes (restarts replicas).
    resources: Option<ResourcesInput>,
    /// Variables to set (restarts replicas); merged into the current ones.
    #[schema(schema_with = validate::env_map_update_schema)]
    env_vars: Option<BTreeMap<String, String>>,
}

/// Update an instance.
#[utoipa::path(put, path = "/instances/{instance_id}", tag = "instances", request_body = UpdateInstance,
    params(("instance_id" = String, Path, description = "Instance ID")),
    responses((status = 200, body = InstanceObject), (status = 400, description = "INVALID_REQUEST"), (status = 404, description = "INSTANCE_NOT_FOUND")))]
async fn update_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<UpdateInstance>,
) -> ApiResult<Json<InstanceObject>> {
    if let Some(name) = &body.name {
        validate::name("name", name)?;
    }
    if let Some(env) = &body.env_vars {
        validate::env_map("env_vars", env)?;
    }
    let inst = state
        .store
        .modify_instance(caller.org(), &id, |inst| -> ApiResult<()> {
            if let Some(name) = body.name {
                inst.name = name;
            }
            if let Some(c) = &body.config {
                inst.config = c.apply(&inst.config).map_err(|e| e.under("config"))?;
                if let Some(r) = c.replicas {
                    inst.replicas = r;
                }
            }
            if let Some(r) = &body.resources {
                inst.resources = r.apply(inst.resources).map_err(|e| e.under("resources"))?;
            }
            if let Some(env) = body.env_vars {
                inst.env_vars.extend(env);
                validate::env_map("env_vars", &inst.env_vars)?;
            }
            Ok(())
        })
        .await?
        .found(Kind::Instance, &id)?;
    state.wake(&inst.id);
    Ok(Json(object(&state, &inst)))
}

/// Query of `DELETE /instances/{instance_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    /// Skip the graceful shutdown.
    #[serde(default)]
    force: bool,
}

/// Stop and remove an instance.
#[utoipa::path(delete, path = "/instances/{instance_id}", tag = "instances",
    params(("instance_id" = String, Path, description = "Instance ID"), DeleteQuery),
    responses((status = 204, description = "Deleted"), (status = 404, description = "INSTANCE_NOT_FOUND")))]
async fn delete_instance(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    // The record goes now; `force` tells the controller whether replicas get their
    // grace period.
    if state
        .store
        .delete_instance(caller.org(), &id, q.force)
        .await?
    {
        state.wake(&id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(Kind::Instance, id))
    }
}

/// Deployment status and health of an instance.
#[utoipa::path(get, path = "/instances/status/{org_id}/{instance_id}", tag = "instances",
    params(("org_id" = String, Path, description = "Organization ID"), ("instance_id" = String, Path, description = "Instance ID")),
    responses((status = 200, body = InstanceStatusObject), (status = 404, description = "INSTANCE_NOT_FOUND, with status NOT_FOUND")))]
async fn instance_status(
    State(state): State<AppState>,
    caller: Caller,
    Path((org_id, id)): Path<(String, String)>,
) -> ApiResult<Json<InstanceStatusObject>> {
    let inst = find_in(&state, &caller, &org_id, &id).await?;
    Ok(Json(render::instance_status(
        &inst,
        &state.metrics(&inst.id),
    )))
}

/// Why a request that needs a live replica cannot be served: this server
/// runs no agents (and says why), the instance is not running, or (while
/// no runtime is attached to this server) nothing could serve it.
fn no_replica(state: &AppState, inst: &Instance, action: &str) -> ApiError {
    if state.no_agents_reason.is_some() || inst.status == InstanceStatus::Running {
        state.runtime_unavailable()
    } else {
        not_running(inst, action)
    }
}

/// 409 `INSTANCE_NOT_RUNNING` with the instance's status as it is: the
/// answer never names a status the instance does not have.
fn not_running(inst: &Instance, action: &str) -> ApiError {
    ApiError::NotRunning {
        kind: Kind::Instance,
        message: format!(
            "Cannot {action} instance {}: it is {}",
            inst.id, inst.status
        ),
        current_status: inst.status.to_string(),
    }
}

/// How often a request for a starting instance looks for its replica.
const REPLICA_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The controller, once `inst` has a replica to talk to: a stopped,
/// stopping or failed instance has none coming (409); one scaled to zero is
/// woken as an invocation wakes it; a starting or woken one is waited for
/// until its first replica runs or `limit` (the request's own) runs out.
/// The wait is here rather than in the controller's activation, which
/// waits for a replica that answers HTTP and so, for a stdin-only agent,
/// for its whole activation timeout.
async fn replica_runtime<'s>(
    state: &'s AppState,
    caller: &Caller,
    mut inst: Instance,
    action: &str,
    limit: std::time::Duration,
) -> ApiResult<(&'s hangar_controller::Controller, Instance)> {
    let Some(runtime) = &state.runtime else {
        return Err(no_replica(state, &inst, action));
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut woken = false;
    loop {
        if !matches!(
            inst.status,
            InstanceStatus::Running | InstanceStatus::Starting
        ) {
            return Err(not_running(&inst, action));
        }
        if !runtime.metrics(&inst.id).replicas.is_empty() {
            return Ok((runtime, inst));
        }
        if inst.status == InstanceStatus::Running && !woken {
            // Scaled to zero: one replica starts. One that may not start
            // (its bounds allow none) is the controller's to answer.
            if !runtime.activate(&inst.id) {
                return Ok((runtime, inst));
            }
            woken = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::NotRunning {
                kind: Kind::Instance,
                message: format!(
                    "Cannot {action} instance {}: no replica started within {} s",
                    inst.id,
                    limit.as_secs()
                ),
                current_status: inst.status.to_string(),
            });
        }
        tokio::time::sleep(REPLICA_POLL).await;
        inst = find(state, caller, &inst.id).await?;
    }
}

/// The controller's answer as an API error: its row of the one table, with
/// what the caller needs to know about this instance.
async fn control_error(
    state: &AppState,
    caller: &Caller,
    inst: &Instance,
    action: &str,
    field: &str,
    err: hangar_controller::ControlError,
) -> ApiError {
    use hangar_controller::ControlError;
    match err {
        // Handed over as running (or starting), yet no replica came: say so
        // with the status the instance has now.
        ControlError::NotRunning(_) => {
            let now = find(state, caller, &inst.id).await;
            let status = now.as_ref().map_or(inst.status, |i| i.status);
            ApiError::NotRunning {
                kind: Kind::Instance,
                message: format!(
                    "Cannot {action} instance {}: no replica is running and none could be started",
                    inst.id
                ),
                current_status: status.to_string(),
            }
        }
        ControlError::Invalid(message) => ApiError::invalid(field, message),
        other => ApiError::failure(other),
    }
}

fn stdin_not_enabled() -> ApiError {
    ApiError::Failed {
        class: ErrorClass::STDIN_NOT_ENABLED,
        message: "this instance does not read stdin (config.stdin_enabled is false)".into(),
        details: None,
    }
}

/// Exec's body as the document shows it: the argv, program first, 1–256
/// strings without NUL, the first not empty (the handler reads a
/// `Vec<String>` and checks them).
struct Argv;

impl utoipa::PartialSchema for Argv {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        ArrayBuilder::new()
            // The program's name must not be empty; its arguments may be.
            .prefix_items([ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .build()])
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(64 * 1024))
                    .pattern(Some(r"^[^\x00]*$")),
            )
            .min_items(Some(1))
            .max_items(Some(256))
            .into()
    }
}

impl utoipa::ToSchema for Argv {}

/// How long an exec may run.
const EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Run a command in an instance; the body is the argv array. A starting
/// instance's first replica is waited for; one scaled to zero is started.
#[utoipa::path(post, path = "/instances/{org_id}/{instance_id}/exec", tag = "instances", request_body = Argv,
    params(("org_id" = String, Path, description = "Organization ID"), ("instance_id" = String, Path, description = "Instance ID")),
    responses((status = 200, description = "The command's output, as plain text", content_type = "text/plain", body = String),
        (status = 400, description = "INVALID_REQUEST (field argv): a bad argv, or a program the replica cannot run"),
        (status = 404, description = "INSTANCE_NOT_FOUND"),
        (status = 409, description = "INSTANCE_NOT_RUNNING (+ current_status): stopped, stopping, failed, or no replica started within 60 s"),
        (status = 500, description = "INTERNAL_ERROR (+ request_id): the runtime failed; the cause is logged"),
        (status = 503, description = "RUNTIME_UNAVAILABLE: this server runs no agents; the message says why (not running as root) — `hangar doctor` on the server tells what to fix")))]
async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    Path((org_id, id)): Path<(String, String)>,
    Body(argv): Body<Vec<String>>,
) -> ApiResult<axum::response::Response> {
    if argv.is_empty() || argv.len() > 256 {
        return Err(ApiError::invalid(
            "argv",
            "must be an array of 1 to 256 strings",
        ));
    }
    // Counted in characters, as the document's `maxLength` counts.
    if argv
        .iter()
        .any(|a| a.chars().count() > 65_536 || a.contains('\0'))
        || argv[0].is_empty()
    {
        return Err(ApiError::invalid(
            "argv",
            "arguments must be strings without NUL of at most 65536 characters, the first not empty",
        ));
    }
    let inst = find_in(&state, &caller, &org_id, &id).await?;
    let action = "run a command in";
    let (runtime, inst) = replica_runtime(&state, &caller, inst, action, EXEC_TIMEOUT).await?;
    let result = match runtime.exec(&inst.id, &argv, EXEC_TIMEOUT).await {
        Ok(result) => result,
        Err(err) => return Err(control_error(&state, &caller, &inst, action, "argv", err).await),
    };
    // stdout, then stderr; the exit code (or the signal) in headers.
    let mut body = result.stdout;
    body.extend_from_slice(&result.stderr);
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let code = result
        .code
        .map_or_else(|| "-1".to_owned(), |c| c.to_string());
    if let Ok(value) = axum::http::HeaderValue::from_str(&code) {
        headers.insert("x-exit-code", value);
    }
    if result.timed_out {
        headers.insert(
            "x-exec-timed-out",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    if result.truncated {
        headers.insert(
            "x-output-truncated",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// Body of `POST …/stdin`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StdinInput {
    /// Text written to the replica's stdin.
    input: String,
}

/// Write to an instance's stdin and return what it printed. A starting
/// instance's first replica is waited for; one scaled to zero is started.
#[utoipa::path(post, path = "/instances/{org_id}/{instance_id}/stdin", tag = "instances", request_body = StdinInput,
    params(("org_id" = String, Path, description = "Organization ID"), ("instance_id" = String, Path, description = "Instance ID")),
    responses((status = 200, description = "Output produced", content_type = "text/plain", body = String),
        (status = 400, description = "INVALID_REQUEST (field input)"),
        (status = 404, description = "INSTANCE_NOT_FOUND"),
        (status = 409, description = "INSTANCE_NOT_RUNNING (+ current_status): stopped, stopping, failed, or no replica started within 30 s; STDIN_NOT_ENABLED"),
        (status = 500, description = "INTERNAL_ERROR (+ request_id): the runtime failed; the cause is logged"),
        (status = 503, description = "RUNTIME_UNAVAILABLE: this server runs no agents; the message says why (not running as root) — `hangar doctor` on the server tells what to fix")))]
async fn stdin(
    State(state): State<AppState>,
    caller: Caller,
    Path((org_id, id)): Path<(String, String)>,
    Body(body): Body<StdinInput>,
) -> ApiResult<String> {
    if body.input.len() > 1 << 20 {
        return Err(ApiError::invalid("input", "must be at most 1 MiB"));
    }
    let inst = find_in(&state, &caller, &org_id, &id).await?;
    if !inst.config.stdin_enabled {
        return Err(stdin_not_enabled());
    }
    let action = "send input to";
    let (runtime, inst) =
        replica_runtime(&state, &caller, inst, action, STDIN_WAIT.timeout).await?;
    match runtime
        .stdin(&inst.id, body.input.as_bytes(), STDIN_WAIT)
        .await
    {
        Ok(output) => Ok(output),
        Err(err) => Err(control_error(&state, &caller, &inst, action, "input", err).await),
    }
}

/// When the output of a stdin write counts as complete: once the replica
/// has printed something and then been quiet for 300 ms, or after 30 s.
const STDIN_WAIT: hangar_controller::StdinWait = hangar_controller::StdinWait {
    quiet: std::time::Duration::from_millis(300),
    timeout: std::time::Duration::from_secs(30),
};

/// Query of `GET …/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
    /// Most recent lines to return (1–10000, default 100).
    #[param(minimum = 1, maximum = 10000)]
    lines: Option<u32>,
    /// Only lines after this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Stream live lines (SSE).
    #[serde(default)]
    follow: bool,
    /// With `follow`: resume after this line (what `Last-Event-ID` says).
    #[param(pattern = r"^[^\S\x00-\x1f\x7f-\x9f]*(\+?[0-9]{1,18})?[^\S\x00-\x1f\x7f-\x9f]*$")]
    last_event_id: Option<String>,
    /// A stream token (`POST /v1/tokens`) instead of `Authorization`.
    #[allow(dead_code)] // read by the `Reader` extractor; named here for the OpenAPI document
    access_token: Option<String>,
}

/// An instance's logs.
#[utoipa::path(get, path = "/instances/{org_id}/{instance_id}/logs", tag = "instances",
    params(("org_id" = String, Path, description = "Organization ID"), ("instance_id" = String, Path, description = "Instance ID"), LogsQuery),
    responses((status = 200, description = "{\"logs\": [{timestamp, level, message}]}, or SSE with follow=true"),
        (status = 404, description = "INSTANCE_NOT_FOUND"), (status = 409, description = "INSTANCE_NOT_RUNNING"),
        (status = 503, description = "RUNTIME_UNAVAILABLE (follow=true): no runtime here to follow a running instance's replicas; the message says why")))]
async fn logs(
    State(state): State<AppState>,
    reader: super::tokens::Reader,
    Path((org_id, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    Query(q): Query<LogsQuery>,
) -> ApiResult<axum::response::Response> {
    reader.check(Kind::Instance, &id)?;
    let caller = &reader.caller;
    let resume = super::logs::resume_after(&headers, q.last_event_id.as_deref())?;
    if q.lines.is_some_and(|l| !(1..=10_000).contains(&l)) {
        return Err(ApiError::invalid("lines", "must be between 1 and 10000"));
    }
    let since = match &q.since {
        Some(since) => Some(
            chrono::DateTime::parse_from_rfc3339(since)
                .map_err(|_| ApiError::invalid("since", "must be an RFC 3339 time"))?
                .with_timezone(&chrono::Utc),
        ),
        None => None,
    };
    let inst = find_in(&state, caller, &org_id, &id).await?;
    let live = match (&state.runtime, q.follow) {
        (Some(runtime), true) => Some(runtime.subscribe_logs(&inst.id)),
        (None, true) => return Err(no_replica(&state, &inst, "follow logs of")),
        (_, false) => None,
    };
    let request = super::logs::LogRequest {
        tail: q.lines.unwrap_or(100),
        since,
        until: None,
        level: None,
    };
    // Where a follow without a resume point starts counting: read before
    // the backlog, so nothing between the two is missed.
    let newest = match (resume, &live) {
        (None, Some(_)) => state.store.instance_log_seq(&inst.id).await?,
        _ => 0,
    };
    let lines = match (resume, &live) {
        (Some(after), Some(_)) => super::logs::stored_after(&state, &inst.id, after, None).await?,
        _ => super::logs::stored(&state, &inst.id, &request).await?,
    };
    match live {
        Some(live) => {
            let start = super::logs::Follow {
                instance_id: inst.id.clone(),
                backlog: lines,
                last: resume.unwrap_or(newest),
                level: None,
                limit: reader.limit(),
            };
            Ok(super::logs::follow(&state, start, live))
        }
        None => {
            let logs: Vec<super::logs::Entry<'_>> = lines.iter().map(super::logs::entry).collect();
            Ok(Json(serde_json::json!({ "logs": logs })).into_response())
        }
    }
}
