//! The one table from a failure to HTTP: every [`InvokeError`],
//! [`ControlError`] and [`StoreError`] has a row ([`ErrorClass`]: status,
//! code, whether trying again may help), and so does every code a job
//! stores, so a failure read back from a job answers exactly as it did live.
//!
//! It sits in the gateway because this is the lowest crate that sees all
//! three error types, and because the gateway itself needs the codes: a
//! stream's `error` event and a job's stored `error` carry them. The API
//! renders rows into its envelope; nothing else decides a status or a code
//! for these errors.
//!
//! What a client reads is [`Classify::public_message`]: the error's own
//! words when they are the caller's business (the agent answered 500, the
//! program does not exist), a fixed sentence when they are internal text
//! (an I/O or HTTP library's error, a driver's failure), whose cause then
//! goes to the log only ([`Classify::internal_cause`]).

use axum::http::StatusCode;
use hangar_controller::ControlError;
use hangar_core::id::IdKind;
use hangar_store::StoreError;

use crate::invoke::InvokeError;

/// A row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    /// The HTTP status a request answers with.
    pub status: StatusCode,
    /// The envelope's machine-readable `code`.
    pub code: &'static str,
    /// Whether the same request may succeed later unchanged (no replica yet,
    /// a full queue, a broken connection); async jobs are retried on these.
    pub retryable: bool,
}

impl ErrorClass {
    /// A row of its own (the API's errors that no lower layer raises).
    #[must_use]
    pub const fn new(status: StatusCode, code: &'static str, retryable: bool) -> Self {
        Self {
            status,
            code,
            retryable,
        }
    }

    /// No replica is ready and none is coming (stopped, crash-looping).
    pub const AGENT_UNAVAILABLE: Self =
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "AGENT_UNAVAILABLE", true);
    /// Every replica is at its concurrency limit and the queue is full.
    pub const AGENT_OVERLOADED: Self =
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "AGENT_OVERLOADED", true);
    /// The replica could not be reached or broke the connection.
    pub const AGENT_UNREACHABLE: Self =
        Self::new(StatusCode::BAD_GATEWAY, "AGENT_UNREACHABLE", true);
    /// The node that runs the instance (another server on the database)
    /// could not be reached by the one asked.
    pub const NODE_UNREACHABLE: Self =
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "NODE_UNREACHABLE", true);
    /// The agent answered with a non-2xx status.
    pub const AGENT_ERROR: Self = Self::new(StatusCode::BAD_GATEWAY, "AGENT_ERROR", false);
    /// The agent's answer could not be read (not what it says it is, too large).
    pub const AGENT_BAD_RESPONSE: Self =
        Self::new(StatusCode::BAD_GATEWAY, "AGENT_BAD_RESPONSE", false);
    /// The agent did not answer within the caller's time limit.
    pub const INVOKE_TIMEOUT: Self =
        Self::new(StatusCode::GATEWAY_TIMEOUT, "INVOKE_TIMEOUT", false);
    /// A job's attempts were used up before any of them recorded a failure.
    pub const JOB_ATTEMPTS_EXHAUSTED: Self = Self::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "JOB_ATTEMPTS_EXHAUSTED",
        false,
    );
    /// The instance has no replica to talk to, and none is coming.
    pub const INSTANCE_NOT_RUNNING: Self =
        Self::new(StatusCode::CONFLICT, "INSTANCE_NOT_RUNNING", true);
    /// The agent is not running (stopped, building, failed).
    pub const AGENT_NOT_RUNNING: Self = Self::new(StatusCode::CONFLICT, "AGENT_NOT_RUNNING", true);
    /// The instance was not started with stdin.
    pub const STDIN_NOT_ENABLED: Self = Self::new(StatusCode::CONFLICT, "STDIN_NOT_ENABLED", false);
    /// The request itself is wrong.
    pub const INVALID_REQUEST: Self = Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", false);
    /// The organization's instance quota is used up.
    pub const RESOURCE_LIMIT_EXCEEDED: Self = Self::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "RESOURCE_LIMIT_EXCEEDED",
        false,
    );
    /// Anything internal: logged, never shown.
    pub const INTERNAL_ERROR: Self =
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", false);

    /// The rows an invocation can fail with, whichever way it was made
    /// (sync, keyed, streaming, a job): what the invoke route documents.
    pub const INVOKE: &'static [Self] = &[
        Self::AGENT_ERROR,
        Self::AGENT_BAD_RESPONSE,
        Self::AGENT_UNREACHABLE,
        Self::AGENT_UNAVAILABLE,
        Self::AGENT_OVERLOADED,
        Self::INVOKE_TIMEOUT,
    ];

    /// Every code a job's stored `error` may carry.
    const STORED: &'static [Self] = &[
        Self::AGENT_ERROR,
        Self::AGENT_BAD_RESPONSE,
        Self::AGENT_UNREACHABLE,
        Self::AGENT_UNAVAILABLE,
        Self::AGENT_OVERLOADED,
        Self::INVOKE_TIMEOUT,
        Self::JOB_ATTEMPTS_EXHAUSTED,
        Self::not_found(IdKind::Agent),
    ];

    /// The row of a code a job stored. A code this server does not know (a
    /// record written by a newer one) reads as the agent's failure, which
    /// is what every stored error is about.
    #[must_use]
    pub fn of_stored(code: &str) -> Self {
        Self::STORED
            .iter()
            .find(|class| class.code == code)
            .copied()
            .unwrap_or(Self::AGENT_ERROR)
    }

    /// 404 `<KIND>_NOT_FOUND`.
    #[must_use]
    pub const fn not_found(kind: IdKind) -> Self {
        let code = match kind {
            IdKind::Organization => "ORGANIZATION_NOT_FOUND",
            IdKind::User => "USER_NOT_FOUND",
            IdKind::ApiKey => "API_KEY_NOT_FOUND",
            IdKind::Cloud => "CLOUD_NOT_FOUND",
            IdKind::Agent => "AGENT_NOT_FOUND",
            IdKind::Build => "BUILD_NOT_FOUND",
            IdKind::Instance => "INSTANCE_NOT_FOUND",
            IdKind::Replica => "REPLICA_NOT_FOUND",
            IdKind::Job => "JOB_NOT_FOUND",
            IdKind::Request => "REQUEST_NOT_FOUND",
            IdKind::Upload => "UPLOAD_NOT_FOUND",
            IdKind::Secret => "SECRET_NOT_FOUND",
            IdKind::Webhook => "WEBHOOK_NOT_FOUND",
            IdKind::Delivery => "DELIVERY_NOT_FOUND",
            IdKind::Event => "EVENT_NOT_FOUND",
            IdKind::Node => "NODE_NOT_FOUND",
            IdKind::Session => "SESSION_NOT_FOUND",
        };
        Self::new(StatusCode::NOT_FOUND, code, false)
    }

    /// 409 `<KIND>_NAME_TAKEN`.
    #[must_use]
    pub const fn name_taken(kind: IdKind) -> Self {
        let code = match kind {
            IdKind::Organization => "ORGANIZATION_NAME_TAKEN",
            IdKind::User => "USER_NAME_TAKEN",
            IdKind::ApiKey => "API_KEY_NAME_TAKEN",
            IdKind::Cloud => "CLOUD_NAME_TAKEN",
            IdKind::Agent => "AGENT_NAME_TAKEN",
            IdKind::Build => "BUILD_NAME_TAKEN",
            IdKind::Instance => "INSTANCE_NAME_TAKEN",
            IdKind::Replica => "REPLICA_NAME_TAKEN",
            IdKind::Job => "JOB_NAME_TAKEN",
            IdKind::Request => "REQUEST_NAME_TAKEN",
            IdKind::Upload => "UPLOAD_NAME_TAKEN",
            IdKind::Secret => "SECRET_NAME_TAKEN",
            IdKind::Webhook => "WEBHOOK_NAME_TAKEN",
            IdKind::Delivery => "DELIVERY_NAME_TAKEN",
            IdKind::Event => "EVENT_NAME_TAKEN",
            IdKind::Node => "NODE_NAME_TAKEN",
            IdKind::Session => "SESSION_NAME_TAKEN",
        };
        Self::new(StatusCode::CONFLICT, code, false)
    }
}

/// A failure with a row in the table.
pub trait Classify: std::error::Error {
    /// Its row.
    fn class(&self) -> ErrorClass;

    /// What a client is told (see the module docs).
    fn public_message(&self) -> String;

    /// The full text, when it is internal and so only for the log.
    fn internal_cause(&self) -> Option<String>;
}

impl Classify for InvokeError {
    fn class(&self) -> ErrorClass {
        match self {
            InvokeError::NoReplica => ErrorClass::AGENT_UNAVAILABLE,
            InvokeError::Timeout(_) => ErrorClass::INVOKE_TIMEOUT,
            InvokeError::AgentStatus { .. } => ErrorClass::AGENT_ERROR,
            InvokeError::BadResponse(_) => ErrorClass::AGENT_BAD_RESPONSE,
            InvokeError::Unreachable(_) => ErrorClass::AGENT_UNREACHABLE,
            InvokeError::Overloaded => ErrorClass::AGENT_OVERLOADED,
        }
    }

    fn public_message(&self) -> String {
        match self {
            InvokeError::Unreachable(_) => {
                "the replica could not be reached or broke the connection".to_owned()
            }
            // Our own words (the agent's status, the time limit, what was
            // wrong with the answer): the caller's business.
            other => other.to_string(),
        }
    }

    fn internal_cause(&self) -> Option<String> {
        matches!(self, InvokeError::Unreachable(_)).then(|| self.to_string())
    }
}

impl Classify for ControlError {
    fn class(&self) -> ErrorClass {
        match self {
            ControlError::NotRunning(_) => ErrorClass::INSTANCE_NOT_RUNNING,
            ControlError::NoStdin(_) => ErrorClass::STDIN_NOT_ENABLED,
            ControlError::Invalid(_) => ErrorClass::INVALID_REQUEST,
            ControlError::Driver(_) => ErrorClass::INTERNAL_ERROR,
        }
    }

    fn public_message(&self) -> String {
        match self {
            ControlError::Driver(_) => INTERNAL_MESSAGE.to_owned(),
            other => other.to_string(),
        }
    }

    fn internal_cause(&self) -> Option<String> {
        matches!(self, ControlError::Driver(_)).then(|| self.to_string())
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            StoreError::NameTaken { what, .. } => ErrorClass::name_taken(*what),
            StoreError::NotFound { what, .. } => ErrorClass::not_found(*what),
            StoreError::QuotaExceeded { .. } => ErrorClass::RESOURCE_LIMIT_EXCEEDED,
            StoreError::Corrupt { .. }
            | StoreError::Seal(_)
            | StoreError::Database(_)
            | StoreError::Read(_)
            | StoreError::Migrate(_) => ErrorClass::INTERNAL_ERROR,
        }
    }

    fn public_message(&self) -> String {
        match self {
            StoreError::NameTaken { .. }
            | StoreError::NotFound { .. }
            | StoreError::QuotaExceeded { .. } => self.to_string(),
            _ => INTERNAL_MESSAGE.to_owned(),
        }
    }

    fn internal_cause(&self) -> Option<String> {
        (self.class() == ErrorClass::INTERNAL_ERROR).then(|| self.to_string())
    }
}

/// What a client reads for an internal failure.
pub const INTERNAL_MESSAGE: &str =
    "An internal error occurred; quote the request_id when reporting it";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_stored_code_reads_back_as_the_row_it_was_written_from() {
        let failures = [
            InvokeError::NoReplica,
            InvokeError::Timeout(Duration::from_secs(1)),
            InvokeError::AgentStatus {
                status: 500,
                body: "boom".into(),
            },
            InvokeError::BadResponse("not JSON".into()),
            InvokeError::Unreachable("connection reset by peer".into()),
            InvokeError::Overloaded,
        ];
        for failure in &failures {
            assert_eq!(ErrorClass::of_stored(failure.class().code), failure.class());
        }
        for class in ErrorClass::INVOKE {
            assert_eq!(ErrorClass::of_stored(class.code), *class);
        }
        assert_eq!(
            ErrorClass::of_stored("AGENT_NOT_FOUND").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ErrorClass::of_stored("SOMETHING_NEWER"),
            ErrorClass::AGENT_ERROR
        );
    }

    #[test]
    fn internal_text_is_never_the_public_message() {
        let unreachable = InvokeError::Unreachable("hyper: connection reset by peer".into());
        assert!(!unreachable.public_message().contains("hyper"));
        assert!(unreachable
            .internal_cause()
            .is_some_and(|c| c.contains("hyper")));
        let driver = ControlError::Driver("youki: EPERM on /sys/fs/cgroup".into());
        assert!(!driver.public_message().contains("youki"));
        assert_eq!(driver.class(), ErrorClass::INTERNAL_ERROR);
        let corrupt = StoreError::Corrupt {
            what: "seq",
            detail: "not a number".into(),
        };
        assert_eq!(corrupt.public_message(), INTERNAL_MESSAGE);
        let missing = StoreError::NotFound {
            what: IdKind::Agent,
            id: "agent_x".into(),
        };
        assert_eq!(missing.class().code, "AGENT_NOT_FOUND");
        assert!(missing.internal_cause().is_none());
        let agent = InvokeError::AgentStatus {
            status: 418,
            body: String::new(),
        };
        assert!(agent.public_message().contains("418"));
    }
}
