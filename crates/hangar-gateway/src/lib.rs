//! The gateway: Hangar's data plane.
//!
//! ```text
//! POST /v1/agents/:id/invoke {input, options}
//!   → the agent's default instance (Gateway::resolve: a route cached for
//!     ROUTE_TTL, else read from the store)
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
//! caller's `options.timeout` running out. [`error`] is the one table that
//! turns them (and the controller's and the store's errors) into a status
//! and a code, for the API, the stream's `error` events and stored jobs
//! alike.
//!
//! Invocations and instance URLs reach replicas over kept-alive HTTP/1.1
//! connections that the request itself drives ([`upstream`]): a request
//! costs no connection setup and no hand-off to another task.
//!
//! Async invocations are durable jobs in the store, run by [`jobs::JobRunner`].
//!
//! A request of a sticky session (`options.session_id`, `X-Hangar-Session`)
//! goes to its session's replica while that replica serves, and waits for
//! a slot on it rather than go elsewhere ([`sessions`]).

pub mod error;
pub mod hop;
pub mod invoke;
pub mod jobs;
pub mod proxy;
pub mod sessions;
pub mod stream;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hangar_controller::{Controller, Traffic};
use hangar_core::model::Instance;
use hangar_core::status::{agent_status, AgentStatus};
use hangar_store::{Store, StoreError};

pub use error::{Classify, ErrorClass};
pub use invoke::{InvokeError, Invoked};

/// How long an agent's route (its default instance) is used without asking
/// the store again. Changes made through this server forget routes at once
/// ([`Gateway::forget_routes`]); changes on another server sharing the
/// database are seen within this time.
pub const ROUTE_TTL: Duration = Duration::from_secs(1);

/// Where requests for a key go (an agent's ID: its default instance; an
/// instance URL's host label: that instance), as last read from the store.
struct Route {
    resolved: Resolved,
    read_at: Instant,
}

/// What a [`RouteKey`] leads to ([`Gateway::resolve`]).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where requests go: the agent's default instance, or the instance
    /// named by a host. `None`: the agent has no instance (yet).
    pub instance: Option<Arc<Instance>>,
    /// For an agent's key, the agent's status, read with the instance:
    /// why nothing serves when nothing does.
    pub agent_status: Option<AgentStatus>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a route is looked up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// An agent's ID: its default instance.
    Agent(String),
    /// The first DNS label of an instance URL's host.
    Host(String),
    /// The URL keys an agent URL may mean, the cloud's own first
    /// ([`hangar_core::agent_url::candidates`]): the agent's default instance.
    AgentUrl([String; 2]),
}

/// See the module docs. One per server.
pub struct Gateway {
    controller: Controller,
    /// Where routes are read on a miss of the cache.
    store: Store,
    /// Connections for invocations (whole bodies).
    upstreams: Arc<upstream::Upstreams>,
    /// Connections for instance URLs (callers' bodies streamed through).
    proxied: Arc<upstream::Upstreams<axum::body::Body>>,
    /// Routes by agent ID or by host label.
    routes: Mutex<HashMap<RouteKey, Route>>,
    limits: Limits,
    /// Breaks ties between equally loaded replicas.
    turn: AtomicUsize,
}

/// How much the gateway lets through.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests in flight per replica; more wait for a slot.
    pub replica_concurrency: usize,
    /// Requests waiting for a slot per instance; more are refused (503).
    pub queue_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            replica_concurrency: 100,
            queue_depth: 1000,
        }
    }
}

/// A request holding a slot on a replica, counted in its instance's
/// traffic until it drops (for a stream: until the stream ends or is
/// dropped).
pub(crate) struct InFlight {
    /// The replica's ID.
    pub(crate) replica: String,
    /// Where it listens.
    pub(crate) address: SocketAddr,
    load: Arc<AtomicUsize>,
    /// Released first: the slot is free before waiters are told so.
    _arrival: Arrival,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request counted in its instance's traffic from arrival to end.
struct Arrival {
    traffic: Arc<Traffic>,
    at: Instant,
}

impl Arrival {
    fn new(traffic: Arc<Traffic>) -> Self {
        traffic.arrived();
        Self {
            traffic,
            at: Instant::now(),
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.traffic.finished(self.at.elapsed());
    }
}

/// A request waiting for a slot, counted in the instance's queue.
struct Queued<'a>(&'a Traffic);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gateway {
    /// A gateway routing to `controller`'s replicas, reading routes from
    /// `store`.
    pub fn new(controller: Controller, store: Store, limits: Limits) -> Self {
        Self {
            controller,
            store,
            upstreams: Arc::default(),
            proxied: Arc::default(),
            routes: Mutex::new(HashMap::new()),
            limits,
            turn: AtomicUsize::new(0),
        }
    }

    /// What `key` leads to: from the route cache (read from the store
    /// within [`ROUTE_TTL`]), else from the store, remembered when there is
    /// an instance. `None` when there is nothing by that key, or (with
    /// `org`) it is another organization's, which looks the same. Host and
    /// agent URL keys are public (instance and agent URLs): they take no `org`.
    pub async fn resolve(
        &self,
        key: &RouteKey,
        org: Option<&str>,
    ) -> Result<Option<Resolved>, StoreError> {
        if let Some(resolved) = self.cached(key) {
            let theirs = resolved
                .instance
                .as_ref()
                .is_some_and(|i| org.is_none_or(|org| i.organization_id == org));
            if theirs {
                return Ok(Some(resolved));
            }
        }
        self.reread(key, org).await
    }

    /// Like [`Gateway::resolve`], from the store whatever the cache holds:
    /// for a request that found no replica, to tell why from what is true
    /// now rather than a second ago.
    pub async fn reread(
        &self,
        key: &RouteKey,
        org: Option<&str>,
    ) -> Result<Option<Resolved>, StoreError> {
        let resolved = match (key, org) {
            (RouteKey::Agent(id), Some(org)) => {
                self.store.get_agent(org, id).await?.map(|view| Resolved {
                    agent_status: Some(agent_status(
                        view.agent.desired_state,
                        view.latest_build_status,
                        view.default_instance.as_ref().map(|i| i.status),
                    )),
                    instance: view.default_instance.map(Arc::new),
                })
            }
            // An agent is always someone's: without an organization, nothing.
            (RouteKey::Agent(_), None) => None,
            (RouteKey::Host(label), _) => self
                .store
                .instance_at_host(label)
                .await?
                .filter(|i| org.is_none_or(|org| i.organization_id == org))
                .map(|instance| Resolved {
                    instance: Some(Arc::new(instance)),
                    agent_status: None,
                }),
            (RouteKey::AgentUrl(keys), _) => self
                .store
                .instance_at_agent_url(keys)
                .await?
                .filter(|i| org.is_none_or(|org| i.organization_id == org))
                .map(|instance| Resolved {
                    instance: Some(Arc::new(instance)),
                    agent_status: None,
                }),
        };
        if let Some(resolved) = &resolved {
            if resolved.instance.is_some() {
                self.remember(key.clone(), resolved.clone());
            }
        }
        Ok(resolved)
    }

    /// What `key` led to, if it was read from the store within [`ROUTE_TTL`].
    fn cached(&self, key: &RouteKey) -> Option<Resolved> {
        let routes = lock(&self.routes);
        let route = routes.get(key)?;
        (route.read_at.elapsed() < ROUTE_TTL).then(|| route.resolved.clone())
    }

    /// Remembers where `key` leads, as just read from the store.
    fn remember(&self, key: RouteKey, resolved: Resolved) {
        let mut routes = lock(&self.routes);
        // Bounded by the number of agents invoked within the TTL: expired
        // entries go once the map has grown.
        if routes.len() >= 10_000 {
            routes.retain(|_, r| r.read_at.elapsed() < ROUTE_TTL);
        }
        routes.insert(
            key,
            Route {
                resolved,
                read_at: Instant::now(),
            },
        );
    }

    /// Forgets every route: an agent or instance changed through this server.
    pub fn forget_routes(&self) {
        lock(&self.routes).clear();
    }

    /// A slot on the ready replica with the fewest requests in flight
    /// (under the per-replica limit). With no replica ready, the instance is
    /// activated (a cold start) and the request waits for one; with every
    /// replica at its limit, it waits in the instance's bounded queue. Both
    /// waits end at `deadline`.
    /// Replicas in `avoid` (they refused a connection just now) are passed
    /// over while there is another. A request of a session goes to the
    /// session's replica while it is in the rotation (and waits for a slot
    /// on it), else as any other; the session is recorded on the replica
    /// chosen.
    pub(crate) async fn acquire(
        &self,
        instance: &Instance,
        session: Option<&str>,
        deadline: tokio::time::Instant,
        timeout: Duration,
        avoid: &[String],
    ) -> Result<InFlight, InvokeError> {
        let sticky = match session {
            Some(id) => self.session_replica(instance, id).await,
            None => None,
        };
        let in_flight = self
            .acquire_slot(&instance.id, sticky.as_deref(), deadline, timeout, avoid)
            .await?;
        if let Some(id) = session {
            self.visit_session(instance, id, &in_flight.replica).await;
        }
        Ok(in_flight)
    }

    /// [`Gateway::acquire`]'s wait for a slot, on `sticky` while it serves.
    async fn acquire_slot(
        &self,
        instance_id: &str,
        sticky: Option<&str>,
        deadline: tokio::time::Instant,
        timeout: Duration,
        avoid: &[String],
    ) -> Result<InFlight, InvokeError> {
        let traffic = self.controller.traffic(instance_id);
        let arrival = Arrival::new(traffic.clone());
        let mut queued = None;
        loop {
            let mut targets = self.controller.targets(instance_id);
            if targets.iter().any(|t| !avoid.contains(&t.replica_id)) {
                targets.retain(|t| !avoid.contains(&t.replica_id));
            }
            if targets.is_empty() {
                if !self.controller.activate(instance_id) {
                    return Err(InvokeError::NoReplica);
                }
                if !self.controller.wait_ready(instance_id, deadline).await {
                    // None is coming (a reconcile said so), or time is up.
                    return Err(if tokio::time::Instant::now() < deadline {
                        InvokeError::NoReplica
                    } else {
                        InvokeError::Timeout(timeout)
                    });
                }
                continue;
            }
            // A permit first, so a slot freed from now on is not missed.
            let freed = traffic.freed.notified();
            let start = self.turn.fetch_add(1, Ordering::Relaxed);
            let sticky = sticky.filter(|s| !avoid.iter().any(|a| a == s));
            if let Some(target) =
                sessions::pick(&targets, sticky, self.limits.replica_concurrency, start)
            {
                return Ok(InFlight {
                    replica: target.replica_id.clone(),
                    address: target.address,
                    load: target.load.clone(),
                    _arrival: arrival,
                });
            }
            if queued.is_none() {
                let depth = traffic.queued.fetch_add(1, Ordering::Relaxed);
                queued = Some(Queued(&traffic));
                if depth >= self.limits.queue_depth {
                    return Err(InvokeError::Overloaded);
                }
            }
            tokio::select! {
                () = freed => {}
                // Replicas come and go: look again now and then.
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(InvokeError::Timeout(timeout));
                }
            }
        }
    }

    /// Counts an invocation of the instance in its request figures.
    pub(crate) fn record(&self, instance_id: &str, ok: bool, latency: Duration) {
        self.controller.traffic(instance_id).record(ok, latency);
    }
}
