//! `ApiError`: the one mapping from wakeway's errors to HTTP statuses and stable error codes.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::backend::BackendError;
use crate::manager::LifecycleError;
use crate::restore::RestoreError;
use crate::store::StoreError;

/// An API error: status, stable `code`, human `message` (what happened and what to do).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = wakeway_proxy::error_body(self.code, &self.message);
        let mut response = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let message = e.to_string();
        match e {
            LifecycleError::NotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "session_not_found",
                format!("No session {id}. List sessions with GET /sessions."),
            ),
            LifecycleError::Deleted(id) => ApiError::new(
                StatusCode::GONE,
                "session_deleted",
                format!("Session {id} was deleted after a verified backup."),
            ),
            LifecycleError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "invalid_state", message),
            LifecycleError::Busy { retry_after, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "operation_in_progress",
                format!("{message}. Retry shortly."),
            )
            .retry_after(retry_after),
            LifecycleError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message),
            LifecycleError::Store(StoreError::Unavailable(_)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("{message}. Retry shortly."),
            )
            .retry_after(5),
            LifecycleError::Store(StoreError::Conflict { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "concurrent_update", format!("{message}. Retry the request."))
                    .retry_after(1)
            }
            LifecycleError::Store(StoreError::Corrupt { .. }) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt", message)
            }
            LifecycleError::BackupFailed(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backup_failed",
                format!(
                    "{message}. The workspace is kept (state backup_failed) and the deletion is retried automatically."
                ),
            ),
            LifecycleError::BackupNotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "backup_not_found",
                format!("No backup {id:?}. List backups with GET /backups."),
            ),
            LifecycleError::BackupUnverified { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "backup_unverified",
                format!("{message}. A backup that fails verification never counts as one; choose another."),
            ),
            LifecycleError::SafetyBackupFailed { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed", message)
            }
            LifecycleError::Backend(BackendError::Restore(e)) => match e {
                RestoreError::Rejected(_) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "restore_rejected",
                    format!("{message}. Nothing was written; the workspace is unchanged."),
                ),
                RestoreError::Corrupt(_) => ApiError::new(
                    StatusCode::CONFLICT,
                    "backup_unverified",
                    format!("{message}. The backup is now marked as failed; the workspace is unchanged."),
                ),
                RestoreError::NoSpace { .. } => ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    format!("{message}. The workspace is unchanged."),
                ),
                RestoreError::Io { .. } => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "restore_failed",
                    format!("{message}. The workspace is unchanged."),
                ),
            },
            LifecycleError::Backend(BackendError::Start(_)) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "workspace_start_failed", message)
            }
            LifecycleError::Backend(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backend_error", message),
            LifecycleError::TaskFailed { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("{message}: a bug in wakeway, logged with its cause. Retry the request."),
            ),
        }
    }
}
