//! What builders do with the store — claim queued builds, deploy ready ones —
//! against real databases: SQLite always, PostgreSQL when configured (and always
//! in CI). Every test runs its body once per backend.

use std::collections::{BTreeMap, BTreeSet};

use hangar_core::model::Build;
use hangar_core::resources::Resources;
use hangar_core::spec::{RuntimeConfig, Scaling, Source};
use hangar_core::status::{BuildStatus, DesiredState, InstanceStatus};
use hangar_store::testing::each_backend;
use hangar_store::{NewAgent, NewInstance, Store, StoreError};

/// An organization (with `max_instances`), its admin and its `local` cloud.
struct Org {
    id: String,
    user: String,
    cloud: String,
}

async fn org(store: &Store, max_instances: u32) -> Org {
    store.bootstrap(None).await.expect("bootstrap");
    let created = store
        .create_organization("builders", max_instances, "b@example.com")
        .await
        .expect("org");
    let id = created.organization.id.clone();
    let cloud = store
        .get_cloud(&id, "local")
        .await
        .expect("cloud")
        .expect("local");
    Org {
        id,
        user: created.admin.id,
        cloud: cloud.id,
    }
}

fn new_agent(o: &Org, name: &str) -> NewAgent {
    NewAgent {
        organization_id: o.id.clone(),
        user_id: o.user.clone(),
        cloud_id: o.cloud.clone(),
        url_base: None,
        name: name.into(),
        display_name: None,
        version: None,
        runtime: Default::default(),
        resources: Resources::default(),
        scaling: Scaling::default(),
        config: RuntimeConfig::default(),
        environment: BTreeMap::new(),
        source: Source::Github {
            repo: "file:///srv/agent".into(),
            branch: None,
            path: None,
            commit: None,
        },
        metadata: BTreeMap::new(),
    }
}

/// Marks a build ready with an artifact, as a builder would.
async fn ready(store: &Store, build: &str) {
    store
        .set_build_status(build, BuildStatus::Ready, None, Some("/srv/agent"))
        .await
        .expect("ready");
}

#[tokio::test]
async fn a_queued_build_is_claimed_by_exactly_one_builder() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (_, build) = store
            .create_agent(new_agent(&o, "one"))
            .await
            .expect("agent");
        let (a, b) = tokio::join!(
            {
                let s = store.clone();
                async move { s.claim_queued_build("node-a/boot-1").await }
            },
            {
                let s = store.clone();
                async move { s.claim_queued_build("node-a/boot-1").await }
            }
        );
        let claims: Vec<Build> = [a, b]
            .into_iter()
            .filter_map(|r| r.expect("claim"))
            .collect();
        assert_eq!(claims.len(), 1, "{claims:?}");
        let claimed = &claims[0];
        assert_eq!(claimed.id, build.id);
        assert_eq!(claimed.status, BuildStatus::Building);
        assert!(claimed.started_at.is_some());
        assert!(claimed.finished_at.is_none());
        let stored = store
            .get_build(&o.id, &build.id)
            .await
            .expect("get")
            .expect("build");
        assert_eq!(stored, *claimed);
        assert!(store
            .claim_queued_build("node-a/boot-1")
            .await
            .expect("claim")
            .is_none());
    })
    .await;
}

#[tokio::test]
async fn many_builders_take_every_build_once_oldest_first() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let mut queued = Vec::new();
        for i in 0..12 {
            let (_, build) = store
                .create_agent(new_agent(&o, &format!("agent-{i}")))
                .await
                .expect("agent");
            queued.push(build.id);
        }
        // The oldest goes first.
        let first = store
            .claim_queued_build("node-a/boot-1")
            .await
            .expect("claim")
            .expect("queued");
        assert_eq!(first.id, queued[0]);
        let mut workers = Vec::new();
        for _ in 0..4 {
            let s = store.clone();
            workers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(b) = s.claim_queued_build("node-a/boot-1").await.expect("claim") {
                    mine.push(b.id);
                }
                mine
            }));
        }
        let mut taken = vec![first.id];
        for w in workers {
            taken.extend(w.await.expect("worker"));
        }
        assert_eq!(
            taken.len(),
            queued.len(),
            "each build taken once: {taken:?}"
        );
        let distinct: BTreeSet<_> = taken.iter().collect();
        assert_eq!(distinct, queued.iter().collect());
    })
    .await;
}

#[tokio::test]
async fn queued_builds_of_deleted_agents_fail_instead_of_being_claimed() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (gone, gone_build) = store
            .create_agent(new_agent(&o, "gone"))
            .await
            .expect("agent");
        let (_, live_build) = store
            .create_agent(new_agent(&o, "live"))
            .await
            .expect("agent");
        assert!(store
            .delete_agent(&o.id, &gone.agent.id)
            .await
            .expect("delete"));
        let claimed = store
            .claim_queued_build("node-a/boot-1")
            .await
            .expect("claim")
            .expect("the live agent's build");
        assert_eq!(claimed.id, live_build.id);
        let failed = store
            .get_build(&o.id, &gone_build.id)
            .await
            .expect("get")
            .expect("build");
        assert_eq!(failed.status, BuildStatus::Failed);
        assert!(failed.reason.expect("reason").contains("deleted"));
        assert!(store
            .claim_queued_build("node-a/boot-1")
            .await
            .expect("claim")
            .is_none());
    })
    .await;
}

#[tokio::test]
async fn deploy_creates_the_default_instance_once_then_repoints_it() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let mut new = new_agent(&o, "deployer");
        new.scaling = Scaling {
            min_instances: 3,
            max_instances: 5,
            target_cpu_percent: 70,
        };
        new.environment = BTreeMap::from([("MODE".to_owned(), "prod".to_owned())]);
        new.config.port = 9000;
        let (agent, build) = store.create_agent(new).await.expect("agent");
        // Not ready yet: nothing to deploy.
        assert!(store
            .deploy_build(&build.id)
            .await
            .expect("deploy")
            .is_none());
        store
            .claim_queued_build("node-a/boot-1")
            .await
            .expect("claim");
        assert!(store
            .deploy_build(&build.id)
            .await
            .expect("deploy")
            .is_none());
        assert_eq!(store.instance_count(&o.id).await.expect("count"), 0);

        ready(&store, &build.id).await;
        let inst = store
            .deploy_build(&build.id)
            .await
            .expect("deploy")
            .expect("deployed");
        assert_eq!(inst.agent_id, agent.agent.id);
        assert_eq!(inst.build_id, build.id);
        assert_eq!(inst.organization_id, o.id);
        assert_eq!(inst.user_id, o.user);
        assert_eq!(inst.name, "deployer");
        assert_eq!(inst.resource_name, agent.agent.resource_name);
        assert_eq!(inst.replicas, 3);
        assert_eq!(inst.config.port, 9000);
        assert_eq!(inst.env_vars.get("MODE").map(String::as_str), Some("prod"));
        assert_eq!(inst.desired_state, DesiredState::Running);
        assert_eq!(inst.status, InstanceStatus::Starting);
        assert_eq!(
            store
                .get_instance(&o.id, &inst.id)
                .await
                .expect("get")
                .as_ref(),
            Some(&inst)
        );
        let view = store
            .get_agent(&o.id, &agent.agent.id)
            .await
            .expect("get")
            .expect("agent");
        assert_eq!(
            view.agent.default_instance_id.as_deref(),
            Some(inst.id.as_str())
        );
        assert!(view.agent.deployed_at.is_some());
        assert_eq!(view.default_instance.as_ref(), Some(&inst));
        assert_eq!(store.instance_count(&o.id).await.expect("count"), 1);

        // Deploying the same build again changes nothing that matters.
        let again = store
            .deploy_build(&build.id)
            .await
            .expect("deploy")
            .expect("deployed");
        assert_eq!(
            (again.id.as_str(), again.build_id.as_str()),
            (inst.id.as_str(), build.id.as_str())
        );
        assert_eq!(store.instance_count(&o.id).await.expect("count"), 1);

        // A redeploy: the next build rolls the same instance onto it.
        let next = store
            .queue_build(&o.id, &agent.agent.id, None)
            .await
            .expect("queue")
            .expect("agent");
        ready(&store, &next.id).await;
        let rolled = store
            .deploy_build(&next.id)
            .await
            .expect("deploy")
            .expect("deployed");
        assert_eq!(rolled.id, inst.id);
        assert_eq!(rolled.build_id, next.id);
        assert_eq!(rolled.name, inst.name);
        assert_eq!(rolled.replicas, inst.replicas);
        assert!(rolled.updated_at >= inst.updated_at);
        assert_eq!(
            store
                .get_instance(&o.id, &inst.id)
                .await
                .expect("get")
                .expect("instance")
                .build_id,
            next.id
        );
        assert_eq!(store.instance_count(&o.id).await.expect("count"), 1);
    })
    .await;
}

#[tokio::test]
async fn a_build_that_finishes_late_does_not_roll_the_agent_back() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (agent, old) = store
            .create_agent(new_agent(&o, "racer"))
            .await
            .expect("agent");
        let new = store
            .queue_build(&o.id, &agent.agent.id, None)
            .await
            .expect("queue")
            .expect("agent");
        // The old build finishing first deploys nothing: a newer one is coming.
        ready(&store, &old.id).await;
        assert!(store.deploy_build(&old.id).await.expect("deploy").is_none());
        assert_eq!(store.instance_count(&o.id).await.expect("count"), 0);
        ready(&store, &new.id).await;
        let inst = store
            .deploy_build(&new.id)
            .await
            .expect("deploy")
            .expect("deployed");
        assert_eq!(inst.build_id, new.id);
        // Deploying the old one again, late, leaves the instance where it is.
        assert!(store.deploy_build(&old.id).await.expect("deploy").is_none());
        let now = store
            .get_instance(&o.id, &inst.id)
            .await
            .expect("get")
            .expect("instance");
        assert_eq!(now.build_id, new.id);
        // A deleted agent gets nothing.
        assert!(store
            .delete_agent(&o.id, &agent.agent.id)
            .await
            .expect("delete"));
        assert!(store.deploy_build(&new.id).await.expect("deploy").is_none());
        assert_eq!(store.instance_count(&o.id).await.expect("count"), 0);
    })
    .await;
}

#[tokio::test]
async fn deploy_respects_the_quota_and_takes_free_names() {
    each_backend(|store, _| async move {
        let o = org(&store, 1).await;
        let (other, other_build) = store
            .create_agent(new_agent(&o, "other"))
            .await
            .expect("agent");
        ready(&store, &other_build.id).await;
        let (agent, build) = store
            .create_agent(new_agent(&o, "wanted"))
            .await
            .expect("agent");
        ready(&store, &build.id).await;
        // The only slot goes to an instance that already has the agent's name and
        // resource name.
        let squatter = store
            .create_instance(NewInstance {
                organization_id: o.id.clone(),
                agent_id: other.agent.id.clone(),
                build_id: other_build.id.clone(),
                user_id: o.user.clone(),
                name: "wanted".into(),
                resource_name: Some(agent.agent.resource_name.clone()),
                config: RuntimeConfig::default(),
                resources: Resources::default(),
                env_vars: BTreeMap::new(),
                replicas: 1,
                make_default: false,
            })
            .await
            .expect("instance");
        let full = store.deploy_build(&build.id).await;
        assert!(
            matches!(full, Err(StoreError::QuotaExceeded { current: 1, max: 1 })),
            "{full:?}"
        );
        let view = store
            .get_agent(&o.id, &agent.agent.id)
            .await
            .expect("get")
            .expect("agent");
        assert!(view.agent.default_instance_id.is_none());
        assert!(view.agent.deployed_at.is_none());
        assert_eq!(store.instance_count(&o.id).await.expect("count"), 1);

        // With room, the agent gets an instance; its name and resource name are
        // taken, so both are derived. A stopped agent's instance is stopped too.
        store
            .update_organization(&o.id, None, Some(2))
            .await
            .expect("raise quota");
        assert!(store
            .set_agent_desired_state(&o.id, &agent.agent.id, DesiredState::Stopped)
            .await
            .expect("stop"));
        let inst = store
            .deploy_build(&build.id)
            .await
            .expect("deploy")
            .expect("deployed");
        assert_ne!(inst.name, squatter.name);
        assert!(inst.name.starts_with("wanted-"), "{}", inst.name);
        assert_ne!(inst.resource_name, squatter.resource_name);
        assert_eq!(inst.desired_state, DesiredState::Stopped);
        assert_eq!(inst.replicas, 1);
        assert_eq!(store.instance_count(&o.id).await.expect("count"), 2);
    })
    .await;
}

#[tokio::test]
async fn concurrent_deploys_of_one_build_make_one_instance() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (agent, build) = store
            .create_agent(new_agent(&o, "twice"))
            .await
            .expect("agent");
        ready(&store, &build.id).await;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let s = store.clone();
            let id = build.id.clone();
            tasks.push(tokio::spawn(async move { s.deploy_build(&id).await }));
        }
        let mut ids = BTreeSet::new();
        for t in tasks {
            let inst = t.await.expect("task").expect("deploy").expect("deployed");
            ids.insert(inst.id);
        }
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(store.instance_count(&o.id).await.expect("count"), 1);
        let view = store
            .get_agent(&o.id, &agent.agent.id)
            .await
            .expect("get")
            .expect("agent");
        assert_eq!(view.agent.default_instance_id.as_ref(), ids.iter().next());
    })
    .await;
}

#[tokio::test]
async fn builds_whose_builder_went_silent_are_queued_again_and_live_ones_are_not() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (_, silent) = store
            .create_agent(new_agent(&o, "silent"))
            .await
            .expect("a");
        let (_, alive) = store.create_agent(new_agent(&o, "alive")).await.expect("b");
        let (_, queued) = store
            .create_agent(new_agent(&o, "queued"))
            .await
            .expect("c");
        let first = store
            .claim_queued_build("node-a/boot-1")
            .await
            .expect("claim")
            .expect("one");
        let second = store
            .claim_queued_build("node-b/boot-1")
            .await
            .expect("claim")
            .expect("two");
        assert_eq!(
            (first.id.as_str(), second.id.as_str()),
            (silent.id.as_str(), alive.id.as_str())
        );
        // Nothing is silent yet.
        let long_ago = chrono::Utc::now() - chrono::Duration::hours(1);
        assert_eq!(
            store
                .reclaim_abandoned_builds(long_ago)
                .await
                .expect("none"),
            hangar_store::Reclaimed::default()
        );
        // Silent since `cutoff` (taken after both claims, by a clock in ms):
        // the one whose heart beats after it is alive.
        let later = chrono::Utc::now() + chrono::Duration::seconds(5);
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let cutoff = chrono::Utc::now();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        // Only the builder holding a build beats its heart.
        assert!(!store
            .build_heartbeat(&alive.id, "node-a/boot-1")
            .await
            .expect("beat"));
        assert!(store
            .build_heartbeat(&alive.id, "node-b/boot-1")
            .await
            .expect("beat"));
        let reclaimed = store.reclaim_abandoned_builds(cutoff).await.expect("take");
        assert!(reclaimed.failed.is_empty(), "{reclaimed:?}");
        assert_eq!(reclaimed.requeued.len(), 1, "{reclaimed:?}");
        let again = &reclaimed.requeued[0];
        assert_eq!(again.id, silent.id);
        assert_eq!(again.status, BuildStatus::Queued);
        assert!(again.finished_at.is_none());
        let log = store.build_log(&silent.id, 0, 10).await.expect("log");
        assert_eq!(log.len(), 1);
        assert!(log[0].line.contains("queued again"), "{log:?}");
        // The silent builder comes back: the build is not its own any more,
        // and it can record nothing of it.
        assert!(!store
            .build_heartbeat(&silent.id, "node-a/boot-1")
            .await
            .expect("beat"));
        assert!(!store
            .finish_build(
                &silent.id,
                "node-a/boot-1",
                BuildStatus::Ready,
                None,
                Some("/srv/late")
            )
            .await
            .expect("late"));
        // Another builder takes it, oldest first, and finishes it.
        let retaken = store
            .claim_queued_build("node-b/boot-1")
            .await
            .expect("claim")
            .expect("requeued");
        assert_eq!(retaken.id, silent.id);
        assert!(!store
            .finish_build(
                &silent.id,
                "node-a/boot-1",
                BuildStatus::Ready,
                None,
                Some("/srv/late")
            )
            .await
            .expect("late"));
        assert!(store
            .finish_build(
                &silent.id,
                "node-b/boot-1",
                BuildStatus::Ready,
                None,
                Some("/srv/agent")
            )
            .await
            .expect("ready"));
        let built = store
            .get_build(&o.id, &silent.id)
            .await
            .expect("get")
            .expect("a");
        assert_eq!(built.status, BuildStatus::Ready);
        assert_eq!(built.artifact.as_deref(), Some("/srv/agent"));
        let succeeded = events_of(&store, &o.id, "build.succeeded").await;
        assert_eq!(succeeded.len(), 1, "{succeeded:?}");
        // The live one and the queued one are untouched, until they go silent too.
        assert_eq!(
            store
                .get_build(&o.id, &alive.id)
                .await
                .expect("get")
                .expect("b")
                .status,
            BuildStatus::Building
        );
        assert_eq!(
            store
                .get_build(&o.id, &queued.id)
                .await
                .expect("get")
                .expect("c")
                .status,
            BuildStatus::Queued
        );
        let reclaimed = store.reclaim_abandoned_builds(later).await.expect("take");
        assert_eq!(
            reclaimed
                .requeued
                .iter()
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>(),
            vec![alive.id.as_str()]
        );
    })
    .await;
}

#[tokio::test]
async fn a_build_put_back_at_a_clean_stop_keeps_its_attempts() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (_, build) = store
            .create_agent(new_agent(&o, "stopped"))
            .await
            .expect("a");
        // Far more clean stops than attempts: none counts against the build.
        for _ in 0..hangar_store::MAX_BUILD_ATTEMPTS + 2 {
            store
                .claim_queued_build("node-a/boot-1")
                .await
                .expect("claim")
                .expect("queued");
            assert!(store
                .finish_build(&build.id, "node-a/boot-1", BuildStatus::Queued, None, None)
                .await
                .expect("requeue"));
        }
        store
            .claim_queued_build("node-a/boot-1")
            .await
            .expect("claim")
            .expect("queued");
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let reclaimed = store
            .reclaim_abandoned_builds(chrono::Utc::now())
            .await
            .expect("take");
        assert_eq!(reclaimed.requeued.len(), 1, "{reclaimed:?}");
    })
    .await;
}

/// The organization's events of one type, oldest first.
async fn events_of(store: &Store, org: &str, kind: &str) -> Vec<hangar_core::events::Event> {
    let mut events = store
        .list_events(org, None, Some(kind), 100)
        .await
        .expect("events");
    events.reverse();
    events
}

#[tokio::test]
async fn a_finished_build_records_one_event_and_queues_its_deliveries() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (hook, _) = store
            .create_webhook(hangar_store::NewWebhook {
                organization_id: o.id.clone(),
                url: "http://127.0.0.1:9/hook".into(),
                events: vec!["build.succeeded".into(), "build.failed".into()],
                description: None,
                secret: None,
            })
            .await
            .expect("webhook");
        let (good, good_build) = store.create_agent(new_agent(&o, "good")).await.expect("a");
        let (bad, bad_build) = store.create_agent(new_agent(&o, "bad")).await.expect("b");
        for _ in 0..2 {
            store
                .claim_queued_build("node-a/boot-1")
                .await
                .expect("claim")
                .expect("one");
        }
        // Building is no outcome: nothing is told yet.
        assert!(events_of(&store, &o.id, "build.succeeded").await.is_empty());

        assert!(store
            .set_build_status(&good_build.id, BuildStatus::Ready, None, Some("/srv/agent"))
            .await
            .expect("ready"));
        assert!(store
            .set_build_status(
                &bad_build.id,
                BuildStatus::Failed,
                Some("pip said no"),
                None
            )
            .await
            .expect("failed"));
        // A finished build is final: telling it again changes nothing.
        assert!(!store
            .set_build_status(&good_build.id, BuildStatus::Ready, None, Some("/srv/other"))
            .await
            .expect("again"));
        assert!(!store
            .set_build_status(&bad_build.id, BuildStatus::Ready, None, Some("/srv/agent"))
            .await
            .expect("late"));
        let bad_now = store
            .get_build(&o.id, &bad_build.id)
            .await
            .expect("get")
            .expect("bad");
        assert_eq!(bad_now.status, BuildStatus::Failed);
        assert_eq!(bad_now.reason.as_deref(), Some("pip said no"));

        let succeeded = events_of(&store, &o.id, "build.succeeded").await;
        assert_eq!(succeeded.len(), 1, "{succeeded:?}");
        assert_eq!(succeeded[0].subject, good_build.id);
        assert_eq!(succeeded[0].data["build_id"], good_build.id.as_str());
        assert_eq!(succeeded[0].data["agent_id"], good.agent.id.as_str());
        assert_eq!(succeeded[0].data["status"], "ready");
        let failed = events_of(&store, &o.id, "build.failed").await;
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].subject, bad_build.id);
        assert_eq!(failed[0].data["agent_id"], bad.agent.id.as_str());
        assert_eq!(failed[0].data["reason"], "pip said no");

        // Each is on its way to the endpoint, queued with it.
        let deliveries = store
            .list_deliveries(&o.id, &hook.id, None, 10)
            .await
            .expect("deliveries");
        let mut kinds: Vec<&str> = deliveries.iter().map(|d| d.kind.as_str()).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, ["build.failed", "build.succeeded"]);
    })
    .await;
}

#[tokio::test]
async fn builds_failed_as_abandoned_or_for_a_deleted_agent_record_build_failed() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (silent_agent, silent) = store
            .create_agent(new_agent(&o, "silent"))
            .await
            .expect("a");
        // Its builder falls silent on every attempt: queued again until
        // the attempts are used up, then failed.
        let mut failed = Vec::new();
        for attempt in 1..=hangar_store::MAX_BUILD_ATTEMPTS {
            store
                .claim_queued_build(&format!("node-{attempt}/boot"))
                .await
                .expect("claim")
                .expect("one");
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            let reclaimed = store
                .reclaim_abandoned_builds(chrono::Utc::now())
                .await
                .expect("take");
            let (requeued, now_failed) = if attempt < hangar_store::MAX_BUILD_ATTEMPTS {
                (1, 0)
            } else {
                (0, 1)
            };
            assert_eq!(
                (reclaimed.requeued.len(), reclaimed.failed.len()),
                (requeued, now_failed),
                "attempt {attempt}: {reclaimed:?}"
            );
            failed = reclaimed.failed;
        }
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].finished_at.is_some());
        // The builder that was thought dead finishes after all: too late.
        assert!(!store
            .set_build_status(&silent.id, BuildStatus::Ready, None, Some("/srv/agent"))
            .await
            .expect("late"));

        let (gone_agent, gone) = store.create_agent(new_agent(&o, "gone")).await.expect("b");
        assert!(store
            .delete_agent(&o.id, &gone_agent.agent.id)
            .await
            .expect("delete"));
        assert!(store
            .claim_queued_build("node-a/boot-1")
            .await
            .expect("claim")
            .is_none());

        let events = events_of(&store, &o.id, "build.failed").await;
        let told: Vec<(&str, &str)> = events
            .iter()
            .map(|e| {
                (
                    e.subject.as_str(),
                    e.data["agent_id"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            told,
            [
                (silent.id.as_str(), silent_agent.agent.id.as_str()),
                (gone.id.as_str(), gone_agent.agent.id.as_str()),
            ]
        );
        assert!(events[0].data["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("builder stopped"));
        assert!(events[1].data["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("deleted"));
        assert!(events_of(&store, &o.id, "build.succeeded").await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_deployment_is_announced_once_per_build_of_the_default_instance() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (agent, first) = store
            .create_agent(new_agent(&o, "announced"))
            .await
            .expect("agent");
        let agent_id = agent.agent.id.clone();
        ready(&store, &first.id).await;
        let inst = store
            .deploy_build(&first.id)
            .await
            .expect("deploy")
            .expect("deployed");

        let event = store
            .record_deployed(&inst.id, &first.id)
            .await
            .expect("record")
            .expect("announced");
        assert_eq!(event.kind, "agent.deployed");
        assert_eq!(event.subject, agent_id);
        assert_eq!(event.data["agent_id"], agent_id.as_str());
        assert_eq!(event.data["instance_id"], inst.id.as_str());
        assert_eq!(event.data["build_id"], first.id.as_str());
        // Seen running again (a restart, another server): not again.
        assert!(store
            .record_deployed(&inst.id, &first.id)
            .await
            .expect("record")
            .is_none());

        // A redeploy: the old build is no longer the instance's; the new one
        // is announced once.
        let next = store
            .queue_build(&o.id, &agent_id, None)
            .await
            .expect("queue")
            .expect("agent");
        ready(&store, &next.id).await;
        store
            .deploy_build(&next.id)
            .await
            .expect("deploy")
            .expect("deployed");
        assert!(store
            .record_deployed(&inst.id, &first.id)
            .await
            .expect("record")
            .is_none());
        let (a, b) = tokio::join!(
            store.record_deployed(&inst.id, &next.id),
            store.record_deployed(&inst.id, &next.id)
        );
        let announced = [a.expect("a"), b.expect("b")];
        assert_eq!(
            announced.iter().filter(|e| e.is_some()).count(),
            1,
            "{announced:?}"
        );

        // An Instances-API instance of the same build is no agent's deployment.
        let other = store
            .create_instance(NewInstance {
                organization_id: o.id.clone(),
                agent_id: agent_id.clone(),
                build_id: next.id.clone(),
                user_id: o.user.clone(),
                name: "side".into(),
                resource_name: None,
                config: RuntimeConfig::default(),
                resources: Resources::default(),
                env_vars: BTreeMap::new(),
                replicas: 1,
                make_default: false,
            })
            .await
            .expect("instance");
        assert!(store
            .record_deployed(&other.id, &next.id)
            .await
            .expect("record")
            .is_none());

        let told: Vec<String> = events_of(&store, &o.id, "agent.deployed")
            .await
            .iter()
            .map(|e| e.data["build_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(told, [first.id.clone(), next.id.clone()]);
    })
    .await;
}

/// The Agents API's summary read holds the same facts as the full view, from
/// an agent without an instance to one whose instance reports its replicas;
/// another organization reads nothing.
#[tokio::test]
async fn an_agents_summary_shows_what_its_view_holds() {
    each_backend(|store, _| async move {
        let o = org(&store, 10).await;
        let (agent, build) = store
            .create_agent(new_agent(&o, "summarized"))
            .await
            .expect("agent");
        let id = agent.agent.id.clone();
        let same = |view: hangar_core::model::AgentView, summary: hangar_store::AgentSummary| {
            assert_eq!(summary.agent, view.agent);
            assert_eq!(summary.latest_build_status, view.latest_build_status);
            assert_eq!(
                summary.default_instance,
                view.default_instance
                    .as_ref()
                    .map(hangar_store::InstanceSummary::from)
            );
            summary
        };
        let read = || async {
            let view = store.get_agent(&o.id, &id).await.expect("view");
            let summary = store.get_agent_summary(&o.id, &id).await.expect("summary");
            same(view.expect("agent"), summary.expect("agent"))
        };
        let before = read().await;
        assert_eq!(before.latest_build_status, Some(BuildStatus::Queued));
        assert!(before.default_instance.is_none());

        ready(&store, &build.id).await;
        let inst = store
            .deploy_build(&build.id)
            .await
            .expect("deploy")
            .expect("deployed");
        store
            .record_instance_status(&inst.id, InstanceStatus::Running, None, 2, 0)
            .await
            .expect("status");
        let after = read().await;
        assert_eq!(after.latest_build_status, Some(BuildStatus::Ready));
        let shown = after.default_instance.expect("default instance");
        assert_eq!(
            (shown.id.as_str(), shown.status, shown.ready_replicas),
            (inst.id.as_str(), InstanceStatus::Running, 2)
        );

        let other = store
            .create_organization("others", 1, "o@example.com")
            .await
            .expect("org");
        assert!(store
            .get_agent_summary(&other.organization.id, &id)
            .await
            .expect("read")
            .is_none());
        assert!(store.delete_agent(&o.id, &id).await.expect("delete"));
        assert!(store
            .get_agent_summary(&o.id, &id)
            .await
            .expect("read")
            .is_none());
    })
    .await;
}
