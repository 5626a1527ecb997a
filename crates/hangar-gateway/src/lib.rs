//! The gateway: Hangar's data plane.
//!
//! ```text
//! POST /v1/agents/:id/invoke {input, options}
//!   → the agent's default instance (a route cached for ROUTE_TTL)
//!   → a ready replica of it, the one with the fewest requests in flight
//!     (ties go round the rotation)
//!   → POST http://<replica><invoke_path> with `input` as the JSON body
//!   ← sync: a JSON object with `output` (and `usage`): taken as such; any
//!     other JSON: the output; text: the output as a string ([`invoke`])
//!   ← streaming: the agent's SSE or chunked text re-framed as
//!     `start / chunk / done` events ([`stream`])
//! ```
//!
//! Failures are the agent's or the wait's, told apart for the caller
//! ([`InvokeError`]): a non-2xx answer, an answer that is not JSON or text,
//! a replica that closed the connection (crashed mid-request), or the
//! caller's `options.timeout` running out.
//!
//! Upstream requests go through one pooled HTTP/1.1 client (hyper's), kept
//! alive per replica: a request costs no connection setup.
//!
//! Not built yet (see the gateway issue): async jobs, instance URLs, cold
//! start, autoscaling, per-replica concurrency limits and request metrics.

pub mod invoke;
pub mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hangar_controller::Controller;
use hangar_core::model::Instance;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use invoke::{InvokeError, Invoked};

/// How long an agent's route (its default instance) is used without asking
/// the store again. Changes made through this server forget routes at once
/// ([`Gateway::forget_routes`]); changes on another server sharing the
/// database are seen within this time.
pub const ROUTE_TTL: Duration = Duration::from_secs(1);

/// An agent's default instance, as last read from the store.
struct Route {
    organization_id: String,
    instance: Arc<Instance>,
    read_at: Instant,
}

/// Requests in flight per replica ID.
type Outstanding = Arc<Mutex<HashMap<String, usize>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// See the module docs. One per server.
pub struct Gateway {
    controller: Controller,
    client: Client<HttpConnector, axum::body::Body>,
    /// Agents' routes by agent ID.
    routes: Mutex<HashMap<String, Route>>,
    outstanding: Outstanding,
    /// Breaks ties between equally loaded replicas.
    turn: AtomicUsize,
}

/// Counts a request against a replica while it is in flight (for a stream:
/// until the stream ends or is dropped).
pub(crate) struct InFlight {
    outstanding: Outstanding,
    /// The replica's ID.
    pub(crate) replica: String,
    /// Where it listens.
    pub(crate) address: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut outstanding = lock(&self.outstanding);
        if let Some(count) = outstanding.get_mut(&self.replica) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                outstanding.remove(&self.replica);
            }
        }
    }
}

impl Gateway {
    /// A gateway routing to `controller`'s replicas.
    pub fn new(controller: Controller) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Self {
            controller,
            client,
            routes: Mutex::new(HashMap::new()),
            outstanding: Outstanding::default(),
            turn: AtomicUsize::new(0),
        }
    }

    /// The default instance of `organization_id`'s agent `agent_id`, if it
    /// was read from the store within [`ROUTE_TTL`].
    pub fn route(&self, organization_id: &str, agent_id: &str) -> Option<Arc<Instance>> {
        let routes = lock(&self.routes);
        let route = routes.get(agent_id)?;
        (route.organization_id == organization_id && route.read_at.elapsed() < ROUTE_TTL)
            .then(|| route.instance.clone())
    }

    /// Remembers an agent's default instance, as just read from the store.
    pub fn remember_route(&self, agent_id: &str, instance: Instance) -> Arc<Instance> {
        let instance = Arc::new(instance);
        let mut routes = lock(&self.routes);
        // Bounded by the number of agents invoked within the TTL: expired
        // entries go once the map has grown.
        if routes.len() >= 10_000 {
            routes.retain(|_, r| r.read_at.elapsed() < ROUTE_TTL);
        }
        routes.insert(
            agent_id.to_owned(),
            Route {
                organization_id: instance.organization_id.clone(),
                instance: instance.clone(),
                read_at: Instant::now(),
            },
        );
        instance
    }

    /// Forgets every route: an agent or instance changed through this server.
    pub fn forget_routes(&self) {
        lock(&self.routes).clear();
    }

    /// The ready replica with the fewest requests in flight, counted as one
    /// more until the returned guard drops.
    pub(crate) fn pick(&self, instance_id: &str) -> Option<InFlight> {
        let ready = self.controller.ready_replicas(instance_id);
        if ready.is_empty() {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % ready.len();
        let mut outstanding = lock(&self.outstanding);
        let (id, address) = (0..ready.len())
            .map(|i| &ready[(start + i) % ready.len()])
            .min_by_key(|(id, _)| outstanding.get(id).copied().unwrap_or(0))?
            .clone();
        *outstanding.entry(id.clone()).or_insert(0) += 1;
        Some(InFlight {
            outstanding: self.outstanding.clone(),
            replica: id,
            address,
        })
    }
}
