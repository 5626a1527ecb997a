//! Sticky sessions: every request of a caller's session goes to one
//! replica while that replica serves.
//!
//! A session is named by the caller (`options.session_id` on invoke, the
//! [`SESSION_HEADER`] on instance URLs) and kept in the store, so any node
//! can list it and a restarted server keeps serving it from the same
//! replica. Requests of an instance reach the node that runs it (the
//! hop), whose gateway reads the session, takes a slot on its replica —
//! waiting for one rather than going elsewhere, since the point of a
//! session is the state its replica holds — and records the request.
//!
//! A new session, or one whose replica left the rotation (stopped,
//! replaced, crashed, or of an instance the agent no longer runs), goes
//! to the ready replica with the fewest requests in flight, like any
//! request; the store counts the move in the session's `replica_changes`.
//!
//! What this does not promise: two first requests of one new session
//! that arrive at the same moment may land on two replicas (the later one
//! recorded wins, and the session stays there). A store that cannot be
//! read or written costs stickiness, not the request: it is logged and the
//! request is served as one without a session.

use hangar_controller::Target;
use hangar_core::model::Instance;
use hangar_store::SessionVisit;

use crate::Gateway;

/// The header that names a request's session on instance URLs. It is
/// passed on to the agent, as it is for invocations with a session.
pub const SESSION_HEADER: &str = "x-hangar-session";

/// The longest session ID.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// Why a session ID is refused, in words for the caller; `None` for a
/// good one: 1–128 characters of `A–Z a–z 0–9 . _ : -`.
#[must_use]
pub fn invalid_session_id(id: &str) -> Option<String> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_LEN {
        return Some(format!("must be 1–{MAX_SESSION_ID_LEN} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Some("may hold only letters, digits, '.', '_', ':' and '-'".to_owned());
    }
    None
}

/// Takes a slot on the replica a request goes to: `sticky` (its session's
/// replica) when it is among `targets` — and then no other, `None` while
/// it is full — else the least loaded target under `limit`, ties broken by
/// `start` (the rotation's turn).
pub(crate) fn pick<'t>(
    targets: &'t [Target],
    sticky: Option<&str>,
    limit: usize,
    start: usize,
) -> Option<&'t Target> {
    let take = |t: &Target| {
        t.load
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Relaxed,
                |l| (l < limit).then_some(l + 1),
            )
            .is_ok()
    };
    if let Some(own) = sticky.and_then(|id| targets.iter().find(|t| t.replica_id == id)) {
        return take(own).then_some(own);
    }
    if targets.is_empty() {
        return None;
    }
    let start = start % targets.len();
    let mut order: Vec<&Target> = (0..targets.len())
        .map(|i| &targets[(start + i) % targets.len()])
        .collect();
    order.sort_by_key(|t| t.load.load(std::sync::atomic::Ordering::Relaxed));
    order.into_iter().find(|t| take(t))
}

impl Gateway {
    /// The replica session `id` of `instance`'s organization is on, if it
    /// is live (of whichever instance: one no longer in the rotation moves).
    pub(crate) async fn session_replica(&self, instance: &Instance, id: &str) -> Option<String> {
        match self.store.session(&instance.organization_id, id).await {
            Ok(session) => session.map(|s| s.replica_id),
            Err(err) => {
                tracing::warn!(session = id, error = %err, "cannot read a session; serving the request without it");
                None
            }
        }
    }

    /// Records a request of session `id` served by `replica`.
    pub(crate) async fn visit_session(&self, instance: &Instance, id: &str, replica: &str) {
        let visit = SessionVisit {
            organization_id: &instance.organization_id,
            id,
            agent_id: &instance.agent_id,
            instance_id: &instance.id,
            replica_id: replica,
            idle_timeout: instance.config.session_idle_timeout(),
        };
        if let Err(err) = self.store.visit_session(&visit).await {
            tracing::warn!(session = id, error = %err, "cannot record a session's request");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    fn targets(loads: &[usize]) -> Vec<Target> {
        loads
            .iter()
            .enumerate()
            .map(|(i, load)| Target {
                replica_id: format!("rep_{i}"),
                address: ([127, 0, 0, 1], 8000 + u16::try_from(i).expect("few")).into(),
                load: Arc::new(AtomicUsize::new(*load)),
            })
            .collect()
    }

    fn picked(
        targets: &[Target],
        sticky: Option<&str>,
        limit: usize,
        start: usize,
    ) -> Option<String> {
        pick(targets, sticky, limit, start).map(|t| t.replica_id.clone())
    }

    #[test]
    fn a_session_stays_on_its_replica_however_loaded() {
        let targets = targets(&[0, 5, 0]);
        for start in 0..6 {
            assert_eq!(
                picked(&targets, Some("rep_1"), 100, start).as_deref(),
                Some("rep_1")
            );
        }
        // Each pick took a slot on it, and on no other.
        assert_eq!(targets[1].load.load(Ordering::Relaxed), 11);
        assert_eq!(targets[0].load.load(Ordering::Relaxed), 0);
        assert_eq!(targets[2].load.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_session_waits_for_its_full_replica_rather_than_move() {
        let targets = targets(&[0, 2, 0]);
        assert_eq!(picked(&targets, Some("rep_1"), 2, 0), None);
        targets[1].load.fetch_sub(1, Ordering::Relaxed);
        assert_eq!(
            picked(&targets, Some("rep_1"), 2, 0).as_deref(),
            Some("rep_1")
        );
    }

    #[test]
    fn a_new_session_or_one_whose_replica_is_gone_goes_to_the_least_loaded() {
        let targets = targets(&[3, 1, 2]);
        assert_eq!(picked(&targets, None, 100, 0).as_deref(), Some("rep_1"));
        assert_eq!(
            picked(&targets, Some("rep_9"), 100, 0).as_deref(),
            Some("rep_1")
        );
        // Now rep_1 holds 3, as rep_0 does; rep_2 holds 2.
        assert_eq!(
            picked(&targets, Some("rep_9"), 100, 0).as_deref(),
            Some("rep_2")
        );
    }

    #[test]
    fn equal_loads_go_round_the_rotation() {
        let targets = targets(&[0, 0, 0]);
        let firsts: Vec<_> = (0..3)
            .map(|start| {
                let t = pick(&targets, None, 100, start).expect("a slot");
                t.load.fetch_sub(1, Ordering::Relaxed);
                t.replica_id.clone()
            })
            .collect();
        assert_eq!(firsts, ["rep_0", "rep_1", "rep_2"]);
        assert_eq!(picked(&[], None, 100, 0), None);
    }

    #[test]
    fn session_ids_are_checked() {
        assert_eq!(invalid_session_id("user-42:chat_7.a"), None);
        assert!(invalid_session_id("").is_some());
        assert!(invalid_session_id(&"a".repeat(MAX_SESSION_ID_LEN + 1)).is_some());
        assert_eq!(invalid_session_id(&"a".repeat(MAX_SESSION_ID_LEN)), None);
        for bad in ["has space", "slash/", "ünï", "new\nline"] {
            assert!(invalid_session_id(bad).is_some(), "{bad:?}");
        }
    }
}
