//! The background work of each replica — reading its output into the store,
//! checking its health — and the sweeps over all of them: stats, autoscaling.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_core::logs::{parse_line, LiveLine, LogLevel, NewLogLine, Stream};
use hangar_runtime::driver::{Exit, OutputEvent, OutputStream};

use crate::{lock, scale, tell, Inner, InstanceState};

/// Output events stored in one transaction, at most: a transaction writes
/// the same few index pages however many lines it holds.
const BATCH: usize = 2000;

/// Starts the log and health tasks of a tracked replica.
pub(crate) fn spawn_replica_tasks(
    inner: &Arc<Inner>,
    state: &Arc<InstanceState>,
    replica_id: &str,
) {
    let mut handles = Vec::new();
    let logs = inner.spawn(ingest(inner.clone(), state.clone(), replica_id.to_owned()));
    handles.push(logs.abort_handle());
    let checks_http = lock(&state.tracked)
        .replicas
        .get(replica_id)
        .is_some_and(|r| r.info.address.is_some() && r.phase.is_running());
    if checks_http {
        let health = inner.spawn(health(inner.clone(), state.clone(), replica_id.to_owned()));
        handles.push(health.abort_handle());
    }
    if let Some(replica) = lock(&state.tracked).replicas.get_mut(replica_id) {
        replica.tasks.extend(handles);
    }
}

fn mark_ended(inner: &Inner, state: &InstanceState, replica_id: &str, exit: Exit) {
    if let Some(replica) = lock(&state.tracked).replicas.get_mut(replica_id) {
        replica.ended(exit);
    }
    inner.wake(&state.id);
}

/// Follows a replica's output from the stored cursor and stores it, parsed,
/// until the replica ends.
async fn ingest(inner: Arc<Inner>, state: Arc<InstanceState>, replica_id: String) {
    loop {
        let after = match inner.store.replica_log_cursor(&replica_id).await {
            Ok(cursor) => cursor.unwrap_or(0),
            Err(err) => {
                tracing::warn!(replica = %replica_id, error = %err, "cannot read the log cursor");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut events = match inner.driver.follow(&replica_id, after).await {
            Ok(events) => events,
            Err(err) => {
                tracing::debug!(replica = %replica_id, error = %err, "cannot follow the output");
                match inner.driver.inspect(&replica_id).await {
                    Ok(info) if info.exit.is_none() => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Ok(info) => {
                        let exit = info.exit.unwrap_or_else(lost_exit);
                        mark_ended(&inner, &state, &replica_id, exit);
                    }
                    Err(_) => mark_ended(&inner, &state, &replica_id, lost_exit()),
                }
                return;
            }
        };
        loop {
            let Some(first) = events.recv().await else {
                break;
            };
            let mut batch = Vec::new();
            let mut through = after;
            let mut end = None;
            let mut next = Some(first);
            while let Some(event) = next.take() {
                match event {
                    OutputEvent::Line(line) => {
                        through = line.seq;
                        let stream = match line.stream {
                            OutputStream::Stdout => Stream::Stdout,
                            OutputStream::Stderr => Stream::Stderr,
                        };
                        let parsed = parse_line(&line.text, stream);
                        batch.push(NewLogLine {
                            timestamp: chrono::DateTime::from_timestamp_millis(line.at_ms)
                                .unwrap_or_else(chrono::Utc::now),
                            stream,
                            level: parsed.level,
                            message: parsed.message,
                        });
                    }
                    OutputEvent::Gap { through: lost } => {
                        through = lost;
                        batch.push(NewLogLine {
                            timestamp: chrono::Utc::now(),
                            stream: Stream::Stderr,
                            level: hangar_core::logs::LogLevel::Warn,
                            message: format!(
                                "[hangar] output lines up to {lost} of replica {replica_id} were lost: \
                                 they left the shim's buffer before they were stored"
                            ),
                        });
                    }
                    OutputEvent::End(exit) => end = Some(exit),
                }
                if end.is_none() && batch.len() < BATCH {
                    next = events.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                match inner
                    .store
                    .append_instance_logs(&state.id, &replica_id, through, &batch)
                    .await
                {
                    Ok(stored) => {
                        let count = u32::try_from(stored.len()).unwrap_or(u32::MAX);
                        for line in stored {
                            let _ = state.logs.send(std::sync::Arc::new(LiveLine::new(line)));
                        }
                        trim_now_and_then(&inner, &state.id, count).await;
                    }
                    Err(err) => {
                        tracing::warn!(replica = %replica_id, error = %err, "cannot store log lines");
                    }
                }
            }
            if let Some(exit) = end {
                mark_ended(&inner, &state, &replica_id, exit);
                return;
            }
        }
        // The stream closed without an end: the shim went away, or hiccuped.
        match inner.driver.inspect(&replica_id).await {
            Ok(info) if info.exit.is_none() => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(info) => {
                mark_ended(
                    &inner,
                    &state,
                    &replica_id,
                    info.exit.unwrap_or_else(lost_exit),
                );
                return;
            }
            Err(_) => {
                mark_ended(&inner, &state, &replica_id, lost_exit());
                return;
            }
        }
    }
}

/// Trims the instance's log to the configured size once enough lines came.
async fn trim_now_and_then(inner: &Inner, instance_id: &str, added: u32) {
    let due = {
        let mut untrimmed = lock(&inner.untrimmed);
        let count = untrimmed.entry(instance_id.to_owned()).or_insert(0);
        *count = count.saturating_add(added);
        let due = *count >= crate::TRIM_EVERY;
        if due {
            *count = 0;
        }
        due
    };
    if due {
        if let Err(err) = inner
            .store
            .trim_instance_logs(instance_id, inner.config.log_lines_kept)
            .await
        {
            tracing::warn!(instance = %instance_id, error = %err, "cannot trim the log");
        }
    }
}

fn lost_exit() -> Exit {
    Exit {
        code: None,
        signal: None,
        oom_killed: false,
        at_ms: hangar_runtime::driver::now_ms(),
    }
}

/// Checks `GET <health_path>` of an HTTP replica: quickly until it first
/// answers 2xx, then every health interval. A replica enters the rotation
/// at its first pass and leaves it (unhealthy, then replaced by the next
/// reconcile) after the instance's liveness failures in a row.
async fn health(inner: Arc<Inner>, state: Arc<InstanceState>, replica_id: String) {
    let path = match inner.store.controlled_instance(&state.id).await {
        Ok(Some(controlled)) => controlled.instance.config.health_path,
        _ => "/health".to_owned(),
    };
    loop {
        let (address, was_ready) = {
            let tracked = lock(&state.tracked);
            match tracked.replicas.get(&replica_id) {
                Some(r) if r.phase.is_live() => (r.info.address, r.phase.was_ready()),
                _ => return,
            }
        };
        let Some(address) = address else {
            return;
        };
        let started = Instant::now();
        let answer = inner
            .http
            .get(format!("http://{address}{path}"))
            .timeout(inner.config.health_timeout)
            .send()
            .await;
        let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let error = match answer {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("GET {path} answered {}", response.status())),
            Err(err) if err.is_timeout() => Some(format!("GET {path} timed out")),
            Err(err) if err.is_connect() => {
                Some(format!("nothing listens on port {}", address.port()))
            }
            Err(err) => Some(format!("GET {path} failed: {err}")),
        };
        let passed = error.is_none();
        let changed = {
            let mut tracked = lock(&state.tracked);
            let limit = tracked
                .liveness_failures
                .unwrap_or(inner.config.health_failures);
            let Some(replica) = tracked.replicas.get_mut(&replica_id) else {
                return;
            };
            if !replica.phase.is_live() {
                return;
            }
            replica.last_check = Some(chrono::Utc::now());
            let counted = replica.phase.was_ready() || passed;
            let changed = match error {
                None => replica.passed_check(took),
                Some(why) => replica.failed_check(why, limit),
            };
            if counted {
                tracked.health_checks += 1;
                tracked.health_passes += u64::from(passed);
            }
            changed
        };
        if changed {
            if passed {
                state.became_ready.notify_waiters();
            }
            inner.wake(&state.id);
        }
        let pause = if was_ready || passed {
            inner.config.health_interval
        } else {
            inner.config.startup_probe_interval
        };
        tokio::time::sleep(pause).await;
    }
}

/// Reads every running replica's counters each stats interval and keeps
/// CPU % from the difference with the previous reading.
/// Has the driver repair what it keeps on the host for every replica (the
/// sandbox driver's packet filter) at once and then every `resync`: rules
/// flushed behind Hangar's back are back within one period. A failure is
/// logged when it starts and when it ends, not every period. What the
/// driver refused replicas since the last period goes to their agents' logs
/// and counts, as the egress proxy's refusals do.
pub(crate) async fn driver_resync_loop(inner: Arc<Inner>) {
    let mut failing = false;
    loop {
        // Before the resync: a rebuilt table forgets what it refused.
        match inner.driver.take_refusals().await {
            Ok(refusals) => {
                for refusal in refusals {
                    let destination = refusal.destination;
                    crate::egress::refused(
                        &inner,
                        &refusal.replica,
                        &destination.ip().to_string(),
                        destination.port(),
                    )
                    .await;
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot read what the driver refused"),
        }
        match inner.driver.resync().await {
            Ok(()) if failing => {
                tracing::info!("the driver's rules on the host are repaired");
                failing = false;
            }
            Ok(()) => {}
            Err(err) if !failing => {
                tracing::error!(error = %err, "the driver cannot repair its rules on the host; retrying every resync");
                failing = true;
            }
            Err(err) => tracing::debug!(error = %err, "the driver's rules are still not repaired"),
        }
        tokio::time::sleep(inner.config.resync).await;
    }
}

/// Every stats interval, reads the stats of every running replica: its CPU
/// use (for the autoscaler and the live figures) and, per instance, the
/// CPU time and memory this node's replicas used, for the metric history.
pub(crate) async fn stats_loop(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(inner.config.stats_interval).await;
        let states: Vec<Arc<InstanceState>> = lock(&inner.instances).values().cloned().collect();
        for state in states {
            let ids: Vec<String> = lock(&state.tracked)
                .replicas
                .values()
                .filter(|r| r.phase.is_running())
                .map(|r| r.info.id.clone())
                .collect();
            // What this pass measured of the instance's replicas here, for
            // its metric history (see `hangar_store::ResourceUse`).
            let mut usage = hangar_store::ResourceUse::default();
            let mut measured = false;
            for id in ids {
                let Ok(stats) = inner.driver.stats(&id).await else {
                    continue;
                };
                let mut tracked = lock(&state.tracked);
                if let Some(replica) = tracked.replicas.get_mut(&id) {
                    if let Some(previous) = replica.last_stats {
                        let wall_ms = u64::try_from(stats.at_ms - previous.at_ms).unwrap_or(0);
                        if wall_ms > 0 {
                            let used = stats.cpu_ns.saturating_sub(previous.cpu_ns);
                            replica.cpu_percent =
                                used as f64 * 100.0 / wall_ms.saturating_mul(1_000_000) as f64;
                            usage.cpu_us = usage.cpu_us.saturating_add(used / 1000);
                            // The replicas were read one after the other,
                            // over about the same interval: the pass's.
                            usage.cpu_wall_ms = usage.cpu_wall_ms.max(wall_ms);
                        }
                    }
                    usage.memory_kib = usage.memory_kib.saturating_add(stats.memory_bytes / 1024);
                    measured = true;
                    replica.last_stats = Some(stats);
                }
            }
            if measured {
                usage.memory_samples = 1;
                state.traffic.sampled(scale::unix_minute(), usage);
            }
        }
    }
}

/// Every autoscale interval, turns each instance's traffic and CPU use into
/// a replica count (see [`crate::scale`]) and reconciles the instances whose
/// count changed. A change is logged in the instance's log.
pub(crate) async fn autoscale_loop(inner: Arc<Inner>) {
    let targets = scale::Targets {
        concurrency: inner.config.target_concurrency,
        idle_timeout: inner.config.idle_timeout,
    };
    loop {
        tokio::time::sleep(inner.config.autoscale_interval).await;
        let states: Vec<Arc<InstanceState>> = lock(&inner.instances).values().cloned().collect();
        for state in states {
            let now = Instant::now();
            let busy_us = state.traffic.busy_us.load(Ordering::Relaxed);
            let in_flight = state.traffic.in_flight.load(Ordering::Relaxed);
            let idle_for = state.traffic.idle_for();
            let change = {
                let mut tracked = lock(&state.tracked);
                // A stopped instance is not scaled: its start begins anew.
                let (true, Some(bounds), Some(current)) =
                    (tracked.serving, tracked.bounds, tracked.autoscale.scale)
                else {
                    continue;
                };
                let live: Vec<f64> = tracked
                    .replicas
                    .values()
                    .filter(|r| r.phase.is_live())
                    .map(|r| r.cpu_percent)
                    .collect();
                let cpu = (!live.is_empty()).then(|| live.iter().sum::<f64>() / live.len() as f64);
                let autoscale = &mut tracked.autoscale;
                let window_us = autoscale.last_tick.map_or(0, |t| {
                    u64::try_from(now.duration_since(t).as_micros()).unwrap_or(0)
                });
                let busy = busy_us.saturating_sub(autoscale.last_busy_us);
                autoscale.last_busy_us = busy_us;
                autoscale.last_tick = Some(now);
                let concurrency = if window_us > 0 {
                    (busy as f64 / window_us as f64).max(in_flight as f64)
                } else {
                    in_flight as f64
                };
                let recommended = scale::recommend(
                    &bounds,
                    targets,
                    u32::try_from(live.len()).unwrap_or(u32::MAX),
                    concurrency,
                    cpu,
                    in_flight,
                    idle_for,
                );
                let want =
                    scale::stabilize(autoscale, now, inner.config.scale_down_window, recommended);
                let owner = tracked.owner.clone();
                let autoscale = &mut tracked.autoscale;
                (want != current).then(|| {
                    autoscale.scale = Some(want);
                    (current, want, concurrency, cpu, owner)
                })
            };
            if let Some((from, to, concurrency, cpu, owner)) = change {
                let why = if to == 0 {
                    format!("no request for {}s", idle_for.as_secs())
                } else {
                    let cpu =
                        cpu.map_or_else(String::new, |c| format!(", CPU {c:.0}% per replica"));
                    format!("{concurrency:.1} requests in flight{cpu}")
                };
                tracing::info!(instance = %state.id, from, to, %why, "agent.scaled");
                tell::system_log(
                    &inner,
                    &state,
                    "hangar",
                    LogLevel::Info,
                    format!("[hangar] scaled from {from} to {to} replicas: {why}"),
                )
                .await;
                if let Some(owner) = &owner {
                    tell::emit(
                        &inner,
                        owner,
                        "agent.scaled",
                        serde_json::json!({"from": from, "to": to, "reason": why}),
                    )
                    .await;
                }
                inner.wake(&state.id);
            }
        }
    }
}
