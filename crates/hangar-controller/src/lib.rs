//! The controller: makes what runs match what the store wants.
//!
//! The API only writes desired state (an instance with N replicas, running
//! or stopped, deleted) and wakes the controller; the controller reconciles
//! each instance against its replicas in a [`Driver`]:
//!
//! ```text
//! wake(id) / requeue timer / resync tick ──► queue ──► reconcile(id)   (one at a time per instance)
//!   observe   store.controlled_instance(id) + the tracked replicas
//!   own       this node's lease of it: acquired, or renewed at its
//!             generation; another node's: nothing more (leases.rs)
//!   plan      pure: what to remove, stop, create; status; events (plan.rs)
//!   apply     carry it out; answer Action::Requeue(after) | AwaitChange
//!   on error  retried after a capped backoff, shown in status_reason
//! per replica: a log task (output → parsed lines in the store + broadcast)
//!              a health task (GET health_path; readiness and liveness)
//! every few seconds: stats of every replica (CPU %, memory, network; CPU
//!                    time and memory kept for the metric history),
//!                    the autoscaler
//! ```
//!
//! Layout: `queue` (when), `leases` (which instances are this node's),
//! `reconcile` (observe and apply), `plan` (what),
//! `replica` (a replica's phase), `tasks` (per-replica and periodic work),
//! `scale` (how many), `requests` (request figures: this node's written to
//! the store, every node's summed), `launch` (a replica's spec), `tell`
//! (log lines and events), `error`.
//!
//! Every task the controller spawns is tracked and watches one shutdown
//! token: [`Controller::start`]'s handle ends when all of them have.
//! Replicas outlive the server: a shutdown stops no replica, unless another
//! node is ready to take its instances over (see `leases`).
//!
//! On start it lists the driver's replicas and adopts those labelled with an
//! instance: after a restart of `hangar serve` the same processes keep
//! running, their logs continue from the stored cursor, and the first
//! reconcile finishes whatever transition was half done — or, when another
//! node took the instance over meanwhile, removes them.
//!
//! Exec and stdin go to one running replica of the instance; logs are read
//! from the store, live lines from [`Controller::subscribe_logs`].

mod egress;
mod error;
mod launch;
mod leases;
mod plan;
mod queue;
mod reconcile;
mod replica;
mod requests;
pub mod scale;
mod tasks;
mod tell;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hangar_core::logs::LiveLine;
use hangar_runtime::driver::{DriverError, ExecResult};
use hangar_runtime::Driver;
use hangar_store::Store;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use egress::EgressProxyAddress;
pub use error::ControlError;
/// How long a stdin write collects the replica's answer ([`Controller::stdin`]).
pub use hangar_runtime::driver::StdinWait;
pub use launch::{command, ArtifactFetch, PIDS_LIMIT};
pub use scale::{Bounds, Traffic};

use queue::Work;
use replica::Replica;

/// Timing knobs (defaults suit a real deployment; tests shorten them).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Every instance is reconciled at least this often.
    pub resync: Duration,
    /// Health checks of a ready replica, this often.
    pub health_interval: Duration,
    /// Health checks of a replica that has not been ready yet, this often.
    pub startup_probe_interval: Duration,
    /// A health check that takes longer fails.
    pub health_timeout: Duration,
    /// A ready replica failing this many checks in a row is unhealthy: out
    /// of the rotation and replaced, counted as a restart (an instance's
    /// `config.liveness_failures` overrides it).
    pub health_failures: u32,
    /// A replica not ready this long after it started is replaced, counted
    /// as a restart (an instance's `config.start_timeout_seconds` overrides
    /// it).
    pub startup_deadline: Duration,
    /// Graceful stops wait this long between `SIGTERM` and `SIGKILL`.
    pub stop_grace: Duration,
    /// First restart delay after a crash; doubles with each crash in a row.
    /// Failed reconciles are retried on the same schedule.
    pub backoff_base: Duration,
    /// The longest restart (and retry) delay.
    pub backoff_max: Duration,
    /// A replica that ran this long resets the crash streak when it exits.
    pub backoff_reset: Duration,
    /// Stats of every replica are read this often.
    pub stats_interval: Duration,
    /// Log lines kept per instance.
    pub log_lines_kept: u32,
    /// Log lines older than this are deleted (`None`: kept until trimmed by
    /// count).
    pub log_max_age: Option<Duration>,
    /// How often lines past `log_max_age` are looked for.
    pub log_expiry_interval: Duration,
    /// The autoscaler looks at traffic and CPU this often.
    pub autoscale_interval: Duration,
    /// Requests in flight per replica the autoscaler aims for.
    pub target_concurrency: f64,
    /// An instance that may scale to zero does after this long without a
    /// request.
    pub idle_timeout: Duration,
    /// Scaling down takes the most replicas wanted within this window.
    pub scale_down_window: Duration,
    /// A replica leaving (scale down, roll) gets this long to finish the
    /// requests in flight on it before it is stopped.
    pub drain_timeout: Duration,
    /// What replicas may reach outside the host when their instance's
    /// `config.network.egress` does not say.
    pub default_egress: hangar_core::network::Egress,
    /// Where replicas reach the egress proxy; `None`: the server runs none,
    /// and replicas that need one are not made.
    pub egress_proxy: Option<EgressProxyAddress>,
    /// Where an artifact built by another server is fetched from before a
    /// replica of it starts here; `None`: artifacts are read where the
    /// build recorded them.
    pub artifacts: Option<Arc<dyn ArtifactFetch>>,
    /// This server's node ID: the holder its instance leases name (see
    /// `leases`). The default is new each time: a node of its own.
    pub node_id: String,
    /// An instance's lease runs out this long after its last renewal.
    pub instance_lease: Duration,
    /// A node silent this long is dead: its leases may be taken at once.
    pub node_dead_after: Duration,
    /// This node's request counts are written to the store this often (and
    /// at a clean stop): how late other nodes' readers see them.
    pub request_flush_interval: Duration,
    /// Request figures and metric history older than this are deleted
    /// (from every node's rows, by whichever node looks first).
    pub metric_retention: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(10),
            health_interval: Duration::from_secs(5),
            startup_probe_interval: Duration::from_millis(10),
            health_timeout: Duration::from_secs(2),
            health_failures: 3,
            startup_deadline: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            backoff_reset: Duration::from_secs(60),
            stats_interval: Duration::from_secs(5),
            log_lines_kept: 100_000,
            log_max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            log_expiry_interval: Duration::from_secs(600),
            autoscale_interval: Duration::from_secs(2),
            target_concurrency: 70.0,
            idle_timeout: Duration::from_secs(300),
            scale_down_window: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(300),
            default_egress: hangar_core::network::Egress::Open,
            egress_proxy: None,
            artifacts: None,
            node_id: hangar_core::id::new_id(hangar_core::id::IdKind::Request)
                .replace("req_", "node-"),
            instance_lease: Duration::from_secs(15),
            node_dead_after: Duration::from_secs(15),
            request_flush_interval: Duration::from_secs(5),
            metric_retention: scale::STATS_KEPT,
        }
    }
}

/// A replica in the gateway's rotation.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its ID.
    pub replica_id: String,
    /// Where it answers HTTP.
    pub address: std::net::SocketAddr,
    /// Requests in flight on it.
    pub load: Arc<AtomicUsize>,
}

/// Live figures of one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaView {
    /// Its id.
    pub id: String,
    /// Passing health checks.
    pub ready: bool,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// Duration of its last health check, in ms.
    pub response_time_ms: Option<u64>,
    /// CPU use over the last stats interval, in % of one CPU.
    pub cpu_percent: f64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Live figures of an instance: its running replicas, summed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceMetrics {
    /// Seconds since its oldest running replica started (0: none runs).
    pub uptime_seconds: u64,
    /// CPU use, % of one CPU, summed over replicas.
    pub cpu_usage_percent: f64,
    /// Memory in use, MiB, summed over replicas.
    pub memory_usage_mb: f64,
    /// Bytes received, summed.
    pub network_rx_bytes: u64,
    /// Bytes sent, summed.
    pub network_tx_bytes: u64,
    /// Mean duration of the replicas' last health checks, in ms.
    pub response_time_ms: Option<u64>,
    /// When a replica was last health-checked.
    pub last_check: Option<chrono::DateTime<chrono::Utc>>,
    /// Replicas running.
    pub replicas: Vec<ReplicaView>,
    /// Invocations answered since the server started.
    pub requests_total: u64,
    /// Share of health checks that passed (of replicas that had been ready),
    /// since the server started; `None` before the first.
    pub uptime_percent: Option<f64>,
    /// Connections the egress proxy refused, since the server started.
    pub egress_denied_total: u64,
    /// Bytes through the egress proxy, both ways, since the server started.
    pub egress_bytes_total: u64,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub store: Store,
    pub driver: Arc<dyn Driver>,
    pub config: ControllerConfig,
    pub http: reqwest::Client,
    /// The instances this node runs.
    pub leases: leases::Leases,
    /// Lines stored since the last trim, per instance: the log is trimmed to
    /// [`ControllerConfig::log_lines_kept`] every [`TRIM_EVERY`] lines.
    pub untrimmed: Mutex<HashMap<String, u32>>,
    instances: Mutex<HashMap<String, Arc<InstanceState>>>,
    /// Held for writing by a flush of request counts, for reading by a read
    /// of them (see `requests`).
    flushing: tokio::sync::RwLock<()>,
    /// Traffic times count from here.
    epoch: Instant,
    work: mpsc::UnboundedSender<Work>,
    work_rx: Mutex<Option<mpsc::UnboundedReceiver<Work>>>,
    /// Cancelled when the server shuts down: every task below ends.
    shutdown: CancellationToken,
    /// Every task the controller spawned.
    tasks: TaskTracker,
    /// An operator drains this node: it takes no instance, and hands those
    /// it runs to other nodes ([`leases::drain_away`]).
    pub draining: AtomicBool,
    /// Instances whose lease this node handed to another node and whose
    /// replicas here still serve until that node runs them: not reconciled
    /// here meanwhile.
    pub handing_over: Mutex<std::collections::HashSet<String>>,
}

/// What the controller tracks of one instance.
pub(crate) struct InstanceState {
    pub id: String,
    dirty: AtomicBool,
    busy: AtomicBool,
    /// Live lines, shared: every follower gets the same allocation.
    pub logs: broadcast::Sender<Arc<LiveLine>>,
    pub tracked: Mutex<Tracked>,
    /// What the gateway reports of its requests.
    pub traffic: Arc<Traffic>,
    /// Notified when a replica becomes ready (cold starts wait on it), and
    /// after every reconcile.
    pub became_ready: tokio::sync::Notify,
    /// Reconciles finished: a request waiting for a replica learns from the
    /// next one whether any is coming.
    pub reconciled: AtomicU64,
    /// Connections the egress proxy refused to its replicas.
    pub egress_denied: AtomicU64,
    /// Bytes its replicas sent and received through the egress proxy.
    pub egress_bytes: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Tracked {
    pub replicas: BTreeMap<String, Replica>,
    /// What the controller remembers between reconciles (crash streak,
    /// backoff, restarts, announcements).
    pub memory: plan::Memory,
    /// What was last recorded in the store.
    pub last_status: Option<plan::Status>,
    /// Reconciles failed in a row (the error policy's backoff).
    pub reconcile_failures: u32,
    /// Wanted running (not stopped or deleted), as of the last reconcile.
    pub serving: bool,
    /// Whose events this instance's are, as of the last reconcile.
    pub owner: Option<tell::Owner>,
    /// The instance's scaling bounds, as of the last reconcile.
    pub bounds: Option<Bounds>,
    /// Failed checks that make a ready replica unhealthy, as of the last
    /// reconcile (before it: the controller's default).
    pub liveness_failures: Option<u32>,
    /// The autoscaler's count and memory.
    pub autoscale: scale::Autoscale,
    /// Health checks of replicas once they had been ready (startup probes
    /// are not counted: a replica coming up is not down), and how many
    /// passed: `health.uptime_percent`, since this server started.
    pub health_checks: u64,
    pub health_passes: u64,
    /// The instance's rules for the egress proxy, if its replicas use it.
    pub egress: Option<Arc<egress::EgressRules>>,
    /// Another node runs the instance, as the last reconcile found.
    pub elsewhere: bool,
}

/// How long exec and stdin wait for an instance at zero to start a replica.
pub const ACTIVATION_WAIT: Duration = Duration::from_secs(60);

/// Deletes log lines older than `max_age` every `every`: retention by age,
/// beside the trim by count that follows each instance's writes (an idle
/// instance's old lines go too).
async fn expire_logs_loop(store: hangar_store::Store, max_age: Duration, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cutoff) = chrono::Duration::from_std(max_age)
            .ok()
            .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
        else {
            return;
        };
        match store.expire_instance_logs(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(lines = n, "deleted log lines past their retention"),
            Err(err) => tracing::warn!(error = %err, "cannot delete old log lines"),
        }
    }
}

/// Live log lines a follower may fall behind by before it reads the rest from
/// the store: a burst of output outruns followers for a moment, and reading
/// it back costs far more than keeping a pointer per line (the lines are
/// shared).
const LIVE_LOG_LINES: usize = 16_384;

/// How many stored lines of an instance trigger a trim of its log.
pub(crate) const TRIM_EVERY: u32 = 1000;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Controller {
    /// A controller over `store` and `driver`; nothing runs until
    /// [`Controller::start`].
    pub fn new(store: Store, driver: Arc<dyn Driver>, config: ControllerConfig) -> Self {
        let (work, work_rx) = mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(2)
            .build()
            .unwrap_or_default();
        let leases = leases::Leases::new(
            config.node_id.clone(),
            hangar_store::LeaseTerms {
                duration: config.instance_lease,
                node_dead_after: config.node_dead_after,
            },
        );
        Self {
            inner: Arc::new(Inner {
                store,
                driver,
                config,
                http,
                leases,
                instances: Mutex::new(HashMap::new()),
                flushing: tokio::sync::RwLock::new(()),
                untrimmed: Mutex::new(HashMap::new()),
                epoch: Instant::now(),
                work,
                work_rx: Mutex::new(Some(work_rx)),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                draining: AtomicBool::new(false),
                handing_over: Mutex::new(std::collections::HashSet::new()),
            }),
        }
    }

    /// Drains this node (`true`: it takes no instance and hands those it
    /// runs to other ready nodes, one at a time, each once its new node
    /// runs it) or stops draining it. Told after every heartbeat.
    pub fn set_draining(&self, draining: bool) {
        let was = self.inner.draining.swap(draining, Ordering::SeqCst);
        if draining && !was {
            tracing::info!("this node is drained: its instances move to other nodes");
            let inner = self.inner.clone();
            self.inner.spawn(leases::drain_away(inner));
        } else if was && !draining {
            tracing::info!("this node is no longer drained: it takes instances again");
        }
    }

    /// The driver's name ("sandbox", "fake", ...).
    pub fn driver_name(&self) -> &'static str {
        self.inner.driver.name()
    }

    /// Adopts the driver's existing replicas, reconciles every instance, and
    /// keeps reconciling (on [`Controller::wake`], requeues and every
    /// resync period) until `shutdown` is cancelled. Call once. The handle
    /// ends once every task of the controller has ended (replicas keep
    /// running: the next start adopts them).
    pub async fn start(
        &self,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, ControlError> {
        let Some(work) = lock(&self.inner.work_rx).take() else {
            return Err(ControlError::Invalid(
                "the controller is already started".to_owned(),
            ));
        };
        self.adopt().await?;
        let inner = self.inner.clone();
        inner.resync_all().await;
        inner.spawn(tasks::driver_resync_loop(inner.clone()));
        inner.spawn(tasks::stats_loop(inner.clone()));
        inner.spawn(tasks::autoscale_loop(inner.clone()));
        if let Some(max_age) = inner.config.log_max_age {
            let every = inner.config.log_expiry_interval;
            inner.spawn(expire_logs_loop(inner.store.clone(), max_age, every));
        }
        inner.spawn(queue::run(inner.clone(), work));
        inner.spawn(leases::keep(inner.clone()));
        inner.spawn(requests::flush_loop(inner.clone()));
        Ok(tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = inner.shutdown.cancelled() => {}
            }
            inner.shutdown.cancel();
            inner.tasks.close();
            inner.tasks.wait().await;
            // Nothing counts any more: what is left goes to the store.
            if let Err(err) = requests::flush(&inner).await {
                tracing::warn!(error = %err, "cannot write the last request figures");
            }
            // Nothing acts on any instance any more: now they may go.
            leases::hand_over(&inner).await;
            tracing::debug!("controller stopped");
        }))
    }

    async fn adopt(&self) -> Result<(), ControlError> {
        let replicas = self
            .inner
            .driver
            .list()
            .await
            .map_err(|err| ControlError::Driver(err.to_string()))?;
        for info in replicas {
            let Some(instance_id) = info
                .labels
                .get(hangar_runtime::driver::labels::INSTANCE)
                .cloned()
            else {
                continue;
            };
            let generation = info
                .labels
                .get(hangar_runtime::driver::labels::GENERATION)
                .cloned()
                .unwrap_or_default();
            tracing::info!(instance = %instance_id, replica = %info.id, running = info.exit.is_none(), "adopting a replica");
            let state = self.inner.state(&instance_id);
            let replica_id = info.id.clone();
            let mut replica = Replica::new(info, generation);
            if replica.phase.is_running() && replica.info.address.is_none() {
                // Nothing to check: a stdin replica is ready while it runs.
                replica.passed_check(0);
                replica.response_time_ms = None;
            }
            lock(&state.tracked)
                .replicas
                .insert(replica_id.clone(), replica);
            tasks::spawn_replica_tasks(&self.inner, &state, &replica_id);
        }
        Ok(())
    }

    /// Asks for instance `id` to be reconciled soon.
    pub fn wake(&self, instance_id: &str) {
        self.inner.wake(instance_id);
    }

    /// Asks for every instance to be reconciled soon (after a change that
    /// touches several, such as deleting an agent).
    pub fn resync(&self) {
        let inner = self.inner.clone();
        self.inner.spawn(async move { inner.resync_all().await });
    }

    /// Live log lines of instance `id` from now on.
    pub fn subscribe_logs(&self, instance_id: &str) -> broadcast::Receiver<Arc<LiveLine>> {
        self.inner.state(instance_id).logs.subscribe()
    }

    /// The replicas this controller runs now (the live ones of every
    /// instance): what its server reports as its node's.
    pub fn replica_count(&self) -> usize {
        let states: Vec<Arc<InstanceState>> =
            lock(&self.inner.instances).values().cloned().collect();
        states
            .iter()
            .map(|state| {
                lock(&state.tracked)
                    .replicas
                    .values()
                    .filter(|replica| replica.phase.is_live())
                    .count()
            })
            .sum()
    }

    /// What the egress proxy asks on every request: the policy of the
    /// replica at an address.
    pub fn egress_policies(&self) -> Arc<dyn hangar_egress::Policies> {
        Arc::new(egress::LivePolicies(Arc::downgrade(&self.inner)))
    }

    /// Takes what the egress proxy reports: a denial goes to the agent's
    /// log and its count, bytes to its count.
    pub async fn report_egress(&self, event: hangar_egress::EgressEvent) {
        egress::report(&self.inner, event).await;
    }

    /// The running replicas of an instance and their figures.
    pub fn metrics(&self, instance_id: &str) -> InstanceMetrics {
        let Some(state) = lock(&self.inner.instances).get(instance_id).cloned() else {
            return InstanceMetrics::default();
        };
        let tracked = lock(&state.tracked);
        let mut metrics = InstanceMetrics {
            requests_total: state.traffic.requests_total.load(Ordering::Relaxed),
            egress_denied_total: state.egress_denied.load(Ordering::Relaxed),
            egress_bytes_total: state.egress_bytes.load(Ordering::Relaxed),
            ..InstanceMetrics::default()
        };
        let mut times = Vec::new();
        for replica in tracked.replicas.values().filter(|r| r.phase.is_running()) {
            let stats = replica.last_stats.unwrap_or_default();
            let view = ReplicaView {
                id: replica.info.id.clone(),
                ready: replica.phase.serves(),
                uptime_seconds: replica.started.elapsed().as_secs(),
                response_time_ms: replica.response_time_ms,
                cpu_percent: replica.cpu_percent,
                memory_bytes: stats.memory_bytes,
                rx_bytes: stats.rx_bytes,
                tx_bytes: stats.tx_bytes,
            };
            metrics.uptime_seconds = metrics.uptime_seconds.max(view.uptime_seconds);
            metrics.cpu_usage_percent += view.cpu_percent;
            metrics.memory_usage_mb += stats.memory_bytes as f64 / (1024.0 * 1024.0);
            metrics.network_rx_bytes += stats.rx_bytes;
            metrics.network_tx_bytes += stats.tx_bytes;
            times.extend(view.response_time_ms);
            metrics.last_check = metrics.last_check.max(replica.last_check);
            metrics.replicas.push(view);
        }
        if !times.is_empty() {
            metrics.response_time_ms = Some(times.iter().sum::<u64>() / times.len() as u64);
        }
        if tracked.health_checks > 0 {
            let share = tracked.health_passes as f64 * 100.0 / tracked.health_checks as f64;
            metrics.uptime_percent = Some((share * 100.0).round() / 100.0);
        }
        metrics.cpu_usage_percent = (metrics.cpu_usage_percent * 10.0).round() / 10.0;
        metrics.memory_usage_mb = (metrics.memory_usage_mb * 10.0).round() / 10.0;
        metrics
    }

    /// The ready replicas of an instance and where they answer HTTP: the
    /// gateway's rotation.
    pub fn ready_replicas(&self, instance_id: &str) -> Vec<(String, std::net::SocketAddr)> {
        self.targets(instance_id)
            .into_iter()
            .map(|t| (t.replica_id, t.address))
            .collect()
    }

    /// The gateway's rotation with each replica's count of requests in
    /// flight (which the gateway keeps, and scale-down waits on).
    pub fn targets(&self, instance_id: &str) -> Vec<Target> {
        let Some(state) = lock(&self.inner.instances).get(instance_id).cloned() else {
            return Vec::new();
        };
        let tracked = lock(&state.tracked);
        tracked
            .replicas
            .values()
            .filter(|r| r.phase.serves())
            .filter_map(|r| {
                r.info.address.map(|address| Target {
                    replica_id: r.info.id.clone(),
                    address,
                    load: r.load.clone(),
                })
            })
            .collect()
    }

    /// This process's invocations of the instance within `window` (zeros
    /// for one this controller has not seen): what Prometheus scrapes of
    /// this server. The cluster's are [`Controller::request_stats`].
    pub fn local_request_stats(&self, instance_id: &str, window: Duration) -> scale::RequestStats {
        lock(&self.inner.instances)
            .get(instance_id)
            .map(|state| state.traffic.stats(window))
            .unwrap_or_default()
    }

    /// The instance's traffic counters, for the gateway to keep.
    pub fn traffic(&self, instance_id: &str) -> Arc<Traffic> {
        self.inner.state(instance_id).traffic.clone()
    }

    /// A request found no ready replica: an instance scaled to zero gets one
    /// (within its bounds) and is reconciled now. Returns whether a replica
    /// may come: false for an instance whose bounds allow none.
    pub fn activate(&self, instance_id: &str) -> bool {
        let state = self.inner.state(instance_id);
        let (allowed, woken) = {
            let mut tracked = lock(&state.tracked);
            // Stopped, backing off after a failure, or bounded to nothing:
            // no replica is coming soon, and the request should hear so now.
            // Once a backoff has passed, a request may wake it again.
            let backing_off = tracked
                .memory
                .next_start
                .is_some_and(|at| at > tokio::time::Instant::now());
            // Not reconciled here as this node's (it is taking the instance
            // over, or a request came first, or another node ran it when
            // last looked at): a reconcile is asked for, and the request
            // waits for what it decides.
            let unknown = tracked.bounds.is_none();
            let allowed = unknown
                || (tracked.serving && !backing_off && tracked.bounds.is_some_and(|b| b.max > 0));
            let woken = allowed && tracked.autoscale.scale == Some(0);
            if woken {
                tracked.autoscale.scale = Some(1);
                tracked.autoscale.recommendations.clear();
            }
            (allowed, woken.then(|| tracked.owner.clone()).flatten())
        };
        self.wake(instance_id);
        if let Some(owner) = woken {
            // Told like any other scale event, off the request's path.
            let (inner, state) = (self.inner.clone(), state.clone());
            self.inner.spawn(async move {
                let why = "a request arrived";
                tell::system_log(
                    &inner,
                    &state,
                    "hangar",
                    hangar_core::logs::LogLevel::Info,
                    format!("[hangar] scaled from 0 to 1 replicas: {why}"),
                )
                .await;
                tell::emit(
                    &inner,
                    &owner,
                    "agent.scaled",
                    serde_json::json!({"from": 0, "to": 1, "reason": why}),
                )
                .await;
            });
        }
        allowed
    }

    /// Waits until the instance has a ready replica (an HTTP one in the
    /// rotation, or a stdin one running), or `deadline`, or a reconcile
    /// finds that none is coming (stopped, or run by another node). True if
    /// it has one.
    pub async fn wait_ready(&self, instance_id: &str, deadline: tokio::time::Instant) -> bool {
        let state = self.inner.state(instance_id);
        let since = state.reconciled.load(Ordering::SeqCst);
        let coming = || {
            let tracked = lock(&state.tracked);
            tracked.serving && !tracked.elsewhere && tracked.bounds.is_some_and(|b| b.max > 0)
        };
        let serves = || {
            lock(&state.tracked)
                .replicas
                .values()
                .any(|r| r.phase.serves())
        };
        loop {
            let notified = state.became_ready.notified();
            if serves() {
                return true;
            }
            if state.reconciled.load(Ordering::SeqCst) > since && !coming() {
                return false;
            }
            // The notification, or a look every 100 ms (a replica may have
            // become ready between the check and the wait).
            let next = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(next) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return serves();
            }
        }
    }

    /// A running replica of the instance (ready ones first).
    fn pick(&self, instance_id: &str) -> Result<String, ControlError> {
        let state = lock(&self.inner.instances).get(instance_id).cloned();
        let Some(state) = state else {
            return Err(ControlError::NotRunning(instance_id.to_owned()));
        };
        let tracked = lock(&state.tracked);
        tracked
            .replicas
            .values()
            .filter(|r| r.phase.is_live())
            .max_by_key(|r| (r.phase.serves(), std::cmp::Reverse(r.started)))
            .map(|r| r.info.id.clone())
            .ok_or_else(|| ControlError::NotRunning(instance_id.to_owned()))
    }

    /// A running replica of the instance; one scaled to zero is started
    /// first (a cold start, waited for up to [`ACTIVATION_WAIT`]).
    async fn pick_or_activate(&self, instance_id: &str) -> Result<String, ControlError> {
        match self.pick(instance_id) {
            Err(ControlError::NotRunning(_)) if self.activate(instance_id) => {
                let deadline = tokio::time::Instant::now() + ACTIVATION_WAIT;
                self.wait_ready(instance_id, deadline).await;
                self.pick(instance_id)
            }
            picked => picked,
        }
    }

    /// Stops one replica of an instance now (a caller ending a session with
    /// `kill`: its replica holds the session's state). It leaves the
    /// rotation at once and is stopped within the stop grace; its end is
    /// expected, not a crash, so the reconcile that follows removes it and
    /// starts another to keep the instance's scale. `Ok(false)` when this
    /// controller runs no such replica (already gone counts as done).
    pub async fn stop_replica(
        &self,
        instance_id: &str,
        replica_id: &str,
    ) -> Result<bool, ControlError> {
        let Some(state) = lock(&self.inner.instances).get(instance_id).cloned() else {
            return Ok(false);
        };
        {
            let mut tracked = lock(&state.tracked);
            let Some(replica) = tracked.replicas.get_mut(replica_id) else {
                return Ok(false);
            };
            replica.stopping();
        }
        let stopped = self
            .inner
            .driver
            .stop(replica_id, self.inner.config.stop_grace)
            .await;
        match stopped {
            Ok(exit) => {
                if let Some(replica) = lock(&state.tracked).replicas.get_mut(replica_id) {
                    replica.ended(exit);
                }
            }
            Err(DriverError::NotFound(_) | DriverError::NotRunning(_)) => {}
            Err(err) => return Err(driver_error(instance_id, err)),
        }
        self.wake(instance_id);
        Ok(true)
    }

    /// Runs `argv` in a running replica of the instance.
    pub async fn exec(
        &self,
        instance_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, ControlError> {
        let replica = self.pick_or_activate(instance_id).await?;
        self.inner
            .driver
            .exec(&replica, argv, &[], timeout)
            .await
            .map_err(|err| driver_error(instance_id, err))
    }

    /// Writes `input` to a running replica's stdin and returns its answer
    /// (see [`Driver::stdin`]).
    pub async fn stdin(
        &self,
        instance_id: &str,
        input: &[u8],
        wait: StdinWait,
    ) -> Result<String, ControlError> {
        let replica = self.pick_or_activate(instance_id).await?;
        self.inner
            .driver
            .stdin(&replica, input, wait)
            .await
            .map_err(|err| driver_error(instance_id, err))
    }
}

fn driver_error(instance_id: &str, err: DriverError) -> ControlError {
    match err {
        DriverError::NotFound(_) | DriverError::NotRunning(_) => {
            ControlError::NotRunning(instance_id.to_owned())
        }
        DriverError::NoStdin(_) => ControlError::NoStdin(instance_id.to_owned()),
        DriverError::Invalid(message) => ControlError::Invalid(message),
        DriverError::Failed(message) => ControlError::Driver(message),
    }
}

impl Inner {
    pub(crate) fn state(&self, instance_id: &str) -> Arc<InstanceState> {
        lock(&self.instances)
            .entry(instance_id.to_owned())
            .or_insert_with(|| {
                Arc::new(InstanceState {
                    id: instance_id.to_owned(),
                    dirty: AtomicBool::new(false),
                    busy: AtomicBool::new(false),
                    logs: broadcast::channel(LIVE_LOG_LINES).0,
                    tracked: Mutex::new(Tracked::default()),
                    traffic: Arc::new(Traffic::new(self.epoch)),
                    became_ready: tokio::sync::Notify::new(),
                    reconciled: AtomicU64::new(0),
                    egress_denied: AtomicU64::new(0),
                    egress_bytes: AtomicU64::new(0),
                })
            })
            .clone()
    }

    pub(crate) fn forget(&self, instance_id: &str) {
        lock(&self.instances).remove(instance_id);
    }

    pub(crate) fn wake(&self, instance_id: &str) {
        let _ = self.work.send(Work::Wake(instance_id.to_owned()));
    }

    /// Spawns one of the controller's tasks: tracked, and ended when the
    /// server shuts down.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = task => {}
            }
        })
    }

    pub(crate) async fn resync_all(self: &Arc<Self>) {
        let mut ids: Vec<String> = lock(&self.instances).keys().cloned().collect();
        match self.store.controlled_instances().await {
            Ok(instances) => ids.extend(instances.into_iter().map(|c| c.instance.id)),
            Err(err) => tracing::warn!(error = %err, "cannot list instances to resync"),
        }
        ids.sort();
        ids.dedup();
        // Another node's instances are left to it, but for replicas of them
        // this node still has (they are removed by the reconcile).
        let elsewhere = leases::run_elsewhere(self).await;
        ids.retain(|id| {
            !elsewhere.contains(id)
                || lock(&self.instances)
                    .get(id)
                    .is_some_and(|state| !lock(&state.tracked).replicas.is_empty())
        });
        for id in ids {
            self.schedule(&id);
        }
    }
}
