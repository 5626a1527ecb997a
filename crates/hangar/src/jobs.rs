//! The job runner's place in `hangar serve`: started with this server's node
//! ID (kept in the data dir, so a restarted server recognizes the jobs its
//! previous process held and runs them again at once instead of waiting for
//! their leases), and its stop.

use std::sync::Arc;
use std::time::Duration;

use hangar_gateway::jobs::{JobRunner, JobRunnerConfig};

/// How long a stopping server waits for running jobs before it releases
/// them to other servers (within the shutdown grace period).
const DRAIN: Duration = Duration::from_secs(10);

/// A started runner and its loop.
pub struct Jobs {
    /// Handed to the API (wake on accept, abort on cancel).
    pub runner: JobRunner,
    task: tokio::task::JoinHandle<()>,
}

impl Jobs {
    /// Starts the runner over `gateway`.
    pub fn start(
        node_id: &str,
        store: hangar_store::Store,
        gateway: Arc<hangar_gateway::Gateway>,
        per_agent_concurrency: u32,
    ) -> Self {
        let runner = JobRunner::new(
            store,
            gateway,
            node_id,
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
        Self { runner, task }
    }

    /// Stops claiming, lets running jobs finish (briefly) and releases the rest.
    pub async fn stop(self) {
        self.runner.stop();
        let _ = self.task.await;
    }
}
