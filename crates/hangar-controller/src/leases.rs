//! Which instances this node runs: those whose lease it holds.
//!
//! Several servers (nodes) may share one database. Each instance has a
//! lease in the store ([`hangar_store::Store::acquire_instance_lease`]):
//! one holder, a fencing generation that grows on every takeover, an
//! expiry. A node reconciles only the instances it holds; it runs all of
//! such an instance's replicas (spreading them over nodes is a later step),
//! and another node's requests for that instance find no replica here.
//!
//! - **Taking.** A reconcile of an instance this node does not hold (a
//!   wake, or the resync, which visits every instance but those another
//!   ready node holds an unexpired lease of) tries to acquire it:
//!   that succeeds when the lease is free, ran out, is this node's own from
//!   before a restart, or its holder stopped or is dead. Otherwise the
//!   reconcile does nothing — no replica, no status — beyond removing any
//!   replica of the instance this node still has (a node back from the dead
//!   finds its old sandboxes running; their instance has moved away). A
//!   dead node's instances are so taken over within the lease (or
//!   `node_dead_after`) plus one resync period.
//! - **Keeping.** A keeper renews every held lease, in one transaction,
//!   every third of the window (below); each reconcile also renews its
//!   instance's lease at the generation it holds before it applies its
//!   plan. A renewal the store refuses means another node took the
//!   instance: this node stops and removes its replicas of it and forgets
//!   them. A renewal that cannot be made (the database is unreachable)
//!   refuses nothing yet: the replicas keep running, but nothing is done to
//!   them once the lease may have lapsed, until a renewal says whether it
//!   is still held.
//! - **Releasing.** A clean stop hands this node's instances over — the
//!   leases released, then its replicas stopped — when another node is
//!   ready to take them; alone, it keeps them, and its replicas keep
//!   running for the next start to adopt (as a single server always did).
//!   An instance reaped after its deletion loses its lease with its row.
//!
//! # Why two nodes never act on one instance at once
//!
//! A node acts on an instance only while `now < sent + window - margin`,
//! where `sent` is the monotonic time just before its last successful
//! write of that lease (an acquisition or a renewal) and `window` is the
//! shorter of the lease duration and `node_dead_after`. Another node can
//! take the lease only when the store shows that it ran out (its expiry,
//! written as the holder's wall clock at the write plus the duration, is
//! before the taker's wall clock) or that the holder is dead (its last
//! heartbeat is older than `node_dead_after`: and every lease write is also
//! a heartbeat, so that too means no lease write for that long) or stopped
//! (recorded only after its controller ended). Either way at least
//! `window` passed since the holder sent its last write, less the
//! difference between the two nodes' clocks, which the `margin` (a fifth of
//! the window) must cover: so the old holder stopped acting before the new
//! one could start. The generation then makes the loss final: the old
//! holder's next renewal, at its generation, is refused, so it cannot act
//! again even if its lease was never renewed by anyone since.
//!
//! With one server (SQLite, or a lone server on PostgreSQL) it holds every
//! instance: one acquisition per instance, then one small write per
//! reconcile (about what the reconcile's read of the instance costs) and
//! one per renewal period.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_store::{LeaseTerms, NodeStatus};
use tokio::time::Instant;

use crate::{lock, Inner};

/// The leases this node holds, as it last learned of them.
pub(crate) struct Leases {
    /// This node's ID.
    pub node: String,
    pub terms: LeaseTerms,
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    generation: i64,
    /// Acting on the instance stops at this instant, unless renewed.
    until: Instant,
}

impl Leases {
    pub(crate) fn new(node: String, terms: LeaseTerms) -> Self {
        Self {
            node,
            terms,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The shorter of the lease and the silence after which a node is dead.
    fn window(&self) -> Duration {
        self.terms.duration.min(self.terms.node_dead_after)
    }

    /// How long after its last write a lease is still this node's to act on.
    fn good_for(&self) -> Duration {
        self.window() - self.window() / 5
    }

    /// How often the keeper renews.
    pub(crate) fn renew_every(&self) -> Duration {
        (self.window() / 3).max(Duration::from_millis(50))
    }

    /// The generation this node holds `instance` at, if it may act on it
    /// now.
    pub(crate) fn holds(&self, instance: &str) -> Option<i64> {
        lock(&self.held)
            .get(instance)
            .filter(|held| Instant::now() < held.until)
            .map(|held| held.generation)
    }

    /// The generation this node last held `instance` at, lapsed or not: a
    /// renewal at it says whether it is still held.
    pub(crate) fn generation(&self, instance: &str) -> Option<i64> {
        lock(&self.held).get(instance).map(|held| held.generation)
    }

    /// Notes a successful write of the lease, made just after `sent`.
    pub(crate) fn written(&self, instance: &str, generation: i64, sent: Instant) {
        let until = sent + self.good_for();
        lock(&self.held).insert(instance.to_owned(), Held { generation, until });
    }

    /// Forgets the lease of `instance` if it is still the one at
    /// `generation` (a reconcile may have taken it anew meanwhile).
    pub(crate) fn lost(&self, instance: &str, generation: i64) {
        let mut held = lock(&self.held);
        if held
            .get(instance)
            .is_some_and(|h| h.generation == generation)
        {
            held.remove(instance);
        }
    }

    /// Forgets the lease of `instance` (it is reaped, or let go).
    pub(crate) fn forget(&self, instance: &str) {
        lock(&self.held).remove(instance);
    }

    /// Every lease held, with its generation.
    pub(crate) fn all(&self) -> Vec<(String, i64)> {
        lock(&self.held)
            .iter()
            .map(|(id, held)| (id.clone(), held.generation))
            .collect()
    }
}

/// The instances another node runs now: their lease unexpired, their
/// holder ready. The resync leaves them out (unless this node still has
/// replicas of one), so a node pays one read per resync for the instances
/// it does not run rather than an acquisition attempt for each. None when
/// the store cannot say (every instance is then visited, as each reconcile
/// checks its lease anyway).
pub(crate) async fn run_elsewhere(inner: &Inner) -> HashSet<String> {
    let (leases, nodes) = match tokio::try_join!(
        inner.store.instance_leases(None),
        inner.store.list_nodes()
    ) {
        Ok(read) => read,
        Err(err) => {
            tracing::debug!(error = %err, "cannot read the instance leases: every instance is visited");
            return HashSet::new();
        }
    };
    let now = hangar_store::store_now();
    let dead_after = inner.leases.terms.node_dead_after;
    let gone: HashSet<&str> = nodes
        .iter()
        .filter(|n| n.status(now, dead_after) != NodeStatus::Ready)
        .map(|n| n.beat.id.as_str())
        .collect();
    leases
        .into_iter()
        .filter(|lease| {
            lease
                .node_id
                .as_deref()
                .is_some_and(|holder| holder != inner.leases.node && !gone.contains(holder))
                && lease.expires_at > now
        })
        .map(|lease| lease.instance_id)
        .collect()
}

/// Renews every held lease each [`Leases::renew_every`]; a lease the store
/// refuses is forgotten, and its instance reconciled (which removes this
/// node's replicas of it, unless it can take it back).
pub(crate) async fn keep(inner: Arc<Inner>) {
    let mut ticks = tokio::time::interval(inner.leases.renew_every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        let held = inner.leases.all();
        if held.is_empty() {
            continue;
        }
        let sent = Instant::now();
        let renewed = inner
            .store
            .renew_instance_leases(&inner.leases.node, &held, inner.leases.terms.duration)
            .await;
        match renewed {
            Ok(renewed) => {
                if failing {
                    tracing::info!("instance leases are renewed again");
                    failing = false;
                }
                for ((instance, generation), still) in held.into_iter().zip(renewed) {
                    if still {
                        inner.leases.written(&instance, generation, sent);
                    } else {
                        tracing::warn!(%instance, generation, "another node took this instance over: its replicas here are stopped");
                        inner.leases.lost(&instance, generation);
                        inner.wake(&instance);
                    }
                }
            }
            Err(err) if !failing => {
                tracing::error!(error = %err, "cannot renew instance leases: their instances are left alone once the leases may have run out");
                failing = true;
            }
            Err(err) => tracing::debug!(error = %err, "instance leases still not renewed"),
        }
    }
}

/// At a clean stop, once nothing of the controller acts any more: when
/// another node is ready, releases every lease and then stops and removes
/// this node's replicas, so that node takes the instances over at its next
/// resync; alone, keeps both for the next start.
pub(crate) async fn hand_over(inner: &Inner) {
    let held = inner.leases.all();
    if held.is_empty() {
        return;
    }
    let now = hangar_store::store_now();
    let others = match inner.store.list_nodes().await {
        Ok(nodes) => nodes
            .iter()
            .filter(|n| n.beat.id != inner.leases.node)
            .any(|n| n.status(now, inner.leases.terms.node_dead_after) == NodeStatus::Ready),
        Err(err) => {
            tracing::warn!(error = %err, "cannot tell whether another node is ready: this node keeps its instances");
            return;
        }
    };
    if !others {
        tracing::info!(
            instances = held.len(),
            "no other node is ready: this node keeps its instances, and its replicas run on for the next start"
        );
        return;
    }
    match inner
        .store
        .release_instance_leases(&inner.leases.node, &held)
        .await
    {
        Ok(released) => {
            tracing::info!(
                instances = released,
                "released this node's instances to the other nodes"
            );
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot release this node's instances: the other nodes take them once the leases run out");
        }
    }
    for (instance, _) in &held {
        inner.leases.forget(instance);
    }
    let replicas: Vec<String> = {
        let states: Vec<_> = lock(&inner.instances).values().cloned().collect();
        states
            .iter()
            .flat_map(|state| {
                lock(&state.tracked)
                    .replicas
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut stops = tokio::task::JoinSet::new();
    for id in replicas {
        let driver = inner.driver.clone();
        let grace = inner.config.stop_grace;
        stops.spawn(async move {
            if let Err(err) = driver.stop(&id, grace).await {
                tracing::warn!(replica = %id, error = %err, "stop failed; removing anyway");
            }
            if let Err(err) = driver.remove(&id).await {
                tracing::warn!(replica = %id, error = %err, "cannot remove a replica of a released instance: the next start removes it");
            }
        });
    }
    stops.join_all().await;
}

/// How long a drain waits for the node it hands an instance to to run it
/// before it stops this node's replicas anyway.
const HAND_OVER_WAIT: Duration = Duration::from_secs(60);

/// Drains this node while [`Inner::draining`]: each instance it holds goes
/// to the ready, undrained node with the fewest replicas, one at a time,
/// with the usual roll — the lease handed straight to that node (a new
/// generation), this node's replicas left serving (not reconciled here)
/// until the store shows the new node took the lease up and records the
/// instance running with a ready replica, then stopped here once the
/// requests in flight on them have finished. Meanwhile a request for the
/// instance reaching this node is served by its replicas here until its
/// route is read again (within a second), then forwarded to the new node,
/// which holds requests through its cold start. Ends when nothing is left
/// or the drain is called off; with no node to go to it waits for one.
pub(crate) async fn drain_away(inner: Arc<Inner>) {
    use std::sync::atomic::Ordering;
    let mut told_alone = false;
    while inner.draining.load(Ordering::SeqCst) && !inner.shutdown.is_cancelled() {
        let held = inner.leases.all();
        if held.is_empty() {
            tracing::info!("this node is drained: it runs no instance");
            return;
        }
        let Some(target) = least_busy(&inner).await else {
            if !told_alone {
                tracing::warn!("no other node is ready: the drain waits for one");
                told_alone = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        told_alone = false;
        let (instance, generation) = &held[0];
        hand_to(&inner, instance, *generation, &target).await;
    }
}

/// The ready node other than this one, not drained, with the fewest
/// replicas.
async fn least_busy(inner: &Inner) -> Option<String> {
    let now = hangar_store::store_now();
    let nodes = inner.store.list_nodes().await.ok()?;
    nodes
        .into_iter()
        .filter(|n| {
            n.beat.id != inner.leases.node
                && n.draining_at.is_none()
                && n.status(now, inner.leases.terms.node_dead_after) == NodeStatus::Ready
        })
        .min_by_key(|n| n.beat.replicas)
        .map(|n| n.beat.id)
}

/// Hands one instance to node `to` (see [`drain_away`]).
async fn hand_to(inner: &Arc<Inner>, instance: &str, generation: i64, to: &str) {
    let state = inner.state(instance);
    let had_replicas = lock(&state.tracked)
        .replicas
        .values()
        .any(|r| r.phase.is_live());
    lock(&inner.handing_over).insert(instance.to_owned());
    let handed = inner
        .store
        .transfer_instance_lease(
            instance,
            &inner.leases.node,
            generation,
            to,
            inner.leases.terms.duration,
        )
        .await;
    match handed {
        Ok(Some(new_generation)) => {
            inner.leases.forget(instance);
            tracing::info!(%instance, node = %to, generation = new_generation, "drain: the instance moves to another node");
            crate::tell::system_log(
                inner,
                &state,
                "hangar",
                hangar_core::logs::LogLevel::Info,
                format!("[hangar] this node is drained: the instance moves to node {to}"),
            )
            .await;
            let deadline = Instant::now() + HAND_OVER_WAIT;
            while !taken_up(inner, instance, to, new_generation, had_replicas).await {
                if Instant::now() >= deadline {
                    tracing::warn!(%instance, node = %to, "drain: the new node does not run the instance yet; stopping the replicas here anyway");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(None) => {
            // Lost meanwhile: the next reconcile sees to it.
            inner.leases.lost(instance, generation);
        }
        Err(err) => {
            tracing::warn!(%instance, error = %err, "drain: cannot hand the instance over; trying again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    lock(&inner.handing_over).remove(instance);
    // Not held any more: the reconcile stops the replicas here, once
    // their requests in flight have finished.
    inner.wake(instance);
}

/// Whether node `to` took the instance up after it was handed over at
/// `generation`: it holds a later generation (its own acquisition, made
/// by its reconcile) and, when the instance had replicas here, records it
/// running with a ready replica.
async fn taken_up(
    inner: &Inner,
    instance: &str,
    to: &str,
    generation: i64,
    replicas: bool,
) -> bool {
    let holder = match inner
        .store
        .lease_holder(hangar_store::LeaseOf::Instance(instance))
        .await
    {
        Ok(holder) => holder,
        Err(_) => return false,
    };
    match holder {
        Some(holder) if holder.node.beat.id == to => {
            if holder.generation <= generation {
                return false;
            }
        }
        // Gone elsewhere, released or reaped: nothing to wait for.
        _ => return true,
    }
    if !replicas {
        return true;
    }
    match inner.store.controlled_instance(instance).await {
        Ok(Some(controlled)) => {
            controlled.instance.status == hangar_core::status::InstanceStatus::Running
                && controlled.instance.ready_replicas > 0
        }
        Ok(None) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(duration: u64, dead_after: u64) -> Leases {
        Leases::new(
            "n".into(),
            LeaseTerms {
                duration: Duration::from_secs(duration),
                node_dead_after: Duration::from_secs(dead_after),
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_acted_on_until_a_fifth_of_its_window_before_it_can_be_taken() {
        let l = leases(15, 30);
        assert_eq!(l.renew_every(), Duration::from_secs(5));
        l.written("i", 3, Instant::now());
        assert_eq!(l.holds("i"), Some(3));
        tokio::time::advance(Duration::from_millis(11_999)).await;
        assert_eq!(l.holds("i"), Some(3));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            l.holds("i"),
            None,
            "12 s: the last 3 s are the clocks' margin"
        );
        assert_eq!(l.generation("i"), Some(3), "lapsed, not lost");
        // A dead-after shorter than the lease is the window.
        let l = leases(60, 15);
        l.written("i", 1, Instant::now());
        tokio::time::advance(Duration::from_secs(12)).await;
        assert_eq!(l.holds("i"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_generation_that_was_refused_is_forgotten() {
        let l = leases(15, 15);
        l.written("i", 2, Instant::now());
        l.lost("i", 1);
        assert_eq!(l.holds("i"), Some(2));
        l.lost("i", 2);
        assert_eq!(l.generation("i"), None);
        assert!(l.all().is_empty());
    }
}
