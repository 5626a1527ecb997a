//! Lifecycles and the one place statuses are derived.
//!
//! The store keeps what was asked for (an agent's or instance's [`DesiredState`],
//! the desired replica count) and what was observed (each build's [`BuildStatus`],
//! each instance's [`InstanceStatus`] as the controller last saw its replicas).
//! Everything a client reads as a status is computed here from those facts:
//!
//! | facts | agent status |
//! |---|---|
//! | desired stopped, instance gone or stopped | `stopped` |
//! | no build yet, or latest build queued | `created` |
//! | latest build building | `building` |
//! | latest build failed and no instance serving an earlier build | `failed` |
//! | a ready build, instance missing or `starting` | `deploying` |
//! | instance `running` | `running` |
//! | instance `error` | `failed` |
//!
//! | instance status | replicas | status endpoint (seed 000) |
//! |---|---|---|
//! | `starting` | none ready | `DNS_PENDING` |
//! | `starting` | some ready | `READY_TO_RECEIVE_REQUESTS` |
//! | `running` | none up (scaled to zero, may cold start) | `READY_TO_COLD_START` |
//! | `running` | some ready | `RUNNING` |
//! | `error` | any | `ERROR` |
//! | `stopping`, `stopped` | any | `STOPPED` (an addition: the seed has no value for it) |
//! | no such instance (or another org's) | — | `NOT_FOUND`, with HTTP 404 |

crate::string_enum! {
    /// What the user asked for an agent or instance: to run or to be stopped.
    pub enum DesiredState {
        /// Keep replicas running.
        Running = "running",
        /// Keep no replicas.
        Stopped = "stopped",
    }
}

crate::string_enum! {
    /// A build's lifecycle: `queued → building → ready | failed`.
    pub enum BuildStatus {
        /// Waiting for a builder.
        Queued = "queued",
        /// A builder is working on it.
        Building = "building",
        /// The artifact exists; instances may use it.
        Ready = "ready",
        /// The build failed; see its reason and logs.
        Failed = "failed",
    }
}

crate::string_enum! {
    /// An instance's status as the Instances API shows it.
    pub enum InstanceStatus {
        /// Being provisioned and started.
        Starting = "starting",
        /// Active and ready to serve.
        Running = "running",
        /// Shutting down gracefully.
        Stopping = "stopping",
        /// Terminated.
        Stopped = "stopped",
        /// Failed to start or crashed.
        Error = "error",
    }
}

crate::string_enum! {
    /// An agent's status as the Agents API shows it.
    pub enum AgentStatus {
        /// Created, awaiting deployment.
        Created = "created",
        /// Its image is being built.
        Building = "building",
        /// Being deployed to infrastructure.
        Deploying = "deploying",
        /// Live and accepting requests.
        Running = "running",
        /// Stopped.
        Stopped = "stopped",
        /// Deployment or runtime error.
        Failed = "failed",
    }
}

crate::string_enum! {
    /// The value of `GET /instances/status/{org_id}/{instance_id}`.
    pub enum EndpointStatus {
        /// Routes are being set up; no replica is ready yet.
        DnsPending = "DNS_PENDING",
        /// Scaled to zero; the next request cold-starts it.
        ReadyToColdStart = "READY_TO_COLD_START",
        /// Active and serving.
        Running = "RUNNING",
        /// Failed.
        Error = "ERROR",
        /// No such instance.
        NotFound = "NOT_FOUND",
        /// Some replicas are ready while the rest start.
        ReadyToReceiveRequests = "READY_TO_RECEIVE_REQUESTS",
        /// Stopped or stopping (Hangar's addition to the seed's table).
        Stopped = "STOPPED",
    }
}

crate::string_enum! {
    /// An async invocation's lifecycle.
    pub enum JobStatus {
        /// Accepted, waiting for a worker.
        Pending = "pending",
        /// A worker is running it.
        Running = "running",
        /// Finished with the agent's output.
        Completed = "completed",
        /// Finished with an error.
        Failed = "failed",
        /// Cancelled before it finished.
        Cancelled = "cancelled",
    }
}

impl JobStatus {
    /// Whether the job has finished one way or another.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether `cancel` still changes anything.
    #[must_use]
    pub fn can_cancel(self) -> bool {
        !self.is_terminal()
    }
}

impl BuildStatus {
    /// Whether the build has finished one way or another.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Ready | Self::Failed)
    }
}

/// Derives an agent's status (see the module table).
#[must_use]
pub fn agent_status(
    desired: DesiredState,
    latest_build: Option<BuildStatus>,
    default_instance: Option<InstanceStatus>,
) -> AgentStatus {
    if desired == DesiredState::Stopped {
        return match default_instance {
            Some(InstanceStatus::Error) => AgentStatus::Failed,
            _ => AgentStatus::Stopped,
        };
    }
    let serving = matches!(default_instance, Some(InstanceStatus::Running));
    match latest_build {
        None | Some(BuildStatus::Queued) if !serving => AgentStatus::Created,
        Some(BuildStatus::Building) if !serving => AgentStatus::Building,
        Some(BuildStatus::Failed) if !serving => AgentStatus::Failed,
        _ => match default_instance {
            None | Some(InstanceStatus::Starting) => AgentStatus::Deploying,
            Some(InstanceStatus::Running) => AgentStatus::Running,
            Some(InstanceStatus::Stopping | InstanceStatus::Stopped) => AgentStatus::Stopped,
            Some(InstanceStatus::Error) => AgentStatus::Failed,
        },
    }
}

/// Derives the status endpoint's value (see the module table).
#[must_use]
pub fn endpoint_status(status: InstanceStatus, ready_replicas: u32) -> EndpointStatus {
    match status {
        InstanceStatus::Error => EndpointStatus::Error,
        InstanceStatus::Stopping | InstanceStatus::Stopped => EndpointStatus::Stopped,
        InstanceStatus::Starting if ready_replicas == 0 => EndpointStatus::DnsPending,
        InstanceStatus::Starting => EndpointStatus::ReadyToReceiveRequests,
        // Running with no replica up: scaled to zero (or, for `replicas: 0`,
        // idle by request); the next request starts one.
        InstanceStatus::Running if ready_replicas == 0 => EndpointStatus::ReadyToColdStart,
        InstanceStatus::Running => EndpointStatus::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AgentStatus as A;
    use BuildStatus as B;
    use InstanceStatus as I;

    #[test]
    fn agent_status_follows_build_then_instance() {
        let run = DesiredState::Running;
        assert_eq!(agent_status(run, None, None), A::Created);
        assert_eq!(agent_status(run, Some(B::Queued), None), A::Created);
        assert_eq!(agent_status(run, Some(B::Building), None), A::Building);
        assert_eq!(agent_status(run, Some(B::Failed), None), A::Failed);
        assert_eq!(agent_status(run, Some(B::Ready), None), A::Deploying);
        assert_eq!(
            agent_status(run, Some(B::Ready), Some(I::Starting)),
            A::Deploying
        );
        assert_eq!(
            agent_status(run, Some(B::Ready), Some(I::Running)),
            A::Running
        );
        assert_eq!(agent_status(run, Some(B::Ready), Some(I::Error)), A::Failed);
    }

    #[test]
    fn a_redeploy_in_progress_keeps_a_serving_agent_running() {
        let run = DesiredState::Running;
        for b in [B::Queued, B::Building, B::Failed] {
            assert_eq!(
                agent_status(run, Some(b), Some(I::Running)),
                A::Running,
                "{b}"
            );
        }
    }

    #[test]
    fn stopped_wins_unless_it_failed() {
        let stop = DesiredState::Stopped;
        assert_eq!(
            agent_status(stop, Some(B::Ready), Some(I::Running)),
            A::Stopped
        );
        assert_eq!(agent_status(stop, None, None), A::Stopped);
        assert_eq!(
            agent_status(stop, Some(B::Ready), Some(I::Error)),
            A::Failed
        );
    }

    #[test]
    fn endpoint_status_table() {
        use EndpointStatus as E;
        assert_eq!(endpoint_status(I::Starting, 0), E::DnsPending);
        assert_eq!(endpoint_status(I::Starting, 1), E::ReadyToReceiveRequests);
        assert_eq!(endpoint_status(I::Running, 2), E::Running);
        assert_eq!(endpoint_status(I::Running, 0), E::ReadyToColdStart);
        assert_eq!(endpoint_status(I::Error, 0), E::Error);
        assert_eq!(endpoint_status(I::Stopped, 0), E::Stopped);
    }

    #[test]
    fn spellings_round_trip() {
        for s in InstanceStatus::ALL {
            assert_eq!(s.as_str().parse::<InstanceStatus>(), Ok(*s));
        }
        assert_eq!(EndpointStatus::DnsPending.as_str(), "DNS_PENDING");
        assert!("bogus".parse::<JobStatus>().is_err());
    }
}
