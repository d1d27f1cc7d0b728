//! Where workspaces run: the `Backend` trait and its implementations. The manager decides *when*
//! (state machine, policy); a backend knows *how* (processes, or Kubernetes objects).

pub mod local;

use std::net::SocketAddr;
use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use wakeway_config::Tier;

use crate::backup::BackupError;
use crate::restore::{Limits, Options, Report, RestoreError};
use crate::session::{BackupInfo, Placement, Session};

pub use local::LocalBackend;

/// A started workspace that answers HTTP.
#[derive(Debug, Clone)]
pub struct Started {
    pub addr: SocketAddr,
    pub placement: Placement,
}

/// Something the backend noticed on its own.
#[derive(Debug, Clone)]
pub enum BackendEvent {
    /// The workspace with this placement exited (crash, or killed by someone else).
    Exited { id: String, placement: Placement, detail: String },
}

/// Backend failures. Messages say what happened and, where we can tell, what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the workspace did not start: {0}")]
    Start(String),
    #[error("the workspace could not be stopped: {0}")]
    Stop(String),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("refusing to delete workspace data: {0}")]
    Refused(String),
    #[error("{0}")]
    Io(String),
}

/// How workspaces are run. Every method is idempotent: calling it again after a crash is safe.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `local` or `kubernetes`.
    fn kind(&self) -> &'static str;

    /// Prepare a new session's storage.
    async fn create(&self, session: &Session) -> Result<(), BackendError>;

    /// Start the workspace with `tier`'s resources; return once it answers HTTP, or fail at
    /// `deadline` (or as soon as it exits).
    async fn start(
        &self,
        session: &Session,
        tier: &Tier,
        deadline: tokio::time::Instant,
    ) -> Result<Started, BackendError>;

    /// Stop the workspace; nothing running is fine.
    async fn stop(&self, session: &Session) -> Result<(), BackendError>;

    /// If the session's recorded placement still runs and answers, its address (adopt it).
    async fn find_running(&self, session: &Session) -> Option<SocketAddr>;

    /// Cheap liveness check of the recorded placement.
    fn is_alive(&self, session: &Session) -> bool;

    /// Zip the (stopped) workspace into a verified backup named for `now`, recorded in the catalog
    /// with `reason` (`delete`, `pre_restore`).
    async fn backup(&self, session: &Session, now: DateTime<Utc>, reason: &str) -> Result<BackupInfo, BackendError>;

    /// Replace the (stopped) workspace's content with the backup `zip`: every entry checked first,
    /// extracted next to the folder, flushed, swapped in. The caller has backed up the old content.
    async fn restore(
        &self,
        session: &Session,
        zip: &Path,
        limits: Limits,
        options: Options,
    ) -> Result<Report, BackendError>;

    /// Finish or undo the folder swap of a restore a crash interrupted (before it is redone).
    async fn clean_interrupted_restore(&self, session: &Session) -> Result<(), BackendError>;

    /// Delete the workspace's data. Refuses unless `session.backup` names a backup that exists.
    async fn destroy(&self, session: &Session) -> Result<(), BackendError>;
}
