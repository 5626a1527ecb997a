//! Who is asking and where things run: `/v1/me`, organizations, users, API keys
//! and clouds. Admins manage their own organization; admins of the operator
//! organization (the one created at first start) also create organizations and
//! set quotas. Nobody reads another organization's users, keys or clouds.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use hangar_core::kubernetes::KubernetesCloudConfig;
use hangar_core::model::{DriverKind, Role, DEFAULT_MAX_INSTANCES};
use hangar_core::validate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Body, Caller, Path};
use crate::render::{
    self, ok, ApiKeyObject, CloudObject, Envelope, OrganizationObject, UserObject,
};
use crate::{AppState, Services};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(list_organizations, create_organization))
        .routes(routes!(get_organization, update_organization))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(list_clouds, create_cloud))
        .routes(routes!(get_cloud))
}

/// `GET /v1/me`.
#[derive(Debug, Serialize, ToSchema)]
struct Me {
    /// The key's user.
    user_id: String,
    /// Their organization.
    organization_id: String,
    /// Their role.
    role: Role,
    /// The key used.
    api_key_id: String,
    /// Whether they operate the platform.
    is_operator: bool,
    /// Their email.
    email: String,
}

/// Who the API key acts as.
#[utoipa::path(get, path = "/v1/me", tag = "tenancy", responses((status = 200, body = Me), (status = 401, description = "UNAUTHORIZED")))]
async fn me(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Me>> {
    let p = &caller.0;
    let user = state
        .store
        .get_user(&p.organization_id, &p.user_id)
        .await?
        .found(Kind::User, &p.user_id)?;
    Ok(Json(Me {
        user_id: p.user_id.clone(),
        organization_id: p.organization_id.clone(),
        role: p.role,
        api_key_id: p.key_id.clone(),
        is_operator: p.is_operator,
        email: user.email,
    }))
}

/// Organizations the caller may see: all for operators, else their own.
#[utoipa::path(get, path = "/v1/organizations", tag = "tenancy", responses((status = 200, body = Envelope<Vec<OrganizationObject>>)))]
async fn list_organizations(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Envelope<Vec<OrganizationObject>>>> {
    let orgs = if caller.0.is_operator && caller.0.role == Role::Admin {
        state.store.list_organizations().await?
    } else {
        state
            .store
            .get_organization(caller.org())
            .await?
            .into_iter()
            .collect()
    };
    Ok(ok(orgs.iter().map(render::organization).collect()))
}

/// Body of `POST /v1/organizations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateOrganization {
    /// Name.
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        max_length = 128
    )]
    name: String,
    /// Email of its first admin.
    #[schema(
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^\s\x00-\x1f\x7f-\x9f]+$",
        max_length = 254
    )]
    admin_email: String,
    /// Most instances at once (default 50).
    #[schema(minimum = 1, maximum = 100000)]
    max_instances: Option<u32>,
}

/// A new organization with its first admin and their key (shown once).
#[derive(Debug, Serialize, ToSchema)]
struct CreatedOrganization {
    /// The organization.
    organization: OrganizationObject,
    /// Its first admin.
    admin: UserObject,
    /// The admin's API key, with `key` present this once.
    api_key: ApiKeyObject,
}

fn check_email(email: &str) -> ApiResult<()> {
    // Counted in characters, as the document's `maxLength` counts.
    let valid = email.chars().count() <= 254
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid("email", "must be an email address"))
    }
}

fn check_quota(max: Option<u32>) -> ApiResult<()> {
    if max.is_some_and(|m| !(1..=100_000).contains(&m)) {
        return Err(ApiError::invalid(
            "max_instances",
            "must be between 1 and 100000",
        ));
    }
    Ok(())
}

/// Create an organization (operators only).
#[utoipa::path(post, path = "/v1/organizations", tag = "tenancy", request_body = CreateOrganization,
    responses((status = 201, body = Envelope<CreatedOrganization>), (status = 403, description = "FORBIDDEN")))]
async fn create_organization(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateOrganization>,
) -> ApiResult<impl IntoResponse> {
    caller.require_operator()?;
    validate::text("name", &body.name, 128)?;
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid("name", "must not be empty"));
    }
    check_email(&body.admin_email)
        .map_err(|_| ApiError::invalid("admin_email", "must be an email address"))?;
    check_quota(body.max_instances)?;
    let created = state
        .store
        .create_organization(
            &body.name,
            body.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES),
            &body.admin_email,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        ok(CreatedOrganization {
            organization: render::organization(&created.organization),
            admin: render::user(&created.admin),
            api_key: render::api_key(&created.key.key, Some(created.key.secret)),
        }),
    ))
}

fn visible_org(caller: &Caller, id: &str) -> ApiResult<()> {
    if caller.org() == id || (caller.0.is_operator && caller.0.role == Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::not_found(Kind::Organization, id))
    }
}

/// Get an organization (your own; operators any).
#[utoipa::path(get, path = "/v1/organizations/{id}", tag = "tenancy", params(("id" = String, Path, description = "Organization ID")),
    responses((status = 200, body = Envelope<OrganizationObject>), (status = 404, description = "ORGANIZATION_NOT_FOUND")))]
async fn get_organization(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<OrganizationObject>>> {
    visible_org(&caller, &id)?;
    let org = state
        .store
        .get_organization(&id)
        .await?
        .found(Kind::Organization, &id)?;
    Ok(ok(render::organization(&org)))
}

/// Body of `PATCH /v1/organizations/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateOrganization {
    /// New name (admins of the organization).
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        max_length = 128
    )]
    name: Option<String>,
    /// New instance quota (operators only).
    #[schema(minimum = 1, maximum = 100000)]
    max_instances: Option<u32>,
}

/// Rename an organization, or (operators) change its quota.
#[utoipa::path(patch, path = "/v1/organizations/{id}", tag = "tenancy", request_body = UpdateOrganization,
    params(("id" = String, Path, description = "Organization ID")),
    responses((status = 200, body = Envelope<OrganizationObject>), (status = 403, description = "FORBIDDEN"), (status = 404, description = "ORGANIZATION_NOT_FOUND")))]
async fn update_organization(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<UpdateOrganization>,
) -> ApiResult<Json<Envelope<OrganizationObject>>> {
    visible_org(&caller, &id)?;
    caller.require_admin()?;
    if body.max_instances.is_some() {
        caller.require_operator()?;
        check_quota(body.max_instances)?;
    }
    if let Some(name) = &body.name {
        validate::text("name", name, 128)?;
        if name.trim().is_empty() {
            return Err(ApiError::invalid("name", "must not be empty"));
        }
    }
    let org = state
        .store
        .update_organization(&id, body.name.as_deref(), body.max_instances)
        .await?
        .found(Kind::Organization, &id)?;
    Ok(ok(render::organization(&org)))
}

/// The organization's users.
#[utoipa::path(get, path = "/v1/users", tag = "tenancy", responses((status = 200, body = Envelope<Vec<UserObject>>)))]
async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Envelope<Vec<UserObject>>>> {
    let users = state.store.list_users(caller.org()).await?;
    Ok(ok(users.iter().map(render::user).collect()))
}

/// Body of `POST /v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    /// Unique within the organization.
    #[schema(
        pattern = r"^[^@\s\x00-\x1f\x7f-\x9f]+@[^\s\x00-\x1f\x7f-\x9f]+$",
        max_length = 254
    )]
    email: String,
    /// Display name.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]*$", max_length = 128)]
    name: Option<String>,
    /// `admin` or `member` (default).
    role: Option<Role>,
}

/// Add a user to your organization (admins).
#[utoipa::path(post, path = "/v1/users", tag = "tenancy", request_body = CreateUser,
    responses((status = 201, body = Envelope<UserObject>), (status = 403, description = "FORBIDDEN"), (status = 409, description = "USER_NAME_TAKEN")))]
async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateUser>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    check_email(&body.email)?;
    if let Some(n) = &body.name {
        validate::text("name", n, 128)?;
    }
    let user = state
        .store
        .create_user(
            caller.org(),
            &body.email,
            body.name.as_deref(),
            body.role.unwrap_or(Role::Member),
        )
        .await?;
    Ok((StatusCode::CREATED, ok(render::user(&user))))
}

/// A user of your organization.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "tenancy", params(("id" = String, Path, description = "User ID")),
    responses((status = 200, body = Envelope<UserObject>), (status = 404, description = "USER_NOT_FOUND")))]
async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<UserObject>>> {
    let user = state
        .store
        .get_user(caller.org(), &id)
        .await?
        .found(Kind::User, &id)?;
    Ok(ok(render::user(&user)))
}

/// API keys: all of the organization's for admins, your own for members.
#[utoipa::path(get, path = "/v1/api_keys", tag = "tenancy", responses((status = 200, body = Envelope<Vec<ApiKeyObject>>)))]
async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Envelope<Vec<ApiKeyObject>>>> {
    let only = (caller.0.role != Role::Admin).then_some(caller.0.user_id.as_str());
    let keys = state.store.list_api_keys(caller.org(), only).await?;
    Ok(ok(keys.iter().map(|k| render::api_key(k, None)).collect()))
}

/// Body of `POST /v1/api_keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    /// Label.
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        max_length = 128
    )]
    name: String,
    /// The user it acts as (admins may name another user; default yourself).
    #[schema(pattern = r"^[A-Za-z0-9._-]+$", max_length = 128)]
    user_id: Option<String>,
}

/// Create an API key; the key is in this response only.
#[utoipa::path(post, path = "/v1/api_keys", tag = "tenancy", request_body = CreateKey,
    responses((status = 201, body = Envelope<ApiKeyObject>), (status = 404, description = "USER_NOT_FOUND")))]
async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateKey>,
) -> ApiResult<impl IntoResponse> {
    validate::text("name", &body.name, 128)?;
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid("name", "must not be empty"));
    }
    let user_id = body.user_id.unwrap_or_else(|| caller.0.user_id.clone());
    validate::object_ref("user_id", &user_id)?;
    if user_id != caller.0.user_id {
        caller.require_admin()?;
    }
    let created = state
        .store
        .create_api_key(caller.org(), &user_id, &body.name)
        .await?
        .found(Kind::User, &user_id)?;
    Ok((
        StatusCode::CREATED,
        ok(render::api_key(&created.key, Some(created.secret))),
    ))
}

/// Revoke an API key (admins any of the organization's; members their own).
#[utoipa::path(delete, path = "/v1/api_keys/{id}", tag = "tenancy", params(("id" = String, Path, description = "API key ID")),
    responses((status = 200, body = Envelope<ApiKeyObject>), (status = 404, description = "API_KEY_NOT_FOUND")))]
async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<ApiKeyObject>>> {
    let key = state
        .store
        .get_api_key(caller.org(), &id)
        .await?
        .found(Kind::ApiKey, &id)?;
    if key.user_id != caller.0.user_id && caller.0.role != Role::Admin {
        return Err(ApiError::not_found(Kind::ApiKey, &id));
    }
    let key = state
        .store
        .revoke_api_key(caller.org(), &id)
        .await?
        .found(Kind::ApiKey, &id)?;
    Ok(ok(render::api_key(&key, None)))
}

/// The organization's clouds.
#[utoipa::path(get, path = "/v1/clouds", tag = "tenancy", responses((status = 200, body = Envelope<Vec<CloudObject>>)))]
async fn list_clouds(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Envelope<Vec<CloudObject>>>> {
    let clouds = state.store.list_clouds(caller.org()).await?;
    Ok(ok(clouds
        .iter()
        .map(|c| render::cloud(c, &state.config))
        .collect()))
}

/// Refuses a cloud whose driver this server does not have, so nothing meant
/// for it runs elsewhere: replicas of a `kubernetes` cloud are never local
/// sandboxes. 501, not 4xx: the request is right and will succeed on a
/// Hangar with the driver (a server that runs replicas has it).
pub(crate) fn driver_available(state: &Services, cloud: &str, driver: DriverKind) -> ApiResult<()> {
    match driver {
        DriverKind::Sandbox | DriverKind::Docker => Ok(()),
        DriverKind::Kubernetes if state.kubernetes.is_some() => Ok(()),
        DriverKind::Kubernetes => Err(ApiError::DriverUnavailable {
            driver: driver.to_string(),
            message: format!(
                "Cloud '{cloud}' needs the kubernetes driver, which this server does not have (it runs no replicas); use a server that runs replicas"
            ),
        }),
    }
}

/// Connects to a new kubernetes cloud's cluster and checks what its
/// replicas will need: the API server answers, the namespace is there (or
/// is made), Secrets can be listed, and the registry (if any) answers.
async fn check_cluster(config: &serde_json::Value) -> ApiResult<hangar_runtime::Cluster> {
    let parsed = KubernetesCloudConfig::parse(config)?;
    let cluster =
        hangar_runtime::Cluster::connect(&hangar_runtime::ClusterConfig::from_cloud(&parsed))
            .await
            .map_err(|err| {
                ApiError::CloudUnreachable(format!("The cluster cannot be used: {err}"))
            })?;
    if let Some(host) = parsed.registry_host() {
        let scheme = if parsed.insecure_registry {
            "http"
        } else {
            "https"
        };
        let url = format!("{scheme}://{host}/v2/");
        let answer = reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await;
        match answer {
            // 401: it wants credentials, which pushes will bring.
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED => {
            }
            Ok(r) => {
                return Err(ApiError::CloudUnreachable(format!(
                    "The registry {host} does not answer as an OCI registry ({url} gave {})",
                    r.status()
                )))
            }
            Err(err) => {
                let why = if err.is_timeout() {
                    "no answer within 10 s"
                } else if err.is_connect() {
                    "cannot connect"
                } else {
                    "the request failed"
                };
                return Err(ApiError::CloudUnreachable(format!(
                    "The registry {host} cannot be reached over {scheme} ({why}){}",
                    if parsed.insecure_registry {
                        ""
                    } else {
                        "; a registry on plain HTTP needs insecure_registry: true"
                    }
                )));
            }
        }
    }
    Ok(cluster)
}

/// Body of `POST /v1/clouds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateCloud {
    /// Unique within the organization.
    #[schema(
        pattern = r"^([A-Za-z0-9]|[A-Za-bd-z0-9][A-Za-z0-9._-]*|c([A-Za-km-z0-9._-][A-Za-z0-9._-]*)?|cl([A-Za-np-z0-9._-][A-Za-z0-9._-]*)?|clo([A-Za-tv-z0-9._-][A-Za-z0-9._-]*)?|clou([A-Za-ce-z0-9._-][A-Za-z0-9._-]*)?|cloud([A-Za-z0-9.-][A-Za-z0-9._-]*)?)$",
        max_length = 63
    )]
    name: String,
    /// `sandbox`, `docker` or `kubernetes` (501 `DRIVER_UNAVAILABLE` on a
    /// server that runs no replicas).
    driver: DriverKind,
    /// Driver settings (an object). `docker`: `base_image`, the image a
    /// generated Dockerfile starts from; nothing else. `kubernetes`:
    /// `kubeconfig` (a path on the server; absent: in-cluster, then
    /// `$KUBECONFIG`), `context`, `namespace` (default `hangar`, made if
    /// missing), `registry` (`host[:port]/prefix`, where built images are
    /// pushed), `registry_credentials` (`{username, password:
    /// "${secrets.NAME}"}`), `insecure_registry` (bool), `base_image`
    /// (`{python, node}`), `runtime_class`, `node_selector` (object),
    /// `image_pull_secret`, `port_forward` (bool; absent: pod IPs when this
    /// server is on the pod network). The cluster, namespace and registry are checked
    /// before the cloud is added.
    #[serde(default)]
    #[schema(value_type = Object)]
    config: serde_json::Map<String, serde_json::Value>,
    /// Where its agents' URLs live: an origin (`https://agents.example.com`,
    /// no path) that reaches this server. Agent URLs are
    /// `<base_url>/agents/<name>`. Absent: the server's public URL, which
    /// every cloud without its own shares, so agent names are unique across
    /// them.
    #[schema(format = "uri", example = "https://agents.example.com")]
    base_url: Option<String>,
}

/// Add a cloud (admins).
#[utoipa::path(post, path = "/v1/clouds", tag = "tenancy", request_body = CreateCloud,
    responses((status = 201, body = Envelope<CloudObject>), (status = 409, description = "CLOUD_NAME_TAKEN"),
        (status = 400, description = "INVALID_REQUEST (+ `field`): a setting of `config` the driver does not take, or a bad value"),
        (status = 422, description = "CLOUD_UNREACHABLE: a kubernetes cloud whose cluster does not answer, whose namespace cannot be made or used, or whose registry does not answer"),
        (status = 501, description = "DRIVER_UNAVAILABLE (+ `driver`): a kubernetes cloud on a server that runs no replicas")))]
async fn create_cloud(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateCloud>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    validate::name("name", &body.name)?;
    // Clouds are looked up by ID or name: a name must not look like an ID.
    if body.name.starts_with("cloud_") {
        return Err(ApiError::invalid(
            "name",
            "must not start with 'cloud_' (cloud IDs do)",
        ));
    }
    driver_available(&state, &body.name, body.driver)?;
    if serde_json::to_string(&body.config).map_or(0, |s| s.len()) > 16 * 1024 {
        return Err(ApiError::invalid("config", "must be at most 16 KiB"));
    }
    let config = serde_json::Value::Object(body.config);
    let base_url = body
        .base_url
        .as_deref()
        .map(|url| hangar_core::agent_url::origin("base_url", url))
        .transpose()?
        .filter(|url| *url != state.config.public_url.trim_end_matches('/'));
    if let Some(url) = &base_url {
        let host = hangar_core::agent_url::authority(url);
        if super::proxy::instance_label(host, &state.config.base_domain).is_some() {
            return Err(ApiError::invalid(
                "base_url",
                format!(
                    "must not be a name under {}, where instance URLs live",
                    state.config.base_domain
                ),
            ));
        }
    }
    // What the builder and the drivers read from it; a typo is refused now,
    // not ignored until a build or a replica behaves unexpectedly.
    let cluster = match body.driver {
        DriverKind::Docker => {
            hangar_core::docker::DockerCloudConfig::parse(&config)?;
            None
        }
        DriverKind::Kubernetes => Some(check_cluster(&config).await?),
        DriverKind::Sandbox => None,
    };
    let cloud = state
        .store
        .create_cloud(
            caller.org(),
            &body.name,
            body.driver,
            &config,
            base_url.as_deref(),
        )
        .await?;
    if let (Some(cluster), Some(driver)) = (cluster, &state.kubernetes) {
        driver.add_cloud(&cloud.id, cluster);
    }
    Ok((
        StatusCode::CREATED,
        ok(render::cloud(&cloud, &state.config)),
    ))
}

/// A cloud by ID or name.
#[utoipa::path(get, path = "/v1/clouds/{id}", tag = "tenancy", params(("id" = String, Path, description = "Cloud ID or name")),
    responses((status = 200, body = Envelope<CloudObject>), (status = 404, description = "CLOUD_NOT_FOUND")))]
async fn get_cloud(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<CloudObject>>> {
    let cloud = state
        .store
        .get_cloud(caller.org(), &id)
        .await?
        .found(Kind::Cloud, &id)?;
    Ok(ok(render::cloud(&cloud, &state.config)))
}
