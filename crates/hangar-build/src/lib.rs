//! Hangar's builders: an agent's source → the artifact its instances run.
//!
//! This is the first builder, and a minimal one. It exists so that agents can run
//! at all: the [`Builder`] takes queued builds from the store (exclusively, even
//! with several Hangar processes on one PostgreSQL), builds each, records the
//! outcome and the build's log, and deploys a ready build to its agent's default
//! instance ([`hangar_store::Store::deploy_build`]), telling the server which
//! instance changed so it can wake its controller.
//!
//! What it builds, for now ([`source`] has the details): a `github` source whose
//! `repo` is a `file://` URL naming a plain directory on this server (not a git
//! repository; such URLs are for the operator organization's admins only, which
//! the API enforces). The artifact is that directory itself, used in place.
//!
//! What is absent, and fails a build with "building <kind> sources is not
//! available yet in this version of Hangar" instead of pretending:
//!
//! - git sources — remote repositories, and `file://` URLs of git repositories:
//!   no clone, no branch or commit checkout;
//! - `docker` sources (OCI images): no pull, no unpacking;
//! - `upload` sources (archives from `/v1/uploads`): no extraction;
//! - any language build step (`pip install`, `npm ci`, a `hangar.toml` build
//!   command) run inside a sandbox, and content-addressed artifacts: a directory
//!   artifact is named by its path, not by a hash of its contents.
//!
//! A build whose builder dies midway (the process is killed) stays `building`;
//! nothing re-queues it yet.

use std::sync::Arc;
use std::time::Duration;

use hangar_core::model::{Build, Instance};
use hangar_core::status::BuildStatus;
use hangar_store::{Store, StoreError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub mod source;

pub use source::{Artifact, BuildError};

/// How often the builder looks for queued builds when nobody wakes it (another
/// Hangar process on the same database may have queued them).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What the builder calls with the instance a build was deployed to.
pub type OnDeployed = Arc<dyn Fn(&Instance) + Send + Sync>;

/// Takes queued builds, builds them and deploys the ready ones.
///
/// Clones share the wake-up signal: keep one to [`Builder::wake`] after
/// [`Builder::start`] has consumed another.
#[derive(Clone)]
pub struct Builder {
    store: Store,
    wake: Arc<Notify>,
    on_deployed: Option<OnDeployed>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store)
            .field("on_deployed", &self.on_deployed.is_some())
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder over `store`.
    #[must_use]
    pub fn new(store: Store) -> Self {
        Self {
            store,
            wake: Arc::new(Notify::new()),
            on_deployed: None,
        }
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

    /// Runs the builder until the task is aborted: builds whatever is queued,
    /// then waits for [`Builder::wake`] or [`POLL_INTERVAL`], and again. Store
    /// errors are logged and retried at the next round.
    pub fn start(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(err) = self.run_pending().await {
                    tracing::warn!(error = %err, "builder: cannot take or record builds; retrying");
                }
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            }
        })
    }

    /// Builds every queued build, one after another, until none is left; returns
    /// how many it took.
    pub async fn run_pending(&self) -> Result<usize, StoreError> {
        let mut taken = 0;
        while let Some(build) = self.store.claim_queued_build().await? {
            taken += 1;
            self.run(&build).await?;
        }
        Ok(taken)
    }

    /// Builds one claimed build and records the outcome; deploys it when ready.
    async fn run(&self, build: &Build) -> Result<(), StoreError> {
        let source = build.source.clone();
        let outcome = tokio::task::spawn_blocking(move || source::build(&source))
            .await
            .unwrap_or_else(|err| Err(BuildError::Crashed(err.to_string())));
        let artifact = match outcome {
            Ok(artifact) => artifact,
            Err(err) => {
                let reason = err.to_string();
                tracing::info!(build = %build.id, agent = %build.agent_id, %reason, "build failed");
                self.store
                    .append_build_log(&build.id, "stderr", &[reason.as_str()])
                    .await?;
                self.store
                    .set_build_status(&build.id, BuildStatus::Failed, Some(&reason), None)
                    .await?;
                return Ok(());
            }
        };
        let lines: Vec<&str> = artifact.log.iter().map(String::as_str).collect();
        self.store
            .append_build_log(&build.id, "stdout", &lines)
            .await?;
        self.store
            .set_build_status(&build.id, BuildStatus::Ready, None, Some(&artifact.path))
            .await?;
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
