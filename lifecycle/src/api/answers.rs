//! What the API answers, as `Serialize` structs: the v3.1.0 handoff's fields first and in its
//! order, then wakeway's. Field order is declaration order; `snapshots.rs` pins every answer.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use wakeway_config::format_duration;

use crate::catalog::{BackupReason, BackupRecord};
use crate::manager::{Component, Manager, SessionView};
use crate::restore::Report;
use crate::session::{BackupInfo, RecordedSource, Session, Skipped, seed_timestamp};

/// A time in RFC 3339 with milliseconds (`2025-11-15T04:21:36.058Z`), the added fields' format
/// (the seed's `created_at` keeps its own, [`seed_timestamp`]).
#[derive(Clone, Copy)]
pub(super) struct Time(pub DateTime<Utc>);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

fn time(t: Option<DateTime<Utc>>) -> Option<Time> {
    t.map(Time)
}

/// A tier's resources.
#[derive(Serialize)]
pub(super) struct Resources {
    cpu: f64,
    memory_mib: u64,
}

impl Resources {
    pub(super) fn of(manager: &Manager, tier: &str) -> Option<Self> {
        manager.config().workspaces.tiers.get(tier).map(|t| Resources { cpu: t.cpu, memory_mib: t.memory_mib })
    }
}

/// The backup a deletion made.
#[derive(Serialize)]
pub(super) struct Backup<'a> {
    file: &'a str,
    size: u64,
    sha256: &'a str,
    entries: u64,
    content_bytes: u64,
    verified_at: Time,
    /// Always present, `[]` when nothing was skipped (the record leaves it out).
    skipped: &'a [Skipped],
}

impl<'a> Backup<'a> {
    pub(super) fn of(b: &'a BackupInfo) -> Self {
        Backup {
            file: &b.file,
            size: b.size,
            sha256: &b.sha256,
            entries: b.entries,
            content_bytes: b.content_bytes,
            verified_at: Time(b.verified_at),
            skipped: &b.skipped,
        }
    }
}

/// The `session` object of status and `GET /sessions`: the seed's fields first, then ours.
#[derive(Serialize)]
pub(super) struct SessionJson<'a> {
    uuid: &'a str,
    user_id: &'a str,
    status: &'static str,
    created_at: String,
    workspace_url: String,
    state: &'static str,
    tier: &'a str,
    resources: Option<Resources>,
    replicas: u8,
    last_activity: Time,
    activity_source: &'a RecordedSource,
    last_interaction: Option<Time>,
    sleeps_at: Option<Time>,
    deletes_at: Option<Time>,
    awake_since: Option<Time>,
    slept_at: Option<Time>,
    deleted_at: Option<Time>,
    open_connections: usize,
    queue_length: usize,
    delete_requested: bool,
    backup: Option<Backup<'a>>,
    backup_failures: u32,
    next_backup_attempt: Option<Time>,
    last_error: Option<&'a str>,
    policy: Policy,
    restored_from: Option<&'a str>,
    restored_at: Option<Time>,
    pre_restore_backup: Option<&'a str>,
    restoring: Option<&'a str>,
}

impl<'a> SessionJson<'a> {
    pub(super) fn of(manager: &Manager, v: &'a SessionView) -> Self {
        let s = &v.session;
        SessionJson {
            uuid: &s.uuid,
            user_id: &s.user_id,
            status: s.state.as_str(),
            created_at: seed_timestamp(s.created_at),
            workspace_url: manager.config().workspace_url(&s.uuid),
            state: s.state.as_str(),
            tier: &s.tier,
            resources: Resources::of(manager, &s.tier),
            replicas: v.replicas,
            last_activity: Time(v.last_activity),
            activity_source: &v.activity_source,
            last_interaction: time(s.last_interaction),
            sleeps_at: time(v.sleeps_at),
            deletes_at: time(v.deletes_at),
            awake_since: time(s.awake_since),
            slept_at: time(s.slept_at),
            deleted_at: time(s.deleted_at),
            open_connections: v.open_connections,
            queue_length: v.queue_length,
            delete_requested: s.delete_requested,
            backup: s.backup.as_ref().map(Backup::of),
            backup_failures: s.backup_failures,
            next_backup_attempt: time(s.next_backup_attempt),
            last_error: s.last_error.as_deref(),
            policy: Policy::of(manager, s),
            restored_from: s.restored_from.as_deref(),
            restored_at: time(s.restored_at),
            pre_restore_backup: s.pre_restore_backup.as_deref(),
            restoring: s.restore.as_ref().map(|op| op.backup.as_str()),
        }
    }
}

/// `GET /session/{uuid}/status`: the seed's `uuid, replicas, queue_length, session`, then ours.
#[derive(Serialize)]
pub(super) struct Status<'a> {
    uuid: &'a str,
    replicas: u8,
    queue_length: usize,
    session: SessionJson<'a>,
    state: &'static str,
    tier: &'a str,
    last_activity: Time,
    activity_source: &'a RecordedSource,
    sleeps_at: Option<Time>,
    deletes_at: Option<Time>,
    open_connections: usize,
}

impl<'a> Status<'a> {
    pub(super) fn of(manager: &Manager, v: &'a SessionView) -> Self {
        Status {
            uuid: &v.session.uuid,
            replicas: v.replicas,
            queue_length: v.queue_length,
            session: SessionJson::of(manager, v),
            state: v.session.state.as_str(),
            tier: &v.session.tier,
            last_activity: Time(v.last_activity),
            activity_source: &v.activity_source,
            sleeps_at: time(v.sleeps_at),
            deletes_at: time(v.deletes_at),
            open_connections: v.open_connections,
        }
    }
}

/// `POST /session/create`: the seed's fields, then ours; a restore's when there was one.
#[derive(Serialize)]
pub(super) struct Created<'a> {
    pub uuid: &'a str,
    pub user_id: &'a str,
    /// Always `created`, as in v3.1.0 (`state` says where the session is).
    pub status: &'static str,
    pub created_at: String,
    pub workspace_url: String,
    pub state: &'static str,
    pub tier: &'a str,
    pub access_url: String,
    pub access_url_expires_at: Time,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Restored<'a>>,
}

/// The fields a create with `restore_from` adds.
#[derive(Serialize)]
pub(super) struct Restored<'a> {
    pub restored_from: Option<&'a str>,
    pub restore: RestoreReport<'a>,
}

/// What a restore did.
#[derive(Serialize)]
pub(super) struct RestoreReport<'a> {
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    skipped: &'a [String],
    roots: &'a [String],
    /// Always present, `[]` when every root was restored.
    left_out: &'a [String],
}

impl<'a> RestoreReport<'a> {
    pub(super) fn of(r: &'a Report) -> Self {
        RestoreReport {
            files: r.files,
            dirs: r.dirs,
            symlinks: r.symlinks,
            bytes: r.bytes,
            skipped: &r.skipped,
            roots: &r.roots,
            left_out: &r.left_out,
        }
    }
}

/// `POST /session/{uuid}/token`.
#[derive(Serialize)]
pub(super) struct Token<'a> {
    pub uuid: &'a str,
    pub access_url: String,
    pub expires_at: Time,
}

/// `POST /session/{uuid}/revoke`.
#[derive(Serialize)]
pub(super) struct Revoked<'a> {
    pub uuid: &'a str,
    /// Always true: the answer confirms what was done.
    pub revoked: bool,
    pub cookie_generation: u64,
    pub message: &'static str,
}

/// `POST /session/{uuid}/scale`.
#[derive(Serialize)]
pub(super) struct Scaled<'a> {
    pub uuid: &'a str,
    pub scale: &'static str,
    pub tier: &'a str,
    pub resources: Option<Resources>,
    pub status: &'static str,
    pub replicas: u8,
}

/// `DELETE /session/{uuid}`.
#[derive(Serialize)]
pub(super) struct Deleted<'a> {
    pub uuid: &'a str,
    pub status: &'static str,
    pub backup: Option<Backup<'a>>,
    pub message: &'static str,
}

/// `POST /session/{uuid}/sleep` and `/wake`: where the workspace is, and what happens next.
#[derive(Serialize)]
pub(super) struct Power<'a> {
    pub uuid: &'a str,
    pub status: &'static str,
    /// What the seed answered: 0 asleep, 1 awake or waking.
    pub replicas: u8,
    pub message: &'static str,
}

/// `GET /sessions`.
#[derive(Serialize)]
pub(super) struct Sessions<'a> {
    pub count: usize,
    pub sessions: Vec<SessionJson<'a>>,
}

/// `GET /health`.
#[derive(Serialize)]
pub(super) struct Health {
    pub status: &'static str,
    pub version: &'static str,
    pub pid: u32,
    pub store: StoreHealth,
    pub backend: &'static str,
    /// Problem by kind, in the manager's (sorted) order.
    #[serde(serialize_with = "as_map")]
    pub problems: Vec<(Component, String)>,
    pub sessions: usize,
}

/// The store's part of `/health`.
#[derive(Serialize)]
pub(super) struct StoreHealth {
    pub kind: &'static str,
    pub status: &'static str,
    pub error: Option<String>,
}

fn as_map<S: Serializer>(pairs: &[(Component, String)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(k, v)| (k.as_str(), v)))
}

/// The session's effective policy, its overrides and the admin's bounds.
#[derive(Serialize)]
pub(super) struct Policy {
    idle_timeout: String,
    sleep_to_delete: String,
    keep: bool,
    overrides: Overrides,
    bounds: Bounds,
}

/// What the session overrides (`null`: the default).
#[derive(Serialize)]
struct Overrides {
    idle_timeout: Option<String>,
    sleep_to_delete: Option<String>,
}

/// The admin's bounds on overrides.
#[derive(Serialize)]
struct Bounds {
    max_idle_timeout: String,
    max_sleep_to_delete: String,
}

impl Policy {
    pub(super) fn of(manager: &Manager, s: &Session) -> Self {
        let policy = manager.policy();
        let config = manager.config();
        let ms = |v: Option<u64>| v.map(|ms| format_duration(Duration::from_millis(ms)));
        Policy {
            idle_timeout: format_duration(policy.idle_timeout(s)),
            sleep_to_delete: format_duration(policy.sleep_to_delete(s)),
            keep: s.policy.keep,
            overrides: Overrides {
                idle_timeout: ms(s.policy.idle_timeout_ms),
                sleep_to_delete: ms(s.policy.sleep_to_delete_ms),
            },
            bounds: Bounds {
                max_idle_timeout: format_duration(config.lifecycle.max_idle_timeout),
                max_sleep_to_delete: format_duration(config.lifecycle.max_sleep_to_delete),
            },
        }
    }
}

/// `PATCH /session/{uuid}/policy`.
#[derive(Serialize)]
pub(super) struct PolicySet<'a> {
    pub uuid: &'a str,
    pub policy: Policy,
    pub sleeps_at: Option<Time>,
    pub deletes_at: Option<Time>,
}

impl<'a> PolicySet<'a> {
    pub(super) fn of(manager: &Manager, v: &'a SessionView) -> Self {
        PolicySet {
            uuid: &v.session.uuid,
            policy: Policy::of(manager, &v.session),
            sleeps_at: time(v.sleeps_at),
            deletes_at: time(v.deletes_at),
        }
    }
}

/// `POST /session/{uuid}/restore`.
#[derive(Serialize)]
pub(super) struct RestoreDone<'a> {
    pub uuid: &'a str,
    pub status: &'static str,
    pub restored_from: Option<&'a str>,
    pub pre_restore_backup: Option<&'a str>,
    pub restore: RestoreReport<'a>,
    pub message: &'static str,
}

/// One backup of the catalog (`GET /backups`, `GET|PATCH /backups/{id}`).
#[derive(Serialize)]
pub(super) struct Record<'a> {
    id: &'a str,
    file: &'a str,
    session: Option<&'a str>,
    user_id: Option<&'a str>,
    created_at: Time,
    size: u64,
    sha256: &'a str,
    entries: u64,
    content_bytes: u64,
    skipped: &'a [Skipped],
    layout: u32,
    roots: &'a [String],
    verified: bool,
    verification: &'static str,
    error: Option<&'a str>,
    verified_at: Time,
    reason: &'a BackupReason,
    keep: bool,
    /// When retention prunes it; `null` for a kept backup.
    expires_at: Option<Time>,
    download: String,
}

impl<'a> Record<'a> {
    pub(super) fn of(manager: &Manager, r: &'a BackupRecord) -> Self {
        let retention = manager.config().lifecycle.backup_retention;
        Record {
            id: &r.id,
            file: &r.file,
            session: r.session.as_deref(),
            user_id: r.user_id.as_deref(),
            created_at: Time(r.created_at),
            size: r.size,
            sha256: &r.sha256,
            entries: r.entries,
            content_bytes: r.content_bytes,
            skipped: &r.skipped,
            layout: r.layout,
            roots: &r.roots,
            verified: r.verified,
            verification: if r.verified { "ok" } else { "failed" },
            error: r.error.as_deref(),
            verified_at: Time(r.verified_at),
            reason: &r.reason,
            keep: r.keep,
            expires_at: (!r.keep).then(|| Time(crate::policy::after(r.created_at, retention))),
            download: format!("/backups/{}/download", r.id),
        }
    }
}

/// `GET /backups`.
#[derive(Serialize)]
pub(super) struct Backups<'a> {
    pub count: usize,
    pub backups: Vec<Record<'a>>,
}
