//! Builds for docker clouds against a real (SQLite) store and a recording
//! fake engine: which image is made how, what reaches the build's log, what
//! is published, and how failures read. The real engine is tested through
//! `hangar serve` in the `hangar` crate (`tests/docker_cloud.rs`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::TempDir;
use hangar_build::{BuildConfig, Builder, ImageMaker};
use hangar_core::docker::image_tag;
use hangar_core::model::{Build, DriverKind};
use hangar_core::resources::Resources;
use hangar_core::spec::{RegistryCredentials, RuntimeConfig, Scaling, Source};
use hangar_core::status::BuildStatus;
use hangar_store::testing::TestDb;
use hangar_store::{Backend, NewAgent, Store};
use tokio::sync::mpsc;

/// One request the fake engine received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Made {
    Build {
        /// The context's files (top level), sorted.
        files: Vec<String>,
        dockerfile: Option<String>,
        tag: String,
    },
    Pull {
        reference: String,
        credentials: Option<(String, String)>,
        tag: String,
    },
}

/// Sends `lines` to the log, then answers `fail` (an error) or success.
#[derive(Default)]
struct FakeEngine {
    made: Mutex<Vec<Made>>,
    lines: Vec<String>,
    fail: Option<String>,
}

impl FakeEngine {
    fn made(&self) -> Vec<Made> {
        self.made.lock().expect("lock").clone()
    }

    async fn answer(&self, log: mpsc::Sender<String>) -> Result<(), String> {
        for line in &self.lines {
            log.send(line.clone()).await.expect("the builder reads");
        }
        match &self.fail {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }
}

fn top_level(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("context")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

#[async_trait::async_trait]
impl ImageMaker for FakeEngine {
    async fn build(
        &self,
        context: &Path,
        dockerfile: Option<&str>,
        tag: &str,
        _limits: hangar_runtime::BuildLimits,
        log: mpsc::Sender<String>,
    ) -> Result<(), String> {
        self.made.lock().expect("lock").push(Made::Build {
            files: top_level(context),
            dockerfile: dockerfile.map(str::to_owned),
            tag: tag.to_owned(),
        });
        self.answer(log).await
    }

    async fn pull(
        &self,
        reference: &str,
        credentials: Option<(String, String)>,
        tag: &str,
        log: mpsc::Sender<String>,
    ) -> Result<(), String> {
        self.made.lock().expect("lock").push(Made::Pull {
            reference: reference.to_owned(),
            credentials,
            tag: tag.to_owned(),
        });
        self.answer(log).await
    }
}

struct World {
    _db: TestDb,
    store: Store,
    org: String,
    user: String,
    cloud: String,
    data: TempDir,
}

async fn world(config: serde_json::Value) -> World {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store.clone();
    let boot = store.bootstrap(None).await.expect("bootstrap");
    let org = boot.organization.id.clone();
    let cloud = store
        .create_cloud(&org, "dock", DriverKind::Docker, &config, None)
        .await
        .expect("cloud");
    World {
        _db: db,
        store,
        org,
        user: boot.admin.id,
        cloud: cloud.id,
        data: TempDir::new(),
    }
}

impl World {
    async fn build(&self, name: &str, source: Source) -> Build {
        let (_, build) = self
            .store
            .create_agent(NewAgent {
                organization_id: self.org.clone(),
                user_id: self.user.clone(),
                cloud_id: self.cloud.clone(),
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
        build
    }

    fn builder(&self, engine: Option<Arc<FakeEngine>>) -> Builder {
        let builder = Builder::new(self.store.clone())
            .with_config(BuildConfig::new(self.data.path().join("data")));
        match engine {
            Some(engine) => builder.with_images(engine),
            None => builder.without_images("no Docker engine answered at start (refused)"),
        }
    }

    async fn finished(&self, builder: &Builder, build: &Build) -> (Build, Vec<String>) {
        assert_eq!(builder.run_pending().await.expect("run"), 1);
        let done = self
            .store
            .get_build(&self.org, &build.id)
            .await
            .expect("get")
            .expect("build");
        let log = self
            .store
            .build_log(&build.id, 0, 1000)
            .await
            .expect("log")
            .into_iter()
            .map(|l| l.line)
            .collect();
        (done, log)
    }
}

fn dir_source(dir: &TempDir) -> Source {
    Source::Github {
        repo: dir.url(""),
        branch: None,
        path: None,
        commit: None,
    }
}

fn engine(lines: &[&str], fail: Option<&str>) -> Arc<FakeEngine> {
    Arc::new(FakeEngine {
        made: Mutex::default(),
        lines: lines.iter().map(|l| (*l).to_owned()).collect(),
        fail: fail.map(str::to_owned),
    })
}

#[tokio::test]
async fn a_tree_without_a_dockerfile_gets_one_from_its_recipe() {
    let w = world(serde_json::json!({"base_image": "hangar-test-python:3"})).await;
    let src = TempDir::new();
    src.file("main.py", "print('hi')\n");
    src.file("requirements.txt", "flask\n");
    let build = w.build("py", dir_source(&src)).await;
    let engine = engine(
        &[
            "Step 1/5 : FROM hangar-test-python:3",
            "Successfully built 0123",
        ],
        None,
    );
    let builder = w.builder(Some(engine.clone()));
    let (done, log) = w.finished(&builder, &build).await;
    assert_eq!(done.status, BuildStatus::Ready, "{:?} {log:?}", done.reason);

    let made = engine.made();
    let [Made::Build {
        files,
        dockerfile: Some(dockerfile),
        tag,
    }] = made.as_slice()
    else {
        panic!("one build with a generated Dockerfile: {made:?}");
    };
    assert_eq!(tag, &image_tag(&build.id));
    assert_eq!(
        files,
        &["main.py", "requirements.txt"],
        "the source, no venv"
    );
    assert!(
        dockerfile.contains("\nFROM hangar-test-python:3\n"),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("\nCOPY . /app\n"), "{dockerfile}");
    assert!(
        dockerfile.contains("-r /app/requirements.txt"),
        "the recipe's step: {dockerfile}"
    );
    // The engine's lines, in the log, in order, after the Dockerfile shown.
    let from = log
        .iter()
        .position(|l| l == "Step 1/5 : FROM hangar-test-python:3")
        .expect("the engine's lines reach the log");
    assert_eq!(log[from + 1], "Successfully built 0123");
    assert!(
        log[..from]
            .iter()
            .any(|l| l.contains("generated Dockerfile")),
        "{log:?}"
    );

    // The published artifact is the unbuilt source, for launch to read.
    let artifact = PathBuf::from(done.artifact.expect("artifact"));
    assert!(artifact.starts_with(w.data.path().join("data/artifacts")));
    assert_eq!(top_level(&artifact), ["main.py", "requirements.txt"]);
}

#[tokio::test]
async fn a_tree_with_its_own_dockerfile_is_built_with_it() {
    let w = world(serde_json::json!({})).await;
    let src = TempDir::new();
    src.file(
        "Dockerfile",
        "FROM python:3.12-slim\nCOPY main.py /srv/\nCMD [\"python3\", \"/srv/main.py\"]\n",
    );
    src.file("main.py", "print('hi')\n");
    let build = w.build("own", dir_source(&src)).await;
    let engine = engine(&["Step 1/3 : FROM python:3.12-slim"], None);
    let (done, _) = w.finished(&w.builder(Some(engine.clone())), &build).await;
    assert_eq!(done.status, BuildStatus::Ready, "{:?}", done.reason);
    let made = engine.made();
    assert!(
        matches!(made.as_slice(), [Made::Build { dockerfile: None, files, .. }] if files == &["Dockerfile", "main.py"]),
        "{made:?}"
    );
    let artifact = PathBuf::from(done.artifact.expect("artifact"));
    assert!(artifact.join("Dockerfile").is_file());
}

#[tokio::test]
async fn a_docker_source_is_pulled_with_credentials_from_secrets_and_masked() {
    let w = world(serde_json::json!({})).await;
    w.store
        .put_secret(&w.org, "REG_PASS", "hunter2")
        .await
        .expect("secret");
    let build = w
        .build(
            "pulled",
            Source::Docker {
                image: "registry.test/agent:1".into(),
                credentials: Some(RegistryCredentials {
                    username: "bob".into(),
                    password: "${secrets.REG_PASS}".into(),
                }),
            },
        )
        .await;
    let engine = engine(&["1: Pulling fs layer", "auth hunter2 ok"], None);
    let (done, log) = w.finished(&w.builder(Some(engine.clone())), &build).await;
    assert_eq!(done.status, BuildStatus::Ready, "{:?} {log:?}", done.reason);
    assert_eq!(
        engine.made(),
        [Made::Pull {
            reference: "registry.test/agent:1".into(),
            credentials: Some(("bob".into(), "hunter2".into())),
            tag: image_tag(&build.id),
        }]
    );
    assert!(log.contains(&"1: Pulling fs layer".to_owned()), "{log:?}");
    assert!(log.contains(&"auth **** ok".to_owned()), "{log:?}");
    assert!(!log.iter().any(|l| l.contains("hunter2")), "{log:?}");
    // The artifact names the image: launch runs the image's own command.
    let artifact = PathBuf::from(done.artifact.expect("artifact"));
    assert_eq!(
        std::fs::read_to_string(artifact.join("Dockerfile")).expect("Dockerfile"),
        "FROM registry.test/agent:1\n"
    );
}

#[tokio::test]
async fn a_failed_image_build_fails_the_build_with_the_engines_words() {
    let w = world(serde_json::json!({"base_image": "python:3.12-slim"})).await;
    let src = TempDir::new();
    src.file("main.py", "print('hi')\n");
    src.file("requirements.txt", "no-such-package\n");
    let build = w.build("broken", dir_source(&src)).await;
    let engine = engine(
        &["ERROR: No matching distribution found for no-such-package"],
        Some("The command '/bin/sh -c pip install' returned a non-zero code: 1"),
    );
    let (done, log) = w.finished(&w.builder(Some(engine)), &build).await;
    assert_eq!(done.status, BuildStatus::Failed);
    let reason = done.reason.expect("a reason");
    assert!(reason.contains("returned a non-zero code: 1"), "{reason}");
    assert!(
        log.contains(&"ERROR: No matching distribution found for no-such-package".to_owned()),
        "{log:?}"
    );
    assert_eq!(log.last(), Some(&reason), "the reason closes the log");
    assert!(
        w.store
            .get_agent(&w.org, &build.agent_id)
            .await
            .expect("agent")
            .expect("agent")
            .default_instance
            .is_none(),
        "nothing deployed"
    );
}

#[tokio::test]
async fn without_an_engine_docker_builds_fail_saying_why() {
    let w = world(serde_json::json!({})).await;
    let src = TempDir::new();
    src.file("main.py", "print('hi')\n");
    let build = w.build("nowhere", dir_source(&src)).await;
    let (done, _) = w.finished(&w.builder(None), &build).await;
    assert_eq!(done.status, BuildStatus::Failed);
    let reason = done.reason.expect("a reason");
    assert!(reason.contains("no Docker engine"), "{reason}");
    assert!(reason.contains("refused"), "{reason}");
}
