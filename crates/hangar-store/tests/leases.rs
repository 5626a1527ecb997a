//! Instance leases against real databases: SQLite always, PostgreSQL when
//! configured (and always in CI). "Nodes" are node IDs; "two servers" are
//! two stores (two pools) on one database.

use std::collections::BTreeMap;
use std::time::Duration;

use hangar_core::resources::Resources;
use hangar_core::spec::{RuntimeConfig, Scaling, Source};
use hangar_store::testing::{each_backend, second_store};
use hangar_store::{LeaseTerms, NewAgent, NewInstance, NewJob, NodeBeat, Store};

const TERMS: LeaseTerms = LeaseTerms {
    duration: Duration::from_secs(60),
    node_dead_after: Duration::from_secs(60),
};

/// The bootstrap organization, an agent, and `n` instances of it (the
/// first its default); returns the organization and the instances' IDs.
async fn instances(store: &Store, n: usize) -> (String, Vec<String>) {
    let boot = store.bootstrap(None).await.expect("bootstrap");
    let org = boot.organization.id.clone();
    let cloud = store
        .get_cloud(&org, "local")
        .await
        .expect("cloud")
        .expect("local");
    let (agent, build) = store
        .create_agent(NewAgent {
            organization_id: org.clone(),
            user_id: boot.admin.id.clone(),
            cloud_id: cloud.id,
            url_base: None,
            name: "leased".into(),
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
    let mut ids = Vec::new();
    for i in 0..n {
        let instance = store
            .create_instance(NewInstance {
                organization_id: org.clone(),
                agent_id: agent.agent.id.clone(),
                build_id: build.id.clone(),
                user_id: boot.admin.id.clone(),
                name: format!("i{i}"),
                resource_name: None,
                config: RuntimeConfig::default(),
                resources: Resources::default(),
                env_vars: BTreeMap::new(),
                replicas: 1,
                make_default: i == 0,
            })
            .await
            .expect("instance");
        ids.push(instance.id);
    }
    (org, ids)
}

async fn beat(store: &Store, node: &str) {
    store
        .node_heartbeat(
            &NodeBeat {
                id: node.into(),
                address: format!("http://{node}"),
                version: "0".into(),
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                replicas: 0,
            },
            true,
        )
        .await
        .expect("heartbeat");
}

/// Waits until the store's clock (milliseconds) has moved past what was
/// written now: an expiry of "now" is then in the past.
async fn next_ms() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[tokio::test]
async fn one_holder_at_a_time_renewed_by_it_alone_and_every_takeover_a_new_generation() {
    each_backend(|store, _| async move {
        let (_, ids) = instances(&store, 1).await;
        let i = ids[0].as_str();

        assert_eq!(
            store
                .acquire_instance_lease(i, "a", TERMS)
                .await
                .expect("a"),
            Some(1)
        );
        assert_eq!(
            store
                .acquire_instance_lease(i, "b", TERMS)
                .await
                .expect("b"),
            None,
            "a holds it, unexpired"
        );
        assert!(store
            .renew_instance_lease(i, "a", 1, TERMS.duration)
            .await
            .expect("renew"));
        assert!(
            !store
                .renew_instance_lease(i, "b", 1, TERMS.duration)
                .await
                .expect("renew"),
            "not b's to renew"
        );
        let held = store.instance_leases(Some("a")).await.expect("held");
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].instance_id.as_str(), held[0].generation), (i, 1));
        assert!(store
            .instance_leases(Some("b"))
            .await
            .expect("b's")
            .is_empty());

        // Released: the next node takes it at once, a generation later; the
        // old holder's renewal at its generation fails.
        let released = store
            .release_instance_leases("a", &[(i.to_owned(), 1)])
            .await
            .expect("release");
        assert_eq!(released, 1);
        assert_eq!(
            store
                .acquire_instance_lease(i, "b", TERMS)
                .await
                .expect("b"),
            Some(2)
        );
        assert!(!store
            .renew_instance_lease(i, "a", 1, TERMS.duration)
            .await
            .expect("renew"));
        assert_eq!(
            store
                .release_instance_leases("a", &[(i.to_owned(), 1)])
                .await
                .expect("release"),
            0,
            "a cannot release what b holds"
        );
        assert_eq!(
            store
                .acquire_instance_lease(i, "a", TERMS)
                .await
                .expect("a"),
            None
        );

        // A node takes its own lease back after a restart: a new generation,
        // so its previous life's generation is no longer good.
        assert_eq!(
            store
                .acquire_instance_lease(i, "b", TERMS)
                .await
                .expect("b"),
            Some(3)
        );
        assert!(!store
            .renew_instance_lease(i, "b", 2, TERMS.duration)
            .await
            .expect("renew"));
        assert!(store
            .renew_instance_lease(i, "b", 3, TERMS.duration)
            .await
            .expect("renew"));
    })
    .await;
}

#[tokio::test]
async fn a_lease_that_ran_out_is_taken_and_a_renewal_in_time_keeps_it() {
    each_backend(|store, _| async move {
        let (_, ids) = instances(&store, 2).await;
        let short = LeaseTerms {
            duration: Duration::ZERO,
            ..TERMS
        };
        assert_eq!(
            store
                .acquire_instance_lease(&ids[0], "a", short)
                .await
                .expect("a"),
            Some(1)
        );
        assert_eq!(
            store
                .acquire_instance_lease(&ids[1], "a", short)
                .await
                .expect("a"),
            Some(1)
        );
        // Renewed for long, the second stays a's.
        assert_eq!(
            store
                .renew_instance_leases("a", &[(ids[1].clone(), 1)], TERMS.duration)
                .await
                .expect("renew"),
            [true]
        );
        next_ms().await;
        assert_eq!(
            store
                .acquire_instance_lease(&ids[0], "b", TERMS)
                .await
                .expect("b"),
            Some(2)
        );
        assert_eq!(
            store
                .acquire_instance_lease(&ids[1], "b", TERMS)
                .await
                .expect("b"),
            None
        );
        // One renewal of both: the one b took is not a's any more.
        assert_eq!(
            store
                .renew_instance_leases(
                    "a",
                    &[(ids[0].clone(), 1), (ids[1].clone(), 1)],
                    TERMS.duration
                )
                .await
                .expect("renew"),
            [false, true]
        );
        let all = store.instance_leases(None).await.expect("all");
        let holders: Vec<_> = all
            .iter()
            .map(|l| (l.instance_id.clone(), l.node_id.clone(), l.generation))
            .collect();
        let mut expected = vec![
            (ids[0].clone(), Some("b".to_owned()), 2),
            (ids[1].clone(), Some("a".to_owned()), 1),
        ];
        expected.sort();
        assert_eq!(holders, expected);
    })
    .await;
}

#[tokio::test]
async fn the_leases_of_a_stopped_or_dead_node_are_taken_at_once() {
    each_backend(|store, _| async move {
        let (_, ids) = instances(&store, 2).await;
        beat(&store, "a").await;
        beat(&store, "b").await;
        for id in &ids {
            assert_eq!(
                store
                    .acquire_instance_lease(id, "a", TERMS)
                    .await
                    .expect("a"),
                Some(1)
            );
        }
        assert_eq!(
            store
                .acquire_instance_lease(&ids[0], "b", TERMS)
                .await
                .expect("b"),
            None
        );

        // A clean stop: the lease has not run out, but a is not acting.
        store.node_stopped("a").await.expect("stopped");
        assert_eq!(
            store
                .acquire_instance_lease(&ids[0], "b", TERMS)
                .await
                .expect("b"),
            Some(2)
        );

        // Started again, a is heard from; silent past node_dead_after, its
        // lease goes although it has not run out.
        beat(&store, "a").await;
        assert_eq!(
            store
                .acquire_instance_lease(&ids[1], "b", TERMS)
                .await
                .expect("b"),
            None
        );
        next_ms().await;
        let quick_death = LeaseTerms {
            node_dead_after: Duration::ZERO,
            ..TERMS
        };
        assert_eq!(
            store
                .acquire_instance_lease(&ids[1], "b", quick_death)
                .await
                .expect("b"),
            Some(2)
        );
    })
    .await;
}

#[tokio::test]
async fn a_lease_write_is_the_writers_heartbeat() {
    each_backend(|store, _| async move {
        let (_, ids) = instances(&store, 1).await;
        beat(&store, "a").await;
        let heard = |nodes: Vec<hangar_store::Node>| {
            nodes
                .into_iter()
                .find(|n| n.beat.id == "a")
                .expect("a")
                .heartbeat_at
        };
        let before = heard(store.list_nodes().await.expect("nodes"));
        next_ms().await;
        store
            .acquire_instance_lease(&ids[0], "a", TERMS)
            .await
            .expect("acquire");
        let acquired = heard(store.list_nodes().await.expect("nodes"));
        assert!(acquired > before, "{acquired} > {before}");
        next_ms().await;
        store
            .renew_instance_lease(&ids[0], "a", 1, TERMS.duration)
            .await
            .expect("renew");
        let renewed = heard(store.list_nodes().await.expect("nodes"));
        assert!(renewed > acquired, "{renewed} > {acquired}");
    })
    .await;
}

#[tokio::test]
async fn servers_racing_for_an_instance_get_it_once() {
    each_backend(|store, url| async move {
        let (_, ids) = instances(&store, 5).await;
        let mut stores = vec![store.clone()];
        for _ in 0..5 {
            stores.push(second_store(&url).await);
        }
        for id in &ids {
            let mut racing = tokio::task::JoinSet::new();
            for (n, s) in stores.iter().enumerate() {
                let (s, id) = (s.clone(), id.clone());
                racing.spawn(async move {
                    s.acquire_instance_lease(&id, &format!("node-{n}"), TERMS)
                        .await
                        .expect("acquire")
                });
            }
            let won: Vec<i64> = racing.join_all().await.into_iter().flatten().collect();
            assert_eq!(won, [1], "exactly one server gets {id}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_reaped_instance_has_no_lease_and_none_is_taken() {
    each_backend(|store, _| async move {
        let (org, ids) = instances(&store, 1).await;
        let i = ids[0].as_str();
        assert_eq!(
            store
                .acquire_instance_lease(i, "a", TERMS)
                .await
                .expect("a"),
            Some(1)
        );
        assert!(store.delete_instance(&org, i, true).await.expect("delete"));
        // Deleted but not reaped: still someone's to reap.
        assert!(store
            .renew_instance_lease(i, "a", 1, TERMS.duration)
            .await
            .expect("renew"));
        store.mark_instance_reaped(i).await.expect("reap");
        assert!(store.instance_leases(None).await.expect("all").is_empty());
        assert_eq!(
            store
                .acquire_instance_lease(i, "b", TERMS)
                .await
                .expect("b"),
            None
        );
        assert_eq!(
            store
                .acquire_instance_lease("ins_unknown", "b", TERMS)
                .await
                .expect("b"),
            None
        );
        assert!(store.instance_leases(None).await.expect("all").is_empty());
    })
    .await;
}

#[tokio::test]
async fn an_agents_jobs_are_claimed_only_by_the_node_that_holds_its_instance() {
    let terms = LeaseTerms {
        duration: Duration::from_millis(300),
        node_dead_after: Duration::from_secs(60),
    };
    each_backend(|store, _| async move {
        let (org, ids) = instances(&store, 1).await;
        let instance = store
            .get_instance(&org, &ids[0])
            .await
            .expect("read")
            .expect("instance");
        let (job, _) = store
            .create_job(NewJob {
                organization_id: org.clone(),
                agent_id: instance.agent_id.clone(),
                input: serde_json::json!({}),
                ..NewJob::default()
            })
            .await
            .expect("job");
        beat(&store, "a").await;
        beat(&store, "b").await;
        store
            .acquire_instance_lease(&instance.id, "a", terms)
            .await
            .expect("acquire")
            .expect("a holds it");
        let claim = |owner: &'static str| {
            let store = store.clone();
            async move {
                store
                    .claim_jobs(owner, 10, 10, Duration::from_secs(60))
                    .await
                    .expect("claim")
            }
        };
        // Another node leaves it for the holder.
        assert!(claim("b/boot").await.is_empty(), "b took a's agent's job");
        // Once the holder's lease has run out, any node may run it.
        tokio::time::sleep(terms.duration + Duration::from_millis(50)).await;
        let taken = claim("b/boot").await;
        assert_eq!(taken.len(), 1, "{taken:?}");
        assert_eq!(taken[0].id, job.id);
        // The holder claims its agent's jobs as before.
        let (second, _) = store
            .create_job(NewJob {
                organization_id: org.clone(),
                agent_id: instance.agent_id.clone(),
                input: serde_json::json!({}),
                ..NewJob::default()
            })
            .await
            .expect("job");
        store
            .acquire_instance_lease(&instance.id, "a", terms)
            .await
            .expect("acquire")
            .expect("a holds it again");
        assert!(claim("b/boot").await.is_empty());
        let mine = claim("a/boot").await;
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0].id, second.id);
    })
    .await;
}
