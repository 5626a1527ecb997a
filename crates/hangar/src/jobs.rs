//! The job runner's place in `hangar serve`: started over the gateway with
//! this server's node ID (kept in the data dir, so a restarted server
//! recognizes the jobs its previous process held and runs them again at once
//! instead of waiting for their leases) and the server's shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use hangar_gateway::jobs::{JobRunner, JobRunnerConfig};
use tokio_util::sync::CancellationToken;

/// A started runner and its loop.
pub struct Jobs {
    /// Handed to the API (wake on accept, abort on cancel).
    pub runner: JobRunner,
    /// Ends once the runner has stopped at shutdown: running jobs finished
    /// or released.
    pub task: tokio::task::JoinHandle<()>,
}

impl Jobs {
    /// Starts the runner over `gateway`; at `shutdown` it stops claiming,
    /// gives running jobs `drain` to finish and releases the rest.
    pub fn start(
        node_id: &str,
        store: hangar_store::Store,
        gateway: Arc<hangar_gateway::Gateway>,
        per_agent_concurrency: u32,
        shutdown: CancellationToken,
        drain: Duration,
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
        let task = tokio::spawn(runner.clone().run(shutdown, drain));
        Self { runner, task }
    }
}
