//! Scaling: how many replicas an instance runs from moment to moment.
//!
//! An instance has bounds ([`Bounds`]): an agent's default instance scales
//! between its agent's `min_instances` and `max_instances`; an instance of
//! the Instances API runs its `replicas`. Either may go to zero when it is
//! `HTTP_COLD_START` (`long_running: false`) or its `min_instances` is 0.
//!
//! The gateway tells the controller about traffic ([`Traffic`]): requests in
//! flight (waiting ones included), the time they took, the last one's time.
//! Every [`crate::ControllerConfig::autoscale_interval`] the controller
//! turns that, and the replicas' CPU use, into a replica count:
//!
//! ```text
//! concurrency = max(busy time / interval, in flight now)
//! by traffic  = ⌈concurrency / target concurrency per replica⌉
//! by CPU      = ⌈replicas × CPU use of the request / target_cpu_percent⌉
//! want        = max(by traffic, by CPU) within [max(min, 1), max]
//!               — or 0 when it may go to zero, nothing is in flight and
//!                 the last request is older than the idle timeout
//! ```
//!
//! Scaling up happens at once; scaling down takes the highest count wanted
//! within the stabilization window (a burst's lull does not stop replicas
//! that the next burst needs). A request for an instance at zero activates
//! it ([`crate::Controller::activate`]): one replica starts while the
//! gateway holds the request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hangar_store::{ControlledInstance, MinuteFigures, RequestCounts, ResourceUse, SeriesSpan};

/// What an instance may scale between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Fewest replicas while serving (0: may scale to zero).
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Replicas to start with.
    pub initial: u32,
    /// CPU use per replica aimed for, % of its CPU request (agents only).
    pub target_cpu_percent: Option<u32>,
    /// Each replica's CPU request, millicores.
    pub cpu_millis: u64,
}

impl Bounds {
    /// The bounds of a controlled instance (see the module docs).
    #[must_use]
    pub fn of(controlled: &ControlledInstance) -> Self {
        let instance = &controlled.instance;
        let (min, max, target_cpu_percent) = match &controlled.agent_scaling {
            Some(s) => (s.min_instances, s.max_instances, Some(s.target_cpu_percent)),
            // `replicas: 0` is an instance at zero that the next request
            // wakes, as its status says (`READY_TO_COLD_START`): up to one.
            None => (instance.replicas, instance.replicas.max(1), None),
        };
        let min = if instance.config.long_running { min } else { 0 };
        Self {
            min,
            max,
            initial: instance.replicas.clamp(min, max),
            target_cpu_percent,
            cpu_millis: instance.resources.cpu_millis,
        }
    }
}

/// Traffic of one instance, as the gateway sees it. Shared, lock-free.
#[derive(Debug)]
pub struct Traffic {
    /// Requests in flight or waiting for a replica.
    pub in_flight: AtomicUsize,
    /// Microseconds spent by finished requests, summed.
    pub busy_us: AtomicU64,
    /// Requests waiting for a replica's slot (every replica at its limit).
    pub queued: AtomicUsize,
    /// Notified when a request ends: a slot is free.
    pub freed: tokio::sync::Notify,
    /// When the last request arrived, ms since the controller started.
    last_request_ms: AtomicU64,
    epoch: Instant,
    /// Invocations answered since the server started.
    pub requests_total: AtomicU64,
    /// This process's figures, and what the store has not been told yet.
    figures: Mutex<Figures>,
}

/// What [`Traffic::record`] counts into, under one lock.
#[derive(Debug, Default)]
struct Figures {
    /// Per minute with traffic, the last [`STATS_KEPT`] of this process's
    /// invocations ([`Traffic::stats`]: the Prometheus series, which are
    /// per process).
    minutes: VecDeque<Minute>,
    /// Per minute since the Unix epoch, invocations (and the replicas'
    /// resource use, from the stats loop) not yet written to the store
    /// (see `crate::requests`).
    unflushed: BTreeMap<i64, MinuteFigures>,
}

/// Now in minutes since the Unix epoch: the minutes of the store's request
/// counts, which every node shares.
#[must_use]
pub fn unix_minute() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs / 60).unwrap_or(i64::MAX)
}

/// Whole minutes a window of request figures spans (the current one
/// included).
#[must_use]
pub fn window_minutes(window: Duration) -> i64 {
    i64::try_from(window.as_secs().div_ceil(60)).unwrap_or(i64::MAX)
}

/// How far back request figures reach.
pub const STATS_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Invocations of one minute.
#[derive(Debug, Clone, Copy, Default)]
struct Minute {
    /// Minutes since the controller started.
    at: u64,
    requests: u64,
    errors: u64,
    latency_us: u64,
}

/// Invocations within a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestStats {
    /// Invocations answered.
    pub requests: u64,
    /// Of which failed (the agent's error, a timeout, no replica, shed).
    pub errors: u64,
    /// Mean time to the answer (for a stream: to its start), ms.
    pub avg_latency_ms: f64,
}

impl From<RequestCounts> for RequestStats {
    fn from(counts: RequestCounts) -> Self {
        let avg_latency_ms = if counts.requests == 0 {
            0.0
        } else {
            (counts.latency_us as f64 / counts.requests as f64 / 100.0).round() / 10.0
        };
        Self {
            requests: counts.requests,
            errors: counts.errors,
            avg_latency_ms,
        }
    }
}

impl RequestStats {
    /// Failed invocations, % of all (0 with none).
    #[must_use]
    pub fn error_rate_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            (self.errors as f64 * 10_000.0 / self.requests as f64).round() / 100.0
        }
    }
}

impl Traffic {
    pub(crate) fn new(epoch: Instant) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            busy_us: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            last_request_ms: AtomicU64::new(0),
            epoch,
            requests_total: AtomicU64::new(0),
            figures: Mutex::new(Figures::default()),
        }
    }

    /// A request arrived.
    pub fn arrived(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_request_ms.store(now, Ordering::Relaxed);
    }

    /// A request that arrived is over, after `took`.
    pub fn finished(&self, took: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.busy_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.freed.notify_one();
    }

    /// An invocation was answered (or failed) after `latency`: counted in
    /// memory only (the store hears of it at the next flush), so the
    /// request path pays for one uncontended lock.
    pub fn record(&self, ok: bool, latency: Duration) {
        self.record_at(unix_minute(), ok, latency);
    }

    /// [`Traffic::record`] in minute `unix_minute` (since the Unix epoch).
    fn record_at(&self, unix_minute: i64, ok: bool, latency: Duration) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let now = self.epoch.elapsed().as_secs() / 60;
        let mut figures = self.figures();
        let kept = i64::try_from(STATS_KEPT.as_secs() / 60).unwrap_or(i64::MAX);
        let unflushed = &mut figures.unflushed;
        let minute = unflushed.entry(unix_minute).or_default();
        minute.counts += RequestCounts {
            requests: 1,
            errors: u64::from(!ok),
            latency_us,
        };
        minute.latency.record(latency);
        forget_before(unflushed, unix_minute - kept);
        let minutes = &mut figures.minutes;
        if minutes.back().is_none_or(|m| m.at != now) {
            minutes.push_back(Minute {
                at: now,
                ..Minute::default()
            });
            let kept = STATS_KEPT.as_secs() / 60;
            while minutes.front().is_some_and(|m| now - m.at >= kept) {
                minutes.pop_front();
            }
        }
        if let Some(minute) = minutes.back_mut() {
            minute.requests += 1;
            minute.errors += u64::from(!ok);
            minute.latency_us = minute.latency_us.saturating_add(latency_us);
        }
    }

    /// What the stats loop measured of the instance's replicas on this
    /// node, counted in minute `unix_minute` (since the Unix epoch), for
    /// the next flush.
    pub(crate) fn sampled(&self, unix_minute: i64, usage: ResourceUse) {
        let kept = i64::try_from(STATS_KEPT.as_secs() / 60).unwrap_or(i64::MAX);
        let mut figures = self.figures();
        figures.unflushed.entry(unix_minute).or_default().usage += usage;
        forget_before(&mut figures.unflushed, unix_minute - kept);
    }

    fn figures(&self) -> std::sync::MutexGuard<'_, Figures> {
        self.figures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This process's invocations within the last `window` (whole
    /// minutes), whatever the store holds: what Prometheus scrapes of
    /// this server.
    pub fn stats(&self, window: Duration) -> RequestStats {
        let now = self.epoch.elapsed().as_secs() / 60;
        let span = window.as_secs().div_ceil(60);
        let figures = self.figures();
        let mut counts = RequestCounts::default();
        for minute in figures
            .minutes
            .iter()
            .rev()
            .take_while(|m| now - m.at < span)
        {
            counts += RequestCounts {
                requests: minute.requests,
                errors: minute.errors,
                latency_us: minute.latency_us,
            };
        }
        counts.into()
    }

    /// What the store has not been told yet, per minute since the Unix
    /// epoch.
    pub(crate) fn unflushed(&self) -> Vec<(i64, MinuteFigures)> {
        self.figures()
            .unflushed
            .iter()
            .map(|(minute, figures)| (*minute, *figures))
            .collect()
    }

    /// What [`Traffic::unflushed`] returned was written to the store: it
    /// is taken off (what was counted since stays).
    pub(crate) fn flushed(&self, written: &[(i64, MinuteFigures)]) {
        let mut figures = self.figures();
        for (minute, written) in written {
            if let Some(left) = figures.unflushed.get_mut(minute) {
                *left -= *written;
                if left.is_empty() {
                    figures.unflushed.remove(minute);
                }
            }
        }
    }

    /// What the store has not been told yet of minutes `since` and later.
    pub(crate) fn unflushed_since(&self, since: i64) -> RequestCounts {
        let mut sum = RequestCounts::default();
        for (_, figures) in self.figures().unflushed.range(since..) {
            sum += figures.counts;
        }
        sum
    }

    /// The invocations the store has not been told yet within `span`,
    /// per minute: (step, what was counted).
    pub(crate) fn unflushed_within(&self, span: SeriesSpan) -> Vec<(usize, MinuteFigures)> {
        self.figures()
            .unflushed
            .range(span.first_minute..span.end_minute())
            .filter_map(|(minute, figures)| Some((span.step_of(*minute)?, *figures)))
            .collect()
    }

    /// How long since the last request arrived (since the controller started,
    /// if none did).
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Drops the unflushed minutes up to `cutoff`: with the store out of
/// reach for a week, they would not be shown anyway.
fn forget_before(unflushed: &mut BTreeMap<i64, MinuteFigures>, cutoff: i64) {
    while unflushed
        .first_key_value()
        .is_some_and(|(m, _)| *m <= cutoff)
    {
        unflushed.pop_first();
    }
}

/// The autoscaler's memory of one instance.
#[derive(Debug, Default)]
pub(crate) struct Autoscale {
    /// Replicas wanted now (`None` until the first reconcile).
    pub scale: Option<u32>,
    /// What each tick wanted, for the stabilization window.
    pub recommendations: VecDeque<(Instant, u32)>,
    /// `Traffic::busy_us` at the last tick, and when.
    pub last_busy_us: u64,
    pub last_tick: Option<Instant>,
}

/// The knobs of one decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Targets {
    pub concurrency: f64,
    pub idle_timeout: Duration,
}

/// What one tick wants (before stabilization), from the figures measured.
pub(crate) fn recommend(
    bounds: &Bounds,
    targets: Targets,
    replicas: u32,
    concurrency: f64,
    cpu_percent_per_replica: Option<f64>,
    in_flight: usize,
    idle_for: Duration,
) -> u32 {
    if bounds.max == 0 {
        return 0;
    }
    if bounds.min == 0 && in_flight == 0 && idle_for >= targets.idle_timeout {
        return 0;
    }
    let by_traffic = (concurrency / targets.concurrency.max(0.1)).ceil();
    let by_cpu = match (bounds.target_cpu_percent, cpu_percent_per_replica) {
        (Some(target), Some(used)) if bounds.cpu_millis > 0 && target > 0 => {
            // `used` is % of one CPU; the target is % of the request.
            let of_request = used * 1000.0 / bounds.cpu_millis as f64;
            (f64::from(replicas) * of_request / f64::from(target)).ceil()
        }
        _ => 0.0,
    };
    let want = by_traffic.max(by_cpu).min(f64::from(bounds.max));
    // In [0, max] as a float: the cast keeps the value.
    let want = want as u32;
    want.clamp(bounds.min.max(1), bounds.max)
}

/// Applies the stabilization window: up at once, down to the highest count
/// recommended within `window` (to zero at once: the idle timeout is its
/// window).
pub(crate) fn stabilize(
    autoscale: &mut Autoscale,
    now: Instant,
    window: Duration,
    recommended: u32,
) -> u32 {
    autoscale.recommendations.push_back((now, recommended));
    while autoscale
        .recommendations
        .front()
        .is_some_and(|(at, _)| now.duration_since(*at) > window)
    {
        autoscale.recommendations.pop_front();
    }
    let current = autoscale.scale.unwrap_or(recommended);
    if recommended == 0 || recommended >= current {
        return recommended;
    }
    autoscale
        .recommendations
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(recommended)
        .min(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_figures_cover_their_window() {
        let traffic = Traffic::new(Instant::now());
        assert_eq!(
            traffic.stats(Duration::from_secs(3600)),
            RequestStats::default()
        );
        traffic.record(true, Duration::from_millis(10));
        traffic.record(true, Duration::from_millis(30));
        traffic.record(false, Duration::from_millis(20));
        let stats = traffic.stats(Duration::from_secs(24 * 3600));
        assert_eq!((stats.requests, stats.errors), (3, 1));
        assert!((stats.avg_latency_ms - 20.0).abs() < 0.01, "{stats:?}");
        assert!((stats.error_rate_percent() - 33.33).abs() < 0.01);
        assert_eq!(traffic.requests_total.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn what_was_flushed_is_taken_off_and_what_came_since_stays() {
        let traffic = Traffic::new(Instant::now());
        traffic.record_at(100, true, Duration::from_millis(10));
        traffic.record_at(101, false, Duration::from_millis(30));
        let taken = traffic.unflushed();
        let counts = |taken: &[(i64, MinuteFigures)]| -> Vec<(i64, RequestCounts)> {
            taken.iter().map(|(m, f)| (*m, f.counts)).collect()
        };
        assert_eq!(
            counts(&taken),
            vec![
                (
                    100,
                    RequestCounts {
                        requests: 1,
                        errors: 0,
                        latency_us: 10_000
                    }
                ),
                (
                    101,
                    RequestCounts {
                        requests: 1,
                        errors: 1,
                        latency_us: 30_000
                    }
                ),
            ]
        );
        assert_eq!(taken[1].1.latency.total(), 1);
        // Counted while the flush was writing: an invocation, and what the
        // stats loop measured.
        traffic.record_at(101, true, Duration::from_millis(5));
        let usage = ResourceUse {
            memory_kib: 1024,
            memory_samples: 1,
            ..ResourceUse::default()
        };
        traffic.sampled(101, usage);
        traffic.flushed(&taken);
        let left = traffic.unflushed();
        assert_eq!(
            counts(&left),
            vec![(
                101,
                RequestCounts {
                    requests: 1,
                    errors: 0,
                    latency_us: 5_000
                }
            )]
        );
        assert_eq!(left[0].1.usage, usage);
        let mut five = hangar_store::LatencyHistogram::default();
        five.record(Duration::from_millis(5));
        assert_eq!(left[0].1.latency, five);
        assert_eq!(traffic.unflushed_since(102), RequestCounts::default());
        assert_eq!(traffic.unflushed_since(101).requests, 1);
        // Within a series: by step.
        let span = SeriesSpan::ending_at(101, 1, 2);
        assert_eq!(traffic.unflushed_within(span).len(), 1);
        assert_eq!(traffic.unflushed_within(span)[0].0, 1);
        // This process's own figures are kept whatever was flushed.
        assert_eq!(traffic.stats(Duration::from_secs(3600)).requests, 3);
    }

    #[test]
    fn means_merge_from_summed_latencies() {
        let stats = RequestStats::from(RequestCounts {
            requests: 4,
            errors: 1,
            latency_us: 4 * 12_345,
        });
        assert_eq!((stats.requests, stats.errors), (4, 1));
        assert!((stats.avg_latency_ms - 12.3).abs() < 1e-9, "{stats:?}");
        assert_eq!(
            RequestStats::from(RequestCounts::default()),
            RequestStats::default()
        );
    }

    fn bounds(min: u32, max: u32) -> Bounds {
        Bounds {
            min,
            max,
            initial: min.max(1),
            target_cpu_percent: Some(70),
            cpu_millis: 1000,
        }
    }

    const TARGETS: Targets = Targets {
        concurrency: 10.0,
        idle_timeout: Duration::from_secs(300),
    };

    #[test]
    fn traffic_and_cpu_both_ask_for_replicas_within_bounds() {
        let b = bounds(1, 5);
        let quiet = Duration::from_secs(1);
        assert_eq!(recommend(&b, TARGETS, 1, 0.0, None, 0, quiet), 1);
        assert_eq!(recommend(&b, TARGETS, 1, 25.0, None, 25, quiet), 3);
        assert_eq!(recommend(&b, TARGETS, 1, 500.0, None, 500, quiet), 5);
        // Two replicas at 140% of one CPU each against 70% of 1 CPU: 4.
        assert_eq!(recommend(&b, TARGETS, 2, 1.0, Some(140.0), 1, quiet), 4);
        // Half a CPU requested: 35% of one CPU is 70% of the request.
        let half = Bounds {
            cpu_millis: 500,
            ..b
        };
        assert_eq!(recommend(&half, TARGETS, 2, 0.0, Some(35.0), 0, quiet), 2);
    }

    #[test]
    fn only_an_idle_instance_that_may_goes_to_zero() {
        let idle = Duration::from_secs(301);
        assert_eq!(recommend(&bounds(0, 3), TARGETS, 1, 0.0, None, 0, idle), 0);
        // Not idle long enough, or a request in flight, or min 1: stays up.
        assert_eq!(
            recommend(
                &bounds(0, 3),
                TARGETS,
                1,
                0.0,
                None,
                0,
                Duration::from_secs(5)
            ),
            1
        );
        assert_eq!(recommend(&bounds(0, 3), TARGETS, 1, 0.0, None, 1, idle), 1);
        assert_eq!(recommend(&bounds(1, 3), TARGETS, 1, 0.0, None, 0, idle), 1);
        assert_eq!(recommend(&bounds(0, 0), TARGETS, 0, 9.0, None, 9, idle), 0);
    }

    #[test]
    fn scaling_down_waits_for_the_window_and_up_does_not() {
        let mut a = Autoscale {
            scale: Some(1),
            ..Autoscale::default()
        };
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        assert_eq!(stabilize(&mut a, t0, window, 4), 4);
        a.scale = Some(4);
        // A lull within the window keeps 4.
        assert_eq!(
            stabilize(&mut a, t0 + Duration::from_secs(10), window, 1),
            4
        );
        assert_eq!(
            stabilize(&mut a, t0 + Duration::from_secs(50), window, 2),
            4
        );
        // Once the 4 is older than the window, the highest since (2) holds.
        assert_eq!(
            stabilize(&mut a, t0 + Duration::from_secs(65), window, 1),
            2
        );
        // Zero at once.
        assert_eq!(
            stabilize(&mut a, t0 + Duration::from_secs(66), window, 0),
            0
        );
    }
}
