//! `LifecycleError`: what a lifecycle operation can fail with. Mapped to HTTP statuses in one
//! place (`api::error`).

use crate::backend::BackendError;
use crate::restore::RestoreError;
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup failed, nothing was deleted: {0}")]
    BackupFailed(#[source] BackendError),
    #[error("no backup {0}")]
    BackupNotFound(String),
    #[error("backup {id} failed verification ({why}): it cannot be used")]
    BackupUnverified { id: String, why: String },
    #[error("could not back up the current content of {id} before restoring, so nothing was changed: {source}")]
    SafetyBackupFailed {
        id: String,
        #[source]
        source: BackendError,
    },
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

/// Whose fault a failure is (as pingora's errors say it): what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request: an unknown or deleted id, the wrong state, a backup that cannot be used.
    /// Sent again, it fails the same way (a 4xx).
    Client,
    /// wakeway or what it runs on (a bug, the backend, a disk): a 5xx, logged.
    Server,
    /// Passing: the store is unreachable, another replica or request is changing the session.
    /// The same request succeeds after a moment (an answer with `Retry-After`).
    Unavailable,
}

impl LifecycleError {
    /// Whose fault this failure is.
    pub fn fault(&self) -> Fault {
        use LifecycleError as L;
        match self {
            L::NotFound(_) | L::Deleted(_) | L::Conflict { .. } | L::BackupNotFound(_) | L::BackupUnverified { .. } => {
                Fault::Client
            }
            // The backup chosen is unsafe or damaged: choose another.
            L::Backend(BackendError::Restore(RestoreError::Rejected(_) | RestoreError::Corrupt(_))) => Fault::Client,
            L::Busy { .. } | L::Store(StoreError::Unavailable(_) | StoreError::Conflict { .. }) => Fault::Unavailable,
            L::Store(StoreError::Corrupt { .. })
            | L::BackupFailed(_)
            | L::SafetyBackupFailed { .. }
            | L::Backend(_)
            | L::TaskFailed { .. } => Fault::Server,
        }
    }

    /// The error for a task `what` that ended without an answer, logged with its cause (a
    /// panic's message) at error level.
    pub fn task_failed(what: &'static str, source: tokio::task::JoinError) -> Self {
        tracing::error!(task = what, error = %source, "a lifecycle task failed (a bug in wakeway)");
        LifecycleError::TaskFailed { what, source }
    }
}

/// What the manager's operations return.
pub type Result<T, E = LifecycleError> = std::result::Result<T, E>;
