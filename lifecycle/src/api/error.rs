//! `ApiError`: the one mapping from wakeway's errors to HTTP statuses and stable error codes.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::backend::BackendError;
use crate::manager::{Fault, LifecycleError};
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
    /// The answer to a failed operation; a server's fault is logged with its causes (a client's
    /// is not: it is the client's to read).
    fn from(e: LifecycleError) -> Self {
        let (status, code, message, retry_after) = answer(&e);
        if e.fault() == Fault::Server {
            tracing::error!(status = status.as_u16(), code, error = %with_causes(&e), "an API request failed");
        }
        ApiError { status, code, message, retry_after }
    }
}

/// Said after a passing failure.
const RETRY_SHORTLY: &str = ". Retry shortly.";
/// Said after a restore that changed nothing.
const UNCHANGED: &str = ". The workspace is unchanged.";

/// The table: each failure's status, code, message (the error's own words and what to do next)
/// and `Retry-After`.
fn answer(e: &LifecycleError) -> (StatusCode, &'static str, String, Option<u64>) {
    use BackendError::Restore;
    use LifecycleError as L;
    use RestoreError as R;
    use StatusCode as S;
    let then = |next: &str| format!("{e}{next}");
    match e {
        L::NotFound(id) => {
            (S::NOT_FOUND, "session_not_found", format!("No session {id}. List sessions with GET /sessions."), None)
        }
        L::Deleted(id) => {
            (S::GONE, "session_deleted", format!("Session {id} was deleted after a verified backup."), None)
        }
        L::Conflict { .. } => (S::CONFLICT, "invalid_state", then(""), None),
        L::Busy { retry_after, .. } => {
            (S::SERVICE_UNAVAILABLE, "operation_in_progress", then(RETRY_SHORTLY), Some(*retry_after))
        }
        L::Store(StoreError::Unavailable(_)) => {
            (S::SERVICE_UNAVAILABLE, "store_unavailable", then(RETRY_SHORTLY), Some(5))
        }
        L::Store(StoreError::Conflict { .. }) => {
            (S::CONFLICT, "concurrent_update", then(". Retry the request."), Some(1))
        }
        L::Store(StoreError::Corrupt { .. }) => (S::INTERNAL_SERVER_ERROR, "store_corrupt", then(""), None),
        L::BackupFailed(_) => (S::INTERNAL_SERVER_ERROR, "backup_failed", then(KEPT_AND_RETRIED), None),
        L::BackupNotFound(id) => {
            (S::NOT_FOUND, "backup_not_found", format!("No backup {id:?}. List backups with GET /backups."), None)
        }
        L::BackupUnverified { .. } => (S::CONFLICT, "backup_unverified", then(NEVER_COUNTS), None),
        L::SafetyBackupFailed { .. } => (S::INTERNAL_SERVER_ERROR, "backup_failed", then(""), None),
        L::Backend(Restore(R::Rejected(_))) => {
            (S::UNPROCESSABLE_ENTITY, "restore_rejected", then(NOTHING_WRITTEN), None)
        }
        L::Backend(Restore(R::Corrupt(_))) => (S::CONFLICT, "backup_unverified", then(MARKED_FAILED), None),
        L::Backend(Restore(R::NoSpace { .. })) => {
            (S::INSUFFICIENT_STORAGE, "insufficient_storage", then(UNCHANGED), None)
        }
        L::Backend(Restore(R::Io { .. })) => (S::INTERNAL_SERVER_ERROR, "restore_failed", then(UNCHANGED), None),
        L::Backend(BackendError::Start(_)) => (S::BAD_GATEWAY, "workspace_start_failed", then(""), None),
        L::Backend(_) => (S::INTERNAL_SERVER_ERROR, "backend_error", then(""), None),
        L::TaskFailed { .. } => (S::INTERNAL_SERVER_ERROR, "internal_error", then(A_BUG), None),
    }
}

const KEPT_AND_RETRIED: &str =
    ". The workspace is kept (state backup_failed) and the deletion is retried automatically.";
const NEVER_COUNTS: &str = ". A backup that fails verification never counts as one; choose another.";
const NOTHING_WRITTEN: &str = ". Nothing was written; the workspace is unchanged.";
const MARKED_FAILED: &str = ". The backup is now marked as failed; the workspace is unchanged.";
/// The cause (a panic's message) is logged where the task failed, never sent.
const A_BUG: &str = ": a bug in wakeway, logged with its cause. Retry the request.";

/// `e` and its causes, each written once (most messages already quote their cause).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// One error of every kind the API maps, as the manager makes them.
    async fn every_error() -> Vec<LifecycleError> {
        let panicked = tokio::spawn(async { panic!("a bug") }).await.unwrap_err();
        let id = || "abc12345".to_string();
        let restore = |e: RestoreError| LifecycleError::Backend(BackendError::Restore(e));
        vec![
            LifecycleError::NotFound(id()),
            LifecycleError::Deleted(id()),
            LifecycleError::Conflict { id: id(), state: "running", what: "put it to sleep first".into() },
            LifecycleError::Busy { id: id(), retry_after: 7 },
            LifecycleError::Store(StoreError::Unavailable("connection refused".into())),
            LifecycleError::Store(StoreError::Conflict { id: id(), expected: 3, found: Some(4) }),
            LifecycleError::Store(StoreError::Corrupt { id: id(), message: "not JSON".into() }),
            LifecycleError::BackupFailed(BackendError::Io("the zip is short".into())),
            LifecycleError::BackupNotFound("workspace-abc12345-20250101-120000".into()),
            LifecycleError::BackupUnverified { id: "b".into(), why: "CRC mismatch".into() },
            LifecycleError::SafetyBackupFailed { id: id(), source: BackendError::Io("disk full".into()) },
            restore(RestoreError::Rejected("../etc/passwd".into())),
            restore(RestoreError::Corrupt("CRC mismatch".into())),
            restore(RestoreError::NoSpace { path: PathBuf::from("/w"), needed: 10, available: 5 }),
            restore(RestoreError::Io { path: PathBuf::from("/w"), source: std::io::Error::other("EIO") }),
            LifecycleError::Backend(BackendError::Start("exited with 1".into())),
            LifecycleError::Backend(BackendError::Api("403 forbidden".into())),
            LifecycleError::TaskFailed { what: "wake", source: panicked },
        ]
    }

    /// Today's answers, pinned: status, code, Retry-After, message.
    const ANSWERS: &str = include_str!("error_answers.txt");

    #[tokio::test]
    async fn every_lifecycle_error_has_its_status_code_and_message() {
        let got: Vec<String> = every_error()
            .await
            .into_iter()
            .map(ApiError::from)
            .map(|e| format!("{} {} {:?} {}", e.status.as_u16(), e.code, e.retry_after, e.message))
            .collect();
        assert_eq!(got.join("\n"), ANSWERS.trim_end());
    }

    /// The status says whose fault it is: the client's is a 4xx without Retry-After, a passing
    /// failure has Retry-After, wakeway's is a 5xx.
    #[tokio::test]
    async fn the_status_follows_whose_fault_it_is() {
        for e in every_error().await {
            let (fault, text) = (e.fault(), e.to_string());
            let answer = ApiError::from(e);
            match fault {
                Fault::Client => assert!(answer.status.is_client_error() && answer.retry_after.is_none(), "{text}"),
                Fault::Unavailable => assert!(answer.retry_after.is_some(), "{text}"),
                Fault::Server => assert!(answer.status.is_server_error() && answer.retry_after.is_none(), "{text}"),
            }
        }
    }

    #[tokio::test]
    async fn errors_keep_their_cause() {
        let e = LifecycleError::BackupFailed(BackendError::Io("the zip is short".into()));
        let cause = std::error::Error::source(&e).expect("a backup failure keeps its cause");
        assert_eq!(cause.to_string(), "the zip is short");
        let panicked = tokio::spawn(async { panic!("a bug") }).await.unwrap_err();
        let e = LifecycleError::TaskFailed { what: "wake", source: panicked };
        assert!(with_causes(&e).contains("panicked"), "{}", with_causes(&e));
        assert!(!ApiError::from(e).message.contains("panicked"), "the panic is logged, not sent");
    }
}
