//! What the runtime controller reads and records, against real databases: SQLite
//! always, PostgreSQL when configured (and always in CI). Every test runs its body
//! once per backend.

use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};
use hangar_core::id::IdKind;
use hangar_core::logs::{LogLevel, NewLogLine, Stream};
use hangar_core::model::{Instance, Timestamp};
use hangar_core::resources::Resources;
use hangar_core::spec::{RuntimeConfig, Scaling, Source};
use hangar_core::status::{BuildStatus, DesiredState, InstanceStatus};
use hangar_store::seal::Sealer;
use hangar_store::testing::each_backend;
use hangar_store::{LogFilter, LogQuery, NewAgent, NewInstance, Store, StoreError};
use sqlx::{Connection, Executor};

/// An organization's IDs and an agent with its first build, ready with an artifact.
struct Fixture {
    org: String,
    user: String,
    agent: String,
    build: String,
}

async fn fixture(store: &Store) -> Fixture {
    let boot = store.bootstrap(None).await.expect("bootstrap");
    let org = boot.organization.id.clone();
    let user = boot.admin.id.clone();
    let cloud = store
        .get_cloud(&org, "local")
        .await
        .expect("cloud")
        .expect("local");
    let (agent, build) = store
        .create_agent(NewAgent {
            organization_id: org.clone(),
            user_id: user.clone(),
            cloud_id: cloud.id,
            url_base: None,
            name: "runner".into(),
            display_name: None,
            version: None,
            runtime: Default::default(),
            resources: Resources::default(),
            scaling: Scaling::default(),
            config: RuntimeConfig::default(),
            environment: BTreeMap::new(),
            source: Source::Github {
                repo: "a/b".into(),
                branch: None,
                path: None,
                commit: None,
            },
            metadata: BTreeMap::new(),
        })
        .await
        .expect("agent");
    store
        .set_build_status(&build.id, BuildStatus::Ready, None, Some("sha256:abc"))
        .await
        .expect("ready");
    Fixture {
        org,
        user,
        agent: agent.agent.id,
        build: build.id,
    }
}

async fn instance(store: &Store, f: &Fixture, build: &str, name: &str) -> Instance {
    store
        .create_instance(NewInstance {
            organization_id: f.org.clone(),
            agent_id: f.agent.clone(),
            build_id: build.into(),
            user_id: f.user.clone(),
            name: name.into(),
            resource_name: None,
            config: RuntimeConfig::default(),
            resources: Resources::default(),
            env_vars: BTreeMap::new(),
            replicas: 2,
            make_default: false,
        })
        .await
        .expect("instance")
}

fn t0() -> Timestamp {
    Utc.timestamp_millis_opt(1_700_000_000_000).unwrap()
}

fn line(ts: Timestamp, message: &str) -> NewLogLine {
    NewLogLine {
        timestamp: ts,
        stream: Stream::Stdout,
        level: LogLevel::Info,
        message: message.into(),
    }
}

fn lines(from: usize, to: usize) -> Vec<NewLogLine> {
    (from..=to)
        .map(|i| line(t0() + Duration::seconds(i as i64), &format!("line {i}")))
        .collect()
}

fn all() -> LogQuery {
    LogQuery {
        tail: None,
        since: None,
        after_seq: None,
        limit: 10_000,
    }
}

fn seqs(lines: &[hangar_core::logs::InstanceLogLine]) -> Vec<i64> {
    lines.iter().map(|l| l.seq).collect()
}

#[tokio::test]
async fn seqs_are_gapless_across_replicas_and_replays_are_stored_once() {
    each_backend(|store, url| async move {
        let f = fixture(&store).await;
        let inst = instance(&store, &f, &f.build, "logs").await;
        let other = instance(&store, &f, &f.build, "other").await;

        let a = store
            .append_instance_logs(&inst.id, "rep_a", 3, &lines(1, 3))
            .await
            .expect("append a");
        assert_eq!(seqs(&a), [1, 2, 3]);
        assert_eq!(a[0].replica_id, "rep_a");
        assert_eq!(a[2].message, "line 3");
        let b = store
            .append_instance_logs(
                &inst.id,
                "rep_b",
                2,
                &[
                    line(t0(), "b1"),
                    NewLogLine {
                        timestamp: t0(),
                        stream: Stream::Stderr,
                        level: LogLevel::Error,
                        message: "b2".into(),
                    },
                ],
            )
            .await
            .expect("append b");
        assert_eq!(seqs(&b), [4, 5]);
        // Another instance's log is numbered on its own.
        let o = store
            .append_instance_logs(&other.id, "rep_c", 1, &lines(1, 1))
            .await
            .expect("append other");
        assert_eq!(seqs(&o), [1]);

        // A replayed batch changes nothing; an overlapping one adds only its new
        // lines (output 4 and 5 of rep_a).
        assert!(store
            .append_instance_logs(&inst.id, "rep_a", 3, &lines(1, 3))
            .await
            .expect("replay")
            .is_empty());
        assert!(store
            .append_instance_logs(&inst.id, "rep_a", 2, &lines(1, 2))
            .await
            .expect("older replay")
            .is_empty());
        let overlap = store
            .append_instance_logs(&inst.id, "rep_a", 5, &lines(2, 5))
            .await
            .expect("overlap");
        assert_eq!(seqs(&overlap), [6, 7]);
        assert_eq!(
            overlap
                .iter()
                .map(|l| l.message.as_str())
                .collect::<Vec<_>>(),
            ["line 4", "line 5"]
        );
        // A batch with no lines still moves the cursor (lines the caller dropped).
        assert!(store
            .append_instance_logs(&inst.id, "rep_b", 4, &[])
            .await
            .expect("empty batch")
            .is_empty());
        assert_eq!(
            store.replica_log_cursor("rep_b").await.expect("cursor"),
            Some(4)
        );

        let stored = store.instance_logs(&inst.id, &all()).await.expect("read");
        assert_eq!(seqs(&stored), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(stored[4].stream, Stream::Stderr);
        assert_eq!(stored[4].level, LogLevel::Error);
        assert_eq!(stored[4].replica_id, "rep_b");
        assert_eq!(stored[0].timestamp, t0() + Duration::seconds(1));
        assert_eq!(stored, [a, b, overlap].concat());

        // A restarted server resumes where ingestion stopped.
        let restarted = Store::connect(
            &url,
            Sealer::new(&Sealer::generate_key()).expect("32-byte key"),
        )
        .await
        .expect("reconnect");
        assert_eq!(
            restarted.replica_log_cursor("rep_a").await.expect("cursor"),
            Some(5)
        );
        assert_eq!(
            restarted
                .replica_log_cursor("rep_new")
                .await
                .expect("cursor"),
            None
        );
        let resumed = restarted
            .append_instance_logs(&inst.id, "rep_a", 6, &lines(6, 6))
            .await
            .expect("resume");
        assert_eq!(seqs(&resumed), [8]);
        restarted
            .forget_replica_log_cursor("rep_a")
            .await
            .expect("forget");
        assert_eq!(
            store.replica_log_cursor("rep_a").await.expect("cursor"),
            None
        );

        // Unknown instances take no lines.
        let unknown = store
            .append_instance_logs("inst_nope", "rep_x", 1, &lines(1, 1))
            .await;
        assert!(
            matches!(
                unknown,
                Err(StoreError::NotFound {
                    what: IdKind::Instance,
                    ..
                })
            ),
            "{unknown:?}"
        );
        assert_eq!(
            store.replica_log_cursor("rep_x").await.expect("cursor"),
            None
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_writers_of_one_instance_get_distinct_consecutive_seqs() {
    each_backend(|store, _| async move {
        let f = fixture(&store).await;
        let inst = instance(&store, &f, &f.build, "busy").await;
        let mut tasks = Vec::new();
        for r in 0..6 {
            let store = store.clone();
            let id = inst.id.clone();
            tasks.push(tokio::spawn(async move {
                let replica = format!("rep_{r}");
                for batch in 0..5_usize {
                    let from = batch * 4 + 1;
                    store
                        .append_instance_logs(
                            &id,
                            &replica,
                            (from + 3) as u64,
                            &lines(from, from + 3),
                        )
                        .await
                        .expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let stored = store.instance_logs(&inst.id, &all()).await.expect("read");
        assert_eq!(seqs(&stored), (1..=120).collect::<Vec<i64>>());
        for r in 0..6 {
            let replica = format!("rep_{r}");
            let mine: Vec<&str> = stored
                .iter()
                .filter(|l| l.replica_id == replica)
                .map(|l| l.message.as_str())
                .collect();
            let expected: Vec<String> = (1..=20).map(|i| format!("line {i}")).collect();
            assert_eq!(mine, expected, "{replica}'s lines in its order");
            assert_eq!(
                store.replica_log_cursor(&replica).await.expect("cursor"),
                Some(20)
            );
        }
    })
    .await;
}

#[tokio::test]
async fn log_queries_tail_since_and_after_seq() {
    each_backend(|store, _| async move {
        let f = fixture(&store).await;
        let inst = instance(&store, &f, &f.build, "reader").await;
        // Lines 1..=10 at t0 + i seconds, then one whose replica's clock is behind.
        store
            .append_instance_logs(&inst.id, "rep_a", 10, &lines(1, 10))
            .await
            .expect("append");
        store
            .append_instance_logs(&inst.id, "rep_b", 1, &[line(t0(), "late clock")])
            .await
            .expect("append");
        let q =
            |tail: Option<u32>, since: Option<i64>, after_seq: Option<i64>, limit: u32| LogQuery {
                tail,
                since: since.map(|s| t0() + Duration::seconds(s)),
                after_seq,
                limit,
            };
        let read = |query: LogQuery| {
            let store = store.clone();
            let id = inst.id.clone();
            async move { seqs(&store.instance_logs(&id, &query).await.expect("read")) }
        };
        assert_eq!(read(all()).await, (1..=11).collect::<Vec<i64>>());
        assert_eq!(read(q(None, None, None, 3)).await, [1, 2, 3]);
        assert_eq!(read(q(Some(3), None, None, 100)).await, [9, 10, 11]);
        assert_eq!(
            read(q(Some(3), None, None, 2)).await,
            [10, 11],
            "limit caps tail"
        );
        assert_eq!(read(q(None, None, Some(7), 100)).await, [8, 9, 10, 11]);
        assert_eq!(read(q(None, None, Some(7), 2)).await, [8, 9]);
        assert_eq!(read(q(None, Some(5), None, 100)).await, [5, 6, 7, 8, 9, 10]);
        assert_eq!(read(q(Some(2), Some(5), None, 100)).await, [9, 10]);
        assert_eq!(read(q(None, Some(5), Some(8), 100)).await, [9, 10]);
        assert_eq!(
            read(q(Some(20), Some(0), None, 100)).await,
            (1..=11).collect::<Vec<i64>>()
        );
        assert!(read(q(None, Some(60), None, 100)).await.is_empty());
        assert!(read(q(None, None, Some(11), 100)).await.is_empty());
        assert!(read(q(None, None, None, 0)).await.is_empty());
        assert!(read(q(Some(0), None, None, 100)).await.is_empty());
        assert!(store
            .instance_logs("inst_nope", &all())
            .await
            .expect("read")
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn log_filters_count_only_matching_lines_and_combine_with_the_query() {
    each_backend(|store, _| async move {
        let f = fixture(&store).await;
        let inst = instance(&store, &f, &f.build, "filtered").await;
        // Line n printed n seconds after t0; 3 and 8 are errors, 5 a warning.
        let batch: Vec<NewLogLine> = (1..=10)
            .map(|n| NewLogLine {
                level: match n {
                    3 | 8 => LogLevel::Error,
                    5 => LogLevel::Warn,
                    _ => LogLevel::Info,
                },
                ..line(t0() + Duration::seconds(n), &format!("line {n}"))
            })
            .collect();
        store
            .append_instance_logs(&inst.id, "rep_a", 10, &batch)
            .await
            .expect("append");
        let read = |tail: Option<u32>, after_seq: Option<i64>, until: Option<i64>, min_level| {
            let store = store.clone();
            let id = inst.id.clone();
            async move {
                let query = LogQuery {
                    tail,
                    since: None,
                    after_seq,
                    limit: 100,
                };
                let filter = LogFilter {
                    until: until.map(|s| t0() + Duration::seconds(s)),
                    min_level,
                };
                seqs(
                    &store
                        .instance_logs_matching(&id, &query, &filter)
                        .await
                        .expect("read"),
                )
            }
        };
        assert_eq!(read(None, None, None, Some(LogLevel::Error)).await, [3, 8]);
        assert_eq!(
            read(None, None, None, Some(LogLevel::Warn)).await,
            [3, 5, 8]
        );
        assert_eq!(
            read(None, None, None, Some(LogLevel::Debug)).await,
            (1..=10).collect::<Vec<i64>>()
        );
        // `tail` counts matching lines only.
        assert_eq!(read(Some(1), None, None, Some(LogLevel::Error)).await, [8]);
        assert_eq!(read(Some(2), None, Some(6), None).await, [5, 6]);
        assert_eq!(
            read(Some(5), None, Some(6), Some(LogLevel::Warn)).await,
            [3, 5]
        );
        assert_eq!(read(None, Some(3), None, Some(LogLevel::Error)).await, [8]);
        assert!(read(None, None, Some(0), None).await.is_empty());
        assert!(read(None, None, Some(2), Some(LogLevel::Warn))
            .await
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_batch_larger_than_one_insert_is_stored_whole_and_in_order() {
    each_backend(|store, _| async move {
        let f = fixture(&store).await;
        let inst = instance(&store, &f, &f.build, "burst").await;
        // Several INSERTs and a partial last one, then a replay that overlaps.
        let stored = store
            .append_instance_logs(&inst.id, "rep_a", 1234, &lines(1, 1234))
            .await
            .expect("append");
        assert_eq!(seqs(&stored), (1..=1234).collect::<Vec<i64>>());
        let stored = store
            .append_instance_logs(&inst.id, "rep_a", 1300, &lines(1001, 1300))
            .await
            .expect("append");
        assert_eq!(seqs(&stored), (1235..=1300).collect::<Vec<i64>>());
        let read = store.instance_logs(&inst.id, &all()).await.expect("read");
        assert_eq!(seqs(&read), (1..=1300).collect::<Vec<i64>>());
        let messages: Vec<String> = read.into_iter().map(|l| l.message).collect();
        let expected: Vec<String> = (1..=1300).map(|i| format!("line {i}")).collect();
        assert_eq!(messages, expected);
    })
    .await;
}

#[tokio::test]
async fn trim_keeps_the_newest_lines_and_nul_is_stored_safely() {
    each_backend(|store, _| async move {
        let f = fixture(&store).await;
        let inst = instance(&store, &f, &f.build, "trimmed").await;
        store
            .append_instance_logs(&inst.id, "rep_a", 10, &lines(1, 10))
            .await
            .expect("append");
        assert_eq!(
            store.trim_instance_logs(&inst.id, 4).await.expect("trim"),
            6
        );
        let kept = store.instance_logs(&inst.id, &all()).await.expect("read");
        assert_eq!(seqs(&kept), [7, 8, 9, 10]);
        assert_eq!(kept[0].message, "line 7");
        assert_eq!(
            store.trim_instance_logs(&inst.id, 4).await.expect("trim"),
            0
        );
        assert_eq!(
            store.trim_instance_logs(&inst.id, 100).await.expect("trim"),
            0
        );
        assert_eq!(
            store
                .trim_instance_logs("inst_nope", 1)
                .await
                .expect("trim"),
            0
        );

        // Numbering goes on after a trim.
        let nul = store
            .append_instance_logs(&inst.id, "rep_a", 11, &[line(t0(), "a\0b\0")])
            .await
            .expect("append with NUL");
        assert_eq!(seqs(&nul), [11]);
        assert_eq!(nul[0].message, "a\u{FFFD}b\u{FFFD}");
        let read = store
            .instance_logs(
                &inst.id,
                &LogQuery {
                    tail: Some(1),
                    since: None,
                    after_seq: None,
                    limit: 10,
                },
            )
            .await
            .expect("read");
        assert_eq!(read, nul);

        assert_eq!(
            store.trim_instance_logs(&inst.id, 0).await.expect("trim"),
            5
        );
        assert!(store
            .instance_logs(&inst.id, &all())
            .await
            .expect("read")
            .is_empty());
        let next = store
            .append_instance_logs(&inst.id, "rep_a", 12, &lines(12, 12))
            .await
            .expect("append");
        assert_eq!(seqs(&next), [12]);
    })
    .await;
}

#[tokio::test]
async fn controller_sees_deleted_instances_until_they_are_reaped() {
    each_backend(|store, _| async move {
        let f = fixture(&store).await;
        let live = instance(&store, &f, &f.build, "live").await;
        let killed = instance(&store, &f, &f.build, "killed").await;
        let drained = instance(&store, &f, &f.build, "drained").await;
        // An instance of a build that is not ready: no artifact yet.
        let queued = store
            .queue_build(&f.org, &f.agent, None)
            .await
            .expect("queue")
            .expect("agent exists");
        let waiting = instance(&store, &f, &queued.id, "waiting").await;

        store
            .append_instance_logs(&killed.id, "rep_k", 2, &lines(1, 2))
            .await
            .expect("append");
        assert!(store
            .delete_instance(&f.org, &killed.id, true)
            .await
            .expect("delete"));
        assert!(store
            .delete_instance(&f.org, &drained.id, false)
            .await
            .expect("delete"));
        // The controller reports the replicas going away; the tombstone stays
        // stopped.
        store
            .record_instance_status(&killed.id, InstanceStatus::Stopping, None, 0, 0)
            .await
            .expect("status");
        // Replicas of a deleted instance may still print until they are gone.
        store
            .append_instance_logs(&killed.id, "rep_k", 3, &lines(3, 3))
            .await
            .expect("append after delete");

        let all_controlled = store.controlled_instances().await.expect("controlled");
        let ids: Vec<&str> = all_controlled
            .iter()
            .map(|c| c.instance.id.as_str())
            .collect();
        let mut expected = vec![
            live.id.as_str(),
            killed.id.as_str(),
            drained.id.as_str(),
            waiting.id.as_str(),
        ];
        expected.sort_unstable();
        assert_eq!(ids, expected, "every unreaped instance, in ID order");

        let c = store
            .controlled_instance(&live.id)
            .await
            .expect("get")
            .expect("live");
        assert!(!c.deleted && !c.force_stop);
        assert_eq!(c.instance, live);
        assert_eq!(c.artifact.as_deref(), Some("sha256:abc"));
        assert_eq!(c.build_status, BuildStatus::Ready);

        let c = store
            .controlled_instance(&killed.id)
            .await
            .expect("get")
            .expect("tombstone");
        assert!(c.deleted && c.force_stop);
        assert_eq!(c.instance.desired_state, DesiredState::Stopped);
        assert_eq!(c.instance.status, InstanceStatus::Stopping);

        let c = store
            .controlled_instance(&drained.id)
            .await
            .expect("get")
            .expect("tombstone");
        assert!(c.deleted && !c.force_stop);

        let c = store
            .controlled_instance(&waiting.id)
            .await
            .expect("get")
            .expect("waiting");
        assert_eq!(c.artifact, None);
        assert_eq!(c.build_status, BuildStatus::Queued);

        // Reaping drops it from the controller's view with its logs and cursors.
        store.mark_instance_reaped(&killed.id).await.expect("reap");
        assert!(store
            .controlled_instance(&killed.id)
            .await
            .expect("get")
            .is_none());
        assert!(!store
            .controlled_instances()
            .await
            .expect("controlled")
            .iter()
            .any(|c| c.instance.id == killed.id));
        assert!(store
            .instance_logs(&killed.id, &all())
            .await
            .expect("read")
            .is_empty());
        assert_eq!(
            store.replica_log_cursor("rep_k").await.expect("cursor"),
            None
        );
        let late = store
            .append_instance_logs(&killed.id, "rep_k", 4, &lines(4, 4))
            .await;
        assert!(matches!(late, Err(StoreError::NotFound { .. })), "{late:?}");
        store
            .mark_instance_reaped(&killed.id)
            .await
            .expect("reaping again is harmless");
        // A live instance is never reaped.
        let refused = store.mark_instance_reaped(&live.id).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::NotFound {
                    what: IdKind::Instance,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(store
            .controlled_instance(&live.id)
            .await
            .expect("get")
            .is_some());
        assert!(store
            .controlled_instance("inst_nope")
            .await
            .expect("get")
            .is_none());
    })
    .await;
}

#[tokio::test]
async fn stop_and_start_an_instance() {
    each_backend(|store, url| async move {
        let f = fixture(&store).await;
        let inst = instance(&store, &f, &f.build, "toggled").await;
        // A force flag left on a live instance (by hand, or by an older server).
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
        conn.execute(
            format!(
                "UPDATE instances SET force_stop = 1 WHERE id = '{}'",
                inst.id
            )
            .as_str(),
        )
        .await
        .expect("set force_stop");
        conn.close().await.expect("close");

        let stopped = store
            .set_instance_desired_state(&f.org, &inst.id, DesiredState::Stopped)
            .await
            .expect("stop")
            .expect("exists");
        assert_eq!(stopped.desired_state, DesiredState::Stopped);
        assert_eq!(stopped.id, inst.id);
        let c = store
            .controlled_instance(&inst.id)
            .await
            .expect("get")
            .expect("exists");
        assert!(c.force_stop, "stopping keeps the flag");
        assert_eq!(
            store
                .get_instance(&f.org, &inst.id)
                .await
                .expect("get")
                .expect("exists")
                .desired_state,
            DesiredState::Stopped
        );

        let started = store
            .set_instance_desired_state(&f.org, &inst.id, DesiredState::Running)
            .await
            .expect("start")
            .expect("exists");
        assert_eq!(started.desired_state, DesiredState::Running);
        let c = store
            .controlled_instance(&inst.id)
            .await
            .expect("get")
            .expect("exists");
        assert!(!c.force_stop, "starting clears the flag");

        // Not another organization's, and not a deleted one.
        assert!(store
            .set_instance_desired_state("org_other", &inst.id, DesiredState::Stopped)
            .await
            .expect("stop")
            .is_none());
        assert!(store
            .delete_instance(&f.org, &inst.id, false)
            .await
            .expect("delete"));
        assert!(store
            .set_instance_desired_state(&f.org, &inst.id, DesiredState::Running)
            .await
            .expect("start")
            .is_none());
        let c = store
            .controlled_instance(&inst.id)
            .await
            .expect("get")
            .expect("tombstone");
        assert_eq!(c.instance.desired_state, DesiredState::Stopped);
        assert!(c.deleted);
    })
    .await;
}

#[tokio::test]
async fn lines_past_their_age_go_for_every_instance_and_numbering_stays_one_range() {
    each_backend(|store, _| async move {
        let f = fixture(&store).await;
        let old = instance(&store, &f, &f.build, "aged").await;
        let fresh = instance(&store, &f, &f.build, "fresh").await;
        // Lines 1..=10 at t0+1s … t0+10s.
        for (inst, replica) in [(&old, "rep_a"), (&fresh, "rep_b")] {
            store
                .append_instance_logs(&inst.id, replica, 10, &lines(1, 10))
                .await
                .expect("append");
        }
        // Before t0+6.5s: lines 1..=6 of both instances.
        let cutoff = t0() + Duration::milliseconds(6_500);
        assert_eq!(
            store.expire_instance_logs(cutoff).await.expect("expire"),
            12
        );
        for inst in [&old, &fresh] {
            let kept = store.instance_logs(&inst.id, &all()).await.expect("read");
            assert_eq!(seqs(&kept), [7, 8, 9, 10]);
        }
        assert_eq!(store.expire_instance_logs(cutoff).await.expect("again"), 0);
        // A trim by count after an expiry still cuts at the right line.
        assert_eq!(store.trim_instance_logs(&old.id, 2).await.expect("trim"), 2);
        let kept = store.instance_logs(&old.id, &all()).await.expect("read");
        assert_eq!(seqs(&kept), [9, 10]);
    })
    .await;
}
