//! The work queue: which instance is reconciled when.
//!
//! Three things ask for a reconcile: a wake (the API changed the instance,
//! a replica ended or changed health), a requeue (a reconcile's
//! [`Action::Requeue`], or a retry after a failure) and the periodic resync
//! of every instance. The guarantees, as in kube-runtime's controller:
//!
//! - never two reconciles of one instance at once; a wake during a
//!   reconcile runs it once more when it ends, and no wake is lost;
//! - one timer per instance: a requeue keeps the earlier of the timer that
//!   stands and the new one (a reconcile that runs early requeues itself
//!   anew), so no sleeping task is left behind per request;
//! - a failing reconcile is retried after `backoff_base` doubled per
//!   failure in a row, capped at `backoff_max`, logged with its cause and
//!   shown on the instance ([`reconcile::record_failure`]);
//! - everything stops when the shutdown token is cancelled: reconciles in
//!   flight are dropped (the next start adopts the replicas and finishes what
//!   was half done), and [`crate::Controller::start`]'s handle ends once
//!   every task of the controller has.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

use crate::error::ReconcileError;
use crate::reconcile::{self, Action};
use crate::{lock, Inner, InstanceState};

/// A request to the queue.
#[derive(Debug)]
pub(crate) enum Work {
    /// Reconcile this instance soon.
    Wake(String),
    /// Reconcile this instance after this long (or sooner).
    Requeue(String, Duration),
}

/// Runs the queue until `inner.shutdown` is cancelled.
pub(crate) async fn run(inner: Arc<Inner>, mut work: mpsc::UnboundedReceiver<Work>) {
    let mut timers: DelayQueue<String> = DelayQueue::new();
    let mut keys: HashMap<String, (delay_queue::Key, Instant)> = HashMap::new();
    let mut resync = tokio::time::interval(inner.config.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            asked = work.recv() => match asked {
                None => return,
                Some(Work::Wake(id)) => inner.schedule(&id),
                Some(Work::Requeue(id, after)) if after.is_zero() => inner.schedule(&id),
                Some(Work::Requeue(id, after)) => {
                    let at = Instant::now() + after;
                    match keys.get_mut(&id) {
                        Some((_, due)) if *due <= at => {}
                        Some((key, due)) => {
                            timers.reset_at(key, at);
                            *due = at;
                        }
                        None => {
                            let key = timers.insert_at(id.clone(), at);
                            keys.insert(id, (key, at));
                        }
                    }
                }
            },
            Some(due) = std::future::poll_fn(|cx| timers.poll_expired(cx)), if !timers.is_empty() => {
                let id = due.into_inner();
                keys.remove(&id);
                inner.schedule(&id);
            }
            _ = resync.tick() => inner.resync_all().await,
        }
    }
}

impl Inner {
    /// Runs a reconcile of `id` unless one is running, in which case that
    /// one runs again when it is done: one at a time per instance, and no
    /// wake is lost.
    pub(crate) fn schedule(self: &Arc<Self>, id: &str) {
        let state = self.state(id);
        state.dirty.store(true, Ordering::SeqCst);
        if state.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        self.spawn(async move {
            loop {
                while state.dirty.swap(false, Ordering::SeqCst) {
                    let outcome = reconcile::reconcile(&inner, &state).await;
                    state.reconciled.fetch_add(1, Ordering::SeqCst);
                    state.became_ready.notify_waiters();
                    inner.follow_up(&state, outcome).await;
                }
                state.busy.store(false, Ordering::SeqCst);
                // A wake that came between the last check and clearing busy.
                if !state.dirty.load(Ordering::SeqCst) || state.busy.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        });
    }

    /// What comes after a reconcile: its requeue, or the error policy.
    async fn follow_up(
        self: &Arc<Self>,
        state: &InstanceState,
        outcome: Result<Action, ReconcileError>,
    ) {
        let failures = {
            let mut tracked = lock(&state.tracked);
            if outcome.is_ok() {
                tracked.reconcile_failures = 0;
            } else {
                tracked.reconcile_failures = tracked.reconcile_failures.saturating_add(1);
            }
            tracked.reconcile_failures
        };
        match outcome {
            Ok(Action::AwaitChange) => {}
            Ok(Action::Requeue(after)) if after.is_zero() => {
                state.dirty.store(true, Ordering::SeqCst);
            }
            Ok(Action::Requeue(after)) => self.requeue(&state.id, after),
            Err(err) => {
                let retry_in =
                    retry_delay(self.config.backoff_base, self.config.backoff_max, failures);
                tracing::warn!(
                    instance = %state.id,
                    error = %err,
                    failures,
                    retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
                    "reconcile failed"
                );
                reconcile::record_failure(self, state, &err, retry_in).await;
                self.requeue(&state.id, retry_in);
            }
        }
    }

    /// Asks for a reconcile of `id` after `after` (see the module docs).
    pub(crate) fn requeue(&self, id: &str, after: Duration) {
        let _ = self.work.send(Work::Requeue(id.to_owned(), after));
    }
}

/// The retry delay after `failures` failed reconciles in a row.
pub(crate) fn retry_delay(base: Duration, max: Duration, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    base.saturating_mul(1 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_back_off_to_a_cap() {
        let base = Duration::from_millis(500);
        let max = Duration::from_secs(4);
        let delays: Vec<Duration> = (1..=6).map(|n| retry_delay(base, max, n)).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 4000, 4000].map(Duration::from_millis)
        );
        assert_eq!(retry_delay(base, max, u32::MAX), max);
    }
}
