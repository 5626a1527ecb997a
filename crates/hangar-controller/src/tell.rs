//! What the controller tells of an instance: lines in its log (from
//! `hangar`, beside its replicas' own) and events (which the store queues
//! for webhooks). Reconciles, per-replica tasks and the autoscaler all tell
//! through here; a failure to tell is logged, never fatal.

use std::sync::Arc;

use hangar_core::logs::{LogLevel, NewLogLine, Stream};
use hangar_store::ControlledInstance;

use crate::{Inner, InstanceState};

/// A line in the instance's log, stored and sent to live followers.
pub(crate) async fn system_log(
    inner: &Inner,
    state: &InstanceState,
    replica_id: &str,
    level: LogLevel,
    message: String,
) {
    let line = NewLogLine {
        timestamp: chrono::Utc::now(),
        stream: Stream::Stderr,
        level,
        message,
    };
    match inner
        .store
        .append_system_log(&state.id, replica_id, &line)
        .await
    {
        Ok(stored) => {
            let _ = state
                .logs
                .send(Arc::new(hangar_core::logs::LiveLine::new(stored)));
        }
        Err(err) => tracing::warn!(instance = %state.id, error = %err, "cannot store a log line"),
    }
}

/// Who an instance's events are about: its organization, and the agent
/// when it is the agent's default instance (`agent.*` events), else the
/// instance.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub organization_id: String,
    pub agent_id: String,
    pub instance_id: String,
    pub is_default: bool,
}

impl Owner {
    pub(crate) fn of(controlled: &ControlledInstance) -> Self {
        Self {
            organization_id: controlled.instance.organization_id.clone(),
            agent_id: controlled.instance.agent_id.clone(),
            instance_id: controlled.instance.id.clone(),
            is_default: controlled.agent_scaling.is_some(),
        }
    }

    /// The subject of an `agent.*` event: the agent for its default
    /// instance, else the instance.
    fn agent_subject(&self) -> &str {
        if self.is_default {
            &self.agent_id
        } else {
            &self.instance_id
        }
    }
}

/// Records an event (the store queues its webhook deliveries); a failure is
/// logged, never fatal to reconciling.
pub(crate) async fn emit(inner: &Inner, owner: &Owner, kind: &str, mut data: serde_json::Value) {
    let subject = if kind.starts_with("agent.") {
        owner.agent_subject().to_owned()
    } else {
        owner.instance_id.clone()
    };
    if let Some(object) = data.as_object_mut() {
        object.insert("agent_id".to_owned(), owner.agent_id.clone().into());
        object.insert("instance_id".to_owned(), owner.instance_id.clone().into());
    }
    if let Err(err) = inner
        .store
        .record_event(&owner.organization_id, kind, &subject, data)
        .await
    {
        tracing::warn!(instance = %owner.instance_id, kind, error = %err, "cannot record an event");
    }
}
