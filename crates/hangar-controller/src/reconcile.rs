//! One reconcile of one instance, in kube-runtime's shape: read what the
//! store wants, [`plan`](crate::plan::plan) (pure), [`apply`] the plan, and
//! answer an [`Action`]: when to look again. Failures are
//! [`ReconcileError`]s, which the work queue ([`crate::queue`]) retries with
//! a backoff and shows on the instance.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hangar_core::id::{new_id, IdKind};
use hangar_core::kubernetes::KubernetesCloudConfig;
use hangar_core::logs::LogLevel;
use hangar_core::model::DriverKind;
use hangar_core::spec::Source;
use hangar_core::status::{BuildStatus, DesiredState, InstanceStatus};
use hangar_runtime::driver::RegistryAuth;
use hangar_store::ControlledInstance;
use tokio::time::Instant;

use crate::egress;
use crate::error::ReconcileError;
use crate::plan::{self, Build, Desired, Plan, Policy, Status};
use crate::replica::{Phase, Replica};
use crate::scale::Bounds;
use crate::tell::{emit, system_log, Owner};
use crate::{launch, lock, tasks, Inner, InstanceState};

/// What a reconcile asks of the work queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Reconcile again after this long (a backoff ends, a start deadline
    /// comes), or sooner on a change.
    Requeue(Duration),
    /// Nothing is due: reconcile again on the next change (or resync).
    AwaitChange,
}

/// How long a stopped replica's remaining output may take to be read.
const DRAIN_WAIT: Duration = Duration::from_secs(3);

pub(crate) async fn reconcile(
    inner: &Arc<Inner>,
    state: &Arc<InstanceState>,
) -> Result<Action, ReconcileError> {
    let Some(controlled) = inner.store.controlled_instance(&state.id).await? else {
        // Reaped, or never existed: nothing of it may run.
        let ids: Vec<String> = lock(&state.tracked).replicas.keys().cloned().collect();
        for id in ids {
            remove(inner, state, &id).await?;
        }
        inner.forget(&state.id);
        inner.leases.forget(&state.id);
        return Ok(Action::AwaitChange);
    };
    if lock(&inner.handing_over).contains(&state.id) {
        // Its replicas here serve until its new node runs it (a drain).
        return Ok(Action::AwaitChange);
    }
    let Some(acquired) = own(inner, state).await? else {
        return Ok(Action::AwaitChange);
    };
    let instance = &controlled.instance;
    let running = !controlled.deleted && instance.desired_state == DesiredState::Running;
    if acquired && running && instance.status == InstanceStatus::Running {
        lock(&state.tracked).memory.taken_over = true;
    }
    let ready_build = match (&controlled.build_status, &controlled.artifact) {
        (BuildStatus::Ready, Some(artifact)) => {
            Some((artifact.clone(), launch::generation(instance, artifact)))
        }
        _ => None,
    };
    let build = match (&ready_build, controlled.build_status) {
        (Some((_, generation)), _) => Build::Ready {
            generation: generation.clone(),
        },
        (None, BuildStatus::Failed) => Build::Failed,
        (None, status) => Build::Waiting(status),
    };
    let policy = Policy {
        stop_grace: inner.config.stop_grace,
        backoff_base: inner.config.backoff_base,
        backoff_max: inner.config.backoff_max,
        backoff_reset: inner.config.backoff_reset,
        liveness_failures: instance
            .config
            .liveness_failures
            .unwrap_or(inner.config.health_failures),
        start_timeout: instance
            .config
            .start_timeout_seconds
            .map_or(inner.config.startup_deadline, |s| {
                Duration::from_secs(u64::from(s))
            }),
    };
    // The proxy's view of the instance follows its policy at once; one that
    // cannot be worked out now (a secret unreadable) keeps the last.
    match egress::rules(inner, instance).await {
        Ok(rules) => lock(&state.tracked).egress = rules.map(Arc::new),
        Err(err) => {
            tracing::warn!(instance = %instance.id, error = %err, "the egress rules are not updated")
        }
    }
    // Read before the lock: scale-down keeps the replicas that serve
    // sessions. A store that cannot say costs that preference, not the
    // reconcile.
    let sessions = inner
        .store
        .sessions_per_replica(&instance.id)
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(instance = %instance.id, error = %err, "cannot read the instance's sessions");
            std::collections::HashMap::new()
        });
    let plan = {
        let bounds = Bounds::of(&controlled);
        let mut tracked = lock(&state.tracked);
        tracked.serving = running;
        tracked.elsewhere = false;
        tracked.bounds = Some(bounds);
        tracked.owner = Some(Owner::of(&controlled));
        tracked.liveness_failures = Some(policy.liveness_failures);
        let live = u32::try_from(
            tracked
                .replicas
                .values()
                .filter(|r| r.phase.is_live())
                .count(),
        )
        .unwrap_or(u32::MAX);
        // First look (or after a restart of the server): what runs, within
        // the bounds; nothing running: the initial count.
        let scale = tracked
            .autoscale
            .scale
            .unwrap_or(if live > 0 { live } else { bounds.initial })
            .clamp(bounds.min, bounds.max);
        tracked.autoscale.scale = Some(scale);
        // What the store shows, until this server records a status: a
        // failure before then still has a status to show its reason on.
        tracked.last_status.get_or_insert_with(|| Status {
            status: instance.status,
            reason: instance.status_reason.clone(),
            ready: instance.ready_replicas,
        });
        let stored_restarts = instance.restart_count;
        let memory = &mut tracked.memory;
        memory.restart_count = memory.restart_count.max(stored_restarts);
        let desired = Desired {
            running,
            deleted: controlled.deleted,
            force_stop: controlled.force_stop,
            build_id: instance.build_id.clone(),
            build,
            scale,
            is_default: controlled.agent_scaling.is_some(),
            sessions,
        };
        plan::plan(
            &tracked.replicas,
            &desired,
            &tracked.memory,
            &policy,
            Instant::now(),
        )
    };
    apply(inner, state, &controlled, ready_build, plan).await
}

/// Whether this node may act on the instance now: `Some(false)` when it
/// holds the lease, renewed here at the generation it holds (the fencing
/// check before any effect), `Some(true)` when it has just acquired it.
/// When another node runs the instance (`None`), this node's replicas of it
/// (if any) are stopped and forgotten.
async fn own(
    inner: &Arc<Inner>,
    state: &Arc<InstanceState>,
) -> Result<Option<bool>, ReconcileError> {
    let leases = &inner.leases;
    let sent = Instant::now();
    if let Some(generation) = leases.generation(&state.id) {
        let held = inner
            .store
            .renew_instance_lease(&state.id, &leases.node, generation, leases.terms.duration)
            .await?;
        if held {
            leases.written(&state.id, generation, sent);
            return Ok(Some(false));
        }
        tracing::warn!(instance = %state.id, generation, "another node took this instance over");
        leases.lost(&state.id, generation);
    }
    if inner.draining.load(std::sync::atomic::Ordering::SeqCst) {
        // A drained node takes nothing.
        let_go(inner, state).await?;
        return Ok(None);
    }
    let sent = Instant::now();
    match inner
        .store
        .acquire_instance_lease(&state.id, &leases.node, leases.terms)
        .await?
    {
        Some(generation) => {
            leases.written(&state.id, generation, sent);
            tracing::info!(instance = %state.id, generation, "this node runs the instance now");
            Ok(Some(true))
        }
        None => {
            let_go(inner, state).await?;
            Ok(None)
        }
    }
}

/// Stops and removes this node's replicas of an instance another node
/// runs (left from before it lost the lease, or from before a restart),
/// and forgets what it knew of the instance.
async fn let_go(inner: &Arc<Inner>, state: &Arc<InstanceState>) -> Result<(), ReconcileError> {
    let ids: Vec<String> = lock(&state.tracked).replicas.keys().cloned().collect();
    if !ids.is_empty() {
        tracing::warn!(instance = %state.id, replicas = ids.len(),
            "another node runs this instance: stopping this node's replicas of it");
        // Requests in flight on them finish first.
        stop_all(inner, state, &ids, inner.config.stop_grace, true).await?;
    }
    let mut tracked = lock(&state.tracked);
    if tracked.serving || tracked.last_status.is_some() {
        *tracked = crate::Tracked::default();
    }
    tracked.elsewhere = true;
    Ok(())
}

/// Fails the reconcile when this node may no longer act on the instance:
/// checked before every effect of a plan.
fn still_held(inner: &Inner, state: &InstanceState) -> Result<(), ReconcileError> {
    match inner.leases.holds(&state.id) {
        Some(_) => Ok(()),
        None => Err(ReconcileError::LeaseLapsed),
    }
}

/// Carries a plan out: tells what happened, removes, stops, creates,
/// records the status, announces.
async fn apply(
    inner: &Arc<Inner>,
    state: &Arc<InstanceState>,
    controlled: &ControlledInstance,
    build: Option<(String, String)>,
    plan: Plan,
) -> Result<Action, ReconcileError> {
    still_held(inner, state)?;
    {
        let mut tracked = lock(&state.tracked);
        tracked.memory = plan.memory.clone();
        // Told once: a retry after a failed removal only removes.
        for id in &plan.remove {
            if let Some(replica) = tracked.replicas.get_mut(id) {
                if let Phase::Exited { exit, .. } = replica.phase {
                    replica.phase = Phase::Exited {
                        exit,
                        expected: true,
                    };
                }
            }
        }
    }
    let owner = Owner::of(controlled);
    for note in plan.notes {
        system_log(inner, state, &note.replica, note.level, note.message).await;
    }
    for event in plan.events {
        emit(inner, &owner, event.kind, event.data).await;
    }
    for id in &plan.remove {
        wait_drained(state, id).await;
        remove(inner, state, id).await?;
    }
    let stopping = plan.status.status == InstanceStatus::Stopping;
    still_held(inner, state)?;
    if stopping {
        write_status(inner, state, controlled, plan.status.clone()).await?;
    }
    let mut groups: BTreeMap<(Duration, bool), Vec<String>> = BTreeMap::new();
    for stop in &plan.stop {
        let drains = stop.why.drains() && !stop.grace.is_zero();
        groups
            .entry((stop.grace, drains))
            .or_default()
            .push(stop.id.clone());
    }
    for ((grace, drains), ids) in groups {
        still_held(inner, state)?;
        stop_all(inner, state, &ids, grace, drains).await?;
    }
    if let Some((artifact, generation)) = build.filter(|_| plan.create > 0) {
        for _ in 0..plan.create {
            still_held(inner, state)?;
            if let Err(err) = create(inner, state, controlled, &artifact, &generation).await {
                let delay = {
                    let mut tracked = lock(&state.tracked);
                    tracked.memory.failed(
                        inner.config.backoff_base,
                        inner.config.backoff_max,
                        Instant::now(),
                        format!("cannot start a replica: {err}"),
                    )
                };
                system_log(
                    inner,
                    state,
                    "hangar",
                    LogLevel::Error,
                    format!(
                        "[hangar] cannot start a replica: {err}; trying again in {:.1}s",
                        delay.as_secs_f64()
                    ),
                )
                .await;
                // Planned again at once: the status tells the failure.
                return Ok(Action::Requeue(Duration::ZERO));
            }
        }
    }
    if !stopping {
        still_held(inner, state)?;
        write_status(inner, state, controlled, plan.status).await?;
    }
    if plan.deployed {
        let build_id = &controlled.instance.build_id;
        if inner
            .store
            .record_deployed(&controlled.instance.id, build_id)
            .await?
            .is_some()
        {
            tracing::info!(instance = %state.id, build = %build_id, "agent.deployed");
        }
        lock(&state.tracked).memory.announced_build = Some(build_id.clone());
    }
    if plan.reap {
        inner.store.mark_instance_reaped(&state.id).await?;
        inner.forget(&state.id);
        inner.leases.forget(&state.id);
        lock(&inner.untrimmed).remove(&state.id);
        return Ok(Action::AwaitChange);
    }
    Ok(plan.requeue.map_or(Action::AwaitChange, Action::Requeue))
}

async fn create(
    inner: &Arc<Inner>,
    state: &Arc<InstanceState>,
    controlled: &ControlledInstance,
    artifact: &str,
    generation: &str,
) -> Result<(), String> {
    let replica_id = new_id(IdKind::Replica);
    let instance = with_secrets(inner, &controlled.instance).await?;
    let cloud = controlled
        .cloud
        .as_ref()
        .map(|(id, driver)| (id.as_str(), *driver));
    let artifact = launch::local_artifact(inner.config.artifacts.as_deref(), artifact).await?;
    let mut spec = launch::replica_spec(&instance, &artifact, &replica_id, generation, cloud)?;
    if let Some((cloud_id, DriverKind::Kubernetes)) = cloud {
        spec.image_auth = pull_auth(inner, &instance, cloud_id, spec.image.as_deref()).await?;
    }
    spec.network = launch::network_policy(&instance, &inner.config.default_egress);
    egress::prepare(inner, state, &instance, &mut spec).await?;
    // The driver's create and the tracking of what it made run as a task of
    // their own that a stop does not cut off (the controller's stop waits
    // for it): a reconcile dropped mid-create would otherwise leave a
    // replica that exists (a pod and its Secret, a sandbox) but that no one
    // tracks, so a clean stop's hand-over would not stop it and the node
    // taking the instance over would never know of it.
    let made = inner.tasks.spawn({
        let inner = inner.clone();
        let state = state.clone();
        let generation = generation.to_owned();
        async move {
            let info = inner
                .driver
                .create(&spec)
                .await
                .map_err(|err| err.to_string())?;
            tracing::info!(instance = %state.id, replica = %replica_id, "replica started");
            let mut replica = Replica::new(info, generation);
            if spec.port.is_none() {
                // Nothing to check: a stdin replica is ready once it runs.
                replica.passed_check(0);
                replica.response_time_ms = None;
            }
            let ready = replica.phase.serves();
            lock(&state.tracked)
                .replicas
                .insert(replica_id.clone(), replica);
            if ready {
                state.became_ready.notify_waiters();
            }
            tasks::spawn_replica_tasks(&inner, &state, &replica_id);
            Ok(())
        }
    });
    made.await
        .map_err(|err| format!("the replica's start ended abruptly: {err}"))?
}

/// The credentials a cluster pulls `image` with: the `docker` source's own
/// (for its registry), else the kubernetes cloud's registry credentials
/// (for the images Hangar pushed there); `None` when neither applies.
async fn pull_auth(
    inner: &Inner,
    instance: &hangar_core::model::Instance,
    cloud_id: &str,
    image: Option<&str>,
) -> Result<Option<RegistryAuth>, String> {
    let Some(image) = image else {
        return Ok(None);
    };
    let server = launch::registry_of(image);
    let org = &instance.organization_id;
    let store_failed = |err: hangar_store::StoreError| {
        tracing::warn!(instance = %instance.id, error = %err, "cannot read what a pull needs");
        "cannot read the image's pull credentials (the store failed; the server's log says why)"
            .to_owned()
    };
    let build = inner
        .store
        .get_build(org, &instance.build_id)
        .await
        .map_err(store_failed)?;
    let mut credentials = match build.map(|b| b.source) {
        Some(Source::Docker {
            credentials: Some(credentials),
            ..
        }) => Some((credentials.username, credentials.password)),
        _ => None,
    };
    if credentials.is_none() {
        let cloud = inner
            .store
            .get_cloud(org, cloud_id)
            .await
            .map_err(store_failed)?;
        let config = cloud
            .map(|c| KubernetesCloudConfig::parse(&c.config))
            .transpose()
            .map_err(|err| format!("the cloud's config is unusable: {err}"))?;
        if let Some(config) = config.filter(|c| c.registry_host() == Some(server.as_str())) {
            credentials = config
                .registry_credentials
                .map(|c| (c.username, c.password));
        }
    }
    let Some((username, password)) = credentials else {
        return Ok(None);
    };
    let names = hangar_core::validate::secret_refs(&password).unwrap_or_default();
    let secrets = reveal_secrets(inner, instance, names).await?;
    let password = launch::resolve_secrets(&password, &secrets)?;
    Ok(Some(RegistryAuth {
        server,
        username,
        password,
    }))
}

/// `instance` with `${secrets.NAME}` in its environment resolved from its
/// organization's secrets, each read once. The values exist only in the
/// replica's spec: the stored instance keeps the references, and the API
/// shows them masked. A secret that does not exist fails the start, naming
/// it (the instance then backs off and says why, as after a crash).
async fn with_secrets(
    inner: &Inner,
    instance: &hangar_core::model::Instance,
) -> Result<hangar_core::model::Instance, String> {
    let names: Vec<&str> = instance
        .env_vars
        .values()
        .flat_map(|v| hangar_core::validate::secret_refs(v).unwrap_or_default())
        .collect();
    if names.is_empty() {
        return Ok(instance.clone());
    }
    let secrets = reveal_secrets(inner, instance, names).await?;
    let mut resolved = instance.clone();
    for value in resolved.env_vars.values_mut() {
        *value = launch::resolve_secrets(value, &secrets)?;
    }
    Ok(resolved)
}

/// The values of the organization's secrets `names` (those it has).
pub(crate) async fn reveal_secrets(
    inner: &Inner,
    instance: &hangar_core::model::Instance,
    mut names: Vec<&str>,
) -> Result<BTreeMap<String, String>, String> {
    names.sort_unstable();
    names.dedup();
    let mut secrets = BTreeMap::new();
    for name in names {
        let value = inner
            .store
            .reveal_secret(&instance.organization_id, name)
            .await
            .map_err(|err| {
                tracing::warn!(instance = %instance.id, secret = %name, error = %err, "cannot read a secret");
                format!("cannot read the secret {name} (the store failed; the server's log says why)")
            })?;
        if let Some(value) = value {
            secrets.insert(name.to_owned(), value);
        }
    }
    Ok(secrets)
}

/// Takes the replicas out of the rotation, waits for their requests in
/// flight (when `drains`), stops them and removes them.
async fn stop_all(
    inner: &Arc<Inner>,
    state: &Arc<InstanceState>,
    ids: &[String],
    grace: Duration,
    drains: bool,
) -> Result<(), ReconcileError> {
    {
        let mut tracked = lock(&state.tracked);
        for id in ids {
            if let Some(replica) = tracked.replicas.get_mut(id) {
                replica.stopping();
            }
        }
    }
    if drains {
        drain(inner, state, ids).await;
    }
    let mut stops = tokio::task::JoinSet::new();
    for id in ids {
        let driver = inner.driver.clone();
        let id = id.clone();
        stops.spawn(async move {
            if let Err(err) = driver.stop(&id, grace).await {
                tracing::warn!(replica = %id, error = %err, "stop failed; removing anyway");
            }
            id
        });
    }
    let mut failed = None;
    while let Some(done) = stops.join_next().await {
        if let Ok(id) = done {
            wait_drained(state, &id).await;
            if let Err(err) = remove(inner, state, &id).await {
                failed.get_or_insert(err);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Waits until the gateway has no request in flight on these replicas (out
/// of the rotation already), or the drain timeout.
async fn drain(inner: &Inner, state: &InstanceState, ids: &[String]) {
    let loads: Vec<_> = {
        let tracked = lock(&state.tracked);
        ids.iter()
            .filter_map(|id| tracked.replicas.get(id))
            .filter(|r| r.phase.is_running())
            .map(|r| r.load.clone())
            .collect()
    };
    let deadline = Instant::now() + inner.config.drain_timeout;
    while loads
        .iter()
        .any(|l| l.load(std::sync::atomic::Ordering::Relaxed) > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (a little) until the replica's output has been stored to the end.
async fn wait_drained(state: &InstanceState, id: &str) {
    let deadline = Instant::now() + DRAIN_WAIT;
    while Instant::now() < deadline {
        let drained = lock(&state.tracked)
            .replicas
            .get(id)
            .is_none_or(|r| r.drained);
        if drained {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Removes a replica from the driver and from tracking.
async fn remove(
    inner: &Arc<Inner>,
    state: &Arc<InstanceState>,
    id: &str,
) -> Result<(), ReconcileError> {
    inner
        .driver
        .remove(id)
        .await
        .map_err(|source| ReconcileError::Remove {
            replica: id.to_owned(),
            source,
        })?;
    lock(&state.tracked).replicas.remove(id);
    if let Err(err) = inner.store.forget_replica_log_cursor(id).await {
        tracing::warn!(replica = %id, error = %err, "cannot forget the log cursor");
    }
    Ok(())
}

/// Records the status (and tells a change of it) unless the store has it.
async fn write_status(
    inner: &Inner,
    state: &InstanceState,
    controlled: &ControlledInstance,
    status: Status,
) -> Result<(), ReconcileError> {
    let restart_count = lock(&state.tracked).memory.restart_count;
    let stored = &controlled.instance;
    let unchanged_in_store = stored.status == status.status
        && stored.status_reason == status.reason
        && stored.ready_replicas == status.ready
        && stored.restart_count == restart_count;
    if !unchanged_in_store {
        inner
            .store
            .record_instance_status(
                &state.id,
                status.status,
                status.reason.as_deref(),
                status.ready,
                restart_count,
            )
            .await?;
        if stored.status != status.status {
            status_event(inner, controlled, status.status, status.reason.clone()).await;
        }
    }
    lock(&state.tracked).last_status = Some(status);
    Ok(())
}

/// Shows why reconciling the instance fails, in its `status_reason` (the
/// status itself stays what was last recorded). Best effort: when the
/// store is what fails, this fails too, and the server's log has it.
pub(crate) async fn record_failure(
    inner: &Inner,
    state: &InstanceState,
    err: &ReconcileError,
    retry_in: Duration,
) {
    // Only the instance's node speaks for it.
    if inner.leases.holds(&state.id).is_none() {
        return;
    }
    let (last, restart_count) = {
        let tracked = lock(&state.tracked);
        (tracked.last_status.clone(), tracked.memory.restart_count)
    };
    let Some(last) = last else {
        return;
    };
    let reason = format!(
        "reconcile failed: {}; retrying in {:.1}s",
        err.reason(),
        retry_in.as_secs_f64()
    );
    if let Err(err) = inner
        .store
        .record_instance_status(
            &state.id,
            last.status,
            Some(&reason),
            last.ready,
            restart_count,
        )
        .await
    {
        tracing::debug!(instance = %state.id, error = %err, "cannot record the reconcile failure");
    }
}

/// The events of a status change: `instance.started` (running),
/// `instance.stopped`, `agent.failed` (error, with the reason).
async fn status_event(
    inner: &Inner,
    controlled: &ControlledInstance,
    status: InstanceStatus,
    reason: Option<String>,
) {
    let owner = Owner::of(controlled);
    let previous = controlled.instance.status.to_string();
    let data = serde_json::json!({"status": status, "previous_status": previous, "reason": reason});
    match status {
        InstanceStatus::Running => emit(inner, &owner, "instance.started", data).await,
        InstanceStatus::Stopped => emit(inner, &owner, "instance.stopped", data).await,
        InstanceStatus::Error => emit(inner, &owner, "agent.failed", data).await,
        InstanceStatus::Starting | InstanceStatus::Stopping => {}
    }
}
