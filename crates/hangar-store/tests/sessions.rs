//! Sticky sessions against real databases: SQLite always, PostgreSQL when
//! configured (and always in CI). Two stores on one database stand for two
//! nodes: what one records, the other reads.

use std::time::Duration;

use hangar_store::seal::Sealer;
use hangar_store::testing::each_backend;
use hangar_store::{SessionVisit, Store};

fn visit<'a>(org: &'a str, id: &'a str, replica: &'a str, idle: Duration) -> SessionVisit<'a> {
    SessionVisit {
        organization_id: org,
        id,
        agent_id: "agent_1",
        instance_id: "inst_1",
        replica_id: replica,
        idle_timeout: idle,
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn visits_count_move_and_are_read_by_another_node() {
    each_backend(|a, url| async move {
        let b = Store::connect(&url, Sealer::new(&Sealer::generate_key()).expect("key"))
            .await
            .expect("second node's store");
        assert_eq!(a.session("org_1", "chat-1").await.expect("read"), None);
        for _ in 0..3 {
            a.visit_session(&visit("org_1", "chat-1", "rep_a", HOUR))
                .await
                .expect("visit");
        }
        let s = b
            .session("org_1", "chat-1")
            .await
            .expect("read")
            .expect("live");
        assert_eq!(
            (s.replica_id.as_str(), s.requests, s.replica_changes),
            ("rep_a", 3, 0)
        );
        assert!(s.started_at <= s.last_active_at && s.last_active_at < s.expires_at);
        // Its replica went: the session moves, and says so.
        a.visit_session(&visit("org_1", "chat-1", "rep_b", HOUR))
            .await
            .expect("visit");
        let moved = b
            .session("org_1", "chat-1")
            .await
            .expect("read")
            .expect("live");
        assert_eq!(
            (
                moved.replica_id.as_str(),
                moved.requests,
                moved.replica_changes
            ),
            ("rep_b", 4, 1)
        );
        assert_eq!(moved.started_at, s.started_at);
        // Another organization's session of the same ID is another session.
        assert_eq!(a.session("org_2", "chat-1").await.expect("read"), None);
        a.visit_session(&visit("org_2", "chat-1", "rep_c", HOUR))
            .await
            .expect("visit");
        a.visit_session(&visit("org_1", "chat-2", "rep_a", HOUR))
            .await
            .expect("visit");
        let listed = b.agent_sessions("org_1", "agent_1").await.expect("list");
        let mut ids: Vec<_> = listed.iter().map(|s| s.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["chat-1", "chat-2"]);
        let per_replica = b.sessions_per_replica("inst_1").await.expect("counts");
        assert_eq!(per_replica.get("rep_a"), Some(&1));
        assert_eq!(per_replica.get("rep_b"), Some(&1));
        assert_eq!(per_replica.get("rep_c"), Some(&1));
        // Ending it on one node ends it for every node, once.
        let ended = b
            .end_session("org_1", "chat-1")
            .await
            .expect("end")
            .expect("was live");
        assert_eq!(ended.replica_id, "rep_b");
        assert_eq!(a.session("org_1", "chat-1").await.expect("read"), None);
        assert_eq!(a.end_session("org_1", "chat-1").await.expect("end"), None);
        assert!(a.session("org_2", "chat-1").await.expect("read").is_some());
    })
    .await;
}

#[tokio::test]
async fn an_idle_session_ends_and_its_id_starts_afresh() {
    each_backend(|store, _| async move {
        // No idle time at all: ended as soon as it is written.
        store
            .visit_session(&visit("org_1", "brief", "rep_a", Duration::ZERO))
            .await
            .expect("visit");
        assert_eq!(store.session("org_1", "brief").await.expect("read"), None);
        assert!(store
            .agent_sessions("org_1", "agent_1")
            .await
            .expect("list")
            .is_empty());
        assert_eq!(
            store
                .sessions_per_replica("inst_1")
                .await
                .expect("counts")
                .len(),
            0
        );
        // The same ID again is a new session: its count and moves start over.
        store
            .visit_session(&visit("org_1", "brief", "rep_b", HOUR))
            .await
            .expect("visit");
        let s = store
            .session("org_1", "brief")
            .await
            .expect("read")
            .expect("live");
        assert_eq!((s.requests, s.replica_changes), (1, 0));
        store
            .visit_session(&visit("org_1", "gone", "rep_a", Duration::ZERO))
            .await
            .expect("visit");
        assert_eq!(store.prune_sessions().await.expect("prune"), 1);
    })
    .await;
}
