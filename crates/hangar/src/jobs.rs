//! The job runner's place in `hangar serve`: its node ID (kept in the data
//! dir, so a restarted server recognizes the jobs its previous process held
//! and runs them again at once instead of waiting for their leases) and its
//! start and stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hangar_gateway::jobs::{JobRunner, JobRunnerConfig};

/// How long a stopping server waits for running jobs before it releases
/// them to other servers (within the shutdown grace period).
const DRAIN: Duration = Duration::from_secs(10);

/// The data dir's node ID, created on first start.
fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id =
                hangar_core::id::new_id(hangar_core::id::IdKind::Request).replace("req_", "node-");
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
    }
}

/// A started runner and its loop.
pub struct Jobs {
    /// Handed to the API (wake on accept, abort on cancel).
    pub runner: JobRunner,
    task: tokio::task::JoinHandle<()>,
}

impl Jobs {
    /// Starts the runner over `gateway`.
    pub fn start(
        data_dir: &Path,
        store: hangar_store::Store,
        gateway: Arc<hangar_gateway::Gateway>,
        per_agent_concurrency: u32,
    ) -> anyhow::Result<Self> {
        let runner = JobRunner::new(
            store,
            gateway,
            &node_id(data_dir)?,
            JobRunnerConfig {
                per_agent_concurrency,
                ..JobRunnerConfig::default()
            },
        );
        tracing::info!(
            owner = runner.owner(),
            per_agent_concurrency,
            "job runner started"
        );
        let task = tokio::spawn(runner.clone().run(DRAIN));
        Ok(Self { runner, task })
    }

    /// Stops claiming, lets running jobs finish (briefly) and releases the rest.
    pub async fn stop(self) {
        self.runner.stop();
        let _ = self.task.await;
    }
}
