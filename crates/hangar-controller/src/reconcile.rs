//! One reconcile of one instance (see the crate docs for the steps).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_core::id::{new_id, IdKind};
use hangar_core::logs::{LogLevel, NewLogLine, Stream};
use hangar_core::status::{BuildStatus, DesiredState, InstanceStatus};
use hangar_store::ControlledInstance;

use crate::scale::Bounds;
use crate::{launch, lock, tasks, Inner, InstanceState, Replica};

/// What the controller last wrote of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    pub status: InstanceStatus,
    pub reason: Option<String>,
    pub ready: u32,
    pub restart_count: u32,
}

/// How long a stopped replica's remaining output may take to be read.
const DRAIN_WAIT: Duration = Duration::from_secs(3);

pub(crate) async fn reconcile(
    inner: &Arc<Inner>,
    state: &Arc<InstanceState>,
) -> Result<(), String> {
    let controlled = inner
        .store
        .controlled_instance(&state.id)
        .await
        .map_err(|err| err.to_string())?;
    let Some(controlled) = controlled else {
        // Reaped, or never existed: nothing of it may run.
        let ids: Vec<String> = lock(&state.tracked).replicas.keys().cloned().collect();
        for id in ids {
            remove(inner, state, &id).await;
        }
        if lock(&state.tracked).replicas.is_empty() {
            inner.forget(&state.id);
        }
        return Ok(());
    };
    let instance = &controlled.instance;
    let mut restart_count = lock(&state.tracked)
        .last_status
        .as_ref()
        .map_or(instance.restart_count, |o| {
            o.restart_count.max(instance.restart_count)
        });

    // 1. Replicas that have ended.
    let ended: Vec<(String, hangar_runtime::driver::Exit, bool, Duration)> = {
        let tracked = lock(&state.tracked);
        tracked
            .replicas
            .values()
            .filter_map(|r| {
                r.info
                    .exit
                    .map(|exit| (r.info.id.clone(), exit, r.stopping, r.started.elapsed()))
            })
            .collect()
    };
    let want_running = !controlled.deleted && instance.desired_state == DesiredState::Running;
    lock(&state.tracked).serving = want_running;
    for (id, exit, stopping, ran) in ended {
        wait_drained(state, &id).await;
        if !stopping {
            if ran >= inner.config.backoff_reset {
                lock(&state.tracked).crash_streak = 0;
            }
            let delay = back_off(inner, state, format!("replica {id} {}", exit.describe()));
            emit(
                inner,
                &Owner::of(&controlled),
                "instance.crashed",
                serde_json::json!({
                    "replica_id": id,
                    "exit_code": exit.code,
                    "signal": exit.signal,
                    "oom_killed": exit.oom_killed,
                    "reason": exit.describe(),
                    "restarting": want_running,
                }),
            )
            .await;
            restart_count += 1;
            let message = if want_running {
                format!(
                    "[hangar] replica {id} {}; restarting in {:.1}s (restart {restart_count})",
                    exit.describe(),
                    delay.as_secs_f64()
                )
            } else {
                format!("[hangar] replica {id} {}", exit.describe())
            };
            system_log(inner, state, &id, LogLevel::Error, message).await;
            if want_running {
                schedule_wake(inner, &state.id, delay);
            }
        }
        remove(inner, state, &id).await;
    }

    // 2. Stopped or deleted: nothing runs.
    if !want_running {
        let live: Vec<String> = lock(&state.tracked).replicas.keys().cloned().collect();
        if !live.is_empty() {
            write_status(
                inner,
                state,
                &controlled,
                InstanceStatus::Stopping,
                None,
                0,
                restart_count,
            )
            .await;
            let grace = if controlled.force_stop {
                Duration::ZERO
            } else {
                inner.config.stop_grace
            };
            stop_all(inner, state, &live, grace).await;
        }
        {
            let mut tracked = lock(&state.tracked);
            tracked.crash_streak = 0;
            tracked.next_start = None;
            tracked.last_failure = None;
            // A stopped instance is neither healthy nor not: its next start
            // is `instance.started`, not a recovery.
            tracked.unhealthy = None;
        }
        write_status(
            inner,
            state,
            &controlled,
            InstanceStatus::Stopped,
            None,
            0,
            restart_count,
        )
        .await;
        if controlled.deleted {
            if let Err(err) = inner.store.mark_instance_reaped(&state.id).await {
                return Err(format!("cannot mark the instance reaped: {err}"));
            }
            inner.forget(&state.id);
            lock(&inner.untrimmed).remove(&state.id);
        }
        return Ok(());
    }

    // 3. Nothing to run yet.
    let artifact = match (&controlled.build_status, &controlled.artifact) {
        (BuildStatus::Ready, Some(artifact)) => artifact.clone(),
        (BuildStatus::Failed, _) => {
            let reason = format!("build {} failed", instance.build_id);
            write_status(
                inner,
                state,
                &controlled,
                InstanceStatus::Error,
                Some(reason),
                0,
                restart_count,
            )
            .await;
            return Ok(());
        }
        (status, _) => {
            let reason = format!("waiting for build {} ({status})", instance.build_id);
            write_status(
                inner,
                state,
                &controlled,
                InstanceStatus::Starting,
                Some(reason),
                0,
                restart_count,
            )
            .await;
            return Ok(());
        }
    };
    let generation = launch::generation(instance, &artifact);
    let want = {
        let bounds = Bounds::of(&controlled);
        let mut tracked = lock(&state.tracked);
        tracked.bounds = Some(bounds);
        tracked.owner = Some(Owner::of(&controlled));
        let live = u32::try_from(
            tracked
                .replicas
                .values()
                .filter(|r| r.info.exit.is_none() && !r.stopping)
                .count(),
        )
        .unwrap_or(u32::MAX);
        // First look (or after a restart of the server): what runs, within
        // the bounds; nothing running: the initial count.
        let scale = *tracked.autoscale.scale.get_or_insert(if live > 0 {
            live.clamp(bounds.min, bounds.max)
        } else {
            bounds.initial
        });
        let scale = scale.clamp(bounds.min, bounds.max);
        tracked.autoscale.scale = Some(scale);
        usize::try_from(scale).unwrap_or(usize::MAX)
    };

    // 4. Scale up (after any backoff).
    let (current, ready_current) = counts(state, &generation);
    if current < want {
        let wait = lock(&state.tracked)
            .next_start
            .and_then(|at| at.checked_duration_since(Instant::now()));
        match wait {
            Some(wait) => schedule_wake(inner, &state.id, wait),
            None => {
                for _ in current..want {
                    if let Err(err) =
                        create(inner, state, &controlled, &artifact, &generation).await
                    {
                        let delay =
                            back_off(inner, state, format!("cannot start a replica: {err}"));
                        system_log(
                            inner,
                            state,
                            "hangar",
                            LogLevel::Error,
                            format!("[hangar] cannot start a replica: {err}"),
                        )
                        .await;
                        schedule_wake(inner, &state.id, delay);
                        break;
                    }
                }
            }
        }
    }

    // 5. Scale down: the newest, not-ready ones first.
    if current > want {
        let extra: Vec<String> = {
            let tracked = lock(&state.tracked);
            let mut mine: Vec<&Replica> = tracked
                .replicas
                .values()
                .filter(|r| r.info.exit.is_none() && !r.stopping && r.generation == generation)
                .collect();
            mine.sort_by_key(|r| (r.ready, std::cmp::Reverse(r.started)));
            mine.iter()
                .take(current - want)
                .map(|r| r.info.id.clone())
                .collect()
        };
        stop_all(inner, state, &extra, inner.config.stop_grace).await;
    }

    // 6. Roll: older generations go once the new ones are ready.
    if ready_current >= want {
        let stale: Vec<String> = lock(&state.tracked)
            .replicas
            .values()
            .filter(|r| r.generation != generation && !r.stopping)
            .map(|r| r.info.id.clone())
            .collect();
        if !stale.is_empty() {
            stop_all(inner, state, &stale, inner.config.stop_grace).await;
        }
    }

    // 7. Status.
    let (status, reason, ready) = {
        let tracked = lock(&state.tracked);
        let live: Vec<&Replica> = tracked
            .replicas
            .values()
            .filter(|r| r.info.exit.is_none() && !r.stopping)
            .collect();
        let ready = u32::try_from(live.iter().filter(|r| r.ready).count()).unwrap_or(u32::MAX);
        let late = live
            .iter()
            .find(|r| !r.ever_ready && r.started.elapsed() > inner.config.startup_deadline);
        if ready > 0 {
            (InstanceStatus::Running, None, ready)
        } else if want == 0 && live.is_empty() {
            // Scaled to zero: serving, by starting a replica on the next
            // request (`READY_TO_COLD_START`).
            (
                InstanceStatus::Running,
                Some("scaled to zero; the next request starts a replica".to_owned()),
                0,
            )
        } else if let Some(late) = late {
            let why = late
                .last_check_error
                .clone()
                .unwrap_or_else(|| "no answer".to_owned());
            (
                InstanceStatus::Error,
                Some(format!(
                    "replica {} not healthy after {}s: {why}",
                    late.info.id,
                    inner.config.startup_deadline.as_secs()
                )),
                0,
            )
        } else if tracked.crash_streak > 0 {
            (InstanceStatus::Error, tracked.last_failure.clone(), 0)
        } else {
            (InstanceStatus::Starting, None, 0)
        }
    };
    write_status(
        inner,
        state,
        &controlled,
        status,
        reason,
        ready,
        restart_count,
    )
    .await;

    // 8. Announcements (after the status: `instance.started` comes first).
    announce_deployed(inner, state, &controlled, &generation, want).await;
    announce_health(inner, state, &controlled, ready).await;
    Ok(())
}

/// `agent.deployed` once the agent's default instance runs its build: as
/// many replicas of the current generation ready as wanted (at least one),
/// and none of an older generation left. The store records it once per
/// build ([`hangar_store::Store::record_deployed`]), so restarts of the
/// server, re-adoption and other servers do not repeat it; a roll that only
/// changes resources or environment keeps the build and announces nothing.
async fn announce_deployed(
    inner: &Inner,
    state: &InstanceState,
    controlled: &ControlledInstance,
    generation: &str,
    want: usize,
) {
    if controlled.agent_scaling.is_none() {
        return;
    }
    let build_id = &controlled.instance.build_id;
    let rolled_out = {
        let tracked = lock(&state.tracked);
        if tracked.announced_build.as_ref() == Some(build_id) {
            return;
        }
        let live: Vec<&Replica> = tracked
            .replicas
            .values()
            .filter(|r| r.info.exit.is_none() && !r.stopping)
            .collect();
        let ready = live
            .iter()
            .filter(|r| r.generation == generation && r.ready)
            .count();
        live.iter().all(|r| r.generation == generation) && ready > 0 && ready >= want
    };
    if !rolled_out {
        return;
    }
    match inner
        .store
        .record_deployed(&controlled.instance.id, build_id)
        .await
    {
        Ok(event) => {
            if event.is_some() {
                tracing::info!(instance = %state.id, build = %build_id, "agent.deployed");
            }
            lock(&state.tracked).announced_build = Some(build_id.clone());
        }
        Err(err) => {
            tracing::warn!(instance = %state.id, error = %err, "cannot record agent.deployed");
        }
    }
}

/// `agent.health_changed`: `healthy: false` when the instance has no ready
/// replica because one that was ready failed its health checks
/// ([`crate::ControllerConfig::health_failures`] in a row), `healthy: true`
/// when one is ready again after that. A replica that was never ready (a
/// first start, a restart after a crash) does not count as lost health: a
/// start is `instance.started`, a crash `instance.crashed`.
async fn announce_health(
    inner: &Inner,
    state: &InstanceState,
    controlled: &ControlledInstance,
    ready: u32,
) {
    let change = {
        let mut tracked = lock(&state.tracked);
        if ready > 0 {
            let healthy = tracked
                .replicas
                .values()
                .find(|r| r.ready && r.info.exit.is_none() && !r.stopping)
                .map(|r| r.info.id.clone());
            tracked.unhealthy.take().map(|_| {
                let why = match healthy {
                    Some(id) => format!("replica {id} passes its health checks"),
                    None => "a replica passes its health checks".to_owned(),
                };
                (true, why)
            })
        } else if tracked.unhealthy.is_none() {
            let failing = tracked
                .replicas
                .values()
                .find(|r| r.info.exit.is_none() && !r.stopping && r.ever_ready && !r.ready)
                .map(|r| {
                    format!(
                        "replica {} failed {} health checks in a row: {}",
                        r.info.id,
                        r.failures,
                        r.last_check_error.as_deref().unwrap_or("no answer")
                    )
                });
            tracked.unhealthy.clone_from(&failing);
            failing.map(|why| (false, why))
        } else {
            None
        }
    };
    let Some((healthy, reason)) = change else {
        return;
    };
    let level = if healthy {
        LogLevel::Info
    } else {
        LogLevel::Warn
    };
    system_log(
        inner,
        state,
        "hangar",
        level,
        format!(
            "[hangar] {}: {reason}",
            if healthy {
                "healthy again"
            } else {
                "unhealthy"
            }
        ),
    )
    .await;
    emit(
        inner,
        &Owner::of(controlled),
        "agent.health_changed",
        serde_json::json!({"healthy": healthy, "reason": reason}),
    )
    .await;
}

/// One more failure in a row: no replica is created for the base delay,
/// doubled per failure in the streak, capped. Returns the delay.
fn back_off(inner: &Inner, state: &InstanceState, why: String) -> Duration {
    let mut tracked = lock(&state.tracked);
    tracked.crash_streak += 1;
    let shift = tracked.crash_streak.saturating_sub(1).min(16);
    let delay = inner
        .config
        .backoff_base
        .saturating_mul(1 << shift)
        .min(inner.config.backoff_max);
    tracked.next_start = Some(Instant::now() + delay);
    tracked.last_failure = Some(why);
    delay
}

fn counts(state: &InstanceState, generation: &str) -> (usize, usize) {
    let tracked = lock(&state.tracked);
    let current: Vec<&Replica> = tracked
        .replicas
        .values()
        .filter(|r| r.info.exit.is_none() && !r.stopping && r.generation == generation)
        .collect();
    let ready = current.iter().filter(|r| r.ready).count();
    (current.len(), ready)
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
    let spec = launch::replica_spec(&instance, artifact, &replica_id, generation, cloud)?;
    let info = inner
        .driver
        .create(&spec)
        .await
        .map_err(|err| err.to_string())?;
    tracing::info!(instance = %state.id, replica = %replica_id, "replica started");
    let mut replica = Replica::new(info, generation.to_owned());
    if spec.port.is_none() {
        // Nothing to check: a stdin replica is ready once it runs.
        replica.ready = true;
        replica.ever_ready = true;
    }
    lock(&state.tracked)
        .replicas
        .insert(replica_id.clone(), replica);
    tasks::spawn_replica_tasks(inner, state, &replica_id);
    Ok(())
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
    let mut names: Vec<&str> = instance
        .env_vars
        .values()
        .flat_map(|v| hangar_core::validate::secret_refs(v).unwrap_or_default())
        .collect();
    if names.is_empty() {
        return Ok(instance.clone());
    }
    names.sort_unstable();
    names.dedup();
    let mut secrets = std::collections::BTreeMap::new();
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
    let mut resolved = instance.clone();
    for value in resolved.env_vars.values_mut() {
        *value = launch::resolve_secrets(value, &secrets)?;
    }
    Ok(resolved)
}

async fn stop_all(inner: &Arc<Inner>, state: &Arc<InstanceState>, ids: &[String], grace: Duration) {
    {
        let mut tracked = lock(&state.tracked);
        for id in ids {
            if let Some(replica) = tracked.replicas.get_mut(id) {
                replica.stopping = true;
                replica.ready = false;
            }
        }
    }
    if !grace.is_zero() {
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
    while let Some(done) = stops.join_next().await {
        if let Ok(id) = done {
            wait_drained(state, &id).await;
            remove(inner, state, &id).await;
        }
    }
}

/// Waits until the gateway has no request in flight on these replicas (out
/// of the rotation already), or the drain timeout.
async fn drain(inner: &Inner, state: &InstanceState, ids: &[String]) {
    let loads: Vec<_> = {
        let tracked = lock(&state.tracked);
        ids.iter()
            .filter_map(|id| tracked.replicas.get(id))
            .filter(|r| r.info.exit.is_none())
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
async fn remove(inner: &Arc<Inner>, state: &Arc<InstanceState>, id: &str) {
    match inner.driver.remove(id).await {
        Ok(()) => {
            lock(&state.tracked).replicas.remove(id);
            if let Err(err) = inner.store.forget_replica_log_cursor(id).await {
                tracing::warn!(replica = %id, error = %err, "cannot forget the log cursor");
            }
        }
        Err(err) => {
            tracing::warn!(replica = %id, error = %err, "cannot remove the replica; will retry");
            schedule_wake(inner, &state.id, Duration::from_secs(5));
        }
    }
}

pub(crate) async fn system_log(
    inner: &Inner,
    state: &InstanceState,
    replica_id: &str,
    level: LogLevel,
    message: String,
) {
    let line = NewLogLine {
        timestamp: chrono::Utc::now(),
        stream: Stream::Stderr,
        level,
        message,
    };
    match inner
        .store
        .append_system_log(&state.id, replica_id, &line)
        .await
    {
        Ok(stored) => {
            let _ = state
                .logs
                .send(Arc::new(hangar_core::logs::LiveLine::new(stored)));
        }
        Err(err) => tracing::warn!(instance = %state.id, error = %err, "cannot store a log line"),
    }
}

fn schedule_wake(inner: &Arc<Inner>, id: &str, after: Duration) {
    let inner = inner.clone();
    let id = id.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        inner.wake(&id);
    });
}

async fn write_status(
    inner: &Inner,
    state: &InstanceState,
    controlled: &ControlledInstance,
    status: InstanceStatus,
    reason: Option<String>,
    ready: u32,
    restart_count: u32,
) {
    let observed = Observed {
        status,
        reason,
        ready,
        restart_count,
    };
    let stored = &controlled.instance;
    let unchanged_in_store = stored.status == observed.status
        && stored.status_reason == observed.reason
        && stored.ready_replicas == observed.ready
        && stored.restart_count == observed.restart_count;
    if unchanged_in_store {
        lock(&state.tracked).last_status = Some(observed);
        return;
    }
    match inner
        .store
        .record_instance_status(
            &state.id,
            observed.status,
            observed.reason.as_deref(),
            observed.ready,
            observed.restart_count,
        )
        .await
    {
        Ok(()) => {
            let changed = stored.status != observed.status;
            let (status, reason) = (observed.status, observed.reason.clone());
            lock(&state.tracked).last_status = Some(observed);
            if changed {
                status_event(inner, controlled, status, reason).await;
            }
        }
        Err(err) => tracing::warn!(instance = %state.id, error = %err, "cannot record the status"),
    }
}

/// Who an instance's events are about: its organization, and the agent
/// when it is the agent's default instance (`agent.*` events), else the
/// instance.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub organization_id: String,
    pub agent_id: String,
    pub instance_id: String,
    pub is_default: bool,
}

impl Owner {
    pub(crate) fn of(controlled: &ControlledInstance) -> Self {
        Self {
            organization_id: controlled.instance.organization_id.clone(),
            agent_id: controlled.instance.agent_id.clone(),
            instance_id: controlled.instance.id.clone(),
            is_default: controlled.agent_scaling.is_some(),
        }
    }

    /// The subject of an `agent.*` event: the agent for its default
    /// instance, else the instance.
    fn agent_subject(&self) -> &str {
        if self.is_default {
            &self.agent_id
        } else {
            &self.instance_id
        }
    }
}

/// Records an event (the store queues its webhook deliveries); a failure is
/// logged, never fatal to reconciling.
pub(crate) async fn emit(inner: &Inner, owner: &Owner, kind: &str, mut data: serde_json::Value) {
    let subject = if kind.starts_with("agent.") {
        owner.agent_subject().to_owned()
    } else {
        owner.instance_id.clone()
    };
    if let Some(object) = data.as_object_mut() {
        object.insert("agent_id".to_owned(), owner.agent_id.clone().into());
        object.insert("instance_id".to_owned(), owner.instance_id.clone().into());
    }
    if let Err(err) = inner
        .store
        .record_event(&owner.organization_id, kind, &subject, data)
        .await
    {
        tracing::warn!(instance = %owner.instance_id, kind, error = %err, "cannot record an event");
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
