//! The local backend: each workspace is a process (by default code-server) in its own process
//! group, with `<data_dir>/workspaces/<id>/` as its workspace folder and `<data_dir>/state/<id>/`
//! as its HOME. Sleep = SIGTERM the group, SIGKILL after `stop_grace`; wake = start again.
//!
//! Isolated (wakeway runs as root; see [`isolation`]): each workspace runs under a uid of its own,
//! owns its two folders (0700), serves on a Unix socket `{socket}` that only wakeway can open, and
//! every process of its uid is stopped at sleep. Not isolated: it runs as wakeway's own user and
//! serves on the Unix socket too, or on a loopback port when its command asks for `{port}`.
//!
//! The socket's folder `sockets/<id>/` is the workspace's only while it starts (its server creates
//! the socket there); once it answers, wakeway takes the folder back (root-owned, 0700) and checks
//! that the socket is a socket its uid bound. From then on the workspace can neither replace it —
//! say, with a link to another workspace's socket, which wakeway would follow — nor can any other
//! uid open it.
//!
//! Each started process is also recorded in `<data_dir>/run/<id>.json` (pid, start time, address)
//! before wakeway waits for it to answer, so a process started just before a crash is still found
//! and stopped by the next wakeway, even though its placement never reached the store.

pub mod isolation;
mod process;
mod records;
mod socket;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use wakeway_config::Tier;
use wakeway_proxy::Upstream;

use super::{Backend, BackendError, BackendEvent, Discovered, Started};
use crate::backup::{Sources, backup_file_name, write_verified_backup};
use crate::catalog::{BackupReason, Origin};
use crate::probe;
use crate::restore::{self, Limits, Options, Report, Targets};
use crate::session::{BackupInfo, Placement, Session};
use isolation::{RunAs, UidPool};
use process::Running;

/// Folders the local backend uses, all under `data_dir` except backups.
#[derive(Debug, Clone)]
pub struct LocalPaths {
    pub data_dir: PathBuf,
    /// `<id>/`: each workspace folder (its uid's alone when isolated).
    pub workspaces: PathBuf,
    /// `<id>/`: each workspace's HOME (its uid's alone when isolated).
    pub state: PathBuf,
    pub logs: PathBuf,
    pub backups: PathBuf,
    /// `<id>.json`: the process last started for a session.
    pub run: PathBuf,
    /// `<id>/workspace.sock`: the Unix socket each workspace serves on (only wakeway connects).
    pub sockets: PathBuf,
    /// `<id>.json`: who a workspace belongs to (rebuilds the store; the workspace cannot write it).
    pub sessions: PathBuf,
}

impl LocalPaths {
    pub fn new(data_dir: &Path, backups: PathBuf) -> Self {
        LocalPaths {
            data_dir: data_dir.to_owned(),
            workspaces: data_dir.join("workspaces"),
            state: data_dir.join("state"),
            logs: data_dir.join("logs"),
            backups,
            run: data_dir.join("run"),
            sockets: data_dir.join("sockets"),
            sessions: data_dir.join("sessions"),
        }
    }

    fn socket_dir(&self, id: &str) -> PathBuf {
        self.sockets.join(id)
    }

    fn socket(&self, id: &str) -> PathBuf {
        self.socket_dir(id).join("workspace.sock")
    }

    pub fn workspace(&self, id: &str) -> PathBuf {
        self.workspaces.join(id)
    }

    /// The workspace's HOME (code-server's user data in `code-server/`, extensions, dotfiles).
    pub fn home(&self, id: &str) -> PathBuf {
        self.state.join(id)
    }

    /// Where a restore puts each root of a backup.
    fn restore_targets(&self, id: &str) -> Targets {
        Targets { workspace: self.workspace(id), home: Some(self.home(id)), in_place: false }
    }
}

/// How the local backend runs workspaces.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// The command template (see `workspace_command`), already resolved (non-empty).
    pub command: String,
    /// Where workspaces listen when their command asks for `{port}` (`workspace_ports`).
    pub port_range: std::ops::RangeInclusive<u16>,
    pub stop_grace: Duration,
    /// `Some(uids)`: each workspace runs under a uid of its own from this range (wakeway is root).
    pub uids: Option<std::ops::RangeInclusive<u32>>,
    /// `[local] env`: extra variables of every workspace.
    pub env: BTreeMap<String, String>,
    /// This replica's name: its backups' `.partial` files carry it (see `catalog::Leftovers`).
    pub writer: String,
}

/// Runs workspaces as local processes.
pub struct LocalBackend {
    settings: LocalSettings,
    paths: LocalPaths,
    /// Isolated workspaces' uids (None: every workspace runs as wakeway's own user).
    uids: Option<Arc<UidPool>>,
    running: DashMap<String, Running>,
    /// Ports our workspaces listen on (started or adopted) → session id.
    ports: DashMap<u16, String>,
    events: mpsc::UnboundedSender<BackendEvent>,
}

impl LocalBackend {
    /// Lay out `data_dir` (modes included) and check that workspaces can run as `settings` says.
    /// Start-up, before anything is served: its file system calls block, on purpose.
    pub fn new(
        settings: LocalSettings,
        paths: LocalPaths,
        events: mpsc::UnboundedSender<BackendEvent>,
    ) -> Result<Arc<Self>, String> {
        let isolated = settings.uids.is_some();
        if isolated && settings.command.contains("{port}") {
            return Err(wakeway_config::ISOLATED_PORT_COMMAND.into());
        }
        lay_out(&paths, isolated)?;
        if isolated
            && let Some(program) = isolation::command_program(&settings.command)
            && !isolation::runnable_by_others(&program)
        {
            return Err(format!(
                "workspaces run under their own uids, but {} cannot be run by other users (a folder above it, \
                 such as /root, is private). Install code-server where every user can run it \
                 (scripts/install-code-server.sh as root installs into /opt/wakeway/tools), or set \
                 [local] isolation = \"off\"",
                program.display()
            ));
        }
        let uids = settings.uids.clone().map(|range| Arc::new(UidPool::load(range, &paths.workspaces)));
        Ok(Arc::new(LocalBackend { settings, paths, uids, running: DashMap::new(), ports: DashMap::new(), events }))
    }

    pub fn paths(&self) -> &LocalPaths {
        &self.paths
    }

    /// Whether each workspace runs under a uid of its own.
    pub fn isolated(&self) -> bool {
        self.uids.is_some()
    }

    /// Workspaces serve on a loopback port only when their command asks for one.
    fn serves_on_port(&self) -> bool {
        self.settings.command.contains("{port}")
    }

    /// Who `id`'s processes run as (giving it a uid now if it is isolated and has none: that
    /// looks the uid up in the user database, off the runtime).
    async fn run_as(&self, id: &str) -> std::io::Result<RunAs> {
        let Some(pool) = self.uids.clone() else { return Ok(RunAs::Wakeway) };
        let id = id.to_owned();
        blocking_io(move || pool.uid_for(&id).map(RunAs::Uid)).await
    }

    /// The uid `id` runs as, if isolated and it has one.
    fn uid_of(&self, id: &str) -> Option<u32> {
        self.uids.as_ref()?.recorded(id)
    }
}

/// Create the backend's folders with their modes. wakeway's own (logs, run records, session
/// records, backups) are 0700; with isolation, `data_dir`, `workspaces/`, `state/` and `sockets/`
/// are 0711 so each workspace's uid can pass through to its own folder (0700, its own) without
/// listing anything; without isolation everything is 0700.
fn lay_out(paths: &LocalPaths, isolated: bool) -> Result<(), String> {
    let passable = if isolated { 0o711 } else { 0o700 };
    for (dir, mode) in [
        (&paths.data_dir, passable),
        (&paths.workspaces, passable),
        (&paths.state, passable),
        (&paths.logs, 0o700),
        (&paths.run, 0o700),
        (&paths.sockets, passable),
        (&paths.sessions, 0o700),
    ] {
        isolation::ensure_dir(dir, mode).map_err(|e| format!("cannot prepare {}: {e}", dir.display()))?;
    }
    if let Err(e) = isolation::ensure_dir(&paths.backups, 0o700) {
        tracing::error!(dir = %paths.backups.display(), error = %e, "the backup folder cannot be prepared: deletions will fail (and keep the data) until it can");
    }
    if isolated && let Some(blocked) = isolation::blocked_ancestor(&paths.workspaces.join("x")) {
        return Err(format!(
            "workspaces run under their own uids, but they cannot reach data_dir: {} does not let other users \
             pass (chmod o+x it, or choose another data_dir)",
            blocked.display()
        ));
    }
    Ok(())
}

/// Run a blocking file system routine off the runtime's threads; `failed` names it if it panics.
async fn blocking<T: Send + 'static>(
    failed: &str,
    work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| BackendError::Io(format!("{failed}: {e}")))?
}

/// [`blocking`], for a routine that fails with an I/O error.
async fn blocking_io<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// A name for a backup of `id` taken at `now` that no backup holds yet. Names have one-second
/// resolution: a backup redone right after a crash may find its name taken (by a verified zip,
/// kept); the next free second is taken.
fn free_backup_path(backups: &Path, id: &str, now: DateTime<Utc>) -> PathBuf {
    let mut dest = backups.join(backup_file_name(id, now));
    for later in 1..=60 {
        if !dest.exists() && !crate::catalog::sidecar_path(&dest).exists() {
            break;
        }
        dest = backups.join(backup_file_name(id, now + chrono::Duration::seconds(later)));
    }
    dest
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn create(&self, session: &Session) -> Result<Option<crate::session::ObjectUids>, BackendError> {
        let id = session.uuid.clone();
        let run_as = self.run_as(&id).await.map_err(|e| BackendError::Io(format!("no uid for workspace {id}: {e}")))?;
        let folders = [self.paths.workspace(&id), self.paths.home(&id)];
        blocking("workspace preparation failed", move || {
            for dir in &folders {
                match run_as {
                    // No process of the uid runs now (start stops them all first), so nothing can
                    // swap a folder for a link while it is handed over.
                    RunAs::Uid(uid) => isolation::own_tree(dir, uid),
                    RunAs::Wakeway => std::fs::create_dir_all(dir),
                }
                .map_err(|e| BackendError::Io(format!("cannot prepare {}: {e}", dir.display())))?;
            }
            Ok(())
        })
        .await?;
        self.write_session_record(session).await?;
        Ok(None)
    }

    async fn save_durable(&self, session: &Session) -> Result<(), BackendError> {
        if !tokio::fs::metadata(self.paths.workspace(&session.uuid)).await.is_ok_and(|m| m.is_dir()) {
            return Ok(()); // destroyed (or never created): nothing to rebuild
        }
        self.write_session_record(session).await
    }

    async fn discover(&self) -> Result<Vec<Discovered>, BackendError> {
        self.discover_workspaces().await
    }

    async fn start(&self, session: &Session, tier: &Tier, deadline: Instant) -> Result<Started, BackendError> {
        if let Some(addr) = self.find_running(session).await {
            let placement = session.placement.clone().expect("find_running needs a placement");
            return Ok(Started { addr, placement, objects: None, phases: Vec::new() });
        }
        // Whatever is left of an earlier run of this session must not keep the folder busy.
        self.stop(session).await?;
        self.create(session).await?;
        self.start_process(session, tier, deadline).await
    }

    async fn stop(&self, session: &Session) -> Result<(), BackendError> {
        self.stop_session(session).await
    }

    async fn find_running(&self, session: &Session) -> Option<Upstream> {
        let placement = session.placement.as_ref()?;
        let Placement::Local { port, .. } = placement else { return None };
        if !self.placement_alive(placement) {
            return None;
        }
        if let Placement::Local { socket: Some(_), uid, .. } = placement
            && let Err(e) = self.close_socket_dir(&session.uuid, *uid).await
        {
            tracing::warn!(session = %session.uuid, error = %e, "not adopting the workspace");
            return None;
        }
        let addr = placement.upstream();
        let answers = probe::answers_http(&addr).await;
        if answers && *port != 0 {
            self.ports.insert(*port, session.uuid.clone());
        }
        answers.then_some(addr)
    }

    fn is_alive(&self, session: &Session) -> bool {
        session.placement.as_ref().is_some_and(|p| self.placement_alive(p))
    }

    async fn backup(
        &self,
        session: &Session,
        now: DateTime<Utc>,
        reason: BackupReason,
    ) -> Result<BackupInfo, BackendError> {
        let src = self.paths.workspace(&session.uuid);
        // HOME is backed up with the workspace (a session created before HOME existed has none).
        let home = self.paths.home(&session.uuid);
        let (backups, id) = (self.paths.backups.clone(), session.uuid.clone());
        let origin = Origin::new(&session.uuid, &session.user_id, reason).by(&self.settings.writer);
        blocking("backup task failed", move || {
            let home = Some(home).filter(|home| home.is_dir());
            let dest = free_backup_path(&backups, &id, now);
            Ok(write_verified_backup(&Sources { workspace: &src, home: home.as_deref() }, &dest, now, &origin)?)
        })
        .await
    }

    async fn restore(&self, s: &Session, zip: &Path, limits: Limits, options: Options) -> Result<Report, BackendError> {
        if self.is_alive(s) || self.read_run_record(&s.uuid).await.is_some_and(|p| self.placement_alive(&p)) {
            return Err(BackendError::Refused(format!("session {} is running; restore needs it asleep", s.uuid)));
        }
        let targets = self.paths.restore_targets(&s.uuid);
        let zip = zip.to_owned();
        let uid = self.uid_of(&s.uuid);
        blocking("restore task failed", move || {
            let report = restore::restore(&zip, &targets, &limits, &options)?;
            // wakeway wrote the restored trees: hand them to the workspace's uid (HOME too, whether
            // this zip held it or not: it is the workspace's either way).
            if let Some(uid) = uid {
                for dir in std::iter::once(&targets.workspace).chain(&targets.home) {
                    isolation::own_tree(dir, uid)
                        .map_err(|e| BackendError::Io(format!("cannot hand {} to uid {uid}: {e}", dir.display())))?;
                }
            }
            Ok(report)
        })
        .await
    }

    async fn clean_interrupted_restore(&self, session: &Session) -> Result<(), BackendError> {
        let targets = self.paths.restore_targets(&session.uuid);
        blocking("restore task failed", move || Ok(targets.recover()?)).await
    }

    async fn destroy(&self, session: &Session) -> Result<(), BackendError> {
        let Some(backup) = &session.backup else {
            return Err(BackendError::Refused(format!("session {} has no verified backup", session.uuid)));
        };
        let zip = self.paths.backups.join(&backup.file);
        match tokio::fs::metadata(&zip).await {
            Ok(meta) if meta.len() == backup.size => {}
            Ok(meta) => {
                return Err(BackendError::Refused(format!(
                    "{} is {} bytes, {} were verified",
                    zip.display(),
                    meta.len(),
                    backup.size
                )));
            }
            Err(e) => return Err(BackendError::Refused(format!("{} is missing: {e}", zip.display()))),
        }
        if self.is_alive(session) {
            return Err(BackendError::Refused(format!("session {} is still running", session.uuid)));
        }
        if let Some(uid) = self.uid_of(&session.uuid)
            && !isolation::kill_all(uid).await
        {
            return Err(BackendError::Stop(format!("processes of uid {uid} survived SIGKILL")));
        }
        self.remove_workspace(&session.uuid).await
    }
}

impl LocalBackend {
    /// Remove everything of workspace `id`: its folders, log, records and socket folder, and
    /// give its uid back.
    async fn remove_workspace(&self, id: &str) -> Result<(), BackendError> {
        for dir in [self.paths.workspace(id), self.paths.home(id)] {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BackendError::Io(format!("cannot remove {}: {e}", dir.display()))),
            }
        }
        let _ = tokio::fs::remove_file(self.log_path(id)).await;
        self.remove_run_record(id).await;
        let _ = tokio::fs::remove_dir_all(self.paths.socket_dir(id)).await;
        self.remove_session_record(id).await;
        if let Some(pool) = &self.uids {
            pool.release(id);
        }
        Ok(())
    }
}
