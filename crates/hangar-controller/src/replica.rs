//! One replica as the controller tracks it: where it is in its life
//! ([`Phase`]), its health, its figures and its tasks.
//!
//! The phase is one enum with predicates, as youki's container state is,
//! so "is it running, is it in the rotation, may it be stopped" is asked
//! in one way everywhere:
//!
//! ```text
//!            passes a check             fails `liveness_failures` in a row
//! Starting ─────────────────► Ready ───────────────────────────────────► Unhealthy
//!    │                          ▲ ◄──────────── passes a check ─────────────┘
//!    │                          │
//!    └── stopped by the controller (scale down, roll, liveness, stop) ──► Stopping
//! any phase ── the process ends ──► Exited { expected: it was Stopping }
//! ```
//!
//! A replica that is not checked over HTTP (stdin agents) is `Ready` as soon
//! as it runs.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use hangar_runtime::driver::{Exit, ReplicaInfo, ReplicaStats};
use tokio::time::Instant;

/// Where a replica is in its life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Running, and has not passed a health check yet: out of the rotation.
    Starting,
    /// Passing its health checks: in the rotation.
    Ready,
    /// Was ready, then failed its checks too many times in a row: out of the
    /// rotation, and restarted by the next reconcile.
    Unhealthy,
    /// The controller is stopping it: out of the rotation, and its exit is
    /// no crash.
    Stopping,
    /// Its process ended; `expected` when the controller had stopped it.
    Exited {
        /// How it ended.
        exit: Exit,
        /// The controller stopped it (no crash).
        expected: bool,
    },
}

impl Phase {
    /// Running and wanted: counts toward the instance's replicas.
    pub(crate) fn is_live(self) -> bool {
        matches!(self, Self::Starting | Self::Ready | Self::Unhealthy)
    }

    /// In the gateway's rotation.
    pub(crate) fn serves(self) -> bool {
        matches!(self, Self::Ready)
    }

    /// The controller may begin stopping it (one already stopping stays so;
    /// a stop that did not finish is done again without a new phase).
    pub(crate) fn can_stop(self) -> bool {
        self.is_live()
    }

    /// Its process still runs (live or being stopped).
    pub(crate) fn is_running(self) -> bool {
        !matches!(self, Self::Exited { .. })
    }

    /// It has passed a health check since it started.
    pub(crate) fn was_ready(self) -> bool {
        matches!(self, Self::Ready | Self::Unhealthy)
    }
}

/// A tracked replica.
pub(crate) struct Replica {
    pub info: ReplicaInfo,
    /// What it was made from ([`crate::launch::generation`]): a replica of
    /// another generation is rolled.
    pub generation: String,
    pub started: Instant,
    /// When this server began checking it (made, or adopted): its start
    /// timeout counts from here.
    pub probing_since: Instant,
    pub phase: Phase,
    /// Health checks failed in a row.
    pub failures: u32,
    pub last_check_error: Option<String>,
    pub response_time_ms: Option<u64>,
    pub last_check: Option<chrono::DateTime<chrono::Utc>>,
    /// Its output has been read to the end (after the exit).
    pub drained: bool,
    pub cpu_percent: f64,
    pub last_stats: Option<ReplicaStats>,
    pub tasks: Vec<tokio::task::AbortHandle>,
    /// Requests in flight on it (the gateway counts them).
    pub load: Arc<AtomicUsize>,
}

impl Replica {
    /// A replica the driver reports; `started` is taken from the driver, so
    /// an adopted replica keeps its age.
    pub(crate) fn new(info: ReplicaInfo, generation: String) -> Self {
        let uptime =
            u64::try_from(hangar_runtime::driver::now_ms().saturating_sub(info.started_at_ms))
                .unwrap_or(0);
        let phase = match info.exit {
            Some(exit) => Phase::Exited {
                exit,
                expected: false,
            },
            None => Phase::Starting,
        };
        Self {
            drained: false,
            info,
            generation,
            started: Instant::now()
                .checked_sub(Duration::from_millis(uptime))
                .unwrap_or_else(Instant::now),
            probing_since: Instant::now(),
            phase,
            failures: 0,
            last_check_error: None,
            response_time_ms: None,
            last_check: None,
            cpu_percent: 0.0,
            last_stats: None,
            tasks: Vec::new(),
            load: Arc::default(),
        }
    }

    /// A health check passed. Returns whether it entered the rotation.
    pub(crate) fn passed_check(&mut self, took_ms: u64) -> bool {
        self.failures = 0;
        self.last_check_error = None;
        self.response_time_ms = Some(took_ms);
        let entered = matches!(self.phase, Phase::Starting | Phase::Unhealthy);
        if entered {
            self.phase = Phase::Ready;
        }
        entered
    }

    /// A health check failed. Returns whether it left the rotation: a ready
    /// replica does after `limit` failures in a row.
    pub(crate) fn failed_check(&mut self, why: String, limit: u32) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.last_check_error = Some(why);
        let left = self.phase == Phase::Ready && self.failures >= limit.max(1);
        if left {
            self.phase = Phase::Unhealthy;
        }
        left
    }

    /// The controller is stopping it.
    pub(crate) fn stopping(&mut self) {
        if self.phase.can_stop() {
            self.phase = Phase::Stopping;
        }
    }

    /// Its process ended (the first report wins).
    pub(crate) fn ended(&mut self, exit: Exit) {
        if let Phase::Exited { .. } = self.phase {
            return;
        }
        self.phase = Phase::Exited {
            exit,
            expected: self.phase == Phase::Stopping,
        };
        self.info.exit.get_or_insert(exit);
        self.drained = true;
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ReplicaInfo {
        ReplicaInfo {
            id: "rep_1".to_owned(),
            address: None,
            labels: std::collections::BTreeMap::new(),
            pid: 0,
            started_at_ms: hangar_runtime::driver::now_ms(),
            exit: None,
            output_seq: 0,
        }
    }

    fn exit() -> Exit {
        Exit {
            code: Some(1),
            signal: None,
            oom_killed: false,
            at_ms: 0,
        }
    }

    #[test]
    fn a_replica_enters_and_leaves_the_rotation_by_its_checks() {
        let mut r = Replica::new(info(), "g".to_owned());
        assert_eq!(r.phase, Phase::Starting);
        assert!(r.phase.is_live() && !r.phase.serves() && !r.phase.was_ready());
        assert!(
            !r.failed_check("503".into(), 3),
            "a starting replica is not unhealthy"
        );
        assert!(r.passed_check(4));
        assert!(r.phase.serves());
        assert!(!r.failed_check("503".into(), 3));
        assert!(!r.failed_check("503".into(), 3));
        assert!(
            r.phase.serves(),
            "two failures of three: still in the rotation"
        );
        assert!(r.failed_check("503".into(), 3));
        assert_eq!(r.phase, Phase::Unhealthy);
        assert!(r.phase.is_live() && !r.phase.serves() && r.phase.was_ready());
        assert!(r.passed_check(3));
        assert_eq!(r.failures, 0);
    }

    #[test]
    fn an_exit_after_a_stop_is_expected_and_a_crash_is_not() {
        let mut stopped = Replica::new(info(), "g".to_owned());
        stopped.stopping();
        assert!(!stopped.phase.can_stop() && stopped.phase.is_running());
        stopped.ended(exit());
        assert!(matches!(
            stopped.phase,
            Phase::Exited { expected: true, .. }
        ));
        stopped.stopping();
        assert!(!stopped.phase.is_running(), "an ended replica stays ended");

        let mut crashed = Replica::new(info(), "g".to_owned());
        crashed.passed_check(1);
        crashed.ended(exit());
        assert!(matches!(
            crashed.phase,
            Phase::Exited {
                expected: false,
                ..
            }
        ));
        assert!(!crashed.phase.is_live() && crashed.drained);
    }
}
