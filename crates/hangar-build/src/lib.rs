//! Hangar's builders: an agent's source → the artifact its instances run.
//!
//! This is the first builder, and a minimal one. It exists so that agents can run
//! at all: the [`Builder`] takes queued builds from the store (exclusively, even
//! with several Hangar processes on one PostgreSQL), builds each, records the
//! outcome and the build's log, and deploys a ready build to its agent's default
//! instance ([`hangar_store::Store::deploy_build`]), telling the server which
//! instance changed so it can wake its controller.
//!
//! What happens to a build, in order:
//!
//! 1. **Fetch** ([`source`]): an upload's archive is unpacked
//!    ([`archive`], which refuses anything that would escape the build dir),
//!    a git repository is cloned at its branch head or pinned commit
//!    ([`git`], credentials from `${secrets.NAME}` in the URL), into a fresh
//!    directory of the build's own under `<data dir>/builds`. A plain
//!    `file://` directory with nothing to build is used in place. A
//!    `docker` source takes its own path ([`image`]): the image's manifest
//!    is resolved, its digest is the artifact's address, and its layers are
//!    pulled and unpacked as a root filesystem only when that artifact does
//!    not exist yet; there is no build step.
//! 2. **Address** ([`artifact`]): the tree and the build step ([`recipe`])
//!    are hashed; when `<data dir>/artifacts/<key>` exists, this source was
//!    built the same way before and that artifact is reused (the log says so).
//! 3. **Build step**: `requirements.txt` / `pyproject.toml` → a virtualenv at
//!    `/app/.venv`, `package.json` with dependencies → `npm ci` (or `npm
//!    install` without a lock file), or `hangar.toml`'s `[build] command` — run as a one-shot
//!    replica of the runtime [`Driver`] (a sandbox: unprivileged user, egress,
//!    the agent's resource limits, a timeout) with the build's directory
//!    writable at `/app`; its output lines go to the build's log as they come;
//!    its exit code decides the build. Never run on the host, never as root.
//! 4. **Publish**: the tree is taken back for root, made readable, and renamed
//!    to `<data dir>/artifacts/<key>`; the build is `ready` and deployed.
//!
//! An agent on a docker cloud takes another road after the fetch
//! ([`docker`]): the Docker engine pulls its image, or builds one from the
//! tree's own `Dockerfile` or a generated one, with the engine's output in
//! the build's log; no build step runs here, and the unbuilt tree is
//! published for launch to read.
//!
//! An agent on a kubernetes cloud takes a third road ([`kubernetes`]): its
//! artifact is an image in the cloud's registry, named by its digest
//! (`artifacts/oci-<digest>/image.json`, no root filesystem); a `docker`
//! source is only resolved (the cluster pulls it), an `upload` or `github`
//! source is built on the cloud's base image in a sandbox and pushed.
//!
//! Statuses: `queued → building → ready | failed` (with a reason, also the
//! last log line). A claim is a lease of the builder's (`<node>/<boot>`,
//! [`Builder::with_owner`]): the builder touches its build's heartbeat
//! while it works, every quarter of [`BuildConfig::lease`]. A build whose
//! builder went silent for a whole lease (its server was killed mid-way)
//! is queued again by whichever builder looks first ([`Builder::start`]),
//! and built from the start, on any server on the database; after
//! [`hangar_store::MAX_BUILD_ATTEMPTS`] it is failed instead, so none
//! stays `building` forever. A builder whose heartbeat finds the build is
//! no longer its own stops working on it and records nothing. A server that
//! stops (SIGTERM) lets the build under way finish within its drain time,
//! or puts it back to `queued` to be built again from the start. A finished build
//! is final, and its outcome is an event (`build.succeeded`, `build.failed`)
//! recorded by the store in the transaction that finishes it, so a webhook
//! hears of every build exactly once, whichever way it ended.
//!
//! # Layout
//! - [`Builder`]: the loop over queued builds, the sandboxed build step, logs.
//! - [`source`]: a source → a directory tree.
//! - [`error`]: why a build failed ([`BuildError`]), below every other module.
//! - [`archive`]: unpacking uploads without escaping the build dir.
//! - [`git`]: the `git` command as a subprocess.
//! - [`image`]: OCI images: resolve, pull, unpack as a root filesystem.
//! - [`docker`]: builds for docker clouds: images made by the engine
//!   ([`ImageMaker`]), generated Dockerfiles.
//! - [`kubernetes`]: builds for kubernetes clouds: images pushed to the
//!   cloud's registry, built without a Docker engine ([`layer`]).
//! - [`layer`]: the layer, config and manifest of such an image.
//! - [`recipe`]: which build step a tree asks for.
//! - [`artifact`]: content hashes, ownership around the step, publishing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hangar_core::model::{Build, Instance};
use hangar_core::resources::Resources;
use hangar_core::spec::Source;
use hangar_core::status::BuildStatus;
use hangar_runtime::driver::{Driver, OutputEvent, OutputStream, ReplicaSpec};
use hangar_store::blobs::{BlobKey, Blobs};
use hangar_store::{Store, StoreError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod archive;
pub mod artifact;
pub mod docker;
pub mod error;
pub mod git;
pub mod image;
pub mod kubernetes;
pub mod layer;
pub mod recipe;
pub mod source;

pub use docker::ImageMaker;
pub use error::BuildError;
pub use source::{Artifact, Fetched};

/// How often the builder looks for queued builds when nobody wakes it (another
/// Hangar process on the same database may have queued them).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How long a build's claim lasts without a heartbeat, unless configured
/// ([`BuildConfig::lease`]).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The uid build steps run as (the sandbox's unprivileged user).
pub const BUILD_UID: u32 = 65_534;

/// The label that marks a runtime replica as a build step (its value: the
/// build's id), so the controller leaves it alone.
pub const BUILD_LABEL: &str = "hangar.build";

/// What the builder calls with the instance a build was deployed to.
pub type OnDeployed = Arc<dyn Fn(&Instance) + Send + Sync>;

/// Where builds work and what bounds them.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// `builds/` (each build's scratch dir), `artifacts/` and `uploads/` live here.
    pub data_dir: PathBuf,
    /// Bounds on uploaded archives.
    pub limits: archive::Limits,
    /// How long fetching a git repository may take.
    pub git_timeout: Duration,
    /// How long a build step may run.
    pub step_timeout: Duration,
    /// The least memory a build step gets, whatever the agent's limit
    /// (package installers need some).
    pub min_step_memory_bytes: u64,
    /// Bounds on an OCI image's layers, all together.
    pub image_limits: archive::Limits,
    /// Registries (`host:port`) spoken to over plain HTTP besides those on
    /// loopback, which always are.
    pub insecure_registries: Vec<String>,
    /// Variables every build step gets besides its own: the operator's
    /// package index settings ([`STEP_ENV_NAMES`], read by the server's
    /// configuration; `pip.conf` in `/etc` is visible in the sandbox
    /// already).
    pub step_env: Vec<(String, String)>,
    /// A build whose builder gave no heartbeat for this long has lost its
    /// builder: it is queued again. Heartbeats come every quarter of it.
    pub lease: Duration,
}

/// The variables of the server's environment passed on to build steps
/// ([`BuildConfig::step_env`]).
pub const STEP_ENV_NAMES: [&str; 6] = [
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "PIP_DEFAULT_TIMEOUT",
    "NPM_CONFIG_REGISTRY",
];

impl BuildConfig {
    /// Defaults under `data_dir`.
    #[must_use]
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            limits: archive::Limits::default(),
            git_timeout: Duration::from_secs(300),
            step_timeout: Duration::from_secs(900),
            min_step_memory_bytes: 512 << 20,
            image_limits: archive::Limits::image(),
            insecure_registries: Vec::new(),
            step_env: Vec::new(),
            lease: DEFAULT_LEASE,
        }
    }

    /// Where uploaded archives are kept (named by upload id).
    #[must_use]
    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }

    /// Where content-addressed artifacts are kept.
    #[must_use]
    pub fn artifacts_dir(&self) -> PathBuf {
        self.data_dir.join("artifacts")
    }

    fn work_dir(&self, build_id: &str) -> PathBuf {
        self.data_dir.join("builds").join(build_id)
    }

    fn heartbeat_interval(&self) -> Duration {
        (self.lease / 4).max(Duration::from_millis(100))
    }
}

/// Takes queued builds, builds them and deploys the ready ones.
///
/// Clones share the wake-up signal: keep one to [`Builder::wake`] after
/// [`Builder::start`] has consumed another.
#[derive(Clone)]
pub struct Builder {
    store: Store,
    wake: Arc<Notify>,
    on_deployed: Option<OnDeployed>,
    config: Arc<BuildConfig>,
    driver: Option<Arc<dyn Driver>>,
    /// Where docker clouds' images are made, or why there is no engine.
    images: Result<Arc<dyn ImageMaker>, String>,
    /// Where uploads' archives are read and artifacts shared; `None`: the
    /// data dir's `uploads/`, and nothing shared.
    blobs: Option<Arc<dyn Blobs>>,
    /// Who claims builds: `<node>/<boot>`.
    owner: Arc<str>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store)
            .field("config", &self.config)
            .field("on_deployed", &self.on_deployed.is_some())
            .field("driver", &self.driver.as_ref().map(|d| d.name()))
            .field("images", &self.images.as_ref().map(|_| "engine"))
            .field("blobs", &self.blobs.as_ref().map(|b| b.describe()))
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Aborts the heartbeat task when the build is over, however it ends.
struct Heartbeat(JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Builder {
    /// A builder over `store`, working under the system's temp dir and running
    /// no build steps (see [`Builder::with_config`], [`Builder::with_driver`]).
    #[must_use]
    pub fn new(store: Store) -> Self {
        Self {
            store,
            wake: Arc::new(Notify::new()),
            on_deployed: None,
            config: Arc::new(BuildConfig::new(std::env::temp_dir().join("hangar-build"))),
            driver: None,
            images: Err("none is configured".to_owned()),
            blobs: None,
            owner: owner("builder"),
        }
    }

    /// Claims builds as this process of node `node_id` (`<node>/<boot>`),
    /// as the server's other workers claim their work.
    #[must_use]
    pub fn with_owner(mut self, node_id: &str) -> Self {
        self.owner = owner(node_id);
        self
    }

    /// Reads uploads' archives from `blobs`, and puts every artifact it
    /// publishes there when they are shared ([`artifact::share`]), so any
    /// server on the database can build an upload another one took and
    /// start replicas of what this one built.
    #[must_use]
    pub fn with_blobs(mut self, blobs: Arc<dyn Blobs>) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// Works under `config.data_dir`, within its bounds.
    #[must_use]
    pub fn with_config(mut self, config: BuildConfig) -> Self {
        self.config = Arc::new(config);
        self
    }

    /// Runs build steps as one-shot replicas of `driver`. Without one, a
    /// source that needs a build step fails its build and says why.
    #[must_use]
    pub fn with_driver(mut self, driver: Arc<dyn Driver>) -> Self {
        self.driver = Some(driver);
        self
    }

    /// Makes the images of builds for docker clouds with `images` (the
    /// docker driver's engine).
    #[must_use]
    pub fn with_images(mut self, images: Arc<dyn ImageMaker>) -> Self {
        self.images = Ok(images);
        self
    }

    /// This Hangar has no Docker engine, because of `why`: builds for
    /// docker clouds fail saying so.
    #[must_use]
    pub fn without_images(mut self, why: impl Into<String>) -> Self {
        self.images = Err(why.into());
        self
    }

    /// Where this builder works.
    #[must_use]
    pub fn config(&self) -> &BuildConfig {
        &self.config
    }
    /// Calls `on_deployed` with the instance each ready build was deployed to
    /// (created, or pointed at the new build), for the server to wake its
    /// controller. It runs on the builder's task: it must not block.
    #[must_use]
    pub fn with_on_deployed(
        mut self,
        on_deployed: impl Fn(&Instance) + Send + Sync + 'static,
    ) -> Self {
        self.on_deployed = Some(Arc::new(on_deployed));
        self
    }

    /// Tells the running builder a build was queued, so it need not wait for its
    /// next poll. A wake while it is busy is remembered.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs the builder until `shutdown`: queues abandoned builds again
    /// (whose builder died), builds whatever is queued, then waits for
    /// [`Builder::wake`] or [`POLL_INTERVAL`], and again. Store errors are
    /// logged and retried at the next round.
    ///
    /// Once `shutdown` is cancelled no build is taken; the one under way
    /// gets `drain` to finish, and is otherwise stopped and queued again
    /// ([`Builder::requeue`]), so the next start (or another server on the
    /// database) builds it from the beginning instead of failing it as
    /// abandoned. The task ends then.
    pub fn start(self, shutdown: CancellationToken, drain: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            self.forget_leftover_steps().await;
            while !shutdown.is_cancelled() {
                if let Err(err) = self.reclaim_abandoned().await {
                    tracing::warn!(error = %err, "builder: cannot look for abandoned builds; retrying");
                }
                if let Err(err) = self.run_pending_until(&shutdown, drain).await {
                    tracing::warn!(error = %err, "builder: cannot take or record builds; retrying");
                }
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            }
            tracing::info!("builder stopped");
        })
    }

    /// Builds every queued build, one after another, until none is left; returns
    /// how many it took.
    pub async fn run_pending(&self) -> Result<usize, StoreError> {
        self.run_pending_until(&CancellationToken::new(), Duration::ZERO)
            .await
    }

    /// [`Builder::run_pending`] until `shutdown`, with `drain` for the
    /// build under way then.
    async fn run_pending_until(
        &self,
        shutdown: &CancellationToken,
        drain: Duration,
    ) -> Result<usize, StoreError> {
        let mut taken = 0;
        while !shutdown.is_cancelled() {
            let Some(build) = self.store.claim_queued_build(&self.owner).await? else {
                break;
            };
            taken += 1;
            self.run(&build, shutdown, drain).await?;
        }
        Ok(taken)
    }

    /// Queues again (or, their attempts used up, fails) the builds whose
    /// builder went silent (see the crate docs); returns how many.
    pub async fn reclaim_abandoned(&self) -> Result<usize, StoreError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::MAX);
        let reclaimed = self.store.reclaim_abandoned_builds(cutoff).await?;
        for build in &reclaimed.requeued {
            tracing::warn!(build = %build.id, agent = %build.agent_id, "build abandoned by its builder: queued again");
        }
        for build in &reclaimed.failed {
            tracing::warn!(build = %build.id, agent = %build.agent_id, "build abandoned by its builder, attempts used up: failed");
        }
        if !reclaimed.requeued.is_empty() {
            self.wake();
        }
        Ok(reclaimed.requeued.len() + reclaimed.failed.len())
    }

    /// Removes build-step replicas an earlier process left behind (their
    /// builds are queued again as abandoned).
    async fn forget_leftover_steps(&self) {
        let Some(driver) = &self.driver else { return };
        let Ok(replicas) = driver.list().await else {
            return;
        };
        for replica in replicas {
            if replica.labels.contains_key(BUILD_LABEL) {
                tracing::info!(replica = %replica.id, "removing a build step left by an earlier process");
                if let Err(err) = driver.remove(&replica.id).await {
                    tracing::warn!(replica = %replica.id, error = %err, "cannot remove a leftover build step");
                }
            }
        }
    }

    async fn log(&self, build_id: &str, stream: &str, lines: &[String]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        self.store.append_build_log(build_id, stream, &lines).await
    }

    /// Builds one claimed build and records the outcome; deploys it when ready.
    async fn run(
        &self,
        build: &Build,
        shutdown: &CancellationToken,
        drain: Duration,
    ) -> Result<(), StoreError> {
        let store = self.store.clone();
        let id = build.id.clone();
        let owner = self.owner.clone();
        let every = self.config.heartbeat_interval();
        // Cancelled when a heartbeat finds the build is no longer this
        // builder's: it was queued again (this builder was taken for dead)
        // and may be another's by now.
        let lost = CancellationToken::new();
        let lose = lost.clone();
        let _heartbeat = Heartbeat(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match store.build_heartbeat(&id, &owner).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lose.cancel();
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(build = %id, error = %err, "cannot record the build's heartbeat");
                    }
                }
            }
        }));
        let work = self.config.work_dir(&build.id);
        // Only the work is cut off at shutdown, never the recording of its
        // outcome below: a build is ready and deployed, or not ready at all.
        let drained = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain).await;
        };
        let outcome = tokio::select! {
            outcome = self.produce_shared(build, &work) => Some(Ok(outcome)),
            () = drained => None,
            () = lost.cancelled() => Some(Err(())),
        };
        let work_gone = work.clone();
        let _ = tokio::task::spawn_blocking(move || remove_work_dir(&work_gone)).await;
        let outcome = match outcome {
            Some(Ok(outcome)) => outcome,
            Some(Err(())) => {
                self.remove_step(build).await;
                tracing::warn!(build = %build.id, agent = %build.agent_id,
                    "build no longer this builder's (queued again while it was silent): stopped");
                return Ok(());
            }
            None => return self.requeue(build).await,
        };
        let artifact = match outcome {
            Ok(artifact) => artifact,
            Err(BuildError::Store(err)) => return Err(err),
            Err(err) => {
                let reason = err.to_string();
                tracing::info!(build = %build.id, agent = %build.agent_id, %reason, "build failed");
                self.store
                    .append_build_log(&build.id, "stderr", &[reason.as_str()])
                    .await?;
                self.store
                    .finish_build(
                        &build.id,
                        &self.owner,
                        BuildStatus::Failed,
                        Some(&reason),
                        None,
                    )
                    .await?;
                return Ok(());
            }
        };
        self.log(&build.id, "stdout", &artifact.log).await?;
        let finished = self
            .store
            .finish_build(
                &build.id,
                &self.owner,
                BuildStatus::Ready,
                None,
                Some(&artifact.path),
            )
            .await?;
        if !finished {
            // Taken back as abandoned while this builder was still at work:
            // it is another builder's (or failed) now, and that stands.
            tracing::warn!(build = %build.id, agent = %build.agent_id,
                "build finished after it was taken back as abandoned; not recorded");
            return Ok(());
        }
        tracing::info!(build = %build.id, agent = %build.agent_id, artifact = %artifact.path, "build ready");
        match self.store.deploy_build(&build.id).await {
            Ok(Some(instance)) => {
                tracing::info!(build = %build.id, instance = %instance.id, "build deployed");
                if let Some(on_deployed) = &self.on_deployed {
                    on_deployed(&instance);
                }
            }
            Ok(None) => {
                tracing::info!(build = %build.id, agent = %build.agent_id,
                    "build not deployed: the agent is gone or has a newer build");
            }
            Err(err @ (StoreError::QuotaExceeded { .. } | StoreError::NameTaken { .. })) => {
                let line = format!("built, but not deployed: {err}");
                tracing::warn!(build = %build.id, agent = %build.agent_id, "{line}");
                self.store
                    .append_build_log(&build.id, "stderr", &[line.as_str()])
                    .await?;
            }
            Err(err) => return Err(err),
        }
        Ok(())
    }
}

impl Builder {
    /// Puts a build cut off by shutdown back in the queue: its step's
    /// sandbox is removed (a leftover would be removed at the next start
    /// anyway), a log line says why the log starts over, and the build is
    /// `queued` again. If that cannot be recorded the build stays
    /// `building` and is queued again as abandoned once its heartbeat is old.
    async fn requeue(&self, build: &Build) -> Result<(), StoreError> {
        self.remove_step(build).await;
        const LINE: &str =
            "the server stopped during this build: it is queued again and starts over";
        self.store
            .append_build_log(&build.id, "stderr", &[LINE])
            .await?;
        let queued = self
            .store
            .finish_build(&build.id, &self.owner, BuildStatus::Queued, None, None)
            .await?;
        if queued {
            tracing::info!(build = %build.id, agent = %build.agent_id, "build cut off by shutdown: queued again");
        }
        Ok(())
    }

    /// The name of this builder's step replica of `build_id`: its own for
    /// each claim (the tail of the builder's boot), so that a build taken
    /// over from a killed server on the same host does not meet the step
    /// the dead one left running there (the sandboxes' address pool is
    /// host-wide, keyed by replica).
    fn step_replica(&self, build_id: &str) -> String {
        let boot = self
            .owner
            .get(self.owner.len().saturating_sub(8)..)
            .unwrap_or_default();
        format!("build-{}-{boot}", build_id.trim_start_matches("build_"))
    }

    /// Removes the build step of a build cut off (a leftover would be
    /// removed at the next start anyway).
    async fn remove_step(&self, build: &Build) {
        if let Some(driver) = &self.driver {
            if let Err(err) = driver.remove(&self.step_replica(&build.id)).await {
                tracing::warn!(build = %build.id, error = %err, "cannot remove a build step cut off");
            }
        }
    }
}

/// A claimer's name: `<node>/<boot>`, the boot new with each process.
fn owner(node_id: &str) -> Arc<str> {
    let boot = hangar_core::id::new_id(hangar_core::id::IdKind::Request);
    Arc::from(format!("{node_id}/{boot}"))
}

fn remove_work_dir(work: &Path) {
    if work.exists() {
        if let Err(err) = std::fs::remove_dir_all(work) {
            tracing::warn!(dir = %work.display(), error = %err, "cannot remove a build's scratch dir");
        }
    }
}

/// Runs blocking work on a blocking thread; a panic there fails the build.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BuildError> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(BuildError::Crashed(err.to_string())))
}

/// `${secrets.NAME}` references in `text`.
fn secret_refs(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${secrets.") {
        let after = &rest[start + "${secrets.".len()..];
        let Some(end) = after.find('}') else { break };
        names.push(after[..end].to_owned());
        rest = &after[end + 1..];
    }
    names
}

impl Builder {
    /// What a build step of an agent with `resources` may use, in a sandbox
    /// or on a Docker engine: its CPU, and its memory limit (its request
    /// when it sets none) but never less than the configured least.
    fn step_limits(&self, resources: &Resources) -> hangar_runtime::BuildLimits {
        hangar_runtime::BuildLimits {
            memory_bytes: resources
                .memory_limit_bytes
                .unwrap_or(resources.memory_bytes)
                .max(self.config.min_step_memory_bytes),
            cpu_millis: resources.cpu_millis.max(1),
            cpu_limit_millis: resources.cpu_limit_millis,
        }
    }

    /// [`Builder::produce`], then the artifact in the blob store when it is
    /// shared: a build is ready only once every server can run it.
    async fn produce_shared(&self, build: &Build, work: &Path) -> Result<Artifact, BuildError> {
        let mut artifact = self.produce(build, work).await?;
        if let Some(blobs) = &self.blobs {
            let path = Path::new(&artifact.path);
            if artifact::share(path, &self.config.artifacts_dir(), blobs.as_ref()).await? {
                artifact
                    .log
                    .push(format!("artifact stored in {}", blobs.describe()));
            }
        }
        Ok(artifact)
    }

    /// Fetches, addresses, builds and publishes `build`'s source (see the
    /// crate docs), its scratch dir at `work`.
    async fn produce(&self, build: &Build, work: &Path) -> Result<Artifact, BuildError> {
        match self.road(build).await? {
            Road::Docker(cloud) => return self.produce_for_docker(build, work, &cloud).await,
            Road::Kubernetes(cloud) => {
                return self.produce_for_kubernetes(build, work, &cloud).await
            }
            Road::Sandbox => {}
        }
        if let Source::Docker { image, credentials } = &build.source {
            return self
                .produce_image(build, work, image, credentials.as_ref())
                .await;
        }
        let fetched = self.fetch(build, work).await?;
        let fetched = blocking(move || {
            let Fetched::Tree { dir, log } = fetched else {
                return Ok((fetched, None));
            };
            artifact::check_top_level(&dir)?;
            let recipe = recipe::recipe(&dir)?;
            let key = artifact::key(
                &artifact::tree_hash(&dir)?,
                &recipe
                    .as_ref()
                    .map(recipe::Recipe::describe)
                    .unwrap_or_default(),
            );
            Ok((Fetched::Tree { dir, log }, Some((recipe, key))))
        })
        .await?;
        let (dir, mut log, recipe, key) = match fetched {
            (Fetched::InPlace(artifact), _) => return Ok(artifact),
            (Fetched::Tree { dir, log }, Some((recipe, key))) => (dir, log, recipe, key),
            (Fetched::Tree { .. }, None) => {
                return Err(BuildError::Crashed("a fetched tree without a key".into()))
            }
        };
        let existing = self.config.artifacts_dir().join(&key);
        if existing.is_dir() {
            log.push(format!(
                "reusing artifact {key}: this source was built the same way before"
            ));
            return Ok(Artifact {
                path: path_text(&existing)?,
                log,
            });
        }
        self.log(&build.id, "stdout", &log)
            .await
            .map_err(BuildError::Store)?;
        let mut log = Vec::new();
        if let Some(recipe) = &recipe {
            self.log(
                &build.id,
                "stdout",
                &[format!(
                    "build step ({}): {}",
                    recipe.origin,
                    recipe.describe()
                )],
            )
            .await
            .map_err(BuildError::Store)?;
            self.run_step(build, &dir, recipe, None).await?;
        }
        let artifacts = self.config.artifacts_dir();
        let published_key = key.clone();
        let published = blocking(move || {
            let tmp = dir.join(STEP_TMP);
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(|err| BuildError::Io {
                    path: tmp.display().to_string(),
                    source: err,
                })?;
            }
            artifact::take_back(&dir)?;
            artifact::check_top_level(&dir)?;
            artifact::publish(&dir, &artifacts, &published_key)
        })
        .await?;
        log.push(format!("artifact {key} ready"));
        Ok(Artifact {
            path: path_text(&published)?,
            log,
        })
    }

    /// Fetches an `upload` or `github` source into `work` (see
    /// [`source::fetch`]), resolving `${secrets.NAME}` in a repository URL
    /// first: credentials, masked wherever the URL is shown.
    async fn fetch(&self, build: &Build, work: &Path) -> Result<Fetched, BuildError> {
        let mut repo_url = None;
        let mut masked = Vec::new();
        if let Source::Github { repo, .. } = &build.source {
            let names = secret_refs(repo);
            if !names.is_empty() {
                let mut url = git::repository_url(repo);
                for name in names {
                    let value = self
                        .store
                        .reveal_secret(&build.organization_id, &name)
                        .await
                        .map_err(BuildError::Store)?
                        .ok_or_else(|| {
                            BuildError::Git(format!(
                                "the repository URL names the secret {name}, which this organization does not have"
                            ))
                        })?;
                    url = url.replace(&format!("${{secrets.{name}}}"), &value);
                    masked.push(value);
                }
                repo_url = Some(url);
            }
        }
        let config = self.config.clone();
        let source = build.source.clone();
        let scratch = work.to_path_buf();
        let fresh = scratch.clone();
        blocking(move || {
            remove_work_dir(&fresh);
            std::fs::create_dir_all(&fresh).map_err(|err| BuildError::Io {
                path: fresh.display().to_string(),
                source: err,
            })
        })
        .await?;
        let uploads = self.uploads_dir(&build.source, work).await?;
        blocking(move || {
            source::fetch(
                &source,
                &source::Fetch {
                    work: &scratch,
                    uploads: &uploads,
                    limits: config.limits,
                    git_timeout: config.git_timeout,
                    repo: repo_url.as_deref().map(|url| (url, masked.as_slice())),
                },
            )
        })
        .await
    }

    /// The directory where an `upload` source's archive is, as `<id>`: the
    /// blob store's own when it keeps files here, else `work/uploads`, the
    /// archive copied there from the blob store (left out when the store
    /// does not have it: the fetch then says the upload has no archive).
    async fn uploads_dir(&self, source: &Source, work: &Path) -> Result<PathBuf, BuildError> {
        let (Some(blobs), Some(id)) = (&self.blobs, source::upload_id(source)) else {
            return Ok(self.config.uploads_dir());
        };
        let Some(key) = BlobKey::upload(&id) else {
            return Ok(self.config.uploads_dir());
        };
        if let Some(local) = blobs.local_path(&key) {
            return Ok(local
                .parent()
                .map_or_else(|| self.config.uploads_dir(), Path::to_path_buf));
        }
        let dir = work.join("uploads");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|err| BuildError::Io {
                path: dir.display().to_string(),
                source: err,
            })?;
        blobs.get_file(&key, &dir.join(&id)).await?;
        Ok(dir)
    }

    /// `value` with each `${secrets.NAME}` resolved from the build's
    /// organization; the values are added to `masked`. `what` names the
    /// field for the error when a secret is missing.
    async fn reveal(
        &self,
        build: &Build,
        value: &str,
        what: &str,
        masked: &mut Vec<String>,
    ) -> Result<String, BuildError> {
        let mut out = value.to_owned();
        for name in secret_refs(value) {
            let secret = self
                .store
                .reveal_secret(&build.organization_id, &name)
                .await
                .map_err(BuildError::Store)?
                .ok_or_else(|| {
                    BuildError::Image(format!(
                        "{what} names the secret {name}, which this organization does not have"
                    ))
                })?;
            out = out.replace(&format!("${{secrets.{name}}}"), &secret);
            masked.push(secret);
        }
        Ok(out)
    }

    /// Pulls a `docker` source's image and publishes it as an image artifact
    /// (see [`image`]), or reuses the artifact of the same manifest.
    async fn produce_image(
        &self,
        build: &Build,
        work: &Path,
        reference: &str,
        credentials: Option<&hangar_core::spec::RegistryCredentials>,
    ) -> Result<Artifact, BuildError> {
        let mut masked = Vec::new();
        let credentials = match credentials {
            Some(c) => Some(image::Credentials {
                username: self
                    .reveal(build, &c.username, "credentials.username", &mut masked)
                    .await?,
                password: self
                    .reveal(build, &c.password, "credentials.password", &mut masked)
                    .await?,
            }),
            None => None,
        };
        let pull = image::Pull {
            image: reference,
            credentials,
            masked: &masked,
            insecure_registries: &self.config.insecure_registries,
        };
        let (resolved, digest) = image::resolve(&pull).await?;
        image::check_runnable(&pull, &resolved)?;
        self.unpacked_image(build, work, &pull, resolved, &digest)
            .await
    }

    /// The image artifact of the resolved image `digest` with its root
    /// filesystem: reused when one exists, else its layers pulled into
    /// `work` and unpacked. An artifact of the same digest that a
    /// kubernetes cloud's build left without a root filesystem gets one.
    pub(crate) async fn unpacked_image(
        &self,
        build: &Build,
        work: &Path,
        pull: &image::Pull<'_>,
        resolved: image::Resolved,
        digest: &str,
    ) -> Result<Artifact, BuildError> {
        let reference = pull.image;
        let key = hangar_core::image::artifact_name(digest).ok_or_else(|| {
            BuildError::Image(format!(
                "image {reference}: its manifest digest {digest} is not one this builder can address"
            ))
        })?;
        let mut log = vec![format!(
            "image {reference}: manifest {digest}, {} layer(s)",
            resolved.layers.len()
        )];
        let existing = self.config.artifacts_dir().join(&key);
        if image::rootfs_dir(&existing).is_dir() {
            log.push(format!(
                "reusing artifact {key}: this image was pulled before"
            ));
            return Ok(Artifact {
                path: path_text(&existing)?,
                log,
            });
        }
        image::check_unpackable(pull, &resolved)?;
        self.log(&build.id, "stdout", &log)
            .await
            .map_err(BuildError::Store)?;
        let scratch = work.to_path_buf();
        blocking(move || {
            remove_work_dir(&scratch);
            std::fs::create_dir_all(&scratch).map_err(|err| BuildError::Io {
                path: scratch.display().to_string(),
                source: err,
            })
        })
        .await?;
        let layers = image::pull_layers(
            pull,
            &resolved,
            &work.join("layers"),
            self.config.image_limits.max_unpacked_bytes,
        )
        .await?;
        let total: u64 = resolved
            .layers
            .iter()
            .map(|layer| u64::try_from(layer.size).unwrap_or(0))
            .sum();
        self.log(
            &build.id,
            "stdout",
            &[format!("pulled {} layer(s), {total} bytes", layers.len())],
        )
        .await
        .map_err(BuildError::Store)?;
        let dir = work.join("image");
        let run = resolved.run;
        let limits = self.config.image_limits;
        let artifacts = self.config.artifacts_dir();
        let published_key = key.clone();
        let published = blocking(move || {
            let rootfs = image::rootfs_dir(&dir);
            std::fs::create_dir_all(&rootfs).map_err(|err| BuildError::Io {
                path: rootfs.display().to_string(),
                source: err,
            })?;
            archive::unpack_layers(&layers, &rootfs, limits)?;
            image::finish_rootfs(&rootfs, &run)?;
            let existing = artifacts.join(&published_key);
            if existing.is_dir() {
                // Published by a kubernetes cloud's build, which needs no
                // root filesystem: its image.json stays, the root joins it.
                let target = image::rootfs_dir(&existing);
                return match std::fs::rename(&rootfs, &target) {
                    Ok(()) => Ok(existing),
                    Err(_) if target.is_dir() => Ok(existing),
                    Err(err) => Err(BuildError::Io {
                        path: target.display().to_string(),
                        source: err,
                    }),
                };
            }
            image::write_run(&dir, &run)?;
            artifact::publish(&dir, &artifacts, &published_key)
        })
        .await?;
        Ok(Artifact {
            path: path_text(&published)?,
            log: vec![format!("artifact {key} ready")],
        })
    }

    /// Runs `recipe` in a one-shot sandbox with `dir` writable at `/app`,
    /// on the host's `/usr` or on `root`; its output goes to the build's log
    /// as it comes.
    async fn run_step(
        &self,
        build: &Build,
        dir: &Path,
        recipe: &recipe::Recipe,
        root: Option<&StepRoot>,
    ) -> Result<(), BuildError> {
        let driver = self.driver.clone().ok_or_else(|| {
            BuildError::Sandbox(
                "this server runs no sandboxes (it is not running as root)".to_owned(),
            )
        })?;
        let resources = match self
            .store
            .get_agent(&build.organization_id, &build.agent_id)
            .await
            .map_err(BuildError::Store)?
        {
            Some(view) => view.agent.resources,
            None => Resources::default(),
        };
        let owned = dir.to_path_buf();
        blocking(move || {
            let tmp = owned.join(STEP_TMP);
            std::fs::create_dir(&tmp).map_err(|err| BuildError::Io {
                path: tmp.display().to_string(),
                source: err,
            })?;
            artifact::give_to(&owned, BUILD_UID)
        })
        .await?;
        let limits = self.step_limits(&resources);
        let replica = self.step_replica(&build.id);
        // The image's environment first (its PATH finds its python): the
        // step's own settings win.
        let mut env: Vec<(String, String)> = root.map(|r| r.env.clone()).unwrap_or_default();
        let step_env = vec![
            ("HOME".to_owned(), format!("/app/{STEP_TMP}")),
            ("TMPDIR".to_owned(), format!("/app/{STEP_TMP}")),
            ("PIP_NO_CACHE_DIR".to_owned(), "1".to_owned()),
            ("PIP_DISABLE_PIP_VERSION_CHECK".to_owned(), "1".to_owned()),
            ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
            ("HANGAR_AGENT_ID".to_owned(), build.agent_id.clone()),
            ("HANGAR_BUILD_ID".to_owned(), build.id.clone()),
        ];
        for (key, value) in step_env
            .into_iter()
            .chain(self.config.step_env.iter().cloned())
        {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        let spec = ReplicaSpec {
            id: replica.clone(),
            labels: [(BUILD_LABEL.to_owned(), build.id.clone())].into(),
            argv: recipe.argv.clone(),
            env,
            cwd: "/app".to_owned(),
            app: Some(dir.to_path_buf()),
            app_writable: true,
            port: None,
            stdin: false,
            cpu_millis: limits.cpu_millis,
            cpu_limit_millis: limits.cpu_limit_millis,
            memory_limit_bytes: Some(limits.memory_bytes),
            pids_limit: 512,
            rootfs: root.map(|r| r.rootfs.clone()),
            user: None,
            image: None,
            image_auth: None,
            network: Default::default(),
        };
        let _ = driver.remove(&replica).await;
        driver
            .create(&spec)
            .await
            .map_err(|err| BuildError::Sandbox(err.to_string()))?;
        let outcome = self.follow_step(build, driver.as_ref(), &replica).await;
        if let Err(err) = driver.remove(&replica).await {
            tracing::warn!(build = %build.id, replica = %replica, error = %err, "cannot remove a build step's sandbox");
        }
        let step = recipe.describe();
        match outcome? {
            Some(exit) if exit.success() => Ok(()),
            Some(exit) => Err(BuildError::StepFailed {
                step,
                outcome: exit.describe(),
            }),
            None => Err(BuildError::StepFailed {
                step,
                outcome: format!("timed out after {} s", self.config.step_timeout.as_secs()),
            }),
        }
    }

    /// Copies the step's output to the build's log until it exits (its exit)
    /// or times out (`None`, once it is stopped).
    async fn follow_step(
        &self,
        build: &Build,
        driver: &dyn Driver,
        replica: &str,
    ) -> Result<Option<hangar_runtime::driver::Exit>, BuildError> {
        let mut output = driver
            .follow(replica, 0)
            .await
            .map_err(|err| BuildError::Sandbox(err.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.config.step_timeout;
        let mut out: Vec<String> = Vec::new();
        let mut err: Vec<String> = Vec::new();
        loop {
            let event = tokio::select! {
                event = output.recv() => event,
                () = tokio::time::sleep_until(deadline) => {
                    let _ = driver.stop(replica, Duration::ZERO).await;
                    self.log(&build.id, "stdout", &out).await.map_err(BuildError::Store)?;
                    self.log(&build.id, "stderr", &err).await.map_err(BuildError::Store)?;
                    return Ok(None);
                }
            };
            match event {
                Some(OutputEvent::Line(line)) => {
                    // Lines are flushed per stream when the stream changes or
                    // nothing else is waiting, so the log keeps their order.
                    let (mine, other) = match line.stream {
                        OutputStream::Stdout => (&mut out, &mut err),
                        OutputStream::Stderr => (&mut err, &mut out),
                    };
                    if !other.is_empty() {
                        let stream = match line.stream {
                            OutputStream::Stdout => "stderr",
                            OutputStream::Stderr => "stdout",
                        };
                        self.log(&build.id, stream, other)
                            .await
                            .map_err(BuildError::Store)?;
                        other.clear();
                    }
                    mine.push(line.text);
                    if output.is_empty() || mine.len() >= 200 {
                        let stream = match line.stream {
                            OutputStream::Stdout => "stdout",
                            OutputStream::Stderr => "stderr",
                        };
                        self.log(&build.id, stream, mine)
                            .await
                            .map_err(BuildError::Store)?;
                        mine.clear();
                    }
                }
                Some(OutputEvent::Gap { through }) => {
                    out.push(format!("[build output up to line {through} was lost]"));
                }
                Some(OutputEvent::End(exit)) => {
                    self.log(&build.id, "stdout", &out)
                        .await
                        .map_err(BuildError::Store)?;
                    self.log(&build.id, "stderr", &err)
                        .await
                        .map_err(BuildError::Store)?;
                    return Ok(Some(exit));
                }
                None => {
                    return Err(BuildError::Sandbox(
                        "lost the build step's sandbox before it exited".to_owned(),
                    ))
                }
            }
        }
    }
}

/// Where a build goes after its source is fetched: by its agent's cloud.
#[derive(Debug)]
pub(crate) enum Road {
    /// Published as a tree (or an unpacked image) for sandboxes.
    Sandbox,
    /// Made into an image by a Docker engine ([`docker`]).
    Docker(docker::DockerCloud),
    /// Made into an image in a registry a cluster pulls from
    /// ([`kubernetes`]).
    Kubernetes(kubernetes::KubernetesCloud),
}

/// An OCI image's root filesystem a build step runs on instead of the
/// host's `/usr` (a kubernetes cloud's base image), and its environment.
#[derive(Debug, Clone)]
pub(crate) struct StepRoot {
    /// The unpacked root filesystem.
    pub rootfs: PathBuf,
    /// The image's `Env`, in order.
    pub env: Vec<(String, String)>,
}

/// The build step's scratch dir (its `HOME` and `TMPDIR`) inside `/app`;
/// removed before the artifact is published.
const STEP_TMP: &str = ".hangar-build-tmp";

fn path_text(path: &Path) -> Result<String, BuildError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| BuildError::NotUtf8 {
            path: path.display().to_string(),
        })
}
