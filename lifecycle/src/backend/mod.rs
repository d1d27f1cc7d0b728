//! Where workspaces run: the `Backend` trait and its implementations. The manager decides *when*
//! (state machine, policy); a backend knows *how* (processes, or Kubernetes objects).

pub mod kubernetes;
pub mod local;

use std::path::Path;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use wakeway_config::Tier;
use wakeway_proxy::Upstream;

use crate::backup::BackupError;
use crate::catalog::BackupReason;
use crate::restore::{Limits, Options, Report, RestoreError};
use crate::session::{BackupInfo, Durable, ObjectUids, Placement, Session};

pub use kubernetes::KubernetesBackend;
pub use local::LocalBackend;

/// A started workspace that answers HTTP.
#[derive(Debug, Clone)]
pub struct Started {
    pub addr: Upstream,
    pub placement: Placement,
    /// The session's objects when the backend has some (kubernetes); the manager persists them.
    pub objects: Option<ObjectUids>,
    /// How long each phase of this start took, in seconds, when the backend can tell
    /// (kubernetes: scheduled, started, ready, routable), for `wakeway_k8s_wake_phase_seconds`.
    pub phases: Vec<(&'static str, f64)>,
}

/// A workspace a backend holds, found without the store (to rebuild records the store lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub id: String,
    pub user_id: String,
    pub tier: String,
    pub created_at: Option<DateTime<Utc>>,
    /// The session's policy and pending operation as last saved with [`Backend::save_durable`].
    pub durable: Durable,
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
    /// A backup or restore Job (Kubernetes) failed, timed out or vanished.
    #[error("the Job {job} failed: {why}")]
    Job { job: String, why: String },
    #[error("Kubernetes API: {0}")]
    Api(String),
    #[error("{0}")]
    Io(String),
}

/// What a backend found at start-up that does not match the sessions (reported, never acted on
/// blindly: nothing is deleted because of a report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Objects labelled as wakeway's whose session does not exist (or was deleted).
    pub orphans: Vec<FoundObject>,
    /// Objects a live session recorded at creation that are gone (or were replaced: other uid).
    pub vanished: Vec<MissingObject>,
    /// Deployments whose replicas disagree with their session, or whose replicas someone other
    /// than wakeway owns.
    pub scaled_elsewhere: Vec<ScaledElsewhere>,
}

impl ReconcileReport {
    pub fn is_clean(&self) -> bool {
        self.orphans.is_empty() && self.vanished.is_empty() && self.scaled_elsewhere.is_empty()
    }
}

/// One object found in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundObject {
    pub kind: &'static str,
    pub name: String,
    pub uid: String,
    /// Its `uuid` label.
    pub session: String,
}

/// An object a session recorded that is not (or no longer the same) in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingObject {
    pub session: String,
    pub kind: &'static str,
    pub name: String,
    pub recorded_uid: String,
    /// The uid of an object by that name now, if one exists (a replacement).
    pub found_uid: Option<String>,
}

/// A Deployment scaled by someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaledElsewhere {
    pub session: String,
    pub name: String,
    pub replicas: i32,
    /// What the session's state implies (None: in transition, any is fine).
    pub expected: Option<i32>,
    /// Field managers other than wakeway that own `spec.replicas`.
    pub other_owners: Vec<String>,
}

/// How workspaces are run. Every method is idempotent: calling it again after a crash is safe.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `local` or `kubernetes`.
    fn kind(&self) -> &'static str;

    /// Prepare a new session's storage (and, on Kubernetes, its objects: their UIDs are returned
    /// for the manager to persist).
    async fn create(&self, session: &Session) -> Result<Option<ObjectUids>, BackendError>;

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
    async fn find_running(&self, session: &Session) -> Option<Upstream>;

    /// Cheap liveness check of the recorded placement.
    fn is_alive(&self, session: &Session) -> bool;

    /// Zip the (stopped) workspace into a verified backup named for `now`, recorded in the catalog
    /// with `reason`.
    async fn backup(
        &self,
        session: &Session,
        now: DateTime<Utc>,
        reason: BackupReason,
    ) -> Result<BackupInfo, BackendError>;

    /// Replace the (stopped) workspace's content with the backup `zip`: every entry checked first,
    /// extracted beside it (or inside it, for a volume's mount point), flushed, swapped in, within
    /// `limits`. The caller has backed up the old content.
    async fn restore(
        &self,
        session: &Session,
        zip: &Path,
        limits: Limits,
        options: Options,
    ) -> Result<Report, BackendError>;

    /// Finish or undo the folder swap of a restore a crash interrupted (before it is redone).
    async fn clean_interrupted_restore(&self, session: &Session) -> Result<(), BackendError>;

    /// Keep `session`'s [`Durable`] part where the workspace cannot write it, so a record the
    /// store loses is rebuilt with it (`discover`). Called whenever it changes.
    async fn save_durable(&self, _session: &Session) -> Result<(), BackendError> {
        Ok(())
    }

    /// Every workspace this backend holds, with what it knows of its session (labels and
    /// annotations, a sidecar file…). Used when the store lost records: nothing is deleted because
    /// its record vanished.
    async fn discover(&self) -> Result<Vec<Discovered>, BackendError> {
        Ok(Vec::new())
    }

    /// Delete the workspace's data. Refuses unless `session.backup` names a backup that exists.
    async fn destroy(&self, session: &Session) -> Result<(), BackendError>;

    /// Compare what runs with `sessions` (all of them, deleted ones included) at start-up.
    async fn reconcile(&self, _sessions: &[Session]) -> Result<ReconcileReport, BackendError> {
        Ok(ReconcileReport::default())
    }

    /// A lifecycle step of `session` happened at `at` (the webhook's event and fields): a backend
    /// with a place to show it (Kubernetes Events) records it there. Never waits, never fails.
    fn lifecycle_event(
        &self,
        _event: &crate::webhook::Event,
        _session: &Session,
        _at: DateTime<Utc>,
        _fields: &serde_json::Value,
    ) {
    }
}
