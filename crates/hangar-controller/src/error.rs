//! The controller's errors: what its callers hear ([`ControlError`]) and
//! why a reconcile failed ([`ReconcileError`], which the error policy backs
//! off on and shows on the instance).

use hangar_runtime::driver::DriverError;
use hangar_store::StoreError;

/// Why a controller call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The instance has no running replica to talk to.
    #[error("instance {0} has no running replica")]
    NotRunning(String),
    /// The instance was not started with stdin.
    #[error("instance {0} does not take stdin (its config.stdin_enabled is false)")]
    NoStdin(String),
    /// The request itself is wrong (say, a program that does not exist).
    #[error("{0}")]
    Invalid(String),
    /// The driver failed.
    #[error("{0}")]
    Driver(String),
}

/// Why one reconcile of an instance failed. The instance is reconciled
/// again after a backoff that grows with failures in a row, and the cause is
/// logged and shown in its `status_reason` ([`ReconcileError::reason`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    /// The store could not be read or written.
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    /// The driver could not remove an ended replica.
    #[error("cannot remove replica {replica}: {source}")]
    Remove {
        /// The replica.
        replica: String,
        /// The driver's error.
        source: DriverError,
    },
    /// This node's lease of the instance may have run out (it could not be
    /// renewed in time): nothing more is done to the instance until a
    /// renewal says whether it is still held.
    #[error("this server's lease of the instance lapsed")]
    LeaseLapsed,
}

impl ReconcileError {
    /// The sentence the instance's owner sees: the driver's words, but not
    /// the store's (they may name tables and the server's setup).
    pub(crate) fn reason(&self) -> String {
        match self {
            Self::Store(_) => "the store failed (the server's log says why)".to_owned(),
            Self::Remove { replica, source } => {
                format!("cannot remove replica {replica}: {source}")
            }
            Self::LeaseLapsed => "this server's lease of the instance lapsed".to_owned(),
        }
    }
}
