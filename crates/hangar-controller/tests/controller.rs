//! The controller against the recording fake driver and a real store (SQLite,
//! and PostgreSQL when configured): reconcile steps, restarts with backoff,
//! scaling, rolling, deletion, log capture and re-adoption. Real replicas are
//! tested through `hangar serve` in the `hangar` crate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_controller::{Controller, ControllerConfig};
use hangar_core::logs::LogLevel;
use hangar_core::model::{DriverKind, Instance};
use hangar_core::resources::Resources;
use hangar_core::spec::{RuntimeConfig, Scaling, Source};
use hangar_core::status::{BuildStatus, InstanceStatus};
use hangar_runtime::driver::{labels, Exit, OutputStream};
use hangar_runtime::fake::{Call, FakeDriver};
use hangar_runtime::DriverSet;
use hangar_store::testing::{backends, TestDb};
use hangar_store::{LogQuery, NewAgent, NewInstance, Store};

/// One node's: a restarted controller is the same node again, as a server
/// restarted on its data dir is.
fn config() -> ControllerConfig {
    ControllerConfig {
        node_id: "node-test".to_owned(),
        resync: Duration::from_millis(200),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        stop_grace: Duration::from_millis(50),
        stats_interval: Duration::from_millis(100),
        ..ControllerConfig::default()
    }
}

struct World {
    _db: TestDb,
    store: Store,
    fake: Arc<FakeDriver>,
    controller: Controller,
    org: String,
    user: String,
    artifact: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.artifact);
    }
}

async fn world(db: TestDb) -> World {
    let store = db.store.clone();
    let boot = store.bootstrap(None).await.expect("bootstrap");
    let artifact = std::env::temp_dir().join(format!(
        "hangar-controller-test-{}-{}",
        std::process::id(),
        hangar_core::id::new_id(hangar_core::id::IdKind::Build)
    ));
    std::fs::create_dir_all(&artifact).expect("artifact");
    std::fs::write(artifact.join("main.py"), "print('hi')\n").expect("main.py");
    let fake = Arc::new(FakeDriver::new());
    let controller = Controller::new(store.clone(), fake.clone(), config());
    World {
        _db: db,
        store,
        fake,
        controller,
        org: boot.organization.id,
        user: boot.admin.id,
        artifact,
    }
}

impl World {
    /// A stdin instance (ready as soon as it runs: no HTTP to check).
    async fn instance(&self, replicas: u32) -> Instance {
        self.instance_with_env(replicas, BTreeMap::new()).await
    }

    /// [`World::instance`] with an environment.
    async fn instance_with_env(
        &self,
        replicas: u32,
        env_vars: BTreeMap<String, String>,
    ) -> Instance {
        self.instance_in("local", replicas, env_vars).await
    }

    /// [`World::instance_with_env`] of an agent on the cloud named `cloud`.
    async fn instance_in(
        &self,
        cloud: &str,
        replicas: u32,
        env_vars: BTreeMap<String, String>,
    ) -> Instance {
        let org = &self.org;
        let cloud = self
            .store
            .get_cloud(org, cloud)
            .await
            .expect("cloud")
            .expect("the cloud exists");
        let config = RuntimeConfig {
            enable_http: false,
            stdin_enabled: true,
            ..RuntimeConfig::default()
        };
        let (agent, build) = self
            .store
            .create_agent(NewAgent {
                organization_id: org.clone(),
                user_id: self.user.clone(),
                cloud_id: cloud.id,
                url_base: None,
                name: format!(
                    "agent-{}",
                    hangar_core::id::new_id(hangar_core::id::IdKind::Agent)
                ),
                display_name: None,
                version: None,
                runtime: Default::default(),
                resources: Resources::default(),
                scaling: Scaling::default(),
                config: config.clone(),
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
        let artifact = self.artifact.to_string_lossy().into_owned();
        self.store
            .set_build_status(&build.id, BuildStatus::Ready, None, Some(&artifact))
            .await
            .expect("ready");
        self.store
            .create_instance(NewInstance {
                organization_id: org.clone(),
                agent_id: agent.agent.id,
                build_id: build.id,
                user_id: self.user.clone(),
                name: format!(
                    "inst-{}",
                    hangar_core::id::new_id(hangar_core::id::IdKind::Instance)
                ),
                resource_name: None,
                config,
                resources: Resources::default(),
                env_vars,
                replicas,
                make_default: false,
            })
            .await
            .expect("instance")
    }

    async fn get(&self, id: &str) -> Instance {
        self.store
            .get_instance(&self.org, id)
            .await
            .expect("get")
            .expect("exists")
    }

    async fn until(
        &self,
        what: &str,
        mut done: impl FnMut(&Instance, &[hangar_runtime::driver::ReplicaInfo]) -> bool,
        id: &str,
    ) -> Instance {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let inst = self.get(id).await;
            if done(&inst, &self.fake.replicas()) {
                return inst;
            }
            assert!(
                Instant::now() < deadline,
                "never {what}: {inst:?} {:?}",
                self.fake.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An exit with `code`, as a crash reports it.
fn exited(code: i32) -> Exit {
    Exit {
        code: Some(code),
        signal: None,
        oom_killed: false,
        at_ms: 0,
    }
}

fn live(replicas: &[hangar_runtime::driver::ReplicaInfo]) -> usize {
    replicas.iter().filter(|r| r.exit.is_none()).count()
}

fn creates(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| matches!(c, Call::Create(_)))
        .count()
}

#[tokio::test]
async fn replicas_start_crash_restart_with_backoff_and_scale() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        let inst = w.instance(1).await;
        w.controller
            .start(tokio_util::sync::CancellationToken::new())
            .await
            .expect("start");
        w.controller.wake(&inst.id);
        let running = w
            .until(
                "running",
                |i, r| i.status == InstanceStatus::Running && live(r) == 1,
                &inst.id,
            )
            .await;
        assert_eq!(running.ready_replicas, 1);
        let Call::Create(spec) = &w.fake.calls()[0] else {
            panic!("first call is a create");
        };
        assert_eq!(spec.argv, ["python3", "-u", "/app/main.py"]);
        assert_eq!(spec.labels[labels::INSTANCE], inst.id);
        assert!(spec.stdin);
        assert!(spec
            .env
            .iter()
            .any(|(k, v)| k == "HANGAR_INSTANCE_ID" && *v == inst.id));

        // Output is captured, parsed and stored.
        let replica = w.fake.replicas()[0].id.clone();
        w.fake
            .print(&replica, OutputStream::Stdout, "ERROR something broke");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = w
                .store
                .instance_logs(
                    &inst.id,
                    &LogQuery {
                        tail: Some(10),
                        since: None,
                        after_seq: None,
                        limit: 100,
                    },
                )
                .await
                .expect("logs");
            if let Some(line) = logs.iter().find(|l| l.message == "something broke") {
                assert_eq!(line.level, LogLevel::Error);
                break;
            }
            assert!(Instant::now() < deadline, "line never stored: {logs:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A crash: restarted, counted.
        w.fake.exit(&replica, exited(1));
        let restarted = w
            .until(
                "restarted",
                |i, r| i.restart_count == 1 && live(r) == 1 && i.status == InstanceStatus::Running,
                &inst.id,
            )
            .await;
        assert_eq!(restarted.restart_count, 1);
        let logs = w
            .store
            .instance_logs(
                &inst.id,
                &LogQuery {
                    tail: Some(20),
                    since: None,
                    after_seq: None,
                    limit: 100,
                },
            )
            .await
            .expect("logs");
        assert!(
            logs.iter()
                .any(|l| l.message.contains("exited with code 1; restarting")),
            "{logs:?}"
        );

        // A crash loop backs off: the gaps between creates grow.
        let mut created_at = Vec::new();
        for _ in 0..3 {
            let current = w
                .fake
                .replicas()
                .into_iter()
                .find(|r| r.exit.is_none())
                .expect("live")
                .id;
            let before = creates(&w.fake.calls());
            w.fake.exit(&current, exited(2));
            let t0 = Instant::now();
            let deadline = Instant::now() + Duration::from_secs(10);
            while creates(&w.fake.calls()) == before {
                assert!(Instant::now() < deadline, "no restart");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            created_at.push(t0.elapsed());
        }
        assert!(
            created_at[1] > created_at[0] && created_at[2] >= Duration::from_millis(300),
            "{created_at:?}"
        );
        let inst_now = w.get(&inst.id).await;
        assert_eq!(inst_now.restart_count, 4);

        // Scale to 3 without restarting the one that runs.
        let keep = w
            .fake
            .replicas()
            .into_iter()
            .find(|r| r.exit.is_none())
            .expect("live")
            .id;
        w.store
            .modify_instance::<hangar_store::StoreError>(&w.org, &inst.id, |i| {
                i.replicas = 3;
                Ok(())
            })
            .await
            .expect("scale");
        w.controller.wake(&inst.id);
        w.until(
            "scaled",
            |i, r| live(r) == 3 && i.ready_replicas == 3,
            &inst.id,
        )
        .await;
        assert!(w
            .fake
            .replicas()
            .iter()
            .any(|r| r.id == keep && r.exit.is_none()));
        assert!(!w
            .fake
            .calls()
            .contains(&Call::Stop(keep.clone(), Duration::from_millis(50))));

        // An environment change rolls them all.
        w.store
            .modify_instance::<hangar_store::StoreError>(&w.org, &inst.id, |i| {
                i.env_vars.insert("MODE".into(), "fast".into());
                Ok(())
            })
            .await
            .expect("env");
        w.controller.wake(&inst.id);
        w.until(
            "rolled",
            |_, r| live(r) == 3 && r.iter().all(|x| x.id != keep),
            &inst.id,
        )
        .await;

        // Forced delete: SIGKILL at once, nothing left, reaped.
        assert!(w
            .store
            .delete_instance(&w.org, &inst.id, true)
            .await
            .expect("delete"));
        w.controller.wake(&inst.id);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !w.fake.replicas().is_empty()
            || w.store
                .controlled_instance(&inst.id)
                .await
                .expect("ci")
                .is_some()
        {
            assert!(
                Instant::now() < deadline,
                "not reaped: {:?}",
                w.fake.replicas()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(w
            .fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Stop(_, grace) if grace.is_zero())));
    }
}

#[tokio::test]
async fn a_new_controller_adopts_running_replicas() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        let inst = w.instance(2).await;
        let first = tokio_util::sync::CancellationToken::new();
        let first_stopped = w.controller.start(first.clone()).await.expect("start");
        w.until(
            "running",
            |i, r| i.ready_replicas == 2 && live(r) == 2,
            &inst.id,
        )
        .await;
        let creates_before = creates(&w.fake.calls());
        let replica = w.fake.replicas()[0].id.clone();
        w.fake
            .print(&replica, OutputStream::Stdout, "before the restart");

        // Restart the daemon: a second controller over the same driver,
        // once the first has stopped.
        first.cancel();
        first_stopped.await.expect("first stopped");
        let again = Controller::new(w.store.clone(), w.fake.clone(), config());
        again
            .start(tokio_util::sync::CancellationToken::new())
            .await
            .expect("start again");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            creates(&w.fake.calls()),
            creates_before,
            "adopted, not recreated"
        );
        w.fake
            .print(&replica, OutputStream::Stdout, "after the restart");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = w
                .store
                .instance_logs(
                    &inst.id,
                    &LogQuery {
                        tail: Some(10),
                        since: None,
                        after_seq: None,
                        limit: 100,
                    },
                )
                .await
                .expect("logs");
            let mine: Vec<_> = logs
                .iter()
                .filter(|l| l.message.contains("the restart"))
                .collect();
            // Each line once, though followed again from the stored cursor.
            if mine.len() == 2 {
                break;
            }
            assert!(mine.len() < 3, "{mine:?}");
            assert!(Instant::now() < deadline, "{logs:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = again
            .exec(
                &inst.id,
                &["echo".into(), "hi".into()],
                Duration::from_secs(1),
            )
            .await
            .expect("exec");
        assert_eq!(out.stdout, b"echo hi\n");
    }
}

/// A stand-in for an HTTP agent's health endpoint (the fake driver runs
/// nothing: its HTTP replicas answer at `127.0.0.1:<config.port>`, so this
/// answers for all of them): 200 while `healthy`, 503 otherwise.
struct HealthEndpoint {
    port: u16,
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl HealthEndpoint {
    fn start() -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let answer = healthy.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let status = if answer.load(std::sync::atomic::Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Self { port, healthy }
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy
            .store(healthy, std::sync::atomic::Ordering::SeqCst);
    }
}

impl World {
    /// An agent with an HTTP health check on `port`, its build ready and
    /// deployed to its default instance (as a builder would).
    async fn http_agent(&self, port: u16) -> (String, String, Instance) {
        let cloud = self
            .store
            .get_cloud(&self.org, "local")
            .await
            .expect("cloud")
            .expect("local");
        let (agent, build) = self
            .store
            .create_agent(NewAgent {
                organization_id: self.org.clone(),
                user_id: self.user.clone(),
                cloud_id: cloud.id,
                url_base: None,
                name: format!(
                    "agent-{}",
                    hangar_core::id::new_id(hangar_core::id::IdKind::Agent)
                ),
                display_name: None,
                version: None,
                runtime: Default::default(),
                resources: Resources::default(),
                scaling: Scaling::default(),
                config: RuntimeConfig {
                    port,
                    ..RuntimeConfig::default()
                },
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
        let inst = self.ready_and_deployed(&build.id).await;
        (agent.agent.id, build.id, inst)
    }

    /// Marks a build ready and deploys it to its agent's default instance
    /// (waking the controller, as the builder does).
    async fn ready_and_deployed(&self, build_id: &str) -> Instance {
        let artifact = self.artifact.to_string_lossy().into_owned();
        self.store
            .set_build_status(build_id, BuildStatus::Ready, None, Some(&artifact))
            .await
            .expect("ready");
        let inst = self
            .store
            .deploy_build(build_id)
            .await
            .expect("deploy")
            .expect("deployed");
        self.controller.wake(&inst.id);
        inst
    }

    /// The events of one type, oldest first.
    async fn events(&self, kind: &str) -> Vec<hangar_core::events::Event> {
        let mut events = self
            .store
            .list_events(&self.org, None, Some(kind), 100)
            .await
            .expect("events");
        events.reverse();
        events
    }

    /// Waits (bounded) until there are `n` events of `kind`.
    async fn until_events(&self, kind: &str, n: usize) -> Vec<hangar_core::events::Event> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events(kind).await;
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "never {n} {kind}: {events:?} {:?}",
                self.fake.calls()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn quick_health() -> ControllerConfig {
    ControllerConfig {
        health_interval: Duration::from_millis(30),
        ..config()
    }
}

#[tokio::test]
async fn a_replica_that_loses_its_health_is_restarted_and_both_changes_are_announced_once() {
    for backend in backends() {
        let mut w = world(TestDb::new(backend).await).await;
        w.controller = Controller::new(w.store.clone(), w.fake.clone(), quick_health());
        let endpoint = HealthEndpoint::start();
        let (agent, _, inst) = w.http_agent(endpoint.port).await;
        w.controller
            .start(tokio_util::sync::CancellationToken::new())
            .await
            .expect("start");
        w.controller.wake(&inst.id);
        w.until(
            "running",
            |i, _| i.status == InstanceStatus::Running && i.ready_replicas == 1,
            &inst.id,
        )
        .await;
        // Starting is no change of health, and no downtime.
        w.until_events("instance.started", 1).await;
        assert!(w.events("agent.health_changed").await.is_empty());
        assert_eq!(w.controller.metrics(&inst.id).uptime_percent, Some(100.0));

        let sick = w.fake.replicas()[0].id.clone();
        endpoint.set_healthy(false);
        let lost = w.until_events("agent.health_changed", 1).await;
        assert_eq!(lost[0].subject, agent);
        assert_eq!(lost[0].data["healthy"], false);
        assert_eq!(lost[0].data["instance_id"], inst.id.as_str());
        let reason = lost[0].data["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("failed 3 health checks in a row") && reason.contains("503"),
            "{reason}"
        );
        // Restarted like a crash: stopped, counted, replaced after the backoff.
        let replaced = w
            .until(
                "replaced",
                |i, r| i.restart_count == 1 && r.iter().any(|x| x.id != sick),
                &inst.id,
            )
            .await;
        assert_eq!(replaced.ready_replicas, 0);
        assert!(w
            .fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Stop(id, _) if *id == sick)));

        endpoint.set_healthy(true);
        let events = w.until_events("agent.health_changed", 2).await;
        assert_eq!(events[1].subject, agent);
        assert_eq!(events[1].data["healthy"], true);
        assert_eq!(events[1].data["instance_id"], inst.id.as_str());
        w.until("ready again", |i, _| i.ready_replicas == 1, &inst.id)
            .await;
        assert_eq!(w.events("agent.health_changed").await.len(), 2);
        // The failed checks count against uptime.
        let uptime = w
            .controller
            .metrics(&inst.id)
            .uptime_percent
            .expect("checked");
        assert!(uptime > 0.0 && uptime < 100.0, "{uptime}");
        assert_eq!(creates(&w.fake.calls()), 2, "one replacement");
        assert_eq!(w.get(&inst.id).await.restart_count, 1);
    }
}

#[tokio::test]
async fn a_deployment_is_announced_once_the_instance_runs_the_new_build() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        let endpoint = HealthEndpoint::start();
        let (agent, first, inst) = w.http_agent(endpoint.port).await;
        let before_restart = tokio_util::sync::CancellationToken::new();
        let stopped = w
            .controller
            .start(before_restart.clone())
            .await
            .expect("start");
        w.controller.wake(&inst.id);
        let deployed = w.until_events("agent.deployed", 1).await;
        assert_eq!(deployed[0].subject, agent);
        assert_eq!(deployed[0].data["agent_id"], agent.as_str());
        assert_eq!(deployed[0].data["instance_id"], inst.id.as_str());
        assert_eq!(deployed[0].data["build_id"], first.as_str());
        assert_eq!(
            w.get(&inst.id).await.status,
            InstanceStatus::Running,
            "announced once running"
        );

        // A redeploy rolls the instance; the new build is announced once
        // its replica is ready and the old one is gone.
        let next = w
            .store
            .queue_build(&w.org, &agent, None)
            .await
            .expect("queue")
            .expect("agent");
        w.ready_and_deployed(&next.id).await;
        let deployed = w.until_events("agent.deployed", 2).await;
        assert_eq!(deployed[1].data["build_id"], next.id.as_str());
        let live: Vec<_> = w
            .fake
            .replicas()
            .into_iter()
            .filter(|r| r.exit.is_none())
            .collect();
        assert_eq!(live.len(), 1, "the old replica is gone: {live:?}");
        assert_eq!(creates(&w.fake.calls()), 2);

        // A restart of the server re-adopts the replica running the same
        // build: nothing new to announce. A third build shows the controller
        // is past any reconcile that would have repeated the second.
        before_restart.cancel();
        stopped.await.expect("stopped");
        let again = Controller::new(w.store.clone(), w.fake.clone(), config());
        again
            .start(tokio_util::sync::CancellationToken::new())
            .await
            .expect("start again");
        let deadline = Instant::now() + Duration::from_secs(10);
        while again.ready_replicas(&inst.id).is_empty() {
            assert!(Instant::now() < deadline, "never re-adopted as ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A few resync periods of the new controller with the replica ready.
        for _ in 0..5 {
            again.wake(&inst.id);
            tokio::time::sleep(config().resync).await;
            assert_eq!(w.events("agent.deployed").await.len(), 2);
        }
        let third = w
            .store
            .queue_build(&w.org, &agent, None)
            .await
            .expect("queue")
            .expect("agent");
        w.ready_and_deployed(&third.id).await;
        again.wake(&inst.id);
        let deployed = w.until_events("agent.deployed", 3).await;
        let builds: Vec<&str> = deployed
            .iter()
            .map(|e| e.data["build_id"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            builds,
            [first.as_str(), next.id.as_str(), third.id.as_str()]
        );
    }
}

#[tokio::test]
async fn secrets_in_the_environment_reach_the_replica_and_a_missing_one_is_named() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        w.store
            .put_secret(&w.org, "API_TOKEN", "s3cr3t")
            .await
            .expect("secret");
        let env: BTreeMap<String, String> = [
            ("TOKEN".to_owned(), "${secrets.API_TOKEN}".to_owned()),
            (
                "URL".to_owned(),
                "https://x:${secrets.API_TOKEN}@git.test/r".to_owned(),
            ),
            ("PLAIN".to_owned(), "as is".to_owned()),
        ]
        .into();
        let inst = w.instance_with_env(1, env.clone()).await;
        let broken = w
            .instance_with_env(1, [("K".to_owned(), "${secrets.NOPE}".to_owned())].into())
            .await;
        w.controller
            .start(tokio_util::sync::CancellationToken::new())
            .await
            .expect("start");
        w.controller.wake(&inst.id);
        w.controller.wake(&broken.id);
        w.until(
            "running",
            |i, r| i.status == InstanceStatus::Running && live(r) == 1,
            &inst.id,
        )
        .await;
        let specs: Vec<_> = w
            .fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Create(spec) => Some(spec),
                _ => None,
            })
            .collect();
        assert_eq!(
            specs.len(),
            1,
            "only the instance whose secrets exist starts: {specs:?}"
        );
        let value = |k: &str| {
            specs[0]
                .env
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value("TOKEN").as_deref(), Some("s3cr3t"));
        assert_eq!(value("URL").as_deref(), Some("https://x:s3cr3t@git.test/r"));
        assert_eq!(value("PLAIN").as_deref(), Some("as is"));
        // The stored instance keeps the reference, never the value.
        assert_eq!(w.get(&inst.id).await.env_vars, env);

        // The other one says which secret it lacks, in its log.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = w
                .store
                .instance_logs(
                    &broken.id,
                    &LogQuery {
                        tail: None,
                        since: None,
                        after_seq: None,
                        limit: 100,
                    },
                )
                .await
                .expect("logs");
            if logs.iter().any(|l| l.message.contains("secret NOPE")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no line naming the secret: {logs:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(w.get(&broken.id).await.ready_replicas, 0);
    }
}

/// The specs the fake `driver` was asked to create.
fn created(driver: &FakeDriver) -> Vec<hangar_runtime::driver::ReplicaSpec> {
    driver
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Create(spec) => Some(spec),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn replicas_of_a_docker_cloud_run_its_build_image_on_the_docker_driver() {
    for backend in backends() {
        let mut w = world(TestDb::new(backend).await).await;
        let docker = Arc::new(FakeDriver::new());
        let set = DriverSet::new(w.fake.clone()).with("docker", docker.clone());
        w.controller = Controller::new(w.store.clone(), Arc::new(set), config());
        let dock = w
            .store
            .create_cloud(
                &w.org,
                "dock",
                DriverKind::Docker,
                &serde_json::json!({}),
                None,
            )
            .await
            .expect("cloud");
        let local = w
            .store
            .get_cloud(&w.org, "local")
            .await
            .expect("cloud")
            .expect("local");
        let on_docker = w.instance_in("dock", 1, BTreeMap::new()).await;
        let on_sandbox = w.instance(1).await;
        w.controller
            .start(tokio_util::sync::CancellationToken::new())
            .await
            .expect("start");
        w.controller.wake(&on_docker.id);
        w.controller.wake(&on_sandbox.id);
        for id in [&on_docker.id, &on_sandbox.id] {
            w.until("running", |i, _| i.status == InstanceStatus::Running, id)
                .await;
        }
        let specs = created(&docker);
        assert_eq!(specs.len(), 1, "{specs:?}");
        let spec = &specs[0];
        assert_eq!(spec.labels[labels::INSTANCE], on_docker.id);
        assert_eq!(spec.labels[labels::DRIVER], "docker");
        assert_eq!(spec.labels[labels::CLOUD], dock.id);
        assert_eq!(
            spec.image.as_deref(),
            Some(hangar_core::docker::image_tag(&on_docker.build_id).as_str())
        );
        assert_eq!(spec.app, None, "nothing of the host's");
        assert_eq!(spec.argv, ["python3", "-u", "/app/main.py"]);

        let specs = created(&w.fake);
        assert_eq!(specs.len(), 1, "{specs:?}");
        assert_eq!(specs[0].labels[labels::INSTANCE], on_sandbox.id);
        assert_eq!(specs[0].labels[labels::CLOUD], local.id);
        assert!(!specs[0].labels.contains_key(labels::DRIVER));
        assert_eq!(specs[0].image, None);
    }
}

#[tokio::test]
async fn a_docker_cloud_without_an_engine_says_why_its_replicas_do_not_start() {
    for backend in backends() {
        let mut w = world(TestDb::new(backend).await).await;
        let set = DriverSet::new(w.fake.clone()).without(
            "docker",
            "no Docker engine answered at start (connection refused)",
        );
        w.controller = Controller::new(w.store.clone(), Arc::new(set), config());
        w.store
            .create_cloud(
                &w.org,
                "dock",
                DriverKind::Docker,
                &serde_json::json!({}),
                None,
            )
            .await
            .expect("cloud");
        let inst = w.instance_in("dock", 1, BTreeMap::new()).await;
        w.controller
            .start(tokio_util::sync::CancellationToken::new())
            .await
            .expect("start");
        w.controller.wake(&inst.id);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = w
                .store
                .instance_logs(
                    &inst.id,
                    &LogQuery {
                        tail: None,
                        since: None,
                        after_seq: None,
                        limit: 100,
                    },
                )
                .await
                .expect("logs");
            if let Some(line) = logs
                .iter()
                .find(|l| l.message.contains("this Hangar has no docker driver"))
            {
                assert!(line.message.contains("connection refused"), "{line:?}");
                break;
            }
            assert!(Instant::now() < deadline, "never said why: {logs:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(created(&w.fake).is_empty(), "nothing ran on the sandbox");
    }
}

#[tokio::test]
async fn a_failing_reconcile_backs_off_shows_why_and_recovers() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        let inst = w.instance(1).await;
        w.controller
            .start(tokio_util::sync::CancellationToken::new())
            .await
            .expect("start");
        w.until(
            "running",
            |i, r| i.ready_replicas == 1 && live(r) == 1,
            &inst.id,
        )
        .await;
        let first = w.fake.replicas()[0].id.clone();

        // The replica crashes and the driver cannot remove it, three times.
        w.fake.fail_removes(3);
        w.fake.exit(&first, exited(1));
        let failing = w
            .until(
                "the failure shown",
                |i, _| {
                    i.status_reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("reconcile failed"))
                },
                &inst.id,
            )
            .await;
        let reason = failing.status_reason.unwrap_or_default();
        assert!(
            reason.contains(&format!("cannot remove replica {first}"))
                && reason.contains("the fake was told to fail")
                && reason.contains("retrying in"),
            "{reason}"
        );

        // Retried after growing delays, then it goes through: the replica is
        // replaced and the reason is gone.
        w.until(
            "recovered",
            |i, r| {
                i.ready_replicas == 1
                    && i.status_reason.is_none()
                    && r.iter().all(|x| x.id != first)
            },
            &inst.id,
        )
        .await;
        let removes = w
            .fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Remove(id) if *id == first))
            .count();
        assert_eq!(removes, 4, "three failures, then the one that worked");
    }
}

#[tokio::test]
async fn shutting_down_ends_every_task_and_leaves_the_replicas_running() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        let inst = w.instance(2).await;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stopped = w.controller.start(shutdown.clone()).await.expect("start");
        w.until(
            "running",
            |i, r| i.ready_replicas == 2 && live(r) == 2,
            &inst.id,
        )
        .await;
        let calls = w.fake.calls().len();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), stopped)
            .await
            .expect("every task ends")
            .expect("joined");
        assert_eq!(live(&w.fake.replicas()), 2, "replicas outlive the server");
        // Nothing acts any more: a crash is not seen, nothing is created.
        let replica = w.fake.replicas()[0].id.clone();
        w.fake.exit(&replica, exited(1));
        w.controller.wake(&inst.id);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after: Vec<Call> = w.fake.calls().into_iter().skip(calls).collect();
        assert!(
            after
                .iter()
                .all(|c| !matches!(c, Call::Create(_) | Call::Remove(_) | Call::Stop(..))),
            "{after:?}"
        );
    }
}

#[tokio::test]
async fn an_instance_of_zero_replicas_is_woken_by_exec_and_stdin() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        let inst = w.instance(0).await;
        w.controller
            .start(tokio_util::sync::CancellationToken::new())
            .await
            .expect("start");
        let idle = w
            .until(
                "at zero",
                |i, _| i.status == InstanceStatus::Running && i.status_reason.is_some(),
                &inst.id,
            )
            .await;
        assert_eq!(idle.ready_replicas, 0);
        assert!(w.fake.replicas().is_empty());
        // A stdin replica has no HTTP address: it is ready once it runs, and
        // the wake waits for that, not for the activation's whole limit.
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            w.controller.exec(
                &inst.id,
                &["echo".into(), "awake".into()],
                Duration::from_secs(1),
            ),
        )
        .await
        .expect("answered within the request's limit")
        .expect("exec");
        assert_eq!(out.stdout, b"echo awake\n");
        assert_eq!(live(&w.fake.replicas()), 1);
    }
}

/// Another node's controller on the same database, over a driver of its own.
fn node(w: &World, id: &str) -> (Controller, Arc<FakeDriver>) {
    let fake = Arc::new(FakeDriver::new());
    let controller = Controller::new(w.store.clone(), fake.clone(), leased(id));
    (controller, fake)
}

/// Short leases, so that a takeover comes within a test's patience.
fn leased(node_id: &str) -> ControllerConfig {
    ControllerConfig {
        node_id: node_id.to_owned(),
        instance_lease: Duration::from_millis(600),
        node_dead_after: Duration::from_secs(600),
        ..config()
    }
}

async fn holder(store: &Store, instance: &str) -> Option<(String, i64)> {
    store
        .instance_leases(None)
        .await
        .expect("leases")
        .into_iter()
        .find(|l| l.instance_id == instance)
        .and_then(|l| l.node_id.map(|node| (node, l.generation)))
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_node_runs_an_instance_another_takes_it_over_and_the_first_back_lets_go() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        let inst = w.instance(2).await;
        let (a, fa) = node(&w, "node-a");
        let (b, fb) = node(&w, "node-b");
        let a_stop = tokio_util::sync::CancellationToken::new();
        let a_stopped = a.start(a_stop.clone()).await.expect("start a");
        wait_for("running on a", || live(&fa.replicas()) == 2).await;
        assert_eq!(holder(&w.store, &inst.id).await, Some(("node-a".into(), 1)));
        let b_stop = tokio_util::sync::CancellationToken::new();
        let b_stopped = b.start(b_stop.clone()).await.expect("start b");

        // b visits the instance every resync and leaves it alone.
        for _ in 0..5 {
            b.wake(&inst.id);
            tokio::time::sleep(config().resync).await;
        }
        assert!(fb.calls().is_empty(), "b acted: {:?}", fb.calls());
        assert_eq!(w.get(&inst.id).await.ready_replicas, 2);

        // a goes away without a word (alone as far as it knows, it keeps
        // its lease and its replicas run on): b takes the instance over once
        // the lease runs out.
        a_stop.cancel();
        a_stopped.await.expect("a stopped");
        assert_eq!(live(&fa.replicas()), 2, "a's replicas outlive it");
        wait_for("running on b", || live(&fb.replicas()) == 2).await;
        assert_eq!(holder(&w.store, &inst.id).await, Some(("node-b".into(), 2)));
        assert_eq!(b.replica_count(), 2);

        // a comes back: it adopts its old replicas, finds the instance is
        // b's, and removes them; nothing of it is started on a again.
        let a_again = Controller::new(w.store.clone(), fa.clone(), leased("node-a"));
        let a_again_stop = tokio_util::sync::CancellationToken::new();
        let a_again_stopped = a_again
            .start(a_again_stop.clone())
            .await
            .expect("start a again");
        wait_for("a's orphans removed", || fa.replicas().is_empty()).await;
        assert_eq!(a_again.replica_count(), 0);
        assert_eq!(creates(&fa.calls()), 2, "a created nothing more");
        assert_eq!(live(&fb.replicas()), 2);
        assert_eq!(creates(&fb.calls()), 2);
        assert_eq!(holder(&w.store, &inst.id).await, Some(("node-b".into(), 2)));
        // Stopped before the database goes: nothing of theirs is left
        // mid-transaction.
        a_again_stop.cancel();
        b_stop.cancel();
        a_again_stopped.await.expect("a stopped");
        b_stopped.await.expect("b stopped");
    }
}

#[tokio::test]
async fn a_node_whose_lease_is_taken_stops_its_replicas_and_a_clean_stop_hands_over() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        let inst = w.instance(2).await;
        let (a, fa) = node(&w, "node-a");
        let a_stop = tokio_util::sync::CancellationToken::new();
        let a_stopped = a.start(a_stop.clone()).await.expect("start a");
        wait_for("running on a", || live(&fa.replicas()) == 2).await;

        // Another node takes the lease (as it would once a's had run out
        // while a was cut off): a's next renewal is refused at its
        // generation, and a stops its replicas. (Released, the lease is
        // free for a too: taken again until x has it.)
        let terms = hangar_store::LeaseTerms {
            duration: Duration::from_secs(600),
            node_dead_after: Duration::from_secs(600),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (node, generation) = holder(&w.store, &inst.id).await.expect("held");
            assert_eq!(node, "node-a");
            let held = [(inst.id.clone(), generation)];
            w.store
                .release_instance_leases("node-a", &held)
                .await
                .expect("release");
            let taken = w
                .store
                .acquire_instance_lease(&inst.id, "node-x", terms)
                .await
                .expect("acquire");
            if taken.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "x never got the lease");
        }
        wait_for("a's replicas stopped", || fa.replicas().is_empty()).await;
        assert_eq!(a.replica_count(), 0);
        tokio::time::sleep(config().resync * 3).await;
        assert_eq!(creates(&fa.calls()), 2, "a started nothing of x's");
        a_stop.cancel();
        a_stopped.await.expect("a stopped");

        // A clean stop while another node is ready: the leases go at once,
        // and with them the replicas.
        let second = w.instance(1).await;
        let beat = |id: &str| hangar_store::NodeBeat {
            id: id.to_owned(),
            address: format!("http://{id}"),
            version: "0".into(),
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            replicas: 0,
        };
        for id in ["node-c", "node-d"] {
            w.store.node_heartbeat(&beat(id), true).await.expect("beat");
        }
        let (c, fc) = node(&w, "node-c");
        let c_stop = tokio_util::sync::CancellationToken::new();
        let c_stopped = c.start(c_stop.clone()).await.expect("start c");
        wait_for("running on c", || live(&fc.replicas()) == 1).await;
        assert_eq!(
            holder(&w.store, &second.id).await,
            Some(("node-c".into(), 1))
        );
        c_stop.cancel();
        c_stopped.await.expect("c stopped");
        assert!(fc.replicas().is_empty(), "{:?}", fc.replicas());
        assert_eq!(
            holder(&w.store, &second.id).await,
            None,
            "released: {:?} {:?}",
            w.store.instance_leases(None).await,
            w.store.list_nodes().await
        );
        let (d, fd) = node(&w, "node-d");
        let d_stop = tokio_util::sync::CancellationToken::new();
        let d_stopped = d.start(d_stop.clone()).await.expect("start d");
        wait_for("running on d", || live(&fd.replicas()) == 1).await;
        assert_eq!(
            holder(&w.store, &second.id).await,
            Some(("node-d".into(), 2))
        );
        d_stop.cancel();
        d_stopped.await.expect("d stopped");
    }
}

#[tokio::test]
async fn a_clean_stop_hands_over_a_replica_whose_create_was_in_flight() {
    for backend in backends() {
        let w = world(TestDb::new(backend).await).await;
        let beat = |id: &str| hangar_store::NodeBeat {
            id: id.to_owned(),
            address: format!("http://{id}"),
            version: "0".into(),
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            replicas: 0,
        };
        for id in ["node-a", "node-b"] {
            w.store.node_heartbeat(&beat(id), true).await.expect("beat");
        }
        let (a, fa) = node(&w, "node-a");
        // The driver makes the replica but has not answered yet (a pod
        // created, not yet running) when the server is told to stop.
        fa.hold_creates(true);
        let inst = w.instance(1).await;
        let a_stop = tokio_util::sync::CancellationToken::new();
        let a_stopped = a.start(a_stop.clone()).await.expect("start a");
        wait_for("a create in flight", || fa.replicas().len() == 1).await;
        a_stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        fa.hold_creates(false);
        a_stopped.await.expect("a stopped");
        assert!(
            fa.replicas().is_empty(),
            "the replica made while stopping was left to no one: {:?}",
            fa.replicas()
        );
        assert_eq!(holder(&w.store, &inst.id).await, None, "released");
    }
}

#[tokio::test]
async fn request_figures_are_exact_on_one_node_and_add_up_across_nodes() {
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let fake = Arc::new(FakeDriver::new());
        let node = |id: &str| {
            Controller::new(
                db.store.clone(),
                fake.clone(),
                ControllerConfig {
                    node_id: id.to_owned(),
                    ..config()
                },
            )
        };
        let (a, b) = (node("node-a"), node("node-b"));
        let day = Duration::from_secs(24 * 3600);
        let read = |c: &Controller| {
            let c = c.clone();
            async move {
                let figures = c
                    .request_stats(&["inst_1", "inst_2"], day)
                    .await
                    .expect("figures");
                let never = figures.get("inst_2").copied().unwrap_or_default();
                assert_eq!(never.requests, 0, "{figures:?}");
                figures.get("inst_1").copied().unwrap_or_default()
            }
        };
        // Counted on node a, read before and after its flush: the same.
        let traffic = a.traffic("inst_1");
        traffic.record(true, Duration::from_millis(10));
        traffic.record(true, Duration::from_millis(20));
        traffic.record(false, Duration::from_millis(30));
        let before = read(&a).await;
        assert_eq!((before.requests, before.errors), (3, 1));
        assert!((before.avg_latency_ms - 20.0).abs() < 1e-9, "{before:?}");
        a.flush_requests().await.expect("flush");
        assert_eq!(read(&a).await, before);
        a.flush_requests().await.expect("nothing new");
        assert_eq!(read(&a).await, before);
        // Node b counts too: it sees a's stored counts and its own; a sees
        // b's once b has flushed.
        b.traffic("inst_1").record(false, Duration::from_millis(60));
        traffic.record(true, Duration::from_millis(0));
        assert_eq!(read(&b).await.requests, 4);
        assert_eq!(read(&a).await.requests, 4);
        b.flush_requests().await.expect("flush");
        for node in [&a, &b] {
            let both = read(node).await;
            // Node a's last one is still unflushed: b cannot see it yet.
            let expected = if std::ptr::eq(node, &a) { 5 } else { 4 };
            assert_eq!(both.requests, expected, "{both:?}");
        }
        a.flush_requests().await.expect("flush");
        for node in [&a, &b] {
            let both = read(node).await;
            assert_eq!((both.requests, both.errors), (5, 2), "{both:?}");
            assert!((both.avg_latency_ms - 24.0).abs() < 1e-9, "{both:?}");
        }
        // Prometheus' figures stay per process.
        assert_eq!(a.local_request_stats("inst_1", day).requests, 4);
        assert_eq!(b.local_request_stats("inst_1", day).requests, 1);
    }
}

#[tokio::test]
async fn metric_series_is_exact_across_a_flush_and_the_retention_prunes_old_minutes() {
    use hangar_controller::scale::unix_minute;
    use hangar_store::{MinuteFigures, RequestCounts, RequestMinute, SeriesSpan};
    for backend in backends() {
        let db = TestDb::new(backend).await;
        let fake = Arc::new(FakeDriver::new());
        let node = |id: &str, retention: Duration| {
            Controller::new(
                db.store.clone(),
                fake.clone(),
                ControllerConfig {
                    node_id: id.to_owned(),
                    metric_retention: retention,
                    ..config()
                },
            )
        };
        let week = Duration::from_secs(7 * 24 * 3600);
        let (a, b) = (node("node-a", week), node("node-b", week));
        let span = || SeriesSpan::ending_at(unix_minute(), 60, 2);
        let summed = |c: &Controller| {
            let c = c.clone();
            async move {
                let steps = c.metric_series("inst_1", span()).await.expect("series");
                let mut sum = hangar_store::StepFigures::default();
                for step in steps {
                    sum.counts += step.counts;
                    sum.latency += step.latency;
                }
                sum
            }
        };
        // Counted on node a: the same read before and after its flush, and
        // node b sees it once written.
        let traffic = a.traffic("inst_1");
        for ms in [1, 1, 1, 400] {
            traffic.record(true, Duration::from_millis(ms));
        }
        let before = summed(&a).await;
        assert_eq!((before.counts.requests, before.latency.total()), (4, 4));
        assert_eq!(summed(&b).await.counts.requests, 0);
        a.flush_requests().await.expect("flush");
        assert_eq!(summed(&a).await, before);
        assert_eq!(summed(&b).await, before);
        // Node b's own: added to a's buckets, percentiles of the sum.
        b.traffic("inst_1")
            .record(false, Duration::from_millis(400));
        b.flush_requests().await.expect("flush");
        let both = summed(&a).await;
        assert_eq!((both.counts.requests, both.counts.errors), (5, 1));
        let p95 = both.latency.percentile_ms(0.95).expect("p95");
        assert!(p95 > 362.0, "{p95}: the slow ones, one from each node");

        // A node keeping an hour deletes every node's older minutes as it
        // starts flushing, and only those.
        let old = |minute: i64| RequestMinute {
            instance_id: "inst_old".to_owned(),
            minute,
            figures: MinuteFigures {
                counts: RequestCounts {
                    requests: 1,
                    errors: 0,
                    latency_us: 1_000,
                },
                ..MinuteFigures::default()
            },
        };
        let now = unix_minute();
        db.store
            .add_request_counts("node-x", &[old(now - 90), old(now - 30)])
            .await
            .expect("old figures");
        let c = node("node-c", Duration::from_secs(3600));
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = c.start(stop.clone()).await.expect("start c");
        let two_hours = SeriesSpan::ending_at(now, 1, 120);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let steps = db
                .store
                .metric_series("inst_old", two_hours)
                .await
                .expect("read");
            let total: u64 = steps.iter().map(|s| s.counts.requests).sum();
            if total == 1 {
                assert_eq!(steps[119 - 30].counts.requests, 1, "the newer minute stays");
                break;
            }
            assert_eq!(total, 2, "only the minute past the retention goes");
            assert!(Instant::now() < deadline, "never pruned: {steps:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        stopped.await.expect("c stopped");
    }
}
