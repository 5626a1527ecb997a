//! The store against real databases: SQLite always, PostgreSQL when configured
//! (and always in CI). Every test runs its body once per backend.

use std::collections::BTreeMap;

use hangar_core::id::IdKind;
use hangar_core::model::DriverKind;
use hangar_core::resources::Resources;
use hangar_core::spec::{RuntimeConfig, Scaling, Source};
use hangar_core::status::{BuildStatus, DesiredState, InstanceStatus, JobStatus};
use hangar_store::testing::each_backend;
use hangar_store::{InstanceFilter, NewAgent, NewInstance, NewJob, NewWebhook, StoreError};

fn new_agent(org: &str, user: &str, cloud: &str, name: &str) -> NewAgent {
    NewAgent {
        organization_id: org.into(),
        user_id: user.into(),
        cloud_id: cloud.into(),
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
            repo: "a/b".into(),
            branch: None,
            path: None,
            commit: None,
        },
        metadata: BTreeMap::new(),
    }
}

fn new_instance(org: &str, agent: &str, build: &str, user: &str, name: &str) -> NewInstance {
    NewInstance {
        organization_id: org.into(),
        agent_id: agent.into(),
        build_id: build.into(),
        user_id: user.into(),
        name: name.into(),
        resource_name: None,
        config: RuntimeConfig::default(),
        resources: Resources::default(),
        env_vars: BTreeMap::new(),
        replicas: 1,
        make_default: false,
    }
}

#[tokio::test]
async fn bootstrap_once_and_authenticate() {
    each_backend(|store, _| async move {
        let first = store.bootstrap(None).await.expect("bootstrap");
        let key = first
            .generated_key
            .clone()
            .expect("first start generates a key");
        let again = store.bootstrap(None).await.expect("second bootstrap");
        assert_eq!(again.organization.id, first.organization.id);
        assert!(again.generated_key.is_none());
        let who = store
            .authenticate(&key)
            .await
            .expect("auth")
            .expect("known key");
        assert_eq!(who.organization_id, first.organization.id);
        assert!(who.is_operator);
        assert!(store
            .authenticate("hgr_nope")
            .await
            .expect("auth")
            .is_none());
        // A configured admin key is added on a later start and works.
        store
            .bootstrap(Some("configured-admin-key-0123456789"))
            .await
            .expect("bootstrap with key");
        assert!(store
            .authenticate("configured-admin-key-0123456789")
            .await
            .expect("auth")
            .is_some());
        assert_eq!(
            store
                .list_clouds(&first.organization.id)
                .await
                .expect("clouds")[0]
                .name,
            "local"
        );
        // A server finds every organization's clouds of a driver at start.
        let org = &first.organization.id;
        let cluster = store
            .create_cloud(
                org,
                "cluster",
                DriverKind::Kubernetes,
                &serde_json::json!({}),
                None,
            )
            .await
            .expect("cloud");
        let found = store
            .clouds_of_driver(DriverKind::Kubernetes)
            .await
            .expect("clouds");
        assert_eq!(
            found.iter().map(|c| &c.id).collect::<Vec<_>>(),
            [&cluster.id]
        );
        assert!(store
            .clouds_of_driver(DriverKind::Docker)
            .await
            .expect("clouds")
            .is_empty());
        // Configuring another admin key rotates the configured one.
        store
            .bootstrap(Some("rotated-admin-key-0123456789"))
            .await
            .expect("rotate");
        assert!(store
            .authenticate("rotated-admin-key-0123456789")
            .await
            .expect("auth")
            .is_some());
        assert!(
            store
                .authenticate("configured-admin-key-0123456789")
                .await
                .expect("auth")
                .is_none(),
            "the old configured key is revoked"
        );
        // Revoked keys stop working.
        let keys = store
            .list_api_keys(&first.organization.id, None)
            .await
            .expect("keys");
        for k in &keys {
            store
                .revoke_api_key(&first.organization.id, &k.id)
                .await
                .expect("revoke");
        }
        assert!(store.authenticate(&key).await.expect("auth").is_none());
    })
    .await;
}

#[tokio::test]
async fn instance_quota_is_never_overshot_even_concurrently() {
    each_backend(|store, _| async move {
        let boot = store.bootstrap(None).await.expect("bootstrap");
        let org = store
            .create_organization("small", 3, "a@example.com")
            .await
            .expect("org");
        let oid = org.organization.id.clone();
        let uid = org.admin.id.clone();
        let cloud = store
            .get_cloud(&oid, "local")
            .await
            .expect("cloud")
            .expect("local");
        let (agent, build) = store
            .create_agent(new_agent(&oid, &uid, &cloud.id, "a"))
            .await
            .expect("agent");
        store
            .set_build_status(&build.id, BuildStatus::Ready, None, Some("sha256:x"))
            .await
            .expect("ready");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = store.clone();
            let ni = new_instance(&oid, &agent.agent.id, &build.id, &uid, &format!("i{i}"));
            tasks.push(tokio::spawn(async move { s.create_instance(ni).await }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => ok += 1,
                Err(StoreError::QuotaExceeded { current, max }) => {
                    assert_eq!((current, max), (3, 3))
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(ok, 3);
        assert_eq!(store.instance_count(&oid).await.expect("count"), 3);
        // Names are unique per organization, and a failed insert returns its slot.
        let page = store
            .list_instances(&oid, &InstanceFilter::default(), None, 50)
            .await
            .expect("list");
        let victim = page.items[0].clone();
        assert!(store
            .delete_instance(&oid, &victim.id, false)
            .await
            .expect("delete"));
        let dup = store
            .create_instance(new_instance(
                &oid,
                &agent.agent.id,
                &build.id,
                &uid,
                &page.items[1].name,
            ))
            .await;
        assert!(matches!(dup, Err(StoreError::NameTaken { .. })), "{dup:?}");
        assert_eq!(store.instance_count(&oid).await.expect("count"), 2);
        // No instance for an agent deleted meanwhile, and its slot is not taken.
        let (gone, gone_build) = store
            .create_agent(new_agent(&oid, &uid, &cloud.id, "gone"))
            .await
            .expect("agent");
        store
            .delete_agent(&oid, &gone.agent.id)
            .await
            .expect("delete agent");
        let late = store
            .create_instance(new_instance(
                &oid,
                &gone.agent.id,
                &gone_build.id,
                &uid,
                "late",
            ))
            .await;
        assert!(
            matches!(
                late,
                Err(StoreError::NotFound {
                    what: IdKind::Agent,
                    ..
                })
            ),
            "{late:?}"
        );
        assert_eq!(store.instance_count(&oid).await.expect("count"), 2);
        // The deleted name is free again; the other org cannot see any of it.
        store
            .create_instance(new_instance(
                &oid,
                &agent.agent.id,
                &build.id,
                &uid,
                &victim.name,
            ))
            .await
            .expect("reuse name");
        assert!(store
            .get_instance(&boot.organization.id, &victim.id)
            .await
            .expect("get")
            .is_none());
    })
    .await;
}

#[tokio::test]
async fn pagination_filters_and_status_facts() {
    each_backend(|store, _| async move {
        let boot = store.bootstrap(None).await.expect("bootstrap");
        let oid = boot.organization.id.clone();
        let uid = boot.admin.id.clone();
        let cloud = store
            .get_cloud(&oid, "local")
            .await
            .expect("cloud")
            .expect("local");
        let (agent, build) = store
            .create_agent(new_agent(&oid, &uid, &cloud.id, "pager"))
            .await
            .expect("agent");
        assert_eq!(agent.latest_build_status, Some(BuildStatus::Queued));
        let mut ids = Vec::new();
        for i in 0..7 {
            let inst = store
                .create_instance(new_instance(
                    &oid,
                    &agent.agent.id,
                    &build.id,
                    &uid,
                    &format!("p{i}"),
                ))
                .await
                .expect("create");
            ids.push(inst.id);
        }
        store
            .record_instance_status(&ids[0], InstanceStatus::Running, None, 1, 0)
            .await
            .expect("status");
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_instances(&oid, &InstanceFilter::default(), cursor.as_deref(), 3)
                .await
                .expect("page");
            seen.extend(page.items.iter().map(|i| i.id.clone()));
            if !page.has_more {
                assert!(page.next_cursor.is_none());
                break;
            }
            cursor = page.next_cursor;
        }
        ids.reverse();
        assert_eq!(seen, ids, "newest first, each once");
        let running = InstanceFilter {
            statuses: vec![InstanceStatus::Running],
            ..Default::default()
        };
        let page = store
            .list_instances(&oid, &running, None, 50)
            .await
            .expect("filter");
        assert_eq!(page.items.len(), 1);
        let by_user = InstanceFilter {
            user_id: Some("user_nobody".into()),
            ..Default::default()
        };
        assert!(store
            .list_instances(&oid, &by_user, None, 50)
            .await
            .expect("filter")
            .items
            .is_empty());

        store
            .set_agent_desired_state(&oid, &agent.agent.id, DesiredState::Stopped)
            .await
            .expect("stop");
        let view = store
            .get_agent(&oid, &agent.agent.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(view.agent.desired_state, DesiredState::Stopped);
        assert!(store
            .delete_agent(&oid, &agent.agent.id)
            .await
            .expect("delete"));
        assert!(store
            .get_agent(&oid, &agent.agent.id)
            .await
            .expect("get")
            .is_none());
        assert_eq!(
            store.instance_count(&oid).await.expect("count"),
            0,
            "deleting an agent frees its instances' quota"
        );
    })
    .await;
}

#[tokio::test]
async fn secrets_are_sealed_and_jobs_are_idempotent() {
    each_backend(|store, _| async move {
        let boot = store.bootstrap(None).await.expect("bootstrap");
        let oid = boot.organization.id.clone();
        let (_, created) = store
            .put_secret(&oid, "OPENAI_KEY", "sk-123")
            .await
            .expect("put");
        assert!(created);
        let (_, created) = store
            .put_secret(&oid, "OPENAI_KEY", "sk-456")
            .await
            .expect("replace");
        assert!(!created);
        assert_eq!(
            store
                .reveal_secret(&oid, "OPENAI_KEY")
                .await
                .expect("reveal")
                .as_deref(),
            Some("sk-456")
        );
        assert_eq!(store.list_secrets(&oid).await.expect("list").len(), 1);
        assert!(store
            .delete_secret(&oid, "OPENAI_KEY")
            .await
            .expect("delete"));
        assert!(!store
            .delete_secret(&oid, "OPENAI_KEY")
            .await
            .expect("delete again"));

        let cloud = store
            .get_cloud(&oid, "local")
            .await
            .expect("cloud")
            .expect("local");
        let (agent, _) = store
            .create_agent(new_agent(&oid, &boot.admin.id, &cloud.id, "jobs"))
            .await
            .expect("agent");
        let nj = NewJob {
            organization_id: oid.clone(),
            agent_id: agent.agent.id.clone(),
            input: serde_json::json!({"q": 1}),
            idempotency_key: Some("k1".into()),
            ..NewJob::default()
        };
        let (a, fresh_a) = store.create_job(nj.clone()).await.expect("job");
        let (b, fresh_b) = store.create_job(nj).await.expect("job again");
        assert!(fresh_a && !fresh_b);
        assert_eq!(a.id, b.id);
        let cancelled = store
            .cancel_job(&oid, &a.id)
            .await
            .expect("cancel")
            .expect("exists");
        assert_eq!(cancelled.status, JobStatus::Cancelled);

        let (hook, secret) = store
            .create_webhook(NewWebhook {
                organization_id: oid.clone(),
                url: "https://example.com/h".into(),
                events: vec![],
                description: None,
                secret: None,
            })
            .await
            .expect("webhook");
        assert!(secret.starts_with("whsec_"));
        assert_eq!(
            store
                .webhook_secret(&oid, &hook.id)
                .await
                .expect("secret")
                .as_deref(),
            Some(secret.as_str())
        );
    })
    .await;
}

/// Reads by key run on connections of their own on SQLite (outside the
/// pool): each sees the write committed just before it, whichever
/// connection made it, however many reads run at once.
#[tokio::test]
async fn agent_reads_see_every_write_committed_before_them() {
    each_backend(|store, _| async move {
        let boot = store.bootstrap(None).await.expect("bootstrap");
        let (oid, uid) = (boot.organization.id.clone(), boot.admin.id.clone());
        let cloud = store
            .get_cloud(&oid, "local")
            .await
            .expect("cloud")
            .expect("local");
        let (agent, _) = store
            .create_agent(new_agent(&oid, &uid, &cloud.id, "reread"))
            .await
            .expect("agent");
        let id = agent.agent.id.clone();
        for round in 0..20 {
            let name = format!("reread-{round}");
            store
                .modify_agent::<StoreError>(&oid, &id, |a| {
                    a.name.clone_from(&name);
                    Ok(())
                })
                .await
                .expect("rename")
                .expect("exists");
            // More reads at once than there are read connections.
            let reads = (0..10).map(|_| store.get_agent(&oid, &id));
            for view in futures_util::future::join_all(reads).await {
                let view = view.expect("read").expect("found");
                assert_eq!(view.agent.name, name, "round {round}: the rename is seen");
            }
        }
        store
            .set_agent_desired_state(&oid, &id, DesiredState::Stopped)
            .await
            .expect("stop");
        let view = store
            .get_agent(&oid, &id)
            .await
            .expect("read")
            .expect("found");
        assert_eq!(view.agent.desired_state, DesiredState::Stopped);
        assert!(store.delete_agent(&oid, &id).await.expect("delete"));
        assert!(
            store.get_agent(&oid, &id).await.expect("read").is_none(),
            "a deleted agent is gone at once"
        );
    })
    .await;
}

/// A read whose caller went away midway (a client that hung up) leaves its
/// connection usable: later reads answer.
#[tokio::test]
async fn an_abandoned_agent_read_leaves_its_connection_usable() {
    each_backend(|store, _| async move {
        let boot = store.bootstrap(None).await.expect("bootstrap");
        let (oid, uid) = (boot.organization.id.clone(), boot.admin.id.clone());
        let cloud = store
            .get_cloud(&oid, "local")
            .await
            .expect("cloud")
            .expect("local");
        let (agent, _) = store
            .create_agent(new_agent(&oid, &uid, &cloud.id, "abandoned"))
            .await
            .expect("agent");
        let id = agent.agent.id.clone();
        for _ in 0..20 {
            // Polled once (the query is sent), then dropped.
            let abandoned = (0..10).map(|_| {
                tokio::time::timeout(std::time::Duration::ZERO, store.get_agent(&oid, &id))
            });
            futures_util::future::join_all(abandoned).await;
        }
        for _ in 0..10 {
            let view = store
                .get_agent(&oid, &id)
                .await
                .expect("read")
                .expect("found");
            assert_eq!(view.agent.id, id);
        }
    })
    .await;
}

#[tokio::test]
async fn agent_urls_lead_to_one_agent_across_organizations() {
    each_backend(|store, _| async move {
        store.bootstrap(None).await.expect("bootstrap");
        let mut orgs = Vec::new();
        for name in ["one", "two"] {
            let org = store
                .create_organization(name, 10, &format!("a@{name}.example"))
                .await
                .expect("org");
            let cloud = store
                .get_cloud(&org.organization.id, "local")
                .await
                .expect("cloud")
                .expect("local");
            orgs.push((org.organization.id, org.admin.id, cloud.id));
        }
        let (o1, u1, local1) = orgs[0].clone();
        let (o2, u2, local2) = orgs[1].clone();
        let (shared, build) = store
            .create_agent(new_agent(&o1, &u1, &local1, "bot"))
            .await
            .expect("agent");
        assert_eq!(shared.agent.url_key.as_deref(), Some("/bot"));
        // Another organization's cloud at the server's URL: the name is taken.
        let taken = store
            .create_agent(new_agent(&o2, &u2, &local2, "bot"))
            .await
            .expect_err("same URL");
        assert!(
            matches!(
                taken,
                StoreError::NameTaken {
                    what: IdKind::Agent,
                    ..
                }
            ),
            "{taken:?}"
        );
        // A cloud with its own base URL: the same name is another URL.
        let edge = store
            .create_cloud(
                &o2,
                "edge",
                DriverKind::Sandbox,
                &serde_json::json!({}),
                Some("https://agents.two.example"),
            )
            .await
            .expect("cloud");
        assert_eq!(edge.base_url.as_deref(), Some("https://agents.two.example"));
        let mut on_edge = new_agent(&o2, &u2, &edge.id, "bot");
        on_edge.url_base = edge.base_url.clone();
        let (own, own_build) = store.create_agent(on_edge).await.expect("agent");
        assert_eq!(own.agent.url_key.as_deref(), Some("agents.two.example/bot"));

        // Each leads to its default instance; the cloud's own host first.
        for (org, user, agent, build, name) in [
            (&o1, &u1, &shared.agent.id, &build.id, "s"),
            (&o2, &u2, &own.agent.id, &own_build.id, "o"),
        ] {
            store
                .set_build_status(build, BuildStatus::Ready, None, Some("sha256:x"))
                .await
                .expect("ready");
            let mut new = new_instance(org, agent, build, user, name);
            new.make_default = true;
            store.create_instance(new).await.expect("instance");
        }
        let at = |host: Option<&'static str>| {
            let store = store.clone();
            async move {
                store
                    .instance_at_agent_url(&hangar_core::agent_url::candidates(host, "bot"))
                    .await
                    .expect("read")
                    .map(|i| i.name)
            }
        };
        assert_eq!(at(Some("agents.two.example")).await.as_deref(), Some("o"));
        assert_eq!(
            at(Some("AGENTS.two.example:443")).await.as_deref(),
            Some("o")
        );
        assert_eq!(at(Some("127.0.0.1:7070")).await.as_deref(), Some("s"));
        assert_eq!(at(None).await.as_deref(), Some("s"));

        // A rename moves the URL; the old name is free again.
        store
            .modify_agent::<StoreError>(&o1, &shared.agent.id, |a| {
                a.name = "bot2".into();
                Ok(())
            })
            .await
            .expect("rename")
            .expect("agent");
        assert_eq!(at(Some("127.0.0.1")).await, None);
        let moved = store
            .instance_at_agent_url(&hangar_core::agent_url::candidates(None, "bot2"))
            .await
            .expect("read")
            .map(|i| i.name);
        assert_eq!(moved.as_deref(), Some("s"));
        store
            .create_agent(new_agent(&o2, &u2, &local2, "bot"))
            .await
            .expect("the name is free");
    })
    .await;
}

#[tokio::test]
async fn nodes_beat_restart_and_stop() {
    each_backend(|store, _| async move {
        let beat = hangar_store::NodeBeat {
            id: "node-a".into(),
            address: "http://10.0.0.5:7070".into(),
            version: "0.1.0".into(),
            cpu_millis: 2000,
            memory_bytes: 8 << 30,
            replicas: 0,
        };
        store.node_heartbeat(&beat, true).await.expect("start");
        let started = store.list_nodes().await.expect("nodes")[0].started_at;
        let busy = hangar_store::NodeBeat {
            replicas: 3,
            ..beat.clone()
        };
        store.node_heartbeat(&busy, false).await.expect("beat");
        let nodes = store.list_nodes().await.expect("nodes");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].beat, busy);
        assert_eq!(nodes[0].started_at, started, "a beat is not a start");
        assert!(nodes[0].heartbeat_at >= started);
        store.node_stopped("node-a").await.expect("stop");
        let stopped = &store.list_nodes().await.expect("nodes")[0];
        assert!(stopped.stopped_at.is_some());
        assert_eq!(stopped.beat.replicas, 0);
        let now = hangar_store::store_now();
        let wait = std::time::Duration::from_secs(15);
        assert_eq!(stopped.status(now, wait), hangar_store::NodeStatus::Stopped);
        // Started again: the stop is forgotten.
        store.node_heartbeat(&beat, true).await.expect("restart");
        let again = &store.list_nodes().await.expect("nodes")[0];
        assert_eq!(again.stopped_at, None);
        assert_eq!(again.status(now, wait), hangar_store::NodeStatus::Ready);
    })
    .await;
}
