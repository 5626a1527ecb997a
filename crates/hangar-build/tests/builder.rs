//! The builder against a real (SQLite) store: queued builds become ready or
//! failed, ready ones are deployed, and the server hears which instance changed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TempDir;
use hangar_build::Builder;
use hangar_core::model::{Build, Instance};
use hangar_core::resources::Resources;
use hangar_core::spec::{RuntimeConfig, Scaling, Source};
use hangar_core::status::BuildStatus;
use hangar_store::testing::TestDb;
use hangar_store::{Backend, NewAgent, Store};

struct Org {
    id: String,
    user: String,
    cloud: String,
}

async fn org(store: &Store) -> Org {
    let boot = store.bootstrap(None).await.expect("bootstrap");
    let id = boot.organization.id.clone();
    let cloud = store
        .get_cloud(&id, "local")
        .await
        .expect("cloud")
        .expect("local");
    Org {
        id,
        user: boot.admin.id,
        cloud: cloud.id,
    }
}

async fn agent(store: &Store, o: &Org, name: &str, source: Source) -> (String, Build) {
    let (view, build) = store
        .create_agent(NewAgent {
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
            source,
            metadata: BTreeMap::new(),
        })
        .await
        .expect("agent");
    (view.agent.id, build)
}

fn dir_source(repo: String) -> Source {
    Source::Github {
        repo,
        branch: None,
        path: None,
        commit: None,
    }
}

/// A builder that records the instances it reports deployed.
fn recording(store: &Store) -> (Builder, Arc<Mutex<Vec<Instance>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let builder = Builder::new(store.clone())
        .with_on_deployed(move |i: &Instance| sink.lock().expect("lock").push(i.clone()));
    (builder, seen)
}

async fn build_of(store: &Store, o: &Org, id: &str) -> Build {
    store
        .get_build(&o.id, id)
        .await
        .expect("get")
        .expect("build")
}

async fn log_of(store: &Store, id: &str) -> Vec<String> {
    store
        .build_log(id, 0, 100)
        .await
        .expect("log")
        .into_iter()
        .map(|l| l.line)
        .collect()
}

#[tokio::test]
async fn a_directory_is_built_deployed_and_redeployed() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store.clone();
    let o = org(&store).await;
    let dir = TempDir::new();
    dir.file("main.py", "print('hi')\n");
    let (agent_id, build) = agent(&store, &o, "echo", dir_source(dir.url(""))).await;
    let (builder, seen) = recording(&store);

    assert_eq!(builder.run_pending().await.expect("run"), 1);
    let built = build_of(&store, &o, &build.id).await;
    let expected = dir
        .path()
        .canonicalize()
        .expect("canonical")
        .display()
        .to_string();
    assert_eq!(built.status, BuildStatus::Ready);
    assert_eq!(built.artifact.as_deref(), Some(expected.as_str()));
    assert!(built.reason.is_none());
    assert!(built.started_at.is_some() && built.finished_at.is_some());
    assert_eq!(
        log_of(&store, &build.id).await,
        vec![format!("using the directory {expected} as the artifact")]
    );
    let view = store
        .get_agent(&o.id, &agent_id)
        .await
        .expect("get")
        .expect("agent");
    let instance = view.default_instance.expect("default instance");
    assert_eq!(instance.build_id, build.id);
    assert_eq!(instance.name, "echo");
    assert_eq!(*seen.lock().expect("lock"), vec![instance.clone()]);
    // Nothing left to do.
    assert_eq!(builder.run_pending().await.expect("run"), 0);

    // A redeploy rolls the same instance onto the new build.
    let next = store
        .queue_build(&o.id, &agent_id, None)
        .await
        .expect("queue")
        .expect("agent");
    assert_eq!(builder.run_pending().await.expect("run"), 1);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].id, instance.id);
    assert_eq!(seen[1].build_id, next.id);
    assert_eq!(store.instance_count(&o.id).await.expect("count"), 1);
}

#[tokio::test]
async fn failed_builds_say_why_and_deploy_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store.clone();
    let o = org(&store).await;
    let unreadable = TempDir::new();
    unreadable.file("main.py", "print('hi')\n");
    let secret = unreadable.file("key.pem", "-----\n");
    unreadable.chmod("key.pem", 0o600);
    let empty = TempDir::new();
    empty.file("notes.txt", "");
    let cases = [
        (
            "docker",
            // Nothing listens on port 1: the pull fails at once, saying so.
            Source::Docker {
                image: "127.0.0.1:1/user/agent:v1".into(),
                credentials: None,
            },
            "cannot pull image 127.0.0.1:1/user/agent:v1".to_owned(),
        ),
        (
            "docker-secret",
            Source::Docker {
                image: "127.0.0.1:1/user/agent:v1".into(),
                credentials: Some(hangar_core::spec::RegistryCredentials {
                    username: "bot".into(),
                    password: "${secrets.NO_SUCH_TOKEN}".into(),
                }),
            },
            "credentials.password names the secret NO_SUCH_TOKEN".to_owned(),
        ),
        (
            "git",
            dir_source("file:///nonexistent/hangar/repo.git/".into()),
            "does not exist".to_owned(),
        ),
        (
            "missing",
            dir_source("file:///nonexistent/hangar/agent".into()),
            "the directory /nonexistent/hangar/agent does not exist".to_owned(),
        ),
        (
            "unreadable",
            dir_source(unreadable.url("")),
            secret.display().to_string(),
        ),
        (
            "empty",
            dir_source(empty.url("")),
            "nothing to run".to_owned(),
        ),
    ];
    let (builder, seen) = recording(&store);
    let mut builds = Vec::new();
    for (name, source, _) in &cases {
        builds.push(agent(&store, &o, name, source.clone()).await.1);
    }
    assert_eq!(builder.run_pending().await.expect("run"), cases.len());
    for ((name, _, expected), build) in cases.iter().zip(&builds) {
        let failed = build_of(&store, &o, &build.id).await;
        assert_eq!(failed.status, BuildStatus::Failed, "{name}");
        let reason = failed.reason.expect("reason");
        assert!(reason.contains(expected.as_str()), "{name}: {reason}");
        assert!(failed.artifact.is_none(), "{name}");
        assert_eq!(log_of(&store, &build.id).await, vec![reason], "{name}");
    }
    assert!(seen.lock().expect("lock").is_empty());
    assert_eq!(store.instance_count(&o.id).await.expect("count"), 0);
}

#[tokio::test]
async fn the_running_builder_picks_up_builds_when_woken() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store.clone();
    let o = org(&store).await;
    let dir = TempDir::new();
    dir.file("app.py", "print('hi')\n");
    let (builder, seen) = recording(&store);
    let task = builder.clone().start(Default::default(), Duration::ZERO);
    let (_, build) = agent(&store, &o, "woken", dir_source(dir.url(""))).await;
    builder.wake();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().expect("lock").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never deployed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.lock().expect("lock")[0].build_id, build.id);
    assert_eq!(
        build_of(&store, &o, &build.id).await.status,
        BuildStatus::Ready
    );
    task.abort();
}

/// The git smart-HTTP server of `tests/support/git_http.py`, killed on drop.
struct GitHttp(std::process::Child);

impl Drop for GitHttp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[tokio::test]
async fn a_git_repository_over_http_is_cloned_with_credentials_from_a_secret() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store.clone();
    let o = org(&store).await;
    // A repository with an agent, served as `agent.git` behind Basic auth.
    let work = TempDir::new();
    work.file("main.py", "print('from http')\n");
    run_git(work.path(), &["init", "-q", "-b", "main"]);
    run_git(work.path(), &["add", "."]);
    run_git(work.path(), &["commit", "-q", "-m", "agent"]);
    let served = TempDir::new();
    run_git(
        served.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &work.path().display().to_string(),
            "agent.git",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/git_http.py");
    let _server = GitHttp(
        std::process::Command::new("python3")
            .arg(script)
            .arg(served.path())
            .args([&port.to_string(), "hangar", "s3cret-token"])
            .spawn()
            .expect("git http server"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    store
        .put_secret(&o.id, "GIT_TOKEN", "s3cret-token")
        .await
        .expect("secret");
    store
        .put_secret(&o.id, "OLD_TOKEN", "expired-token")
        .await
        .expect("secret");
    let url =
        |secret: &str| format!("http://hangar:${{secrets.{secret}}}@127.0.0.1:{port}/agent.git");
    let (_, good) = agent(&store, &o, "over-http", dir_source(url("GIT_TOKEN"))).await;
    let (_, bad) = agent(&store, &o, "wrong-token", dir_source(url("OLD_TOKEN"))).await;
    let (_, missing) = agent(&store, &o, "no-secret", dir_source(url("NOPE"))).await;
    let builder = Builder::new(store.clone());
    assert_eq!(builder.run_pending().await.expect("run"), 3);

    let built = build_of(&store, &o, &good.id).await;
    let log = log_of(&store, &good.id).await.join("\n");
    assert_eq!(
        built.status,
        BuildStatus::Ready,
        "{:?}\n{log}",
        built.reason
    );
    let artifact = built.artifact.expect("artifact");
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(&artifact).join("main.py")).expect("main.py"),
        "print('from http')\n"
    );
    assert!(!log.contains("s3cret-token"), "the token is masked: {log}");

    let failed = build_of(&store, &o, &bad.id).await;
    let reason = failed.reason.clone().unwrap_or_default();
    assert_eq!(failed.status, BuildStatus::Failed, "{reason}");
    let log = log_of(&store, &bad.id).await.join("\n");
    assert!(
        !reason.contains("expired-token") && !log.contains("expired-token"),
        "{reason}\n{log}"
    );

    let failed = build_of(&store, &o, &missing.id).await;
    assert_eq!(failed.status, BuildStatus::Failed);
    assert!(failed.reason.unwrap_or_default().contains("NOPE"));
}

/// The build step replica the fake driver holds for `build`, once created.
fn step_of(driver: &hangar_runtime::fake::FakeDriver, build: &str) -> Option<String> {
    driver
        .replicas()
        .into_iter()
        .find(|r| r.labels.get(hangar_build::BUILD_LABEL).map(String::as_str) == Some(build))
        .map(|r| r.id)
}

/// Whether build steps can be given their tree here (that is a chown: it
/// needs root); with `CI=true` they must be.
#[allow(
    clippy::disallowed_methods,
    reason = "CI=true makes a missing prerequisite a failure, not a skip"
)]
fn steps_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: build steps need root, and CI=true"
    );
    eprintln!("SKIPPED {test}: build steps need root");
    false
}

#[tokio::test]
async fn a_build_cut_off_by_shutdown_is_queued_again_and_built_by_the_next_start() {
    if !steps_or_skip("a_build_cut_off_by_shutdown") {
        return;
    }
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store.clone();
    let o = org(&store).await;
    let source = TempDir::new();
    source.file("app.py", "print('hi')\n");
    source.file("hangar.toml", "[build]\ncommand = \"make\"\n");
    let work = TempDir::new();
    let driver = Arc::new(hangar_runtime::fake::FakeDriver::new());
    let (builder, seen) = recording(&store);
    let builder = builder
        .with_config(hangar_build::BuildConfig::new(work.path()))
        .with_driver(driver.clone());
    let (_, build) = agent(&store, &o, "cut", dir_source(source.url(""))).await;

    // A step that never ends on its own, and a shutdown meanwhile.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = builder.clone().start(shutdown.clone(), Duration::ZERO);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let step = loop {
        if let Some(step) = step_of(&driver, &build.id) {
            break step;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shutdown.cancel();
    task.await.expect("the builder ends at shutdown");
    let cut = build_of(&store, &o, &build.id).await;
    assert_eq!(cut.status, BuildStatus::Queued, "{cut:?}");
    assert!(
        log_of(&store, &build.id)
            .await
            .iter()
            .any(|l| l.contains("queued again")),
        "the log says why it starts over"
    );
    assert!(
        driver
            .calls()
            .contains(&hangar_runtime::fake::Call::Remove(step.clone())),
        "the step's sandbox is removed"
    );
    assert!(step_of(&driver, &build.id).is_none());
    assert!(seen.lock().expect("lock").is_empty(), "nothing deployed");

    // The next start builds it from the beginning.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = builder.clone().start(shutdown.clone(), Duration::ZERO);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let step = loop {
        if let Some(step) = step_of(&driver, &build.id) {
            break step;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step never started again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    driver.exit(
        &step,
        hangar_runtime::driver::Exit {
            code: Some(0),
            signal: None,
            oom_killed: false,
            at_ms: 0,
        },
    );
    while seen.lock().expect("lock").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never deployed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        build_of(&store, &o, &build.id).await.status,
        BuildStatus::Ready
    );
    shutdown.cancel();
    task.await.expect("the builder ends at shutdown");
}
