//! Hangar's HTTP API: the Instances API (seed 000, at the root), the Agents API
//! (seed 003, under `/v1`) and the `/v1` extras (organizations, users, keys, clouds,
//! builds, jobs, uploads, secrets, webhooks), over one model in the store.
//!
//! Handlers are thin: parse into a typed request that rejects unknown fields,
//! call the store and the domain, render. The API never talks to a runtime driver:
//! it writes desired state; the controller makes it so.
//!
//! # Layout
//! - [`app`]: the router with its layers, and the OpenAPI document.
//! - [`error`]: the one error → HTTP mapping.
//! - [`extract`]: JSON/query/auth extractors that reject in the API's envelope.
//! - `context`: request ids.
//! - [`rate_limit`]: a token bucket per API key.
//! - `render`: response shapes of both APIs.
//! - The web console (`hangar_console`) is mounted at `/console`; `GET /`
//!   from a browser redirects there.
//! - `routes::{instances, agents, invoke, jobs, tenancy, builds, uploads, secrets, webhooks, events, tokens}`:
//!   the handlers (`tokens`: stream tokens for clients that cannot send
//!   `Authorization`, such as a browser's `EventSource`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::response::IntoResponse;
use axum::Router;
use hangar_store::Store;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub mod context;
pub mod error;
pub mod extract;
mod hop;
pub mod rate_limit;
pub mod render;
mod routes;

use error::ApiError;
pub use rate_limit::RateLimit;

/// What the API needs to know about how the server is reached.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Instance URLs are `http://<resource_name>.<base_domain>[:port]`.
    pub base_domain: String,
    /// Port instance URLs carry (the listener's), omitted when 80.
    pub public_port: u16,
    /// Where clients reach this server (`http://127.0.0.1:7070`), for upload URLs.
    pub public_url: String,
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// How long an upload URL stays valid.
    pub upload_ttl: Duration,
    /// Key that signs upload URLs.
    pub signing_key: Vec<u8>,
    /// Where archives PUT to upload URLs are received, and kept as `<id>`
    /// when there are no [`ApiConfig::blobs`]; `None`: this server takes no
    /// archives.
    pub uploads_dir: Option<std::path::PathBuf>,
    /// Where a received archive is kept for the builder (of any server on
    /// the database, with shared blobs); `None`: in `uploads_dir`.
    pub blobs: Option<std::sync::Arc<dyn hangar_store::blobs::Blobs>>,
    /// Largest archive an upload URL takes.
    pub max_upload_bytes: u64,
    /// Origins whose pages may call the API from a browser (CORS): exact
    /// origins such as `https://console.example.com`, or `*` for any. Empty:
    /// no CORS headers, so browsers allow only same-origin calls.
    pub cors_origins: Vec<String>,
    /// How fast one API key may send requests; `None`: as fast as it likes.
    pub rate_limit: Option<RateLimit>,
    /// A server silent (no heartbeat) for longer than this is shown `dead`.
    pub node_dead_after: Duration,
}

impl ApiConfig {
    /// The public URL of a resource name.
    #[must_use]
    pub fn resource_url(&self, resource_name: &str) -> String {
        if self.public_port == 80 {
            format!("http://{resource_name}.{}", self.base_domain)
        } else {
            format!(
                "http://{resource_name}.{}:{}",
                self.base_domain, self.public_port
            )
        }
    }
}

/// Shared state of every handler: one pointer, cloned by each extractor of
/// each request (a clone of [`Services`] itself would be a dozen reference
/// counts).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl From<Services> for AppState {
    fn from(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What handlers reach through [`AppState`].
pub struct Services {
    /// The store.
    pub store: Store,
    /// How the server is reached.
    pub config: Arc<ApiConfig>,
    /// The controller running replicas, if this server runs any: exec,
    /// stdin, live logs and metrics need it; writes wake it.
    pub runtime: Option<hangar_controller::Controller>,
    /// The builder, if this server builds: queued builds wake it.
    pub builder: Option<hangar_build::Builder>,
    /// The gateway, if this server runs replicas: invocations go through it.
    pub gateway: Option<Arc<hangar_gateway::Gateway>>,
    /// The webhook deliverer, if this server delivers: redeliveries wake it.
    pub deliverer: Option<hangar_webhooks::Deliverer>,
    /// Requests for instances another node on the database runs go there;
    /// `None`: this server answers everything itself.
    pub hops: Option<Arc<hangar_gateway::hop::Hops>>,
    /// The job runner, if this server runs jobs: accepted jobs wake it,
    /// cancels abort its requests.
    pub jobs: Option<hangar_gateway::jobs::JobRunner>,
    /// Stores accepted async jobs, a transaction per batch of requests.
    pub intake: hangar_store::JobIntake,
    /// The kubernetes driver, if this server runs replicas: a new
    /// kubernetes cloud's cluster is checked and connected through it.
    pub kubernetes: Option<Arc<hangar_runtime::KubernetesDriver>>,
    /// Why this server runs no agents, when it knows (`hangar serve` not
    /// running as root). Work that needs agents to run here — creating or
    /// starting agents and instances, invoke, exec, stdin — is refused with
    /// 503 `RUNTIME_UNAVAILABLE` and this reason, rather than accepted and
    /// left `starting` for ever. `None` with no runtime: the API alone
    /// (tests), which accepts such work.
    pub no_agents_reason: Option<String>,
}

impl Services {
    /// 503 `RUNTIME_UNAVAILABLE` for work that needs a runtime this server
    /// lacks, saying why when the server knows.
    #[must_use]
    pub fn runtime_unavailable(&self) -> ApiError {
        ApiError::RuntimeUnavailable(match &self.no_agents_reason {
            Some(reason) => reason.clone().into(),
            None => "this server has no replica runtime attached".into(),
        })
    }

    /// Refuses work that would need agents to run here, on a server that
    /// runs none ([`Services::no_agents_reason`]).
    pub fn runs_agents(&self) -> Result<(), ApiError> {
        match self.no_agents_reason {
            Some(_) => Err(self.runtime_unavailable()),
            None => Ok(()),
        }
    }

    /// Asks the controller (if any) to reconcile instance `id` now.
    /// Also forgets the gateway's routes: the instance (or its agent)
    /// changed.
    pub fn wake(&self, instance_id: &str) {
        self.routes_changed();
        if let Some(runtime) = &self.runtime {
            runtime.wake(instance_id);
        }
    }

    /// An agent or instance changed: the gateway reads routes from the store
    /// again.
    pub fn routes_changed(&self) {
        if let Some(gateway) = &self.gateway {
            gateway.forget_routes();
        }
    }

    /// Tells the builder (if any) a build was queued.
    pub fn build_queued(&self) {
        if let Some(builder) = &self.builder {
            builder.wake();
        }
    }

    /// This process's invocations of instance `id` within `window` (zeros
    /// without a runtime, or before the first): Prometheus' figures, which
    /// are per process (each server is scraped).
    pub fn local_requests(
        &self,
        instance_id: &str,
        window: std::time::Duration,
    ) -> hangar_controller::scale::RequestStats {
        self.runtime
            .as_ref()
            .map(|runtime| runtime.local_request_stats(instance_id, window))
            .unwrap_or_default()
    }

    /// Invocations of each of `instance_ids` within `window`, through every
    /// server on the database: the stored counts of every node, plus what
    /// this one has not stored yet (zeros for an instance nobody invoked).
    pub async fn request_figures(
        &self,
        instance_ids: &[&str],
        window: std::time::Duration,
    ) -> Result<std::collections::HashMap<String, hangar_controller::scale::RequestStats>, ApiError>
    {
        let since = hangar_controller::scale::unix_minute()
            - hangar_controller::scale::window_minutes(window)
            + 1;
        let figures = match &self.runtime {
            Some(runtime) => runtime.request_stats(instance_ids, window).await?,
            // A server that runs nothing counts nothing: the store has it all.
            None => self
                .store
                .request_counts(instance_ids, since)
                .await?
                .into_iter()
                .map(|(id, counts)| (id, counts.into()))
                .collect(),
        };
        Ok(figures)
    }

    /// Instance `instance_id`'s metric history over `span`, one entry per
    /// step, through every server on the database: the stored figures of
    /// every node, plus the invocations this one has not stored yet.
    pub async fn metric_series(
        &self,
        instance_id: &str,
        span: hangar_store::SeriesSpan,
    ) -> Result<Vec<hangar_store::StepFigures>, ApiError> {
        Ok(match &self.runtime {
            Some(runtime) => runtime.metric_series(instance_id, span).await?,
            // A server that runs nothing counts nothing: the store has it all.
            None => self.store.metric_series(instance_id, span).await?,
        })
    }

    /// Tells the job runner (if any) a job was accepted.
    pub fn job_accepted(&self) {
        if let Some(jobs) = &self.jobs {
            jobs.wake();
        }
    }

    /// Tells the job runner (if any) a job was cancelled, so a request of
    /// it running here is aborted now.
    pub fn job_cancelled(&self, job_id: &str) {
        if let Some(jobs) = &self.jobs {
            jobs.cancel(job_id);
        }
    }

    /// Live figures of instance `id` (zeros without a runtime).
    pub fn metrics(&self, instance_id: &str) -> hangar_controller::InstanceMetrics {
        self.runtime
            .as_ref()
            .map(|runtime| runtime.metrics(instance_id))
            .unwrap_or_default()
    }
}

/// Encodes a list cursor: opaque to clients, an ID to the store. It is the
/// last item's ID as it is, so the document can show exactly which cursors a
/// list takes (`^agent_[A-Za-z0-9_]{0,57}$`) and a client generated from it
/// sends no cursor the server then refuses.
#[must_use]
pub fn encode_cursor(id: &str) -> String {
    id.to_owned()
}

/// Decodes a list cursor; a cursor this server did not make (another
/// list's, or no ID at all) is a 400. The pattern each list documents is
/// this check: `prefix`, then at most 63 characters in all of letters,
/// digits and `_`.
pub fn decode_cursor(cursor: Option<&str>, prefix: &str) -> Result<Option<String>, ApiError> {
    let Some(c) = cursor.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let is_ours = c.starts_with(prefix)
        && c.len() < 64
        && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !is_ours {
        return Err(ApiError::invalid(
            "cursor",
            "is not a cursor from a previous page",
        ));
    }
    Ok(Some(c.to_owned()))
}

/// The OpenAPI document's frame; paths and schemas are collected from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hangar",
        description = "Build, run, scale and invoke AI agents. The Instances API is served at the root; the Agents API and Hangar's extras under /v1. Authenticate with `Authorization: Bearer <api key>`.",
        version = env!("CARGO_PKG_VERSION")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "instances", description = "Instances API: deployments of agent builds"),
        (name = "agents", description = "Agents API: deploy, invoke and manage agents"),
        (name = "builds", description = "Builds of agents"),
        (name = "jobs", description = "Async invocations"),
        (name = "uploads", description = "Archive uploads"),
        (name = "secrets", description = "Encrypted secrets referenced as ${secrets.NAME}"),
        (name = "webhooks", description = "Webhook endpoints"),
        (name = "tenancy", description = "Organizations, users, API keys and clouds"),
        (name = "nodes", description = "The servers on this database"),
        (name = "sessions", description = "Sticky sessions: every request naming one goes to one replica")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API key")
                    .build(),
            ),
        );
    }
}

/// All routes with their OpenAPI operations.
fn api_routes() -> OpenApiRouter<AppState> {
    let mut routes = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::instances::routes())
        .merge(routes::agents::routes())
        .merge(routes::history::routes())
        .merge(routes::invoke::routes())
        .merge(routes::jobs::routes())
        .merge(routes::tenancy::routes())
        .merge(routes::nodes::routes())
        .merge(routes::sessions::routes())
        .merge(routes::builds::routes())
        .merge(routes::uploads::routes())
        .merge(routes::secrets::routes())
        .merge(routes::webhooks::routes())
        .merge(routes::events::routes())
        .merge(routes::tokens::routes())
        .routes(utoipa_axum::routes!(routes::metrics::scrape));
    rate_limit::document(routes.get_openapi_mut());
    hop::document(routes.get_openapi_mut());
    closed_sources(routes.get_openapi_mut());
    extract::document(routes.get_openapi_mut());
    error::document(routes.get_openapi_mut());
    routes
}

/// Each kind of `source` refuses fields of the others
/// (`deny_unknown_fields`), which the derived schema of an enum's variants
/// does not say: say it.
fn closed_sources(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{AdditionalProperties, Schema};
    use utoipa::openapi::RefOr;
    let Some(RefOr::T(Schema::OneOf(kinds))) = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("Source"))
    else {
        return;
    };
    for kind in &mut kinds.items {
        if let RefOr::T(Schema::Object(kind)) = kind {
            kind.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
    }
}

/// The OpenAPI 3.1 document of every route.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

/// No route matched. A browser asking for `/` (it accepts `text/html`) is
/// sent to the console; every other client, API clients asking for `/`
/// included, gets the 404 it always got.
async fn no_route(request: Request) -> axum::response::Response {
    if request.method() == axum::http::Method::GET
        && request.uri().path() == "/"
        && wants_html(request.headers())
    {
        return axum::response::Redirect::to(&format!("{}/", hangar_console::MOUNT))
            .into_response();
    }
    ApiError::NoRoute {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
    .into_response()
}

/// Whether an `Accept` header lists `text/html` (what browsers send for a
/// page, and API clients do not).
fn wants_html(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let mut parts = media.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|m| m.eq_ignore_ascii_case("text/html"))
                && !parts.any(|p| p.replace(' ', "") == "q=0")
        })
}

async fn method_not_allowed(request: Request) -> impl IntoResponse {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

/// CORS for the configured origins (`None` when there are none). Bearer
/// keys and stream tokens are not cookies, so credentials stay off; a
/// preflight is answered here, before auth, as browsers send it without one.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-exit-code"),
                HeaderName::from_static("x-exec-timed-out"),
                HeaderName::from_static("x-output-truncated"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The HTTP application. Layers, outermost first:
/// 0. instance hosts — `<name>.<base domain>` is an instance URL, proxied
///    to a replica ([`routes::proxy`]); nothing below sees it (an agent
///    answers its own CORS);
/// 1. CORS, when origins are configured — preflights end here;
/// 2. request context (id) — so everything below, panics included, can cite it;
///    then paths with control characters answer 404 ([`extract::reject_control_paths`]),
///    before metrics (no route is counted) and before any handler or query sees them;
/// 3. request metrics — outside the panic catcher, so a bug's 500 is counted;
/// 4. panic catcher — a bug answers 500 in the envelope and the server lives on;
/// 5. rate limit per API key, when configured ([`rate_limit`]) — it resolves
///    the key itself (the handler's `Caller` reuses it), so it sits inside
///    the instance hosts (public URLs carry no key and are not limited), CORS
///    (a preflight carries no key, and a 429 keeps its CORS headers for the
///    page to read), the request id and metrics (a 429 cites its id and is
///    counted) and the panic catcher; and before any handler, so a refused
///    request costs one key lookup and reads no body;
/// 6. the hop to the node that runs the instance a request is about, when
///    that is another node ([`hop`]);
/// 7. body limit — oversized bodies are refused before they are buffered.
pub fn app(state: AppState) -> Router {
    let hosts = state.clone();
    let hop_state = state.clone();
    let limiter = state.config.rate_limit.map(|limit| {
        axum::middleware::from_fn_with_state(
            rate_limit::Limiter {
                state: state.clone(),
                buckets: Arc::new(rate_limit::KeyBuckets::new(limit)),
            },
            rate_limit::per_key,
        )
    });
    let (router, doc) = api_routes().split_for_parts();
    let doc = Arc::new(doc);
    let max_body = state.config.max_body_bytes;
    let cors_origins = state.config.cors_origins.clone();
    let metrics = Arc::new(routes::metrics::ApiMetrics::new());
    router
        .route(
            "/openapi.json",
            axum::routing::get({
                let doc = doc.clone();
                move || async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .url("/docs/openapi.json", doc.as_ref().clone()),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        // The web console: static files, no handler of its own; like
        // `/docs` it is not an API operation, so not in the OpenAPI document.
        .nest_service(hangar_console::MOUNT, hangar_console::router())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            hop_state,
            hop::to_holder,
        ))
        .layer(axum::Extension(metrics.clone()))
        .layer(tower::util::option_layer(limiter))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::Internal("handler panicked".into()).into_response()
            },
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            routes::metrics::record,
        ))
        .layer(axum::middleware::from_fn(extract::reject_control_paths))
        .layer(axum::middleware::from_fn(context::with_context))
        .layer(tower::util::option_layer(cors(&cors_origins)))
        .layer(axum::middleware::from_fn_with_state(
            hosts,
            routes::proxy::instance_hosts,
        ))
}
