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
}

impl From<InvalidTransition> for LifecycleError {
    fn from(e: InvalidTransition) -> Self {
        LifecycleError::Conflict { id: String::new(), state: e.from.as_str(), what: e.to_string() }
    }
}

/// What the manager's operations return.
pub type Result<T, E = LifecycleError> = std::result::Result<T, E>;
