//! Metric history: what each node saw of an instance per minute — request
//! counts, a latency histogram, its replicas' CPU and memory — kept for the
//! configured retention and read back as a series of equal steps, summed
//! over every node.
//!
//! Everything stored merges by addition, so a node adds its figures every
//! few seconds (with the request counts, see `requests`) and readers add up
//! any set of nodes and minutes:
//! - latencies go into fixed, log-spaced buckets ([`LatencyHistogram`]):
//!   percentiles come from the merged buckets, never from averaging
//!   percentiles (which has no meaning across nodes);
//! - CPU is time used and the wall time it was measured over, memory a sum
//!   of samples and their count ([`ResourceUse`]): a node's figure for a
//!   minute is one over the other, the instance's is the sum over its nodes
//!   (each runs different replicas), a step's the mean over its minutes.
//!
//! The bucket bounds are part of the stored format: a row's `bucket` means
//! [`LATENCY_BOUNDS_US`]`[bucket]`, so they never change (finer buckets
//! would be a new table).
//!
//! Not here: counting (the controller's `Traffic` and stats loop), and
//! what the API makes of a step (rates, rounding).

use crate::{RequestCounts, Result, RowExt, Store, StoreError};

/// How many latency buckets there are: bounds 0.25 ms × 2^(k/2) for
/// k = 0…42 (up to about 524 s), and one bucket for anything longer.
pub const LATENCY_BUCKETS: usize = 44;

/// Upper bounds of the latency buckets but the last, in µs: bucket `k`
/// holds latencies in (`bound[k-1]`, `bound[k]`], bucket 0 those up to
/// 0.25 ms, the last those above `bound[42]` (about 524 s). Each is √2
/// times the one before, so a percentile read from the buckets is off by
/// at most that ratio's half, whatever the scale.
pub const LATENCY_BOUNDS_US: [u64; LATENCY_BUCKETS - 1] = latency_bounds();

const fn latency_bounds() -> [u64; LATENCY_BUCKETS - 1] {
    let mut bounds = [0; LATENCY_BUCKETS - 1];
    let mut k = 0;
    while k < bounds.len() {
        // 250 µs × 2^(k/2): exact for even k, √2 × 250 µs = 353.553 µs
        // doubled for odd k.
        bounds[k] = if k % 2 == 0 {
            250 << (k / 2)
        } else {
            (353_553 << (k / 2)) / 1000
        };
        k += 1;
    }
    bounds
}

/// Invocations counted per latency bucket ([`LATENCY_BOUNDS_US`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: [u64; LATENCY_BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: [0; LATENCY_BUCKETS],
        }
    }
}

impl std::ops::AddAssign for LatencyHistogram {
    fn add_assign(&mut self, other: Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.saturating_add(theirs);
        }
    }
}

impl std::ops::SubAssign for LatencyHistogram {
    fn sub_assign(&mut self, other: Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.saturating_sub(theirs);
        }
    }
}

impl LatencyHistogram {
    /// The bucket a latency falls into.
    #[must_use]
    pub fn bucket_of(latency: std::time::Duration) -> usize {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        LATENCY_BOUNDS_US.partition_point(|bound| *bound < us)
    }

    /// Counts one invocation that took `latency`.
    pub fn record(&mut self, latency: std::time::Duration) {
        self.add(Self::bucket_of(latency), 1);
    }

    /// Counts `n` invocations in bucket `bucket` (the last bucket for one
    /// past it).
    pub fn add(&mut self, bucket: usize, n: u64) {
        let bucket = bucket.min(LATENCY_BUCKETS - 1);
        self.counts[bucket] = self.counts[bucket].saturating_add(n);
    }

    /// The buckets that counted something: (bucket, invocations).
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k, *n))
    }

    /// Invocations counted.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0, |sum, n| sum.saturating_add(*n))
    }

    /// Nothing counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// The latency, ms, that a share `q` (0…1: 0.5 is the median) of the
    /// counted invocations took at most, estimated from the buckets: within
    /// its bucket, the rank's place is spread evenly on a log scale (the
    /// bucket's own scale); in the last bucket, which has no upper bound,
    /// its lower bound. `None` with nothing counted.
    #[must_use]
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut before = 0u64;
        for (k, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let through = before.saturating_add(count);
            if (through as f64) < rank {
                before = through;
                continue;
            }
            let within = ((rank - before as f64) / count as f64).clamp(0.0, 1.0);
            let low = if k == 0 { 0 } else { LATENCY_BOUNDS_US[k - 1] } as f64;
            let us = match LATENCY_BOUNDS_US.get(k) {
                None => low,
                Some(&high) if k == 0 => high as f64 * within,
                Some(&high) => low * (high as f64 / low).powf(within),
            };
            return Some((us).round() / 1000.0);
        }
        None
    }
}

/// What a node measured of an instance's replicas (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUse {
    /// CPU time used, µs.
    pub cpu_us: u64,
    /// Wall time `cpu_us` was measured over, ms (0: not measured).
    pub cpu_wall_ms: u64,
    /// Memory in use, KiB, summed over samples.
    pub memory_kib: u64,
    /// Samples in `memory_kib`.
    pub memory_samples: u64,
}

impl std::ops::AddAssign for ResourceUse {
    fn add_assign(&mut self, other: Self) {
        self.cpu_us = self.cpu_us.saturating_add(other.cpu_us);
        self.cpu_wall_ms = self.cpu_wall_ms.saturating_add(other.cpu_wall_ms);
        self.memory_kib = self.memory_kib.saturating_add(other.memory_kib);
        self.memory_samples = self.memory_samples.saturating_add(other.memory_samples);
    }
}

impl std::ops::SubAssign for ResourceUse {
    fn sub_assign(&mut self, other: Self) {
        self.cpu_us = self.cpu_us.saturating_sub(other.cpu_us);
        self.cpu_wall_ms = self.cpu_wall_ms.saturating_sub(other.cpu_wall_ms);
        self.memory_kib = self.memory_kib.saturating_sub(other.memory_kib);
        self.memory_samples = self.memory_samples.saturating_sub(other.memory_samples);
    }
}

impl ResourceUse {
    /// Nothing measured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Everything a node counts of an instance within one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteFigures {
    /// Invocations.
    pub counts: RequestCounts,
    /// Their latencies.
    pub latency: LatencyHistogram,
    /// The replicas' CPU and memory.
    pub usage: ResourceUse,
}

impl std::ops::AddAssign for MinuteFigures {
    fn add_assign(&mut self, other: Self) {
        self.counts += other.counts;
        self.latency += other.latency;
        self.usage += other.usage;
    }
}

impl std::ops::SubAssign for MinuteFigures {
    fn sub_assign(&mut self, other: Self) {
        self.counts -= other.counts;
        self.latency -= other.latency;
        self.usage -= other.usage;
    }
}

impl MinuteFigures {
    /// Nothing counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.latency.is_empty() && self.usage.is_empty()
    }
}

/// The steps of a series: `steps` steps of `step_minutes` each, the first
/// starting at minute `first_minute` (minutes since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesSpan {
    /// Where the first step starts.
    pub first_minute: i64,
    /// Minutes per step (at least 1).
    pub step_minutes: i64,
    /// How many steps.
    pub steps: usize,
}

impl SeriesSpan {
    /// `steps` steps of `step_minutes`, the last one holding minute `now`;
    /// steps start at multiples of the step since the epoch, so the same
    /// step covers the same minutes in every read (a plot refreshed a
    /// moment later moves by whole steps).
    #[must_use]
    pub fn ending_at(now: i64, step_minutes: i64, steps: usize) -> Self {
        let step_minutes = step_minutes.max(1);
        let current = now - now.rem_euclid(step_minutes);
        let before = i64::try_from(steps.saturating_sub(1)).unwrap_or(i64::MAX);
        Self {
            first_minute: current.saturating_sub(before.saturating_mul(step_minutes)),
            step_minutes,
            steps,
        }
    }

    /// The minute after the last step.
    #[must_use]
    pub fn end_minute(&self) -> i64 {
        let steps = i64::try_from(self.steps).unwrap_or(i64::MAX);
        self.first_minute
            .saturating_add(steps.saturating_mul(self.step_minutes))
    }

    /// The minute step `i` starts at.
    #[must_use]
    pub fn step_start(&self, i: usize) -> i64 {
        let i = i64::try_from(i).unwrap_or(i64::MAX);
        self.first_minute
            .saturating_add(i.saturating_mul(self.step_minutes))
    }

    /// The step holding `minute`, if one does.
    #[must_use]
    pub fn step_of(&self, minute: i64) -> Option<usize> {
        if minute < self.first_minute || minute >= self.end_minute() {
            return None;
        }
        usize::try_from((minute - self.first_minute) / self.step_minutes).ok()
    }
}

/// One step of a series, summed over every node.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepFigures {
    /// Invocations.
    pub counts: RequestCounts,
    /// Their latencies.
    pub latency: LatencyHistogram,
    /// Per minute with CPU figures, the instance's CPU use (summed over
    /// nodes), in thousandths of a percent of one CPU, summed over those
    /// minutes.
    pub cpu_millipercent: u64,
    /// Minutes with CPU figures.
    pub cpu_minutes: u64,
    /// Per minute with memory figures, the instance's mean memory (summed
    /// over nodes), KiB, summed over those minutes.
    pub memory_kib: u64,
    /// Minutes with memory figures.
    pub memory_minutes: u64,
}

impl StepFigures {
    /// The instance's mean CPU use in the step's minutes that have figures,
    /// % of one CPU; `None` when none has (no replica ran, or the nodes
    /// running them have not written yet).
    #[must_use]
    pub fn cpu_percent(&self) -> Option<f64> {
        (self.cpu_minutes > 0)
            .then(|| self.cpu_millipercent as f64 / self.cpu_minutes as f64 / 1000.0)
    }

    /// The instance's mean memory in the step's minutes that have figures,
    /// MiB; `None` when none has.
    #[must_use]
    pub fn memory_mb(&self) -> Option<f64> {
        (self.memory_minutes > 0)
            .then(|| self.memory_kib as f64 / self.memory_minutes as f64 / 1024.0)
    }
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Per step: the counts of every node, and the CPU and memory of each
/// minute summed over its nodes (`x / n` per row is one node's figure),
/// added over the step's minutes that have them.
const STEPS: &str = "SELECT CAST((at_minute - $2) / $3 AS BIGINT) AS step, \
     CAST(SUM(requests) AS BIGINT) AS requests, \
     CAST(SUM(errors) AS BIGINT) AS errors, \
     CAST(SUM(latency_us) AS BIGINT) AS latency_us, \
     CAST(SUM(CASE WHEN cpu_wall_ms > 0 THEN cpu_us * 100 / cpu_wall_ms ELSE 0 END) AS BIGINT) AS cpu_millipercent, \
     CAST(COUNT(DISTINCT CASE WHEN cpu_wall_ms > 0 THEN at_minute END) AS BIGINT) AS cpu_minutes, \
     CAST(SUM(CASE WHEN memory_samples > 0 THEN memory_kib / memory_samples ELSE 0 END) AS BIGINT) AS memory_kib, \
     CAST(COUNT(DISTINCT CASE WHEN memory_samples > 0 THEN at_minute END) AS BIGINT) AS memory_minutes \
     FROM request_counts WHERE instance_id = $1 AND at_minute >= $2 AND at_minute < $4 \
     GROUP BY 1";

/// Per step and bucket: the invocations of every node.
const STEP_BUCKETS: &str = "SELECT CAST((at_minute - $2) / $3 AS BIGINT) AS step, bucket, \
     CAST(SUM(requests) AS BIGINT) AS requests \
     FROM latency_buckets WHERE instance_id = $1 AND at_minute >= $2 AND at_minute < $4 \
     GROUP BY 1, 2";

impl Store {
    /// Instance `instance_id`'s stored figures over `span`, one entry per
    /// step (zeros where nothing was stored), summed over every node.
    pub async fn metric_series(
        &self,
        instance_id: &str,
        span: SeriesSpan,
    ) -> Result<Vec<StepFigures>> {
        let mut steps = vec![StepFigures::default(); span.steps];
        if span.steps == 0 {
            return Ok(steps);
        }
        let step_of = |row: &sqlx::any::AnyRow| -> Result<usize> {
            let step = row.int("step")?;
            usize::try_from(step)
                .ok()
                .filter(|s| *s < span.steps)
                .ok_or_else(|| StoreError::Corrupt {
                    what: "metric step",
                    detail: format!("step {step} outside 0..{}", span.steps),
                })
        };
        let rows = sqlx::query(STEPS)
            .bind(instance_id)
            .bind(span.first_minute)
            .bind(span.step_minutes)
            .bind(span.end_minute())
            .fetch_all(&self.pool)
            .await?;
        for row in &rows {
            let step = &mut steps[step_of(row)?];
            step.counts = RequestCounts {
                requests: unsigned(row.int("requests")?),
                errors: unsigned(row.int("errors")?),
                latency_us: unsigned(row.int("latency_us")?),
            };
            step.cpu_millipercent = unsigned(row.int("cpu_millipercent")?);
            step.cpu_minutes = unsigned(row.int("cpu_minutes")?);
            step.memory_kib = unsigned(row.int("memory_kib")?);
            step.memory_minutes = unsigned(row.int("memory_minutes")?);
        }
        let rows = sqlx::query(STEP_BUCKETS)
            .bind(instance_id)
            .bind(span.first_minute)
            .bind(span.step_minutes)
            .bind(span.end_minute())
            .fetch_all(&self.pool)
            .await?;
        for row in &rows {
            let bucket = row.int("bucket")?;
            let bucket = usize::try_from(bucket)
                .ok()
                .filter(|b| *b < LATENCY_BUCKETS)
                .ok_or_else(|| StoreError::Corrupt {
                    what: "latency bucket",
                    detail: format!("bucket {bucket} outside 0..{LATENCY_BUCKETS}"),
                })?;
            steps[step_of(row)?]
                .latency
                .add(bucket, unsigned(row.int("requests")?));
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounds_are_log_spaced_and_increasing() {
        assert_eq!(LATENCY_BOUNDS_US[0], 250);
        assert_eq!(LATENCY_BOUNDS_US[1], 353);
        assert_eq!(LATENCY_BOUNDS_US[4], 1_000);
        assert_eq!(LATENCY_BOUNDS_US[42], 524_288_000);
        for pair in LATENCY_BOUNDS_US.windows(2) {
            let ratio = pair[1] as f64 / pair[0] as f64;
            assert!((ratio - std::f64::consts::SQRT_2).abs() < 0.01, "{pair:?}");
        }
    }

    #[test]
    fn a_latency_goes_to_the_bucket_whose_bounds_hold_it() {
        let of = |us| LatencyHistogram::bucket_of(Duration::from_micros(us));
        assert_eq!(of(0), 0);
        assert_eq!(of(250), 0, "bounds are inclusive above");
        assert_eq!(of(251), 1);
        assert_eq!(of(1_000), 4);
        assert_eq!(of(1_001), 5);
        assert_eq!(of(524_288_000), 42);
        assert_eq!(of(524_288_001), 43);
        assert_eq!(LatencyHistogram::bucket_of(Duration::MAX), 43);
    }

    #[test]
    fn percentiles_fall_in_the_bucket_of_the_rank() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.percentile_ms(0.5), None);
        // 90 invocations of 1 ms, 10 of 100 ms.
        for _ in 0..90 {
            h.record(Duration::from_millis(1));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(100));
        }
        let p50 = h.percentile_ms(0.5).expect("p50");
        assert!((0.707..=1.0).contains(&p50), "{p50}");
        let p95 = h.percentile_ms(0.95).expect("p95");
        assert!((90.51..=128.0).contains(&p95), "{p95}");
        let p99 = h.percentile_ms(0.99).expect("p99");
        assert!(p99 >= p95 && p99 <= 128.0, "{p99}");
        // Anything past the last bound shows as that bound.
        let mut long = LatencyHistogram::default();
        long.record(Duration::from_secs(3600));
        assert_eq!(long.percentile_ms(0.5), Some(524_288.0));
    }

    #[test]
    fn histograms_merge_and_unmerge_by_addition() {
        let (mut a, mut b) = (LatencyHistogram::default(), LatencyHistogram::default());
        a.record(Duration::from_millis(2));
        b.record(Duration::from_millis(2));
        b.record(Duration::from_millis(40));
        let mut sum = a;
        sum += b;
        assert_eq!(sum.total(), 3);
        assert_eq!(
            sum.buckets().collect::<Vec<_>>(),
            vec![(6, 2), (15, 1)],
            "2 ms ≤ bound 6 (2 ms), 40 ms in (32, 45.3] ms"
        );
        sum -= b;
        assert_eq!(sum, a);
    }

    #[test]
    fn steps_are_aligned_to_the_step_and_end_with_now() {
        let span = SeriesSpan::ending_at(1_000_007, 5, 12);
        assert_eq!(span.step_start(11), 1_000_005);
        assert_eq!(span.first_minute, 1_000_005 - 55);
        assert_eq!(span.end_minute(), 1_000_010);
        assert_eq!(span.step_of(1_000_007), Some(11));
        assert_eq!(span.step_of(span.first_minute), Some(0));
        assert_eq!(span.step_of(span.first_minute - 1), None);
        assert_eq!(span.step_of(1_000_010), None);
    }

    #[test]
    fn cpu_and_memory_are_unknown_without_figures() {
        let mut step = StepFigures::default();
        assert_eq!(step.cpu_percent(), None);
        assert_eq!(step.memory_mb(), None);
        step.cpu_millipercent = 50_000;
        step.cpu_minutes = 2;
        step.memory_kib = 3 * 1024;
        step.memory_minutes = 3;
        assert_eq!(step.cpu_percent(), Some(25.0));
        assert_eq!(step.memory_mb(), Some(1.0));
    }
}
