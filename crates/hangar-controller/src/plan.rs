//! The pure half of a reconcile: what to do about one instance.
//!
//! [`plan`] looks at the tracked replicas, what the store wants
//! ([`Desired`]) and what the controller remembers of the instance
//! ([`Memory`]: crash streak, backoff, restarts, announcements), and returns
//! a [`Plan`]: replicas to remove, stop and create, the status to record,
//! the log lines and events to tell, when to look again. It does no I/O and
//! reads no clock (`now` is given), so every transition is a table test
//! below; [`crate::reconcile`] carries a plan out.
//!
//! The rules, in order:
//!
//! ```text
//! ended replicas       removed; one that was not stopped on purpose is a crash:
//!                      restart counted, backoff (base × 2^streak, capped), instance.crashed
//! stopped or deleted   every live replica stopped (SIGKILL at once when forced);
//!                      status stopping, then stopped (then reaped when deleted)
//! build failed/pending status error / starting, nothing created
//! liveness             a replica unhealthy (was ready, failed N checks in a row) or
//!                      not ready within the start timeout is replaced: stopped,
//!                      counted as a restart, with the crash backoff
//! scale up             fewer live replicas of the current generation than wanted:
//!                      create the rest, once the backoff has passed
//! scale down           more: stop the not-ready ones first, then those with the
//!                      fewest live sessions (none, ideally), then the newest
//! roll                 replicas of an older generation are stopped once as many of
//!                      the current one are ready as wanted
//! status               running (a replica ready, or scaled to zero), error (in a
//!                      crash streak: its last failure), else starting
//! announcements        agent.health_changed when the last ready replica is lost to
//!                      its checks and when one is ready again; agent.deployed once
//!                      the default instance runs only its build
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hangar_core::logs::LogLevel;
use hangar_core::status::{BuildStatus, InstanceStatus};
use tokio::time::Instant;

use crate::replica::{Phase, Replica};

/// What the store wants of the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    /// Wanted running: neither stopped nor deleted.
    pub running: bool,
    /// Deleted: reaped once nothing runs.
    pub deleted: bool,
    /// Stops are SIGKILL at once.
    pub force_stop: bool,
    /// The build the instance runs.
    pub build_id: String,
    /// Where that build is.
    pub build: Build,
    /// Replicas wanted now (within the bounds; the autoscaler's count).
    pub scale: u32,
    /// An agent's default instance (announces `agent.deployed`).
    pub is_default: bool,
    /// Live sticky sessions per replica (absent: none): scale-down stops
    /// replicas that serve none before those that do, so a session moves
    /// only when its replica must go.
    pub sessions: HashMap<String, u32>,
}

/// Where the instance's build is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Build {
    /// Ready: replicas are made of this generation.
    Ready {
        /// [`crate::launch::generation`] of the instance and artifact.
        generation: String,
    },
    /// Failed: nothing can run.
    Failed,
    /// Not ready yet.
    Waiting(BuildStatus),
}

/// The timing rules a plan follows: the controller's, with the instance's
/// own liveness settings laid over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Graceful stops get this long before SIGKILL.
    pub stop_grace: Duration,
    /// The first restart delay after a crash; doubles per crash in a row.
    pub backoff_base: Duration,
    /// The longest restart delay.
    pub backoff_max: Duration,
    /// A replica that ran (or was ready) this long ends the crash streak.
    pub backoff_reset: Duration,
    /// Failed checks in a row that make a ready replica unhealthy.
    pub liveness_failures: u32,
    /// A replica not ready this long after it started is replaced.
    pub start_timeout: Duration,
}

/// What the controller remembers of an instance between reconciles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// Failures in a row (crashes, failed starts, liveness restarts).
    pub crash_streak: u32,
    /// No replica is created before this.
    pub next_start: Option<Instant>,
    /// Why the last replica ended or failed to start.
    pub last_failure: Option<String>,
    /// Restarts since the instance was created (as stored, and counted on).
    pub restart_count: u32,
    /// Why the instance lost its last ready replica, once
    /// `agent.health_changed` said so; cleared when it says healthy again.
    pub unhealthy: Option<String>,
    /// The build `agent.deployed` is known to be recorded for.
    pub announced_build: Option<String>,
    /// This node took the instance over from another that ran it (a drain,
    /// a failover): until a replica of its own is ready the instance stays
    /// `running`, so requests wait for it as for a cold start instead of
    /// being refused as if it were being deployed.
    pub taken_over: bool,
}

/// Why a replica is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The instance is stopped or deleted.
    InstanceStopped,
    /// Fewer replicas are wanted.
    ScaledDown,
    /// It is of an older generation, and the new one is ready.
    Rolled,
    /// It failed its health checks after being ready.
    Unhealthy,
    /// It was not ready within the start timeout.
    StartTimedOut,
    /// An earlier stop of it did not finish.
    Unfinished,
}

impl Why {
    /// The replica's requests in flight are waited for before the stop: not
    /// for one that fails its checks (they would not finish), nor when the
    /// stop is forced.
    pub(crate) fn drains(self) -> bool {
        !matches!(self, Self::Unhealthy | Self::StartTimedOut)
    }
}

/// A replica to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stop {
    /// Its id.
    pub id: String,
    /// SIGTERM, then SIGKILL after this long.
    pub grace: Duration,
    /// Why.
    pub why: Why,
}

/// The status to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    /// The instance's status.
    pub status: InstanceStatus,
    /// Why, when it is not plainly so.
    pub reason: Option<String>,
    /// Replicas in the rotation.
    pub ready: u32,
}

/// A line for the instance's log, from Hangar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Note {
    /// The replica it is about, or `hangar`.
    pub replica: String,
    /// Its level.
    pub level: LogLevel,
    /// The line.
    pub message: String,
}

/// An event to record (the store queues its webhooks).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// `instance.crashed`, `agent.health_changed`, ...
    pub kind: &'static str,
    /// Its data (the owner's ids are added when it is recorded).
    pub data: serde_json::Value,
}

/// What one reconcile does (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// The memory after this plan.
    pub memory: Memory,
    /// Ended replicas, to remove from the driver and from tracking.
    pub remove: Vec<String>,
    /// Live replicas to stop (then remove).
    pub stop: Vec<Stop>,
    /// Replicas to create.
    pub create: u32,
    /// The status to record (`stopping` is recorded before the stops).
    pub status: Status,
    /// Lines for the instance's log.
    pub notes: Vec<Note>,
    /// Events to record.
    pub events: Vec<Event>,
    /// The default instance runs only its build: record `agent.deployed`.
    pub deployed: bool,
    /// Deleted and nothing runs: mark the instance reaped and forget it.
    pub reap: bool,
    /// Look again after this long (`None`: on the next change).
    pub requeue: Option<Duration>,
}

/// Decides what to do about one instance (see the module docs).
pub(crate) fn plan(
    replicas: &BTreeMap<String, Replica>,
    desired: &Desired,
    memory: &Memory,
    policy: &Policy,
    now: Instant,
) -> Plan {
    let mut plan = Plan {
        memory: memory.clone(),
        remove: Vec::new(),
        stop: Vec::new(),
        create: 0,
        status: Status {
            status: InstanceStatus::Starting,
            reason: None,
            ready: 0,
        },
        notes: Vec::new(),
        events: Vec::new(),
        deployed: false,
        reap: false,
        requeue: None,
    };

    // Ended replicas: removed; a crash is counted and backs off.
    for replica in replicas.values() {
        let Phase::Exited { exit, expected } = replica.phase else {
            continue;
        };
        let id = &replica.info.id;
        plan.remove.push(id.clone());
        if expected {
            continue;
        }
        if now.saturating_duration_since(replica.started) >= policy.backoff_reset {
            plan.memory.crash_streak = 0;
        }
        let delay = back_off(
            &mut plan.memory,
            policy,
            now,
            format!("replica {id} {}", exit.describe()),
        );
        plan.memory.restart_count = plan.memory.restart_count.saturating_add(1);
        let message = if desired.running {
            format!(
                "[hangar] replica {id} {}; restarting in {:.1}s (restart {})",
                exit.describe(),
                delay.as_secs_f64(),
                plan.memory.restart_count
            )
        } else {
            format!("[hangar] replica {id} {}", exit.describe())
        };
        plan.note(id, LogLevel::Error, message);
        plan.events.push(Event {
            kind: "instance.crashed",
            data: serde_json::json!({
                "replica_id": id,
                "exit_code": exit.code,
                "signal": exit.signal,
                "oom_killed": exit.oom_killed,
                "reason": exit.describe(),
                "restarting": desired.running,
            }),
        });
    }
    let live: Vec<&Replica> = replicas.values().filter(|r| r.phase.is_live()).collect();

    // Stopped or deleted: nothing runs.
    if !desired.running {
        plan.memory.crash_streak = 0;
        plan.memory.next_start = None;
        plan.memory.last_failure = None;
        // A stopped instance is neither healthy nor not: its next start is
        // `instance.started`, not a recovery.
        plan.memory.unhealthy = None;
        let grace = if desired.force_stop {
            Duration::ZERO
        } else {
            policy.stop_grace
        };
        // Every replica whose process runs, one whose earlier stop did not
        // finish (its stop or removal failed) included.
        plan.stop = replicas
            .values()
            .filter(|r| r.phase.is_running())
            .map(|r| Stop {
                id: r.info.id.clone(),
                grace,
                why: Why::InstanceStopped,
            })
            .collect();
        if !plan.stop.is_empty() {
            plan.set(InstanceStatus::Stopping, None, 0);
            // Once the stops are done: `stopped`.
            plan.requeue = Some(Duration::ZERO);
        } else {
            plan.set(InstanceStatus::Stopped, None, 0);
            plan.reap = desired.deleted;
        }
        return plan;
    }

    let generation = match &desired.build {
        Build::Ready { generation } => generation,
        Build::Failed => {
            plan.set(
                InstanceStatus::Error,
                Some(format!("build {} failed", desired.build_id)),
                0,
            );
            return plan;
        }
        Build::Waiting(status) => {
            plan.set(
                InstanceStatus::Starting,
                Some(format!("waiting for build {} ({status})", desired.build_id)),
                0,
            );
            return plan;
        }
    };

    // A stop that did not finish (its stop or removal failed) is done again.
    for replica in replicas.values().filter(|r| r.phase == Phase::Stopping) {
        plan.stop.push(Stop {
            id: replica.info.id.clone(),
            grace: policy.stop_grace,
            why: Why::Unfinished,
        });
    }

    // Liveness: an unhealthy replica, or one never ready within the start
    // timeout, is replaced as after a crash.
    let mut lost_health = None;
    let mut next_look: Option<Instant> = None;
    for replica in &live {
        let id = &replica.info.id;
        let why = replica.last_check_error.as_deref().unwrap_or("no answer");
        // Measured from when this server began checking it: an adopted
        // replica is not late for being old.
        let age = now.saturating_duration_since(replica.probing_since);
        let (failure, stop_why) = match replica.phase {
            Phase::Unhealthy => {
                let failure = format!(
                    "replica {id} failed {} health checks in a row: {why}",
                    replica.failures
                );
                lost_health.get_or_insert_with(|| failure.clone());
                (failure, Why::Unhealthy)
            }
            Phase::Starting if age >= policy.start_timeout => (
                format!(
                    "replica {id} not healthy after {}s: {why}",
                    policy.start_timeout.as_secs()
                ),
                Why::StartTimedOut,
            ),
            Phase::Starting => {
                let deadline = replica.probing_since + policy.start_timeout;
                next_look = Some(next_look.map_or(deadline, |at| at.min(deadline)));
                continue;
            }
            _ => continue,
        };
        let delay = back_off(&mut plan.memory, policy, now, failure.clone());
        plan.memory.restart_count = plan.memory.restart_count.saturating_add(1);
        plan.note(
            id,
            LogLevel::Error,
            format!(
                "[hangar] {failure}; replacing it in {:.1}s (restart {})",
                delay.as_secs_f64(),
                plan.memory.restart_count
            ),
        );
        plan.stop.push(Stop {
            id: id.clone(),
            grace: policy.stop_grace,
            why: stop_why,
        });
    }
    let stopped = |r: &Replica, stops: &[Stop]| stops.iter().any(|s| s.id == r.info.id);
    let kept: Vec<&Replica> = live
        .iter()
        .copied()
        .filter(|r| !stopped(r, &plan.stop))
        .collect();

    // A replica that has served long enough ends the crash streak.
    if plan.memory.crash_streak > 0 {
        let mut recovered = false;
        for replica in kept.iter().filter(|r| r.phase.serves()) {
            let steady_at = replica.started + policy.backoff_reset;
            if now >= steady_at {
                recovered = true;
            } else {
                next_look = Some(next_look.map_or(steady_at, |at| at.min(steady_at)));
            }
        }
        if recovered {
            plan.memory.crash_streak = 0;
            plan.memory.next_start = None;
            plan.memory.last_failure = None;
        }
    }

    // Scale up, after any backoff; down, the not-ready ones first, then
    // those with the fewest sessions, then the newest.
    let want = usize::try_from(desired.scale).unwrap_or(usize::MAX);
    let mut current: Vec<&Replica> = kept
        .iter()
        .copied()
        .filter(|r| &r.generation == generation)
        .collect();
    let ready_current = current.iter().filter(|r| r.phase.serves()).count();
    if current.len() < want {
        match plan.memory.next_start.filter(|at| *at > now) {
            Some(at) => next_look = Some(next_look.map_or(at, |t| t.min(at))),
            None => plan.create = u32::try_from(want - current.len()).unwrap_or(u32::MAX),
        }
    } else if current.len() > want {
        current.sort_by_key(|r| {
            let sessions = desired.sessions.get(&r.info.id).copied().unwrap_or(0);
            (r.phase.serves(), sessions, std::cmp::Reverse(r.started))
        });
        for replica in current.iter().take(current.len() - want) {
            plan.stop.push(Stop {
                id: replica.info.id.clone(),
                grace: policy.stop_grace,
                why: Why::ScaledDown,
            });
        }
    }

    // Roll: older generations go once the new one is ready.
    if ready_current >= want {
        for replica in kept.iter().filter(|r| &r.generation != generation) {
            plan.stop.push(Stop {
                id: replica.info.id.clone(),
                grace: policy.stop_grace,
                why: Why::Rolled,
            });
        }
    }

    // Status, as it stands once the plan is carried out.
    let after: Vec<&Replica> = kept
        .iter()
        .copied()
        .filter(|r| !stopped(r, &plan.stop))
        .collect();
    let ready =
        u32::try_from(after.iter().filter(|r| r.phase.serves()).count()).unwrap_or(u32::MAX);
    if ready > 0 {
        plan.memory.taken_over = false;
        plan.set(InstanceStatus::Running, None, ready);
    } else if want == 0 && after.is_empty() {
        // Scaled to zero: serving, by starting a replica on the next request
        // (`READY_TO_COLD_START`).
        plan.set(
            InstanceStatus::Running,
            Some("scaled to zero; the next request starts a replica".to_owned()),
            0,
        );
    } else if plan.memory.crash_streak > 0 {
        let reason = plan.memory.last_failure.clone();
        plan.set(InstanceStatus::Error, reason, 0);
    } else if plan.memory.taken_over {
        plan.set(
            InstanceStatus::Running,
            Some("moved to another server; its replicas are starting there".to_owned()),
            0,
        );
    } else {
        plan.set(InstanceStatus::Starting, None, 0);
    }

    // agent.health_changed: the last ready replica lost to its checks, and
    // a replica ready again after that.
    if ready > 0 {
        if plan.memory.unhealthy.take().is_some() {
            let id = after
                .iter()
                .find(|r| r.phase.serves())
                .map_or_else(String::new, |r| r.info.id.clone());
            plan.health_changed(true, format!("replica {id} passes its health checks"));
        }
    } else if let (None, Some(reason)) = (&plan.memory.unhealthy, lost_health) {
        plan.memory.unhealthy = Some(reason.clone());
        plan.health_changed(false, reason);
    }

    // agent.deployed: every live replica of the build, as many ready as wanted.
    plan.deployed = desired.is_default
        && plan.memory.announced_build.as_ref() != Some(&desired.build_id)
        && plan.create == 0
        && after.iter().all(|r| &r.generation == generation)
        && ready > 0
        && usize::try_from(ready).unwrap_or(usize::MAX) >= want;

    plan.requeue = next_look.map(|at| at.saturating_duration_since(now));
    plan
}

/// One more failure in a row, by the policy's backoff.
fn back_off(memory: &mut Memory, policy: &Policy, now: Instant, why: String) -> Duration {
    memory.failed(policy.backoff_base, policy.backoff_max, now, why)
}

impl Memory {
    /// One more failure in a row: no replica is created for `base`,
    /// doubled per failure in the streak, capped at `max`. Returns the
    /// delay.
    pub(crate) fn failed(
        &mut self,
        base: Duration,
        max: Duration,
        now: Instant,
        why: String,
    ) -> Duration {
        self.crash_streak = self.crash_streak.saturating_add(1);
        let shift = self.crash_streak.saturating_sub(1).min(16);
        let delay = base.saturating_mul(1 << shift).min(max);
        self.next_start = Some(now + delay);
        self.last_failure = Some(why);
        delay
    }
}

impl Plan {
    fn set(&mut self, status: InstanceStatus, reason: Option<String>, ready: u32) {
        self.status = Status {
            status,
            reason,
            ready,
        };
    }

    /// `agent.health_changed`, and a line saying so in the instance's log.
    fn health_changed(&mut self, healthy: bool, reason: String) {
        let (level, said) = if healthy {
            (LogLevel::Info, "healthy again")
        } else {
            (LogLevel::Warn, "unhealthy")
        };
        self.note("hangar", level, format!("[hangar] {said}: {reason}"));
        self.events.push(Event {
            kind: "agent.health_changed",
            data: serde_json::json!({"healthy": healthy, "reason": reason}),
        });
    }

    fn note(&mut self, replica: &str, level: LogLevel, message: String) {
        self.notes.push(Note {
            replica: replica.to_owned(),
            level,
            message,
        });
    }

    /// The replica ids stopped for `why`.
    #[cfg(test)]
    fn stopped_for(&self, why: Why) -> Vec<&str> {
        self.stop
            .iter()
            .filter(|s| s.why == why)
            .map(|s| s.id.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Every transition of [`plan`], as a table of small worlds. Time is
    //! tokio's paused clock: ages are set by moving `now`, never by waiting.

    use super::*;
    use hangar_runtime::driver::{Exit, ReplicaInfo};

    const NEW: &str = "gen-new";
    const OLD: &str = "gen-old";

    fn policy() -> Policy {
        Policy {
            stop_grace: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
            backoff_reset: Duration::from_secs(60),
            liveness_failures: 3,
            start_timeout: Duration::from_secs(120),
        }
    }

    fn desired(scale: u32) -> Desired {
        Desired {
            running: true,
            deleted: false,
            force_stop: false,
            build_id: "build_1".to_owned(),
            build: Build::Ready {
                generation: NEW.to_owned(),
            },
            scale,
            is_default: true,
            sessions: HashMap::new(),
        }
    }

    /// A replica of `generation` in `phase` that started `age` before `now`.
    fn replica(id: &str, generation: &str, phase: Phase, age: Duration, now: Instant) -> Replica {
        let info = ReplicaInfo {
            id: id.to_owned(),
            labels: BTreeMap::new(),
            address: None,
            pid: 0,
            started_at_ms: hangar_runtime::driver::now_ms(),
            exit: None,
            output_seq: 0,
        };
        let mut replica = Replica::new(info, generation.to_owned());
        replica.started = now - age;
        replica.probing_since = now - age;
        replica.phase = phase;
        if phase == Phase::Unhealthy {
            replica.failures = 3;
            replica.last_check_error = Some("GET /health answered 500".to_owned());
        }
        replica
    }

    fn world(replicas: Vec<Replica>) -> BTreeMap<String, Replica> {
        replicas
            .into_iter()
            .map(|r| (r.info.id.clone(), r))
            .collect()
    }

    fn exit(code: Option<i32>, oom_killed: bool) -> Exit {
        Exit {
            code,
            signal: code.is_none().then_some(9),
            oom_killed,
            at_ms: 0,
        }
    }

    fn crashed(code: Option<i32>, oom_killed: bool) -> Phase {
        Phase::Exited {
            exit: exit(code, oom_killed),
            expected: false,
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.kind).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn scaling_and_rolling() {
        let now = Instant::now() + Duration::from_secs(3600);
        let ready =
            |id: &str, generation: &str| replica(id, generation, Phase::Ready, SEC * 5, now);
        let starting = |id: &str| replica(id, NEW, Phase::Starting, SEC, now);
        struct Row {
            what: &'static str,
            replicas: Vec<Replica>,
            scale: u32,
            create: u32,
            scaled_down: Vec<&'static str>,
            rolled: Vec<&'static str>,
            status: InstanceStatus,
            ready: u32,
            deployed: bool,
        }
        let rows = vec![
            Row {
                what: "a first start creates the initial replicas",
                replicas: vec![],
                scale: 2,
                create: 2,
                scaled_down: vec![],
                rolled: vec![],
                status: InstanceStatus::Starting,
                ready: 0,
                deployed: false,
            },
            Row {
                what: "a cold start (scaled to zero, a request came) creates one",
                replicas: vec![],
                scale: 1,
                create: 1,
                scaled_down: vec![],
                rolled: vec![],
                status: InstanceStatus::Starting,
                ready: 0,
                deployed: false,
            },
            Row {
                what: "scale up keeps the one that runs",
                replicas: vec![ready("a", NEW)],
                scale: 3,
                create: 2,
                scaled_down: vec![],
                rolled: vec![],
                status: InstanceStatus::Running,
                ready: 1,
                deployed: false,
            },
            Row {
                what: "as many as wanted: nothing to do, deployed",
                replicas: vec![ready("a", NEW), ready("b", NEW)],
                scale: 2,
                create: 0,
                scaled_down: vec![],
                rolled: vec![],
                status: InstanceStatus::Running,
                ready: 2,
                deployed: true,
            },
            Row {
                what: "scale down stops the not-ready one first",
                replicas: vec![ready("a", NEW), starting("b"), ready("c", NEW)],
                scale: 2,
                create: 0,
                scaled_down: vec!["b"],
                rolled: vec![],
                status: InstanceStatus::Running,
                ready: 2,
                deployed: true,
            },
            Row {
                what: "scale to zero stops them all and serves by cold start",
                replicas: vec![ready("a", NEW)],
                scale: 0,
                create: 0,
                scaled_down: vec!["a"],
                rolled: vec![],
                status: InstanceStatus::Running,
                ready: 0,
                deployed: false,
            },
            Row {
                what: "a roll starts the new generation beside the old",
                replicas: vec![ready("old", OLD)],
                scale: 1,
                create: 1,
                scaled_down: vec![],
                rolled: vec![],
                status: InstanceStatus::Running,
                ready: 1,
                deployed: false,
            },
            Row {
                what: "the old generation stays while the new one starts",
                replicas: vec![ready("old", OLD), starting("new")],
                scale: 1,
                create: 0,
                scaled_down: vec![],
                rolled: vec![],
                status: InstanceStatus::Running,
                ready: 1,
                deployed: false,
            },
            Row {
                what: "the old generation goes once the new one is ready",
                replicas: vec![ready("old", OLD), ready("new", NEW)],
                scale: 1,
                create: 0,
                scaled_down: vec![],
                rolled: vec!["old"],
                status: InstanceStatus::Running,
                ready: 1,
                deployed: true,
            },
            Row {
                what: "a replica being stopped (draining) is not counted",
                replicas: vec![replica("going", NEW, Phase::Stopping, SEC, now)],
                scale: 1,
                create: 1,
                scaled_down: vec![],
                rolled: vec![],
                status: InstanceStatus::Starting,
                ready: 0,
                deployed: false,
            },
        ];
        for row in rows {
            let plan = plan(
                &world(row.replicas),
                &desired(row.scale),
                &Memory::default(),
                &policy(),
                now,
            );
            assert_eq!(plan.create, row.create, "{}: creates", row.what);
            assert_eq!(
                plan.stopped_for(Why::ScaledDown),
                row.scaled_down,
                "{}: scaled down",
                row.what
            );
            assert_eq!(
                plan.stopped_for(Why::Rolled),
                row.rolled,
                "{}: rolled",
                row.what
            );
            assert_eq!(plan.status.status, row.status, "{}: status", row.what);
            assert_eq!(plan.status.ready, row.ready, "{}: ready", row.what);
            assert_eq!(plan.deployed, row.deployed, "{}: deployed", row.what);
            assert!(
                plan.events.is_empty() && plan.remove.is_empty(),
                "{}: {plan:?}",
                row.what
            );
            assert_eq!(plan.memory, Memory::default(), "{}", row.what);
        }
    }

    #[test]
    fn scale_down_stops_replicas_without_sessions_first() {
        let now = Instant::now();
        // "c" is the newest: without sessions it would go first.
        let replicas = world(vec![
            replica("a", NEW, Phase::Ready, SEC * 3, now),
            replica("b", NEW, Phase::Ready, SEC * 2, now),
            replica("c", NEW, Phase::Ready, SEC, now),
        ]);
        let scaled = |scale: u32, sessions: &[(&str, u32)]| {
            let desired = Desired {
                sessions: sessions
                    .iter()
                    .map(|(r, n)| ((*r).to_owned(), *n))
                    .collect(),
                ..desired(scale)
            };
            let plan = plan(&replicas, &desired, &Memory::default(), &policy(), now);
            plan.stopped_for(Why::ScaledDown)
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(scaled(2, &[]), ["c"]);
        assert_eq!(scaled(2, &[("c", 1)]), ["b"]);
        assert_eq!(scaled(2, &[("c", 1), ("b", 4)]), ["a"]);
        // When a replica with sessions must go, the one with fewest does.
        assert_eq!(scaled(1, &[("a", 2), ("b", 1), ("c", 3)]), ["b", "a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_is_counted_announced_and_backs_off_until_the_delay_passes() {
        let start = Instant::now();
        let replicas = world(vec![replica(
            "a",
            NEW,
            crashed(Some(1), false),
            SEC * 5,
            start,
        )]);
        let first = plan(&replicas, &desired(1), &Memory::default(), &policy(), start);
        assert_eq!(first.remove, ["a"]);
        assert_eq!(first.create, 0, "not before the backoff");
        assert_eq!(
            first.requeue,
            Some(SEC),
            "looks again when the backoff ends"
        );
        assert_eq!(first.memory.crash_streak, 1);
        assert_eq!(first.memory.restart_count, 1);
        assert_eq!(first.status.status, InstanceStatus::Error);
        assert_eq!(
            first.status.reason.as_deref(),
            Some("replica a exited with code 1")
        );
        assert_eq!(kinds(&first), ["instance.crashed"]);
        assert_eq!(first.events[0].data["exit_code"], 1);
        assert_eq!(first.events[0].data["restarting"], true);
        assert!(first.notes[0]
            .message
            .contains("exited with code 1; restarting in 1.0s (restart 1)"));

        // Half the delay later: still waiting; then the replica is made again.
        tokio::time::advance(SEC / 2).await;
        let waiting = plan(
            &BTreeMap::new(),
            &desired(1),
            &first.memory,
            &policy(),
            Instant::now(),
        );
        assert_eq!((waiting.create, waiting.requeue), (0, Some(SEC / 2)));
        tokio::time::advance(SEC / 2).await;
        let again = plan(
            &BTreeMap::new(),
            &desired(1),
            &first.memory,
            &policy(),
            Instant::now(),
        );
        assert_eq!(again.create, 1);
        assert_eq!(
            again.status.status,
            InstanceStatus::Error,
            "still in the streak"
        );
        assert!(again.events.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn crashes_in_a_row_double_the_delay_up_to_the_cap_and_a_long_run_resets_it() {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut memory = Memory::default();
        let mut delays = Vec::new();
        for n in 0..6 {
            let id = format!("r{n}");
            let replicas = world(vec![replica(&id, NEW, crashed(Some(2), false), SEC, now)]);
            let planned = plan(&replicas, &desired(1), &memory, &policy(), now);
            delays.push(planned.requeue.expect("a backoff"));
            memory = planned.memory;
        }
        assert_eq!(delays, [SEC, SEC * 2, SEC * 4, SEC * 8, SEC * 8, SEC * 8]);
        assert_eq!(memory.restart_count, 6);

        // A replica that ran past the reset period crashes: the streak
        // starts over.
        let long = world(vec![replica(
            "long",
            NEW,
            crashed(Some(2), false),
            SEC * 61,
            now,
        )]);
        let planned = plan(&long, &desired(1), &memory, &policy(), now);
        assert_eq!(
            (planned.memory.crash_streak, planned.requeue),
            (1, Some(SEC))
        );

        // A replica ready for the reset period ends the streak without a crash.
        let steady = world(vec![replica("ok", NEW, Phase::Ready, SEC * 60, now)]);
        let planned = plan(&steady, &desired(1), &memory, &policy(), now);
        assert_eq!(planned.memory.crash_streak, 0);
        assert_eq!(planned.memory.last_failure, None);
        let young = world(vec![replica("ok", NEW, Phase::Ready, SEC * 20, now)]);
        let planned = plan(&young, &desired(1), &memory, &policy(), now);
        assert_eq!(planned.memory.crash_streak, 6, "not yet");
        assert_eq!(
            planned.requeue,
            Some(SEC * 40),
            "looks again when it will have"
        );
        assert_eq!(planned.status.status, InstanceStatus::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn an_oom_kill_is_a_crash_that_says_so() {
        let now = Instant::now();
        let replicas = world(vec![replica("a", NEW, crashed(None, true), SEC, now)]);
        let planned = plan(&replicas, &desired(1), &Memory::default(), &policy(), now);
        assert_eq!(kinds(&planned), ["instance.crashed"]);
        assert_eq!(planned.events[0].data["oom_killed"], true);
        assert!(planned
            .status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("out of memory")));
        assert_eq!(planned.memory.restart_count, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expected_exit_is_removed_quietly() {
        let now = Instant::now();
        let gone = Phase::Exited {
            exit: exit(Some(0), false),
            expected: true,
        };
        let replicas = world(vec![
            replica("a", NEW, gone, SEC, now),
            replica("b", NEW, Phase::Ready, SEC, now),
        ]);
        let planned = plan(&replicas, &desired(1), &Memory::default(), &policy(), now);
        assert_eq!(planned.remove, ["a"]);
        assert!(planned.events.is_empty() && planned.notes.is_empty());
        assert_eq!(planned.memory, Memory::default());
        assert_eq!(planned.create, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_and_deleting() {
        let now = Instant::now();
        let live = || {
            world(vec![
                replica("a", NEW, Phase::Ready, SEC, now),
                replica("b", NEW, Phase::Starting, SEC, now),
            ])
        };
        let memory = Memory {
            crash_streak: 2,
            next_start: Some(now + SEC),
            last_failure: Some("boom".to_owned()),
            restart_count: 4,
            unhealthy: Some("sick".to_owned()),
            announced_build: None,
            taken_over: false,
        };
        let stopped = Desired {
            running: false,
            ..desired(1)
        };
        let planned = plan(&live(), &stopped, &memory, &policy(), now);
        assert_eq!(planned.stop.len(), 2);
        assert!(planned
            .stop
            .iter()
            .all(|s| s.grace == SEC * 10 && s.why == Why::InstanceStopped));
        assert_eq!(planned.status.status, InstanceStatus::Stopping);
        assert_eq!(
            planned.requeue,
            Some(Duration::ZERO),
            "stopped once the stops are done"
        );
        assert_eq!(planned.memory.crash_streak, 0);
        assert_eq!(planned.memory.unhealthy, None);
        assert_eq!(planned.memory.restart_count, 4, "restarts are history");
        assert!(!planned.reap);

        let done = plan(&BTreeMap::new(), &stopped, &memory, &policy(), now);
        assert_eq!(
            (done.status.status, done.reap, done.requeue),
            (InstanceStatus::Stopped, false, None)
        );

        let forced = Desired {
            running: false,
            deleted: true,
            force_stop: true,
            ..desired(1)
        };
        let planned = plan(&live(), &forced, &memory, &policy(), now);
        assert!(
            planned.stop.iter().all(|s| s.grace.is_zero()),
            "forced: SIGKILL at once"
        );
        assert!(!planned.reap, "not while replicas run");
        let reaped = plan(&BTreeMap::new(), &forced, &memory, &policy(), now);
        assert!(reaped.reap);

        // A crash while stopping is told, without "restarting".
        let dying = world(vec![replica("a", NEW, crashed(Some(3), false), SEC, now)]);
        let planned = plan(&dying, &stopped, &Memory::default(), &policy(), now);
        assert_eq!(planned.events[0].data["restarting"], false);
        assert_eq!(planned.status.status, InstanceStatus::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn builds_that_are_not_ready_run_nothing() {
        let rows = [
            (Build::Failed, InstanceStatus::Error, "build build_1 failed"),
            (
                Build::Waiting(BuildStatus::Building),
                InstanceStatus::Starting,
                "waiting for build build_1 (building)",
            ),
        ];
        for (build, status, reason) in rows {
            let wanted = Desired {
                build,
                ..desired(1)
            };
            let planned = plan(
                &BTreeMap::new(),
                &wanted,
                &Memory::default(),
                &policy(),
                Instant::now(),
            );
            assert_eq!((planned.create, planned.status.status), (0, status));
            assert_eq!(planned.status.reason.as_deref(), Some(reason));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unhealthy_replica_is_replaced_and_the_lost_health_told_once() {
        let now = Instant::now();
        let sick = world(vec![replica("a", NEW, Phase::Unhealthy, SEC * 30, now)]);
        let planned = plan(&sick, &desired(1), &Memory::default(), &policy(), now);
        assert_eq!(planned.stopped_for(Why::Unhealthy), ["a"]);
        assert_eq!(planned.create, 0, "after the backoff");
        assert_eq!(planned.requeue, Some(SEC));
        assert_eq!(planned.memory.restart_count, 1);
        assert_eq!(kinds(&planned), ["agent.health_changed"]);
        assert_eq!(planned.events[0].data["healthy"], false);
        let reason = "replica a failed 3 health checks in a row: GET /health answered 500";
        assert_eq!(planned.events[0].data["reason"], reason);
        assert_eq!(planned.status.status, InstanceStatus::Error);
        assert_eq!(planned.status.reason.as_deref(), Some(reason));

        // Its replacement comes up: healthy again, said once.
        let memory = planned.memory;
        let back = world(vec![replica("b", NEW, Phase::Ready, SEC, now)]);
        let planned = plan(&back, &desired(1), &memory, &policy(), now);
        assert_eq!(kinds(&planned), ["agent.health_changed"]);
        assert_eq!(planned.events[0].data["healthy"], true);
        assert_eq!(planned.memory.unhealthy, None);
        let planned = plan(&back, &desired(1), &planned.memory, &policy(), now);
        assert!(planned.events.is_empty());

        // While another replica serves, losing one is a restart, not lost health.
        let one_of_two = world(vec![
            replica("a", NEW, Phase::Unhealthy, SEC * 30, now),
            replica("b", NEW, Phase::Ready, SEC * 30, now),
        ]);
        let planned = plan(&one_of_two, &desired(2), &Memory::default(), &policy(), now);
        assert_eq!(planned.stopped_for(Why::Unhealthy), ["a"]);
        assert!(planned.events.is_empty());
        assert_eq!(planned.status.status, InstanceStatus::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_taken_over_stays_running_until_its_own_replicas_are_ready() {
        let now = Instant::now();
        let taken = Memory {
            taken_over: true,
            ..Memory::default()
        };
        let empty = world(vec![]);
        let first = plan(&empty, &desired(2), &taken, &policy(), now);
        assert_eq!(first.create, 2);
        assert_eq!(first.status.status, InstanceStatus::Running);
        assert_eq!(first.status.ready, 0);
        assert!(first.memory.taken_over);
        let starting = world(vec![replica(
            "a",
            NEW,
            Phase::Starting,
            Duration::ZERO,
            now,
        )]);
        let still = plan(&starting, &desired(1), &first.memory, &policy(), now);
        assert_eq!(still.status.status, InstanceStatus::Running);
        let ready = world(vec![replica("a", NEW, Phase::Ready, SEC, now)]);
        let done = plan(&ready, &desired(1), &still.memory, &policy(), now);
        assert_eq!(done.status.status, InstanceStatus::Running);
        assert_eq!(done.status.ready, 1);
        assert!(
            !done.memory.taken_over,
            "over once a replica of its own serves"
        );
        // Without a take-over, the same start is `starting`.
        let fresh = plan(&empty, &desired(2), &Memory::default(), &policy(), now);
        assert_eq!(fresh.status.status, InstanceStatus::Starting);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_not_ready_within_the_start_timeout_is_replaced() {
        let start = Instant::now();
        let mut slow = replica("a", NEW, Phase::Starting, Duration::ZERO, start);
        slow.last_check_error = Some("nothing listens on port 8080".to_owned());
        let replicas = world(vec![slow]);
        let early = plan(&replicas, &desired(1), &Memory::default(), &policy(), start);
        assert!(early.stop.is_empty());
        assert_eq!(
            early.requeue,
            Some(SEC * 120),
            "looks again at the deadline"
        );
        assert_eq!(early.status.status, InstanceStatus::Starting);

        tokio::time::advance(SEC * 120).await;
        let late = plan(
            &replicas,
            &desired(1),
            &Memory::default(),
            &policy(),
            Instant::now(),
        );
        assert_eq!(late.stopped_for(Why::StartTimedOut), ["a"]);
        assert_eq!(late.memory.restart_count, 1);
        assert_eq!(late.status.status, InstanceStatus::Error);
        assert_eq!(
            late.status.reason.as_deref(),
            Some("replica a not healthy after 120s: nothing listens on port 8080")
        );
        assert!(late.events.is_empty(), "never ready: no health was lost");
    }

    #[tokio::test(start_paused = true)]
    async fn deployed_is_announced_once_per_build() {
        let now = Instant::now();
        let replicas = world(vec![replica("a", NEW, Phase::Ready, SEC, now)]);
        let memory = Memory {
            announced_build: Some("build_1".to_owned()),
            ..Memory::default()
        };
        assert!(!plan(&replicas, &desired(1), &memory, &policy(), now).deployed);
        let other = Desired {
            is_default: false,
            ..desired(1)
        };
        assert!(!plan(&replicas, &other, &Memory::default(), &policy(), now).deployed);
        assert!(plan(&replicas, &desired(1), &Memory::default(), &policy(), now).deployed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_that_did_not_finish_is_done_again() {
        let now = Instant::now();
        let left = || world(vec![replica("a", NEW, Phase::Stopping, SEC, now)]);
        let stopped = Desired {
            running: false,
            ..desired(1)
        };
        let planned = plan(&left(), &stopped, &Memory::default(), &policy(), now);
        assert_eq!(planned.stopped_for(Why::InstanceStopped), ["a"]);
        assert_eq!(planned.status.status, InstanceStatus::Stopping);
        let planned = plan(&left(), &desired(1), &Memory::default(), &policy(), now);
        assert_eq!(planned.stopped_for(Why::Unfinished), ["a"]);
        assert_eq!(planned.create, 1, "it is not counted");
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_replica_gets_its_whole_start_timeout() {
        let now = Instant::now() + SEC * 3600;
        let mut adopted = replica("a", NEW, Phase::Starting, SEC * 600, now);
        adopted.probing_since = now;
        let planned = plan(
            &world(vec![adopted]),
            &desired(1),
            &Memory::default(),
            &policy(),
            now,
        );
        assert!(
            planned.stop.is_empty(),
            "old, but just adopted: {planned:?}"
        );
        assert_eq!(planned.requeue, Some(SEC * 120));
    }

    #[test]
    fn replicas_failing_their_checks_are_stopped_without_waiting_for_their_requests() {
        assert!(!Why::Unhealthy.drains() && !Why::StartTimedOut.drains());
        assert!(Why::ScaledDown.drains() && Why::Rolled.drains() && Why::InstanceStopped.drains());
    }
}
