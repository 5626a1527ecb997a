//! The durable job queue against real databases: SQLite always, PostgreSQL
//! when configured (and always in CI). Every test runs its body once per
//! backend; "two servers" are two stores (two pools) on one database.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hangar_core::resources::Resources;
use hangar_core::spec::{RuntimeConfig, Scaling, Source};
use hangar_core::status::JobStatus;
use hangar_store::testing::{each_backend, second_store};
use hangar_store::{job_error, JobOutcome, JobResult, NewAgent, NewJob, Store};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);

/// The bootstrap organization and `n` agents in it.
async fn fixture(store: &Store, n: usize) -> (String, Vec<String>) {
    let boot = store.bootstrap(None).await.expect("bootstrap");
    let org = boot.organization.id.clone();
    let cloud = store
        .get_cloud(&org, "local")
        .await
        .expect("cloud")
        .expect("local");
    let mut agents = Vec::new();
    for i in 0..n {
        let (agent, _) = store
            .create_agent(NewAgent {
                organization_id: org.clone(),
                user_id: boot.admin.id.clone(),
                cloud_id: cloud.id.clone(),
                url_base: None,
                name: format!("agent-{i}"),
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
        agents.push(agent.agent.id);
    }
    (org, agents)
}

async fn accept(store: &Store, org: &str, agent: &str, input: serde_json::Value) -> String {
    let (job, created) = store
        .create_job(NewJob {
            organization_id: org.to_owned(),
            agent_id: agent.to_owned(),
            input,
            ..NewJob::default()
        })
        .await
        .expect("accept");
    assert!(created);
    assert_eq!(job.status, JobStatus::Pending);
    job.id
}

fn completed(id: &str, output: serde_json::Value) -> JobResult {
    JobResult {
        job_id: id.to_owned(),
        outcome: JobOutcome::Completed {
            output,
            usage: Some(json!({"tokens": 1})),
            instance_id: "inst_x".into(),
            replica_id: "rep_x".into(),
            latency: Duration::from_millis(7),
        },
    }
}

#[tokio::test]
async fn a_job_is_accepted_claimed_and_completed() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 1).await;
        let id = accept(&store, &org, &agents[0], json!({"q": 1})).await;
        let claimed = store
            .claim_jobs("srv-a", 10, 4, LEASE)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        let job = &claimed[0];
        assert_eq!(
            (job.id.as_str(), job.status, job.attempts),
            (id.as_str(), JobStatus::Running, 1)
        );
        assert_eq!(job.input, json!({"q": 1}));
        assert_eq!(job.timeout_ms, 300_000);
        assert!(job.started_at.is_some());
        assert!(store
            .claim_jobs("srv-a", 10, 4, LEASE)
            .await
            .expect("again")
            .is_empty());
        assert_eq!(
            store.renew_job_leases("srv-a", LEASE).await.expect("renew"),
            vec![id.clone()]
        );
        assert_eq!(
            store
                .finish_jobs("srv-a", &[completed(&id, json!({"a": 1}))])
                .await
                .expect("finish"),
            vec![true]
        );
        let job = store.get_job(&org, &id).await.expect("get").expect("job");
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.output, Some(json!({"a": 1})));
        assert_eq!(job.usage, Some(json!({"tokens": 1})));
        assert_eq!(job.instance_id.as_deref(), Some("inst_x"));
        assert_eq!(job.latency_ms, Some(7));
        assert!(job.finished_at.is_some());
        // The end is an event, written with it.
        let events = store
            .list_events(&org, None, Some("job.completed"), 10)
            .await
            .expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].subject, id);
        assert_eq!(events[0].data["agent_id"], agents[0].as_str());
        assert_eq!(events[0].data["latency_ms"], 7);
        // Another organization cannot see it.
        assert!(store
            .get_job("org_other", &id)
            .await
            .expect("get")
            .is_none());
        assert!(store
            .cancel_job("org_other", &id)
            .await
            .expect("cancel")
            .is_none());
        // Finishing twice changes nothing.
        assert_eq!(
            store
                .finish_jobs("srv-a", &[completed(&id, json!("again"))])
                .await
                .expect("finish"),
            vec![false]
        );
        assert!(store
            .renew_job_leases("srv-a", LEASE)
            .await
            .expect("renew")
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_get_one_job() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 2).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (store, org, agent) = (store.clone(), org.clone(), agents[0].clone());
                tokio::spawn(async move {
                    store
                        .create_job(NewJob {
                            organization_id: org,
                            agent_id: agent,
                            input: json!(1),
                            idempotency_key: Some("same".into()),
                            ..NewJob::default()
                        })
                        .await
                        .expect("accept")
                })
            })
            .collect();
        let mut ids = BTreeSet::new();
        let mut created = 0;
        for t in tasks {
            let (job, new) = t.await.expect("task");
            ids.insert(job.id);
            created += usize::from(new);
        }
        assert_eq!((ids.len(), created), (1, 1));
        // The key is per agent.
        let (other, new) = store
            .create_job(NewJob {
                organization_id: org.clone(),
                agent_id: agents[1].clone(),
                input: json!(1),
                idempotency_key: Some("same".into()),
                ..NewJob::default()
            })
            .await
            .expect("accept");
        assert!(new && !ids.contains(&other.id));
    })
    .await;
}

#[tokio::test]
async fn two_servers_never_claim_the_same_job() {
    each_backend(|store, url| async move {
        let (org, agents) = fixture(&store, 4).await;
        let mut all = BTreeSet::new();
        for i in 0..200 {
            all.insert(accept(&store, &org, &agents[i % 4], json!(i)).await);
        }
        let other = second_store(&url).await;
        let claimers: Vec<_> = [("srv-a", store.clone()), ("srv-b", other.clone())]
            .into_iter()
            .flat_map(|(owner, store)| {
                // Two claim loops per server, each finishing what it claims.
                (0..2).map(move |_| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let mut mine = Vec::new();
                        loop {
                            let jobs = store
                                .claim_jobs(owner, 7, 1000, LEASE)
                                .await
                                .expect("claim");
                            if jobs.is_empty() {
                                break;
                            }
                            let results: Vec<_> = jobs
                                .iter()
                                .map(|j| completed(&j.id, json!(owner)))
                                .collect();
                            let applied = store.finish_jobs(owner, &results).await.expect("finish");
                            assert!(applied.iter().all(|a| *a));
                            mine.extend(jobs.into_iter().map(|j| j.id));
                        }
                        mine
                    })
                })
            })
            .collect();
        let mut seen = Vec::new();
        for c in claimers {
            seen.extend(c.await.expect("claimer"));
        }
        let unique: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), unique.len(), "a job was claimed twice");
        assert_eq!(unique, all);
        for id in &all {
            let job = store.get_job(&org, id).await.expect("get").expect("job");
            assert_eq!((job.status, job.attempts), (JobStatus::Completed, 1));
        }
        other.close().await;
    })
    .await;
}

#[tokio::test]
async fn the_per_agent_cap_holds_across_servers() {
    each_backend(|store, url| async move {
        let (org, agents) = fixture(&store, 2).await;
        for i in 0..30 {
            accept(&store, &org, &agents[0], json!(i)).await;
        }
        let late = accept(&store, &org, &agents[1], json!("other agent")).await;
        // One server alone: 3 of agent 0, and agent 1's job behind them.
        let first = store
            .claim_jobs("srv-a", 10, 3, LEASE)
            .await
            .expect("claim");
        assert_eq!(first.len(), 4);
        assert!(first.iter().any(|j| j.id == late));
        assert!(store
            .claim_jobs("srv-a", 10, 3, LEASE)
            .await
            .expect("claim")
            .is_empty());
        // Freeing one slot lets exactly one more in.
        let a0: Vec<_> = first.iter().filter(|j| j.agent_id == agents[0]).collect();
        store
            .finish_jobs("srv-a", &[completed(&a0[0].id, json!(0))])
            .await
            .expect("finish");
        assert_eq!(
            store
                .claim_jobs("srv-a", 10, 3, LEASE)
                .await
                .expect("claim")
                .len(),
            1
        );
        // Two servers claiming at once after slots free up: never above the cap.
        let other = second_store(&url).await;
        for round in 0..5 {
            let running: Vec<String> = store
                .renew_job_leases("srv-a", LEASE)
                .await
                .expect("renew")
                .into_iter()
                .chain(other.renew_job_leases("srv-b", LEASE).await.expect("renew"))
                .collect();
            let a = store.clone();
            let b = other.clone();
            let results: Vec<_> = running
                .iter()
                .map(|id| completed(id, json!(round)))
                .collect();
            a.finish_jobs("srv-a", &results).await.expect("finish a");
            b.finish_jobs("srv-b", &results).await.expect("finish b");
            let (x, y) = tokio::join!(
                a.claim_jobs("srv-a", 10, 3, LEASE),
                b.claim_jobs("srv-b", 10, 3, LEASE)
            );
            let claimed = x.expect("a").len() + y.expect("b").len();
            let now = store.running_job_count(&agents[0]).await.expect("count");
            assert!(now <= 3, "round {round}: {now} running");
            assert_eq!(claimed as u32, now, "round {round}");
        }
        other.close().await;
    })
    .await;
}

#[tokio::test]
async fn expired_leases_run_again_and_the_old_owner_loses_its_say() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 1).await;
        let id = accept(&store, &org, &agents[0], json!("x")).await;
        let claimed = store
            .claim_jobs("dead-server", 1, 4, Duration::ZERO)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1);
        // A lease that is still good is not reclaimed.
        let live = accept(&store, &org, &agents[0], json!("y")).await;
        assert_eq!(
            store
                .claim_jobs("live", 1, 4, LEASE)
                .await
                .expect("claim")
                .len(),
            1
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.reclaim_expired_jobs().await.expect("reclaim"), 1);
        let again = store.claim_jobs("srv-b", 5, 4, LEASE).await.expect("claim");
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id.as_str(), again[0].attempts), (id.as_str(), 2));
        // The dead server's late answer is dropped.
        assert_eq!(
            store
                .finish_jobs("dead-server", &[completed(&id, json!("late"))])
                .await
                .expect("finish"),
            vec![false]
        );
        store
            .finish_jobs("srv-b", &[completed(&id, json!("fresh"))])
            .await
            .expect("finish");
        let job = store.get_job(&org, &id).await.expect("get").expect("job");
        assert_eq!(job.output, Some(json!("fresh")));
        assert_eq!(
            store
                .get_job(&org, &live)
                .await
                .expect("get")
                .expect("job")
                .status,
            JobStatus::Running
        );
    })
    .await;
}

#[tokio::test]
async fn a_restarted_server_releases_its_previous_processes_jobs() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 1).await;
        for i in 0..3 {
            accept(&store, &org, &agents[0], json!(i)).await;
        }
        store
            .claim_jobs("node-a/boot-1", 1, 9, LEASE)
            .await
            .expect("claim");
        store
            .claim_jobs("node-b/boot-1", 1, 9, LEASE)
            .await
            .expect("claim");
        store
            .claim_jobs("node-a/boot-2", 1, 9, LEASE)
            .await
            .expect("claim");
        // node-a restarted as boot-2: boot-1's job is pending again, nobody else's.
        assert_eq!(
            store
                .release_jobs("node-a/", "node-a/boot-2")
                .await
                .expect("release"),
            1
        );
        let again = store
            .claim_jobs("node-a/boot-2", 9, 9, LEASE)
            .await
            .expect("claim");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 2);
    })
    .await;
}

#[tokio::test]
async fn retries_wait_for_their_backoff() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 1).await;
        let id = accept(&store, &org, &agents[0], json!("x")).await;
        store.claim_jobs("srv", 1, 4, LEASE).await.expect("claim");
        let retry = |after| JobResult {
            job_id: id.clone(),
            outcome: JobOutcome::Retry {
                error: job_error("AGENT_UNAVAILABLE", "no replica is ready"),
                after,
            },
        };
        store
            .finish_jobs("srv", &[retry(Duration::from_secs(3600))])
            .await
            .expect("retry");
        let job = store.get_job(&org, &id).await.expect("get").expect("job");
        assert_eq!(job.status, JobStatus::Pending);
        assert_eq!(
            job.error.as_ref().map(|e| &e["code"]),
            Some(&json!("AGENT_UNAVAILABLE"))
        );
        assert!(store
            .claim_jobs("srv", 1, 4, LEASE)
            .await
            .expect("claim")
            .is_empty());
        // Now due: a zero backoff.
        let id2 = accept(&store, &org, &agents[0], json!("y")).await;
        store.claim_jobs("srv", 1, 4, LEASE).await.expect("claim");
        store
            .finish_jobs(
                "srv",
                &[JobResult {
                    job_id: id2.clone(),
                    outcome: JobOutcome::Retry {
                        error: job_error("AGENT_UNREACHABLE", "refused"),
                        after: Duration::ZERO,
                    },
                }],
            )
            .await
            .expect("retry");
        let again = store.claim_jobs("srv", 1, 4, LEASE).await.expect("claim");
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id.as_str(), again[0].attempts), (id2.as_str(), 2));
        store
            .finish_jobs(
                "srv",
                &[JobResult {
                    job_id: id2.clone(),
                    outcome: JobOutcome::Failed {
                        error: job_error("AGENT_ERROR", "the agent answered 500"),
                        instance_id: Some("inst_y".into()),
                    },
                }],
            )
            .await
            .expect("fail");
        let job = store.get_job(&org, &id2).await.expect("get").expect("job");
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(
            job.error.as_ref().map(|e| &e["code"]),
            Some(&json!("AGENT_ERROR"))
        );
    })
    .await;
}

#[tokio::test]
async fn a_cancelled_running_job_is_dropped_by_its_owner() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 1).await;
        let id = accept(&store, &org, &agents[0], json!("x")).await;
        store.claim_jobs("srv", 1, 4, LEASE).await.expect("claim");
        let job = store
            .cancel_job(&org, &id)
            .await
            .expect("cancel")
            .expect("job");
        assert_eq!(job.status, JobStatus::Cancelled);
        assert!(store
            .renew_job_leases("srv", LEASE)
            .await
            .expect("renew")
            .is_empty());
        assert_eq!(
            store
                .finish_jobs("srv", &[completed(&id, json!("late"))])
                .await
                .expect("finish"),
            vec![false]
        );
        let job = store.get_job(&org, &id).await.expect("get").expect("job");
        assert_eq!((job.status, job.output), (JobStatus::Cancelled, None));
        // A cancelled job is not running: it takes no slot.
        assert_eq!(store.running_job_count(&agents[0]).await.expect("count"), 0);
        // Cancelling a pending job; cancelling again changes nothing.
        let pending = accept(&store, &org, &agents[0], json!("y")).await;
        for _ in 0..2 {
            let job = store
                .cancel_job(&org, &pending)
                .await
                .expect("cancel")
                .expect("job");
            assert_eq!(job.status, JobStatus::Cancelled);
        }
        assert!(store
            .claim_jobs("srv", 1, 4, LEASE)
            .await
            .expect("claim")
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_sync_invocation_with_a_key_is_recorded_running_under_its_request() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 1).await;
        let new = NewJob {
            organization_id: org.clone(),
            agent_id: agents[0].clone(),
            input: json!({"q": 2}),
            headers: BTreeMap::from([("x-extra".to_owned(), "1".to_owned())]),
            timeout: Duration::from_secs(5),
            idempotency_key: Some("sync-key".into()),
            run_by: Some("req-1".into()),
        };
        let (job, created) = store.create_job(new.clone()).await.expect("accept");
        assert!(created);
        assert_eq!(
            (job.status, job.attempts, job.sync),
            (JobStatus::Running, 1, true)
        );
        // Not the queue's to claim.
        assert!(store
            .claim_jobs("srv", 5, 5, LEASE)
            .await
            .expect("claim")
            .is_empty());
        let (same, created) = store.create_job(new).await.expect("again");
        assert!(!created);
        assert_eq!(same.id, job.id);
        assert_eq!(same.headers.get("x-extra").map(String::as_str), Some("1"));
        assert_eq!(same.timeout_ms, 5000);
        store
            .finish_jobs("req-1", &[completed(&job.id, json!("done"))])
            .await
            .expect("finish");
        let done = store
            .get_job(&org, &job.id)
            .await
            .expect("get")
            .expect("job");
        assert_eq!(done.status, JobStatus::Completed);
    })
    .await;
}

#[tokio::test]
async fn the_intake_stores_concurrent_accepts_in_batches_and_one_bad_job_fails_alone() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 1).await;
        let (intake, _) = hangar_store::JobIntake::start(store.clone(), Default::default());
        let accept = |agent: String, i: usize| {
            let (intake, org) = (intake.clone(), org.clone());
            tokio::spawn(async move {
                intake
                    .accept(NewJob {
                        organization_id: org,
                        agent_id: agent,
                        input: json!({ "i": i }),
                        ..NewJob::default()
                    })
                    .await
            })
        };
        // 200 at once, and among them one for an agent that does not exist
        // (its row breaks a foreign key, so its batch cannot commit).
        let mut tasks: Vec<_> = (0..200).map(|i| accept(agents[0].clone(), i)).collect();
        tasks.insert(100, accept("agt_missing".into(), 999));
        let mut stored = BTreeSet::new();
        let mut failed = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok((job, created)) => {
                    assert!(created);
                    assert_eq!(job.status, JobStatus::Pending);
                    let read = store
                        .get_job(&org, &job.id)
                        .await
                        .expect("read")
                        .expect("stored before the answer");
                    assert_eq!(read.input, job.input);
                    stored.insert(job.input["i"].as_u64().expect("i"));
                }
                Err(_) => failed += 1,
            }
        }
        assert_eq!(failed, 1, "only the bad job fails");
        assert_eq!(stored, (0..200).collect::<BTreeSet<u64>>());
        // Every stored job is claimable exactly once.
        let claimed = store
            .claim_jobs("srv-a", 500, 500, LEASE)
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 200);
    })
    .await;
}

#[tokio::test]
async fn the_intake_stops_at_shutdown_and_no_accepted_job_is_lost() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 1).await;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (intake, task) = hangar_store::JobIntake::start(store.clone(), shutdown.clone());
        let accept = |i: u64| {
            let (intake, org, agent) = (intake.clone(), org.clone(), agents[0].clone());
            tokio::spawn(async move {
                intake
                    .accept(NewJob {
                        organization_id: org,
                        agent_id: agent,
                        input: json!({ "i": i }),
                        ..NewJob::default()
                    })
                    .await
            })
        };
        // Accepts on their way in while the server shuts down: whether
        // they reach the batch before it closes or come after, each is
        // answered only once its job is stored.
        let racing: Vec<_> = (0..100).map(accept).collect();
        shutdown.cancel();
        task.await.expect("the intake ends at shutdown");
        let late = accept(100);
        let mut stored = BTreeSet::new();
        for t in racing.into_iter().chain([late]) {
            let (job, _) = t.await.expect("task").expect("accepted");
            let read = store
                .get_job(&org, &job.id)
                .await
                .expect("read")
                .expect("stored before the answer");
            stored.insert(read.input["i"].as_u64().expect("i"));
        }
        assert_eq!(stored, (0..=100).collect::<BTreeSet<u64>>());
    })
    .await;
}

#[tokio::test]
async fn an_organizations_jobs_are_listed_newest_first_by_agent_and_status() {
    each_backend(|store, _| async move {
        let (org, agents) = fixture(&store, 2).await;
        let mut made = Vec::new();
        for i in 0..3 {
            made.push(accept(&store, &org, &agents[i % 2], json!({"i": i})).await);
        }
        store.cancel_job(&org, &made[1]).await.expect("cancel");
        let all = store
            .list_jobs(&org, None, None, None, 10)
            .await
            .expect("list");
        let ids: Vec<&str> = all.items.iter().map(|j| j.id.as_str()).collect();
        let mut newest_first: Vec<&str> = made.iter().map(String::as_str).collect();
        newest_first.reverse();
        assert_eq!(ids, newest_first);
        assert!(!all.has_more);

        let first = store
            .list_jobs(&org, None, None, None, 2)
            .await
            .expect("page 1");
        assert_eq!(first.items.len(), 2);
        assert!(first.has_more);
        let after = first.items.last().map(|j| j.id.clone());
        let rest = store
            .list_jobs(&org, None, None, after.as_deref(), 2)
            .await
            .expect("page 2");
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.items[0].id, made[0]);

        let of_first = store
            .list_jobs(&org, Some(&agents[0]), None, None, 10)
            .await
            .expect("by agent");
        assert_eq!(of_first.items.len(), 2);
        assert!(of_first.items.iter().all(|j| j.agent_id == agents[0]));
        let cancelled = store
            .list_jobs(&org, None, Some(JobStatus::Cancelled), None, 10)
            .await
            .expect("by status");
        assert_eq!(cancelled.items.len(), 1);
        assert_eq!(cancelled.items[0].id, made[1]);
        let elsewhere = store
            .list_jobs("org_nobody", None, None, None, 10)
            .await
            .expect("other org");
        assert!(elsewhere.items.is_empty());
    })
    .await;
}
