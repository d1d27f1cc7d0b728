//! `LifecycleError`: what a lifecycle operation can fail with. Mapped to HTTP statuses in one
//! place (`api::error`).

use crate::backend::BackendError;
use crate::session::InvalidTransition;
use crate::store::StoreError;

/// Lifecycle failures, mapped to HTTP statuses in one place (`api::error`).
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no session {0}")]
    NotFound(String),
    #[error("session {0} was deleted")]
    Deleted(String),
    #[error("session {id} is {state}: {what}")]
    Conflict { id: String, state: &'static str, what: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup failed, nothing was deleted: {0}")]
    BackupFailed(String),
    #[error("no backup {0}")]
    BackupNotFound(String),
    #[error("backup {id} failed verification ({why}): it cannot be used")]
    BackupUnverified { id: String, why: String },
    #[error("could not back up the current content of {id} before restoring, so nothing was changed: {why}")]
    SafetyBackupFailed { id: String, why: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Another replica holds this session's operation lease (a backup, deletion, restore, scale or
    /// start is running there): nothing here touches the session until it ends or expires.
    #[error("session {id} is busy: another replica is running an operation on it")]
    Busy { id: String, retry_after: u64 },
    /// A lifecycle task ended without an answer (it panicked, or the runtime is shutting down):
    /// wakeway's fault, never the client's. The cause is logged, not sent to clients.
    #[error("the {what} task failed before it answered")]
    TaskFailed {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl From<InvalidTransition> for LifecycleError {
    fn from(e: InvalidTransition) -> Self {
        LifecycleError::Conflict { id: String::new(), state: e.from.as_str(), what: e.to_string() }
    }
}

impl LifecycleError {
    /// The error for a task `what` that ended without an answer, logged with its cause (a
    /// panic's message) at error level.
    pub(super) fn task_failed(what: &'static str, source: tokio::task::JoinError) -> Self {
        tracing::error!(task = what, error = %source, "a lifecycle task failed (a bug in wakeway)");
        LifecycleError::TaskFailed { what, source }
    }
}

/// What the manager's operations return.
pub type Result<T, E = LifecycleError> = std::result::Result<T, E>;
