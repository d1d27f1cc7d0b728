//! The session record and its state machine: one enum, one transition check.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use wakeway_proxy::{ActivitySource, SessionId};

use crate::usage::{Bucket, Since, Usage};

/// A session's lifecycle state (persisted; shown in status as `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Creating,
    Starting,
    Running,
    Stopping,
    Sleeping,
    Waking,
    Resizing,
    BackingUp,
    BackupFailed,
    Deleting,
    Deleted,
    Failed,
    /// A backup is being brought back into the (stopped) workspace folder.
    Restoring,
}

impl State {
    pub const ALL: [State; 13] = [
        State::Creating,
        State::Starting,
        State::Running,
        State::Stopping,
        State::Sleeping,
        State::Waking,
        State::Resizing,
        State::BackingUp,
        State::BackupFailed,
        State::Deleting,
        State::Deleted,
        State::Failed,
        State::Restoring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Sleeping => "sleeping",
            State::Waking => "waking",
            State::Resizing => "resizing",
            State::BackingUp => "backing_up",
            State::BackupFailed => "backup_failed",
            State::Deleting => "deleting",
            State::Deleted => "deleted",
            State::Failed => "failed",
            State::Restoring => "restoring",
        }
    }

    /// States in which the workspace process is (or is being) up.
    pub fn is_awake(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Waking | State::Resizing)
    }

    /// Whether `self -> next` is a legal transition. Every persisted change goes through this.
    pub fn can_become(self, next: State) -> bool {
        use State::*;
        if next == Failed {
            return self != Deleted;
        }
        matches!(
            (self, next),
            (Creating, Starting)
                | (Creating, Sleeping)
                | (Starting, Running)
                | (Starting, Sleeping)
                | (Running, Stopping)
                | (Running, Resizing)
                | (Running, Sleeping)
                | (Stopping, Sleeping)
                | (Sleeping, Waking)
                | (Sleeping, Resizing)
                | (Sleeping, BackingUp)
                | (Waking, Running)
                | (Waking, Sleeping)
                | (Resizing, Running)
                | (Resizing, Sleeping)
                | (BackingUp, BackupFailed)
                | (BackingUp, Deleting)
                | (BackingUp, Sleeping)
                | (BackupFailed, BackingUp)
                | (BackupFailed, Waking)
                | (BackupFailed, Sleeping)
                | (Deleting, Deleted)
                | (Failed, Waking)
                | (Failed, Sleeping)
                | (Failed, BackingUp)
                | (Creating, Restoring)
                | (Sleeping, Restoring)
                | (Restoring, Sleeping)
        )
    }
}

/// Where a workspace runs right now: enough to find it again after wakeway restarts, and to be
/// sure it is the same process (or object) and not a reused pid (or name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    Local {
        pid: u32,
        /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
        start_ticks: u64,
        /// The loopback port it serves on (0 when it serves on `socket`).
        #[serde(default)]
        port: u16,
        /// The Unix socket it serves on (isolated workspaces: no TCP port exists).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        socket: Option<std::path::PathBuf>,
        /// The uid it runs as (isolated workspaces); every process of that uid is stopped at sleep.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
    },
    /// A pod of the session's Deployment (kubernetes backend). wakeway routes straight to
    /// `pod_ip:port`; the pod's uid tells a replacement pod from this one.
    Kubernetes {
        pod: String,
        pod_uid: String,
        pod_ip: std::net::IpAddr,
        port: u16,
        /// The session's objects, as recorded at creation.
        objects: ObjectUids,
    },
}

impl Placement {
    /// Where the workspace answers.
    pub fn upstream(&self) -> wakeway_proxy::Upstream {
        use wakeway_proxy::Upstream;
        match self {
            Placement::Local { socket: Some(path), .. } => Upstream::Unix(path.to_string_lossy().into()),
            Placement::Local { port, .. } => Upstream::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], *port))),
            Placement::Kubernetes { pod_ip, port, .. } => Upstream::Tcp(std::net::SocketAddr::new(*pod_ip, *port)),
        }
    }
}

/// UIDs of the cluster objects created for a session (kubernetes backend). Deletion targets
/// exactly these (delete preconditions), never a name alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectUids {
    /// Deployment `user-<id>`.
    pub deployment: String,
    /// Service `user-<id>`.
    pub service: String,
    /// PersistentVolumeClaim `pvc-<id>` (the workspace data).
    pub pvc: String,
}

/// A verified backup of a session's workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// File name inside the backup folder (`workspace-<id>-YYYYMMDD-HHMMSS.zip`).
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// Files, folders and symlinks in the zip (the roots' own entries, `workspace/` and `home/`,
    /// not counted).
    pub entries: u64,
    /// Bytes of file content (uncompressed).
    pub content_bytes: u64,
    pub verified_at: DateTime<Utc>,
    /// What could not be archived (sockets, FIFOs, devices, files wakeway may not read), listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// One thing a backup could not hold: a socket, FIFO or device node, or something its reader may
/// not open (owned by another user). Listed in the catalog record and the backup's result; never a
/// reason to fail the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The name it would have in the zip (`workspace/…` or `home/…`), lossy UTF-8.
    pub path: String,
    /// `socket`, `fifo`, `block_device`, `char_device`, `unreadable` (`special` in records written
    /// before the kind was recorded).
    pub kind: String,
}

impl Skipped {
    pub fn new(name: &[u8], kind: &str) -> Self {
        Skipped { path: String::from_utf8_lossy(name).into_owned(), kind: kind.into() }
    }
}

/// Records written by earlier versions list skipped names as plain strings.
impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Name(String),
            Full { path: String, kind: String },
        }
        Ok(match Either::deserialize(d)? {
            Either::Name(path) => Skipped { path, kind: "special".into() },
            Either::Full { path, kind } => Skipped { path, kind },
        })
    }
}

/// Per-session policy overrides (`PATCH /session/{uuid}/policy`), within the admin's bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOverrides {
    /// Replaces the configured `idle_timeout` for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Replaces the configured `sleep_to_delete` for this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_to_delete_ms: Option<u64>,
    /// Pinned: the policy never deletes this session (an explicit `DELETE` still does).
    #[serde(default)]
    pub keep: bool,
}

/// What must outlive the loss of a session's store record (Redis emptied): its policy and the
/// operation it has pending. The backend keeps a copy where the workspace cannot write it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    #[serde(default)]
    pub policy: PolicyOverrides,
    #[serde(default)]
    pub delete_requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreOp>,
}

/// A restore in flight, persisted before the workspace folder is touched so a crash resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOp {
    /// The backup being restored (catalog id).
    pub backup: String,
    /// The verified backup of what the folder held before (None: not taken yet, or a new session).
    #[serde(default)]
    pub safety_backup: Option<String>,
    /// A new session: its folder held nothing, so no safety backup is needed.
    #[serde(default)]
    pub fresh: bool,
    /// Skip symlinks pointing outside the workspace (reported) instead of refusing the zip.
    #[serde(default)]
    pub skip_escaping_symlinks: bool,
    pub started_at: DateTime<Utc>,
}

/// The persisted session record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub uuid: SessionIdString,
    pub user_id: String,
    pub tier: String,
    pub state: State,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Latest user activity (checkpointed from the proxy's counters).
    pub last_activity: DateTime<Utc>,
    pub activity_source: RecordedSource,
    /// Latest interaction (HTTP request, editor input, API wake): raw WebSocket traffic alone
    /// keeps a session awake at most `max_awake_with_open_tab` past this.
    #[serde(default)]
    pub last_interaction: Option<DateTime<Utc>>,
    /// When the workspace last became ready.
    #[serde(default)]
    pub awake_since: Option<DateTime<Utc>>,
    /// When it last went to sleep (the `sleep_to_delete` clock starts here).
    #[serde(default)]
    pub slept_at: Option<DateTime<Utc>>,
    /// When its data was deleted (the record stays, in state `deleted`).
    #[serde(default)]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Set by `DELETE /session/{uuid}`: delete as soon as a verified backup exists.
    #[serde(default)]
    pub delete_requested: bool,
    /// The verified backup taken before deletion: nothing is deleted without it.
    #[serde(default)]
    pub backup: Option<BackupInfo>,
    /// Backups that failed in a row since it was last woken; the next attempt backs off with it.
    #[serde(default)]
    pub backup_failures: u32,
    /// When the backup that failed last is tried again.
    #[serde(default)]
    pub next_backup_attempt: Option<DateTime<Utc>>,
    /// The latest error (start failure, crash, backup failure), for status and logs.
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub placement: Option<Placement>,
    /// The cluster objects created for this session (kubernetes backend; kept while asleep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectUids>,
    #[serde(default)]
    pub policy: PolicyOverrides,
    /// The restore in flight (state `restoring`).
    #[serde(default)]
    pub restore: Option<RestoreOp>,
    /// The backup last restored into this workspace, and when.
    #[serde(default)]
    pub restored_from: Option<String>,
    /// When `restored_from` was restored.
    #[serde(default)]
    pub restored_at: Option<DateTime<Utc>>,
    /// The verified backup of what the last restore replaced (restore it to undo).
    #[serde(default)]
    pub pre_restore_backup: Option<String>,
    /// The sleep deadline a `sleep_warning` was sent for (once per deadline).
    #[serde(default)]
    pub warned_sleep_for: Option<DateTime<Utc>>,
    /// The deletion deadline a `delete_warning` was sent for (once per deadline).
    #[serde(default)]
    pub warned_delete_for: Option<DateTime<Utc>>,
    /// Workspace cookies signed with an older generation are refused: raised by
    /// `POST /session/{uuid}/revoke` and by deletion. In the record so every replica (and the next
    /// start) refuses them too; records from before it read 0.
    #[serde(default)]
    pub cookie_generation: u64,
    /// Time in each state and tier, wakes and sleeps, per UTC day (see [`crate::usage`]).
    #[serde(default)]
    pub usage: Usage,
    /// Compare-and-set version, bumped by the store on every write.
    #[serde(default)]
    pub version: u64,
}

/// What caused a session's latest activity as its record (and status) says: one of the proxy's
/// [`ActivitySource`]s, or a name this version does not know (another version wrote it), kept.
/// Stored and shown as the source's name (`http`, `api-wake`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordedSource {
    Known(ActivitySource),
    Other(String),
}

impl RecordedSource {
    pub fn as_str(&self) -> &str {
        match self {
            RecordedSource::Known(source) => source.as_str(),
            RecordedSource::Other(name) => name,
        }
    }
}

impl From<ActivitySource> for RecordedSource {
    fn from(source: ActivitySource) -> Self {
        RecordedSource::Known(source)
    }
}

impl From<&str> for RecordedSource {
    fn from(name: &str) -> Self {
        ActivitySource::parse(name).map_or_else(|| RecordedSource::Other(name.into()), RecordedSource::Known)
    }
}

impl std::fmt::Display for RecordedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RecordedSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RecordedSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|name| RecordedSource::from(name.as_str()))
    }
}

/// The id as stored (a plain string; validated as [`SessionId`] on the way in).
pub type SessionIdString = String;

impl Session {
    /// The part of this record that must survive its loss (see [`Durable`]).
    pub fn durable(&self) -> Durable {
        Durable { policy: self.policy.clone(), delete_requested: self.delete_requested, restore: self.restore.clone() }
    }

    pub fn new(id: &SessionId, user_id: &str, tier: &str, now: DateTime<Utc>) -> Session {
        Session {
            uuid: id.to_string(),
            user_id: user_id.to_string(),
            tier: tier.to_string(),
            state: State::Creating,
            created_at: now,
            updated_at: now,
            last_activity: now,
            activity_source: ActivitySource::Created.into(),
            last_interaction: Some(now),
            awake_since: None,
            slept_at: None,
            deleted_at: None,
            delete_requested: false,
            backup: None,
            backup_failures: 0,
            next_backup_attempt: None,
            last_error: None,
            placement: None,
            objects: None,
            policy: PolicyOverrides::default(),
            restore: None,
            restored_from: None,
            restored_at: None,
            pre_restore_backup: None,
            warned_sleep_for: None,
            warned_delete_for: None,
            cookie_generation: 0,
            usage: Usage::starting(now, Since { bucket: Bucket::of(State::Creating), tier: tier.to_string() }),
            version: 0,
        }
    }

    /// The latest interaction, or the latest activity for records written before it existed.
    pub fn last_interaction(&self) -> DateTime<Utc> {
        self.last_interaction.unwrap_or(self.last_activity)
    }

    pub fn id(&self) -> SessionId {
        SessionId::parse(&self.uuid).expect("stored ids are validated on the way in")
    }

    /// Move to `next` (checked). The caller persists the result with compare-and-set.
    pub fn transition(&mut self, next: State, now: DateTime<Utc>) -> Result<(), InvalidTransition> {
        if self.state == next {
            return Ok(());
        }
        if !self.state.can_become(next) {
            return Err(InvalidTransition { from: self.state, to: next });
        }
        self.state = next;
        self.updated_at = now;
        match next {
            State::Running => self.awake_since = Some(now),
            State::Sleeping if self.slept_at.is_none() || self.awake_since.is_some() => {
                self.slept_at = Some(now);
                self.awake_since = None;
            }
            State::Deleted => self.deleted_at = Some(now),
            _ => {}
        }
        Ok(())
    }
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a session cannot go from {} to {}", from.as_str(), to.as_str())]
pub struct InvalidTransition {
    pub from: State,
    pub to: State,
}

/// The seed's timestamp format: naive UTC ISO-8601 with microseconds (Python's `isoformat()`).
pub fn seed_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_paths_are_allowed() {
        use State::*;
        let paths: &[&[State]] = &[
            &[Creating, Starting, Running, Stopping, Sleeping, Waking, Running],
            &[Running, Resizing, Running],
            &[Sleeping, Resizing, Running],
            &[Sleeping, BackingUp, Deleting, Deleted],
            &[Sleeping, BackingUp, BackupFailed, BackingUp, Deleting, Deleted],
            &[BackingUp, BackupFailed, Waking, Running],
            &[Sleeping, Restoring, Sleeping, Waking, Running],
            &[Creating, Restoring, Sleeping],
        ];
        for path in paths {
            for pair in path.windows(2) {
                assert!(pair[0].can_become(pair[1]), "{:?} -> {:?}", pair[0], pair[1]);
            }
        }
    }

    #[test]
    fn data_is_never_deleted_without_the_backup_step() {
        for from in State::ALL {
            if from != State::BackingUp {
                assert!(!from.can_become(State::Deleting), "{from:?} -> Deleting must not exist");
            }
            if from != State::Deleting {
                assert!(!from.can_become(State::Deleted), "{from:?} -> Deleted must not exist");
            }
        }
        assert!(!State::Deleted.can_become(State::Waking));
        // A restore only ever runs on a stopped workspace, and only ends asleep (or failed).
        for from in State::ALL {
            if from.can_become(State::Restoring) {
                assert!(matches!(from, State::Creating | State::Sleeping), "{from:?} -> Restoring must not exist");
                assert!(!from.is_awake());
            }
        }
        for to in State::ALL {
            if State::Restoring.can_become(to) {
                assert!(matches!(to, State::Sleeping | State::Failed), "Restoring -> {to:?} must not exist");
            }
        }
        assert!(!State::Deleted.can_become(State::Failed));
    }

    #[test]
    fn transitions_stamp_times() {
        let t0 = Utc::now();
        let mut s = Session::new(&SessionId::parse("abc12345").unwrap(), "u@example.com", "small", t0);
        s.transition(State::Starting, t0).unwrap();
        s.transition(State::Running, t0).unwrap();
        assert_eq!(s.awake_since, Some(t0));
        let t1 = t0 + chrono::Duration::minutes(15);
        s.transition(State::Sleeping, t1).unwrap();
        assert_eq!(s.slept_at, Some(t1));
        assert_eq!(s.awake_since, None);
        let err = s.transition(State::Deleted, t1).unwrap_err();
        assert_eq!(err.to_string(), "a session cannot go from sleeping to deleted");
    }

    #[test]
    fn activity_sources_are_stored_by_name_and_unknown_names_still_load() {
        let mut s = Session::new(&SessionId::parse("abc12345").unwrap(), "u", "small", Utc::now());
        s.activity_source = ActivitySource::ApiWake.into();
        let mut json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["activity_source"], "api-wake");
        assert_eq!(serde_json::from_value::<Session>(json.clone()).unwrap().activity_source, s.activity_source);
        json["activity_source"] = "telepathy".into();
        let read: Session = serde_json::from_value(json).unwrap();
        assert_eq!(read.activity_source, RecordedSource::Other("telepathy".into()));
        assert_eq!(serde_json::to_value(&read).unwrap()["activity_source"], "telepathy");
    }

    #[test]
    fn seed_timestamps_match_the_handoff_format() {
        let t = DateTime::parse_from_rfc3339("2025-11-15T04:21:36.058889Z").unwrap().with_timezone(&Utc);
        assert_eq!(seed_timestamp(t), "2025-11-15T04:21:36.058889");
    }
}
