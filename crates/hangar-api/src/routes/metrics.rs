//! Prometheus metrics at `GET /metrics` (text format 0.0.4), for the
//! operator: the process, the API, the runtime and every instance.
//!
//! Counters of API requests live for the server's life in [`ApiMetrics`],
//! fed by [`record`] (a layer over every route). Everything else is read at
//! scrape time from what already holds it — the controller's live replica
//! figures and request windows, the store's backlog — so nothing is counted
//! twice and a deleted instance's series simply stop.
//!
//! Every series is this process's: with several servers on one database,
//! each is scraped and Prometheus sums them. So the invocation series are
//! this server's own ([`hangar_controller::Controller::local_request_stats`]),
//! not the cluster's figures that the Agents API shows, which every server
//! writes to the store and readers sum; summing those here as well would
//! count every invocation once per server scraped.
//!
//! Label sets are bounded: routes by their template (`/v1/agents/{id}`, never
//! the path), methods and status codes by HTTP, instances by the instance
//! quota. The series name agents and instances of every organization, so a
//! scrape needs an API key of the operator organization.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::{ApiError, ApiResult};
use crate::extract::Caller;
use crate::AppState;

/// A label set: names are fixed strings, values come from bounded sets.
type Labels = Vec<(&'static str, String)>;

/// A gauge of a float.
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Request counters kept for the server's life.
#[derive(Clone)]
pub(crate) struct ApiMetrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
}

impl ApiMetrics {
    pub(crate) fn new() -> Self {
        Self {
            requests: Family::default(),
            // 0.5 ms to about 16 s: an authenticated read to a slow invoke.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        }
    }
}

/// Counts and times every API request by route template, method and status.
/// Streams are timed to their first byte (the response head).
pub(crate) async fn record(
    State(metrics): State<Arc<ApiMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // HTTP lets clients invent methods: only the standard ones become label
    // values, so no client can grow the label set.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = vec![("method", method), ("route", route)];
    metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    let mut labels = labels;
    labels.push(("status", response.status().as_u16().to_string()));
    metrics.requests.get_or_create(&labels).inc();
    response
}

/// Prometheus metrics of this server (operator organization only).
#[utoipa::path(get, path = "/metrics", tag = "tenancy",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"),
        (status = 401, description = "UNAUTHORIZED"), (status = 403, description = "FORBIDDEN: not the operator organization")))]
pub(crate) async fn scrape(
    State(state): State<AppState>,
    caller: Caller,
    Extension(metrics): Extension<Arc<ApiMetrics>>,
) -> ApiResult<Response> {
    if !caller.0.is_operator {
        return Err(ApiError::Forbidden(
            "metrics need an API key of the operator organization",
        ));
    }
    let mut root = Registry::default();
    process_metrics(&mut root);
    let registry = root.sub_registry_with_prefix("hangar");
    registry.register(
        "http_requests",
        "API requests answered, by route template, method and status",
        metrics.requests.clone(),
    );
    registry.register(
        "http_request_duration_seconds",
        "Time to the response head of API requests, by route template and method",
        metrics.duration.clone(),
    );
    backlog(&state, registry).await?;
    instances(&state, registry).await?;
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &root)
        .map_err(|_| ApiError::Internal("encoding metrics".into()))?;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// Work waiting: jobs, builds, webhook deliveries.
async fn backlog(state: &AppState, registry: &mut Registry) -> ApiResult<()> {
    let b = state.store.backlog().await?;
    let jobs: Family<Labels, Gauge> = Family::default();
    jobs.get_or_create(&vec![("status", "pending".to_owned())])
        .set(b.jobs_pending);
    jobs.get_or_create(&vec![("status", "running".to_owned())])
        .set(b.jobs_running);
    registry.register("jobs", "Async jobs waiting or running", jobs);
    let builds: Family<Labels, Gauge> = Family::default();
    builds
        .get_or_create(&vec![("status", "queued".to_owned())])
        .set(b.builds_queued);
    builds
        .get_or_create(&vec![("status", "building".to_owned())])
        .set(b.builds_building);
    registry.register("builds", "Builds waiting or building", builds);
    gauge(
        registry,
        "webhook_deliveries_pending",
        "Webhook deliveries not yet answered with a 2xx",
        b.deliveries_pending,
    );
    Ok(())
}

/// Every live instance: status, replicas, restarts, resources and requests.
async fn instances(state: &AppState, registry: &mut Registry) -> ApiResult<()> {
    let controlled = state.store.controlled_instances().await?;
    let by_status: Family<Labels, Gauge> = Family::default();
    let desired: Family<Labels, Gauge> = Family::default();
    let ready: Family<Labels, Gauge> = Family::default();
    let restarts: Family<Labels, Counter> = Family::default();
    let cpu: Family<Labels, FloatGauge> = Family::default();
    let memory: Family<Labels, Gauge> = Family::default();
    let rx: Family<Labels, Counter> = Family::default();
    let tx: Family<Labels, Counter> = Family::default();
    let egress_denied: Family<Labels, Counter> = Family::default();
    let egress_bytes: Family<Labels, Counter> = Family::default();
    let requests: Family<Labels, Counter> = Family::default();
    let recent: Family<Labels, Gauge> = Family::default();
    let recent_errors: Family<Labels, Gauge> = Family::default();
    let latency: Family<Labels, FloatGauge> = Family::default();
    let window = std::time::Duration::from_secs(300);
    for c in controlled.iter().filter(|c| !c.deleted) {
        let i = &c.instance;
        by_status
            .get_or_create(&vec![("status", i.status.as_str().to_owned())])
            .inc();
        let labels: Labels = vec![
            ("organization_id", i.organization_id.clone()),
            ("agent_id", i.agent_id.clone()),
            ("instance_id", i.id.clone()),
        ];
        desired.get_or_create(&labels).set(i64::from(i.replicas));
        restarts
            .get_or_create(&labels)
            .inc_by(u64::from(i.restart_count));
        let live = state.metrics(&i.id);
        let ready_count = live.replicas.iter().filter(|r| r.ready).count();
        ready
            .get_or_create(&labels)
            .set(i64::try_from(ready_count).unwrap_or(i64::MAX));
        cpu.get_or_create(&labels).set(live.cpu_usage_percent);
        let bytes: u64 = live.replicas.iter().map(|r| r.memory_bytes).sum();
        memory
            .get_or_create(&labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        rx.get_or_create(&labels).inc_by(live.network_rx_bytes);
        tx.get_or_create(&labels).inc_by(live.network_tx_bytes);
        egress_denied
            .get_or_create(&labels)
            .inc_by(live.egress_denied_total);
        egress_bytes
            .get_or_create(&labels)
            .inc_by(live.egress_bytes_total);
        requests.get_or_create(&labels).inc_by(live.requests_total);
        let stats = state.local_requests(&i.id, window);
        recent
            .get_or_create(&labels)
            .set(i64::try_from(stats.requests).unwrap_or(i64::MAX));
        recent_errors
            .get_or_create(&labels)
            .set(i64::try_from(stats.errors).unwrap_or(i64::MAX));
        latency.get_or_create(&labels).set(stats.avg_latency_ms);
    }
    registry.register("instances", "Instances by status", by_status);
    registry.register(
        "instance_replicas_desired",
        "Replicas an instance should run",
        desired,
    );
    registry.register(
        "instance_replicas_ready",
        "Replicas passing health checks",
        ready,
    );
    registry.register(
        "instance_restarts",
        "Replica restarts after a crash",
        restarts,
    );
    registry.register(
        "instance_cpu_percent",
        "CPU use, % of one CPU, over its replicas",
        cpu,
    );
    registry.register(
        "instance_memory_bytes",
        "Memory in use over its replicas",
        memory,
    );
    registry.register(
        "instance_network_receive_bytes",
        "Bytes its replicas received",
        rx,
    );
    registry.register(
        "instance_network_transmit_bytes",
        "Bytes its replicas sent",
        tx,
    );
    registry.register(
        "instance_egress_denied",
        "Connections the egress proxy refused its replicas, since this server started",
        egress_denied,
    );
    registry.register(
        "instance_egress_bytes",
        "Bytes its replicas sent and received through the egress proxy, since this server started",
        egress_bytes,
    );
    registry.register(
        "instance_invocations",
        "Invocations answered since this server started",
        requests,
    );
    registry.register(
        "instance_invocations_5m",
        "Invocations answered in the last 5 minutes",
        recent,
    );
    registry.register(
        "instance_invocation_errors_5m",
        "Invocations failed in the last 5 minutes",
        recent_errors,
    );
    registry.register(
        "instance_invocation_latency_avg_ms_5m",
        "Mean invocation latency over the last 5 minutes, ms",
        latency,
    );
    let runtime: Family<Labels, Gauge> = Family::default();
    runtime
        .get_or_create(&vec![(
            "driver",
            state
                .runtime
                .as_ref()
                .map_or("none", |r| r.driver_name())
                .to_owned(),
        )])
        .set(1);
    registry.register(
        "runtime_info",
        "The runtime driver this server runs replicas with",
        runtime,
    );
    Ok(())
}

/// The standard `process_*` series, from `/proc/self` (Linux). `/proc`
/// counts CPU time in USER_HZ, which the kernel's ABI fixes at 100.
fn process_metrics(registry: &mut Registry) {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        let cpu: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
        cpu.inc_by((utime + stime) as f64 / USER_HZ);
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            cpu,
        );
    }
    if let Some(threads) = field(20) {
        gauge(
            registry,
            "process_threads",
            "Number of OS threads",
            to_i64(threads),
        );
    }
    if let Some(vsize) = field(23) {
        gauge(
            registry,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            to_i64(vsize),
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    if let Some(kb) = rss_kb {
        gauge(
            registry,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            to_i64(kb * 1024),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            registry,
            "process_open_fds",
            "Number of open file descriptors",
            to_i64(fds.count() as u64),
        );
    }
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        let started: FloatGauge = Gauge::default();
        started.set(boot as f64 + start as f64 / USER_HZ);
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            started,
        );
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
