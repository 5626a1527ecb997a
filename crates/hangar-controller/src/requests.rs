//! Request figures of the cluster, not of this server: every few seconds
//! ([`crate::ControllerConfig::request_flush_interval`]) and at a clean stop
//! this node adds the invocations its gateway counted ([`Traffic`]) to the
//! store's per-node rows; a read sums the stored rows of every node and
//! adds what this node has not written yet. The request path only counts
//! in memory.
//!
//! A read is exact for this node's invocations: a flush holds `flushing`
//! for writing from taking the unflushed counts until it has taken them
//! off again, and a read holds it for reading from its store query until
//! it has added the unflushed counts, so each invocation is seen once — in
//! the store or still in memory, never in both or neither. Other nodes'
//! invocations show once they have flushed. A node killed outright loses
//! what it had not flushed (a few seconds of counts).
//!
//! The same flush writes the rest of each minute's figures (latency
//! buckets, and the replicas' CPU and memory that the stats loop measured
//! here), and a series read ([`Controller::metric_series`]) adds the
//! unflushed invocations the same way; CPU and memory show once flushed.
//! Every node now and then deletes every node's figures older than the
//! metric retention ([`crate::ControllerConfig::metric_retention`]).
//!
//! Not here: Prometheus' series, which are per process
//! ([`Traffic::stats`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hangar_store::{MinuteFigures, RequestMinute, SeriesSpan, StepFigures, StoreError};

use crate::scale::{unix_minute, window_minutes, RequestStats, Traffic};
use crate::{lock, Controller, Inner};

/// Flushes between two deletions of minutes past the metric retention.
const PRUNE_EVERY: u32 = 120;

impl Controller {
    /// The invocations of each of `instance_ids` within the last `window`
    /// (whole minutes), summed over every node (see the module docs). An
    /// instance nobody invoked has zeros.
    pub async fn request_stats(
        &self,
        instance_ids: &[&str],
        window: Duration,
    ) -> Result<HashMap<String, RequestStats>, StoreError> {
        let since = unix_minute() - window_minutes(window) + 1;
        let _reading = self.inner.flushing.read().await;
        let mut counts = self.inner.store.request_counts(instance_ids, since).await?;
        let instances = lock(&self.inner.instances);
        for id in instance_ids {
            let stored = counts.entry((*id).to_owned()).or_default();
            if let Some(state) = instances.get(*id) {
                *stored += state.traffic.unflushed_since(since);
            }
        }
        Ok(counts
            .into_iter()
            .map(|(id, counts)| (id, RequestStats::from(counts)))
            .collect())
    }

    /// Instance `instance_id`'s figures over `span`, one per step, summed
    /// over every node: the stored ones and the invocations this node has
    /// not written yet (see the module docs).
    pub async fn metric_series(
        &self,
        instance_id: &str,
        span: SeriesSpan,
    ) -> Result<Vec<StepFigures>, StoreError> {
        let _reading = self.inner.flushing.read().await;
        let mut steps = self.inner.store.metric_series(instance_id, span).await?;
        let traffic = lock(&self.inner.instances)
            .get(instance_id)
            .map(|state| state.traffic.clone());
        if let Some(traffic) = traffic {
            for (step, figures) in traffic.unflushed_within(span) {
                if let Some(step) = steps.get_mut(step) {
                    step.counts += figures.counts;
                    step.latency += figures.latency;
                }
            }
        }
        Ok(steps)
    }

    /// Writes what this node counted and has not written yet (see the
    /// module docs); the controller does so on its own, this is for tests.
    pub async fn flush_requests(&self) -> Result<(), StoreError> {
        flush(&self.inner).await
    }
}

/// An instance's counts taken for a flush: its ID, its traffic, and what
/// was taken (to be taken off once written).
type Taken<'t> = (&'t str, &'t Traffic, Vec<(i64, MinuteFigures)>);

/// Adds this node's unflushed counts to the store in one transaction;
/// nothing is taken off when that fails (the next flush tries again).
pub(crate) async fn flush(inner: &Inner) -> Result<(), StoreError> {
    let _writing = inner.flushing.write().await;
    let traffic: Vec<(String, Arc<Traffic>)> = lock(&inner.instances)
        .values()
        .map(|state| (state.id.clone(), state.traffic.clone()))
        .collect();
    let taken: Vec<Taken<'_>> = traffic
        .iter()
        .map(|(id, traffic)| (id.as_str(), &**traffic, traffic.unflushed()))
        .filter(|(_, _, minutes)| !minutes.is_empty())
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    let rows: Vec<RequestMinute> = taken
        .iter()
        .flat_map(|(id, _, minutes)| {
            minutes.iter().map(|(minute, figures)| RequestMinute {
                instance_id: (*id).to_owned(),
                minute: *minute,
                figures: *figures,
            })
        })
        .collect();
    inner
        .store
        .add_request_counts(&inner.config.node_id, &rows)
        .await?;
    for (_, traffic, minutes) in &taken {
        traffic.flushed(minutes);
    }
    Ok(())
}

/// Flushes every [`crate::ControllerConfig::request_flush_interval`] until
/// shutdown (the last flush follows it, in [`Controller::start`]), and now
/// and then deletes every node's minutes past the metric retention and the
/// sessions that ended.
pub(crate) async fn flush_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.request_flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flushes = 0u32;
    loop {
        tokio::select! {
            () = inner.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(err) = flush(&inner).await {
            tracing::warn!(error = %err, "cannot write request figures; trying again");
        }
        flushes = flushes.wrapping_add(1);
        if flushes % PRUNE_EVERY == 1 {
            let kept = window_minutes(inner.config.metric_retention);
            match inner.store.prune_request_counts(unix_minute() - kept).await {
                Ok(0) => {}
                Ok(rows) => tracing::debug!(rows, "deleted figures past the metric retention"),
                Err(err) => tracing::warn!(error = %err, "cannot delete old request figures"),
            }
            // Ended sessions are never read again (reads pass over them).
            if let Err(err) = inner.store.prune_sessions().await {
                tracing::warn!(error = %err, "cannot delete ended sessions");
            }
        }
    }
}
