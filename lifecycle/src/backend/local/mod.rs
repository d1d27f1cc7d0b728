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

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use wakeway_config::Tier;
use wakeway_proxy::Upstream;

use super::{Backend, BackendError, BackendEvent, Discovered, Started};
use crate::backup::{Sources, backup_file_name, write_verified_backup};
use crate::catalog::{BackupReason, Origin};
use crate::probe;
use crate::restore::{self, Limits, Options, Report, Targets};
use crate::session::{BackupInfo, Placement, Session};
use isolation::{RunAs, UidPool};

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

/// One process this wakeway started (and reaps).
struct Running {
    pid: u32,
    port: u16,
    /// `Some(detail)` once it exited.
    exited: watch::Receiver<Option<String>>,
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
    uids: Option<UidPool>,
    running: DashMap<String, Running>,
    /// Ports our workspaces listen on (started or adopted) → session id.
    ports: DashMap<u16, String>,
    events: mpsc::UnboundedSender<BackendEvent>,
}

impl LocalBackend {
    /// Lay out `data_dir` (modes included) and check that workspaces can run as `settings` says.
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
        let uids = settings.uids.clone().map(|range| UidPool::load(range, &paths.workspaces));
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

    /// Who `id`'s processes run as (giving it a uid now if it is isolated and has none).
    fn run_as(&self, id: &str) -> std::io::Result<RunAs> {
        match &self.uids {
            Some(pool) => pool.uid_for(id).map(RunAs::Uid),
            None => Ok(RunAs::Wakeway),
        }
    }

    /// The uid `id` runs as, if isolated and it has one.
    fn uid_of(&self, id: &str) -> Option<u32> {
        self.uids.as_ref()?.recorded(id)
    }

    fn render(&self, session: &Session, port: u16, tier: &Tier) -> String {
        let id = &session.uuid;
        let workspace = self.paths.workspace(id);
        let state = self.paths.state.join(id);
        self.settings
            .command
            .replace("{socket}", &shell_quote(&self.paths.socket(id).to_string_lossy()))
            .replace("{port}", &port.to_string())
            .replace("{workspace}", &shell_quote(&workspace.to_string_lossy()))
            .replace("{state}", &shell_quote(&state.to_string_lossy()))
            .replace("{cpu}", &tier.cpu.to_string())
            .replace("{memory_mib}", &tier.memory_mib.to_string())
            .replace("{id}", id)
    }

    fn session_record_path(&self, id: &str) -> PathBuf {
        self.paths.sessions.join(format!("{id}.json"))
    }

    /// Who this workspace belongs to and its [`crate::session::Durable`] part, where wakeway alone can write
    /// (`sessions/`, 0700): a record the store loses is rebuilt from it. Replaced atomically.
    async fn write_session_record(&self, session: &Session) -> Result<(), BackendError> {
        let json = serde_json::json!({
            "uuid": session.uuid, "user_id": session.user_id, "tier": session.tier, "created_at": session.created_at,
            "durable": session.durable(),
        });
        let path = self.session_record_path(&session.uuid);
        let tmp = path.with_extension("json.tmp");
        let io = |e: std::io::Error| BackendError::Io(format!("cannot write {}: {e}", path.display()));
        tokio::fs::write(&tmp, json.to_string()).await.map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)
    }

    fn run_path(&self, id: &str) -> PathBuf {
        self.paths.run.join(format!("{id}.json"))
    }

    /// Record the process just started for `id`. It must outlive a crash of wakeway, not of the
    /// machine (which takes the process with it): no fsync, the page cache keeps it.
    fn write_run_record(&self, id: &str, placement: &Placement) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.paths.run)?;
        let path = self.run_path(id);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(placement).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, &path)
    }

    fn read_run_record(&self, id: &str) -> Option<Placement> {
        serde_json::from_slice(&std::fs::read(self.run_path(id)).ok()?).ok()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.paths.logs.join(format!("{id}.log"))
    }

    /// The last lines of the workspace's log, to explain a failed start.
    fn log_tail(&self, id: &str) -> String {
        let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        if tail.is_empty() { String::new() } else { format!("; last log lines: {}", tail.join(" | ")) }
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

/// Quote for `sh`: `'…'` with embedded quotes escaped.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A free loopback port in `range`, starting at a random offset, skipping ports our own
/// workspaces hold. Free = we can bind it now; the workspace binds it a moment later.
fn free_port(range: &std::ops::RangeInclusive<u16>, taken: &DashMap<u16, String>) -> std::io::Result<u16> {
    let (first, len) = (*range.start() as u32, range.len() as u32);
    let offset = rand::random::<u32>() % len;
    for i in 0..len {
        let port = (first + (offset + i) % len) as u16;
        if !taken.contains_key(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, format!("every port in {range:?} is in use")))
}

/// Start time of `pid` in clock ticks since boot (None: no such process, or a zombie).
fn start_ticks(pid: u32) -> Option<u64> {
    isolation::proc_stat(pid).filter(|s| !s.zombie).map(|s| s.start_ticks)
}

/// Whether the process group `pgid` still has a member that runs. A group of zombies does not
/// count: once wakeway is not their parent (after a restart) nobody may reap them soon — a
/// container's PID 1 often does not — and a dead workspace must not look alive.
fn group_exists(pgid: u32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH)) && isolation::group_runs(pgid)
}

impl LocalBackend {
    /// Is the group led by `placement`'s pid still there, and is it ours (not a reused pid)?
    fn placement_alive(&self, placement: &Placement) -> bool {
        let Placement::Local { pid, start_ticks: ticks, .. } = placement else { return false };
        match start_ticks(*pid) {
            Some(now) => now == *ticks,
            // The leader is gone (or a zombie): members of its group may still run; a pgid is
            // never reused while its group exists.
            None => group_exists(*pid),
        }
    }

    async fn stop_group(&self, pgid: u32) -> Result<(), BackendError> {
        let group = Pid::from_raw(pgid as i32);
        if killpg(group, Signal::SIGTERM).is_err() {
            return Ok(()); // already gone
        }
        let gone = |limit: Duration| async move {
            let deadline = tokio::time::Instant::now() + limit;
            while tokio::time::Instant::now() < deadline {
                if !group_exists(pgid) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            !group_exists(pgid)
        };
        if gone(self.settings.stop_grace).await {
            return Ok(());
        }
        tracing::warn!(pgid, grace = ?self.settings.stop_grace, "workspace ignored SIGTERM; sending SIGKILL");
        let _ = killpg(group, Signal::SIGKILL);
        if gone(Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(BackendError::Stop(format!("process group {pgid} survived SIGKILL")))
        }
    }
    /// One attempt at starting the workspace (on a freshly picked port, or on its socket).
    async fn start_once(
        &self,
        session: &Session,
        tier: &Tier,
        deadline: tokio::time::Instant,
    ) -> Result<Started, StartFailure> {
        let id = session.uuid.clone();
        let fail = |message: String| StartFailure { message, port_taken: false };
        let run_as = self.run_as(&id).map_err(|e| fail(format!("no uid for the workspace: {e}")))?;
        let (addr, port) = if self.serves_on_port() {
            let port =
                free_port(&self.settings.port_range, &self.ports).map_err(|e| fail(format!("no free port: {e}")))?;
            (Upstream::Tcp(SocketAddr::from(([127, 0, 0, 1], port))), port)
        } else {
            self.open_socket_dir(&id, run_as).map_err(|e| fail(format!("cannot prepare the socket's folder: {e}")))?;
            (Upstream::Unix(self.paths.socket(&id).to_string_lossy().into()), 0)
        };
        let command = self.render(session, port, tier);
        let state = self.paths.state.join(&id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&id))
            .map_err(|e| fail(format!("cannot open the workspace log: {e}")))?;
        let log_start = log.metadata().map_or(0, |m| m.len());
        let log_err = log.try_clone().map_err(|e| fail(e.to_string()))?;
        let user = match run_as {
            RunAs::Uid(_) => format!("ws-{id}"),
            RunAs::Wakeway => std::env::var("USER").unwrap_or_else(|_| "wakeway".into()),
        };
        // The usual umask for the user's files (wakeway's own is 077).
        let script = format!("umask 022; {command}");
        let env = isolation::workspace_env(std::env::vars_os(), &state, &user, &self.settings.env);
        let mut spawn = tokio::process::Command::new("sh");
        spawn
            .arg("-c")
            .arg(&script)
            .current_dir(self.paths.workspace(&id))
            .env_clear()
            .envs(env)
            .env("WAKEWAY_SESSION", &id)
            .env("WAKEWAY_CPU", tier.cpu.to_string())
            .env("WAKEWAY_MEMORY_MIB", tier.memory_mib.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(false);
        if port != 0 {
            spawn.env("PORT", port.to_string());
        }
        if let RunAs::Uid(uid) = run_as {
            // std clears the supplementary groups when root changes uid.
            spawn.uid(uid).gid(uid);
        }
        let mut child = spawn.spawn().map_err(|e| fail(format!("cannot run `sh -c {command}`: {e}")))?;
        let pid = child.id().ok_or_else(|| fail("the workspace exited at once".into()))?;
        let ticks = start_ticks(pid).unwrap_or(0);
        let socket = match &addr {
            Upstream::Unix(path) => Some(PathBuf::from(&**path)),
            Upstream::Tcp(_) => None,
        };
        let uid = match run_as {
            RunAs::Uid(uid) => Some(uid),
            RunAs::Wakeway => None,
        };
        let placement = Placement::Local { pid, start_ticks: ticks, port, socket, uid };
        if port != 0 {
            self.ports.insert(port, id.clone());
        }
        tracing::info!(session = %id, pid, %addr, ?uid, "workspace process started");
        if let Err(e) = self.write_run_record(&id, &placement) {
            tracing::warn!(session = %id, error = %e, "cannot record the workspace process; a crash now could leave it running");
        }

        let (tx, exited) = watch::channel(None);
        self.running.insert(id.clone(), Running { pid, port, exited: exited.clone() });
        let events = self.events.clone();
        let watched = placement.clone();
        let watched_id = id.clone();
        tokio::spawn(async move {
            let detail = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = tx.send(Some(detail.clone()));
            let _ = events.send(BackendEvent::Exited { id: watched_id, placement: watched, detail });
        });

        let mut exit_rx = exited.clone();
        let exited_early = async move {
            let _ = exit_rx.wait_for(|e| e.is_some()).await;
        };
        // Whoever answers must be our process: if it died meanwhile, the answer came from
        // another program that holds the port, and traffic must never go there.
        if probe::wait_until_answers(&addr, deadline, exited_early).await && exited.borrow().is_none() {
            let checked = if port == 0 { self.close_socket_dir(&id, uid) } else { Ok(()) };
            match checked {
                Ok(()) => return Ok(Started { addr, placement, objects: None }),
                Err(e) => {
                    let _ = self.stop_processes(&id, Some(pid), uid).await;
                    self.running.remove(&id);
                    return Err(fail(e));
                }
            }
        }
        let exit = exited.borrow().clone();
        let _ = self.stop_processes(&id, Some(pid), uid).await;
        self.running.remove(&id);
        self.ports.remove(&port);
        let new_log =
            std::fs::read(self.log_path(&id)).map(|b| b.get(log_start as usize..).map(<[u8]>::to_vec)).ok().flatten();
        let new_log = String::from_utf8_lossy(&new_log.unwrap_or_default()).to_ascii_lowercase();
        let port_taken = port != 0
            && exit.is_some()
            && ["address already in use", "eaddrinuse", "address in use"].iter().any(|m| new_log.contains(m));
        let why = match exit {
            Some(detail) => format!("the workspace command exited ({detail}) before answering on {addr}"),
            None => format!("nothing answered on {addr} before the start timeout"),
        };
        Err(StartFailure { message: format!("{why}{}", self.log_tail(&id)), port_taken })
    }

    /// Give `id`'s socket folder, emptied, to the workspace for its start (its server creates the
    /// socket there).
    fn open_socket_dir(&self, id: &str, run_as: RunAs) -> std::io::Result<()> {
        let dir = self.paths.socket_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        isolation::ensure_dir(&dir, 0o700)?;
        if let RunAs::Uid(uid) = run_as {
            std::os::unix::fs::lchown(&dir, Some(uid), Some(uid))?;
        }
        Ok(())
    }

    /// Take `id`'s socket folder back once the workspace answers (wakeway's, 0700: the entry can
    /// no longer change, and no other uid can open the socket), then check that what answers is
    /// a socket its own uid bound (not a link to someone else's). Idempotent.
    fn close_socket_dir(&self, id: &str, uid: Option<u32>) -> Result<(), String> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let dir = self.paths.socket_dir(id);
        let (me, my_group) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        std::os::unix::fs::lchown(&dir, Some(me), Some(my_group))
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("cannot take back {}: {e}", dir.display()))?;
        let socket = self.paths.socket(id);
        let meta = std::fs::symlink_metadata(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
        let owner_ok = uid.is_none_or(|uid| meta.uid() == uid);
        if !meta.file_type().is_socket() || !owner_ok {
            return Err(format!(
                "{} is not a socket the workspace's own server bound; refusing to route to it",
                socket.display()
            ));
        }
        Ok(())
    }

    /// Stop a workspace's processes: SIGTERM its process group (led by `pgid`) and, when it runs
    /// under a uid of its own, every process of that uid (whatever it detached); SIGKILL what is
    /// left after `stop_grace`.
    async fn stop_processes(&self, id: &str, pgid: Option<u32>, uid: Option<u32>) -> Result<(), BackendError> {
        // One grace for the group and the uid's other processes together, not one after the other.
        let deadline = tokio::time::Instant::now() + self.settings.stop_grace;
        if let Some(uid) = uid {
            isolation::signal_all(uid, Signal::SIGTERM);
        }
        if let Some(pgid) = pgid {
            self.stop_group(pgid).await?;
        }
        let Some(uid) = uid else { return Ok(()) };
        while !isolation::processes_of(uid).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if isolation::kill_all(uid).await {
            Ok(())
        } else {
            Err(BackendError::Stop(format!("processes of workspace {id} (uid {uid}) survived SIGKILL")))
        }
    }
}

/// Why one start attempt failed, and whether another port may help.
struct StartFailure {
    message: String,
    port_taken: bool,
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn create(&self, session: &Session) -> Result<Option<crate::session::ObjectUids>, BackendError> {
        let id = session.uuid.clone();
        let run_as = self.run_as(&id).map_err(|e| BackendError::Io(format!("no uid for workspace {id}: {e}")))?;
        let folders = [self.paths.workspace(&id), self.paths.state.join(&id)];
        tokio::task::spawn_blocking(move || {
            for dir in &folders {
                match run_as {
                    // No process of the uid runs now (start stops them all first), so nothing can
                    // swap a folder for a link while it is handed over.
                    RunAs::Uid(uid) => isolation::own_tree(dir, uid),
                    RunAs::Wakeway => std::fs::create_dir_all(dir),
                }
                .map_err(|e| BackendError::Io(format!("cannot prepare {}: {e}", dir.display())))?;
            }
            Ok::<_, BackendError>(())
        })
        .await
        .map_err(|e| BackendError::Io(format!("workspace preparation failed: {e}")))??;
        self.write_session_record(session).await?;
        Ok(None)
    }

    async fn save_durable(&self, session: &Session) -> Result<(), BackendError> {
        if !self.paths.workspace(&session.uuid).is_dir() {
            return Ok(()); // destroyed (or never created): nothing to rebuild
        }
        self.write_session_record(session).await
    }

    async fn discover(&self) -> Result<Vec<Discovered>, BackendError> {
        let mut found = Vec::new();
        let mut dirs = match tokio::fs::read_dir(&self.paths.workspaces).await {
            Ok(dirs) => dirs,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(BackendError::Io(format!("cannot list {}: {e}", self.paths.workspaces.display()))),
        };
        while let Ok(Some(entry)) = dirs.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = crate::session::SessionId::parse(&name) else { continue };
            let mut record = tokio::fs::read(self.session_record_path(id.as_str())).await.ok();
            if record.is_none() && !self.isolated() {
                // Written inside HOME before 0.2; only trusted where the workspace is wakeway's
                // own user anyway.
                record = tokio::fs::read(self.paths.state.join(id.as_str()).join("session.json")).await.ok();
            }
            let meta: serde_json::Value = record.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
            found.push(Discovered {
                id: id.to_string(),
                user_id: meta["user_id"].as_str().unwrap_or("unknown").to_string(),
                tier: meta["tier"].as_str().unwrap_or("small").to_string(),
                created_at: meta["created_at"].as_str().and_then(|t| t.parse().ok()),
                durable: serde_json::from_value(meta["durable"].clone()).unwrap_or_default(),
            });
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    async fn start(
        &self,
        session: &Session,
        tier: &Tier,
        deadline: tokio::time::Instant,
    ) -> Result<Started, BackendError> {
        let id = session.uuid.clone();
        if let Some(addr) = self.find_running(session).await {
            let placement = session.placement.clone().expect("find_running needs a placement");
            return Ok(Started { addr, placement, objects: None });
        }
        // Whatever is left of an earlier run of this session must not keep the folder busy.
        self.stop(session).await?;
        self.create(session).await?;
        // A port that was free when picked can be taken before the workspace binds it (another
        // program on the machine): that start fails fast, and another port is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.start_once(session, tier, deadline).await {
                Err(StartFailure { message, port_taken: true }) if attempt < 3 => {
                    tracing::warn!(session = %id, %message, "workspace port was taken; trying another");
                }
                Err(failure) => return Err(BackendError::Start(failure.message)),
                Ok(started) => return Ok(started),
            }
        }
    }

    async fn stop(&self, session: &Session) -> Result<(), BackendError> {
        let id = &session.uuid;
        let mut pids = Vec::new();
        if let Some(r) = self.running.get(id)
            && (r.exited.borrow().is_none() || group_exists(r.pid))
        {
            pids.push(r.pid);
        }
        // The recorded placement, and the process last started (which a crash may have kept
        // from reaching the store).
        for placement in session.placement.iter().cloned().chain(self.read_run_record(id)) {
            let Placement::Local { pid, .. } = placement else { continue };
            if !pids.contains(&pid) && self.placement_alive(&placement) {
                pids.push(pid);
            }
        }
        let uid = self.uid_of(id);
        if pids.is_empty() {
            // Nothing we started runs, but what it detached may (a `setsid` daemon).
            self.stop_processes(id, None, uid).await?;
        }
        for pid in pids {
            self.stop_processes(id, Some(pid), uid).await?;
            tracing::info!(session = %id, pid, "workspace process stopped");
        }
        if let Some((_, running)) = self.running.remove(id) {
            self.ports.remove(&running.port);
        }
        if let Some(Placement::Local { port, .. }) = &session.placement {
            self.ports.remove_if(port, |_, owner| owner == id);
        }
        let _ = std::fs::remove_file(self.run_path(id));
        Ok(())
    }

    async fn find_running(&self, session: &Session) -> Option<Upstream> {
        let placement = session.placement.as_ref()?;
        let Placement::Local { port, .. } = placement else { return None };
        if !self.placement_alive(placement) {
            return None;
        }
        if let Placement::Local { socket: Some(_), uid, .. } = placement
            && let Err(e) = self.close_socket_dir(&session.uuid, *uid)
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
        let home = Some(self.paths.home(&session.uuid)).filter(|home| home.is_dir());
        // Names have one-second resolution: a backup redone right after a crash may find its
        // name taken (by a verified zip, kept). Take the next free second.
        let mut dest = self.paths.backups.join(backup_file_name(&session.uuid, now));
        for later in 1..=60 {
            if !dest.exists() && !crate::catalog::sidecar_path(&dest).exists() {
                break;
            }
            dest = self.paths.backups.join(backup_file_name(&session.uuid, now + chrono::Duration::seconds(later)));
        }
        let origin = Origin::new(&session.uuid, &session.user_id, reason).by(&self.settings.writer);
        tokio::task::spawn_blocking(move || {
            write_verified_backup(&Sources { workspace: &src, home: home.as_deref() }, &dest, now, &origin)
        })
        .await
        .map_err(|e| BackendError::Io(format!("backup task failed: {e}")))?
        .map_err(BackendError::from)
    }

    async fn restore(
        &self,
        session: &Session,
        zip: &Path,
        limits: Limits,
        options: Options,
    ) -> Result<Report, BackendError> {
        if self.is_alive(session) || self.read_run_record(&session.uuid).is_some_and(|p| self.placement_alive(&p)) {
            return Err(BackendError::Refused(format!("session {} is running; restore needs it asleep", session.uuid)));
        }
        let targets = self.paths.restore_targets(&session.uuid);
        let zip = zip.to_owned();
        let uid = self.uid_of(&session.uuid);
        tokio::task::spawn_blocking(move || {
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
        .map_err(|e| BackendError::Io(format!("restore task failed: {e}")))?
    }

    async fn clean_interrupted_restore(&self, session: &Session) -> Result<(), BackendError> {
        let targets = self.paths.restore_targets(&session.uuid);
        tokio::task::spawn_blocking(move || targets.recover())
            .await
            .map_err(|e| BackendError::Io(format!("restore task failed: {e}")))?
            .map_err(BackendError::from)
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
        for dir in [self.paths.workspace(&session.uuid), self.paths.home(&session.uuid)] {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BackendError::Io(format!("cannot remove {}: {e}", dir.display()))),
            }
        }
        let _ = tokio::fs::remove_file(self.log_path(&session.uuid)).await;
        let _ = tokio::fs::remove_file(self.run_path(&session.uuid)).await;
        let _ = tokio::fs::remove_dir_all(self.paths.socket_dir(&session.uuid)).await;
        let _ = tokio::fs::remove_file(self.session_record_path(&session.uuid)).await;
        if let Some(pool) = &self.uids {
            pool.release(&session.uuid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace server on its Unix socket (Python's http.server).
    pub(crate) const PY_SOCKET_SERVER: &str = r#"exec python3 -c 'import sys, socketserver, http.server as h
H = type("H", (h.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
socketserver.UnixStreamServer(sys.argv[1], H).serve_forever()' {socket}"#;

    #[test]
    fn placeholders_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(
            isolation::command_program("exec '/opt/cs/bin/code-server' --x"),
            Some(PathBuf::from("/opt/cs/bin/code-server"))
        );
        assert_eq!(isolation::command_program("python3 -m x"), None);
    }

    fn settings(command: &str, uids: Option<std::ops::RangeInclusive<u32>>) -> LocalSettings {
        LocalSettings {
            command: command.into(),
            port_range: 21000..=21999,
            stop_grace: Duration::from_secs(2),
            uids,
            env: BTreeMap::new(),
            writer: "test-replica".into(),
        }
    }

    fn backend(dir: &Path, command: &str) -> Arc<LocalBackend> {
        let paths = LocalPaths::new(dir, dir.join("backups"));
        let (tx, _rx) = mpsc::unbounded_channel();
        LocalBackend::new(settings(command, None), paths, tx).unwrap()
    }

    fn session(id: &str) -> Session {
        Session::new(&crate::session::SessionId::parse(id).unwrap(), "u", "small", chrono::Utc::now())
    }

    fn deadline() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(20)
    }

    const TIER: Tier = Tier { cpu: 1.0, memory_mib: 512 };

    #[tokio::test]
    async fn a_workspace_is_only_ready_while_its_own_process_runs() {
        let dir = tempfile::tempdir().unwrap();
        // A command that leaves a server behind and exits: whoever answers is not the workspace.
        let detaching = backend(dir.path(), "python3 -m http.server --bind 127.0.0.1 {port} >/dev/null 2>&1 & exit 0");
        let s = session("abc12345");
        let err = detaching.start(&s, &TIER, deadline()).await.unwrap_err().to_string();
        assert!(err.contains("exited"), "{err}");
        // A foreground server is ready, on a port from the range, and stops with its group.
        let foreground = backend(dir.path(), "exec python3 -m http.server --bind 127.0.0.1 {port}");
        let started = foreground.start(&s, &TIER, deadline()).await.unwrap();
        let Upstream::Tcp(addr) = &started.addr else { panic!("{:?}", started.addr) };
        assert!((21000..=21999).contains(&addr.port()));
        let mut s = s;
        s.placement = Some(started.placement);
        assert!(foreground.is_alive(&s));
        foreground.stop(&s).await.unwrap();
        assert!(!foreground.is_alive(&s));
        assert!(!probe::answers_http(&started.addr).await);
    }

    #[tokio::test]
    async fn a_workspace_without_a_port_serves_on_a_socket_only_wakeway_can_open() {
        let dir = tempfile::tempdir().unwrap();
        let b = backend(dir.path(), PY_SOCKET_SERVER);
        let mut s = session("abc12345");
        let started = b.start(&s, &TIER, deadline()).await.unwrap();
        let Upstream::Unix(path) = &started.addr else { panic!("{:?}", started.addr) };
        assert_eq!(Path::new(&**path), dir.path().join("sockets/abc12345/workspace.sock"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("sockets/abc12345")), 0o700);
        assert!(probe::answers_http(&started.addr).await);
        s.placement = Some(started.placement);

        // Another workspace's socket, linked in place of its own: wakeway would follow the link
        // as it connects, so the start is refused.
        let other = session("def67890");
        let link = format!("ln -s {} {{socket}}; exec sleep 60", path);
        let linking = backend(dir.path(), &link);
        let err = linking.start(&other, &TIER, deadline()).await.unwrap_err().to_string();
        assert!(err.contains("not a socket the workspace's own server bound"), "{err}");

        b.stop(&s).await.unwrap();
        assert!(!probe::answers_http(&started.addr).await, "nothing answers once it sleeps");
    }

    /// As root: the workspace runs under a uid of its own from the range, owns its folders, and
    /// nothing it started — detached with `setsid` included — outlives a stop.
    #[tokio::test]
    async fn an_isolated_workspace_runs_as_its_own_uid_and_leaves_nothing_behind() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root: isolation must be tested there");
            eprintln!("not root: isolation cannot be tested here (CI tests it)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let command = format!("setsid sleep 600 </dev/null >/dev/null 2>&1 & id -u > uid; {PY_SOCKET_SERVER}");
        let paths = LocalPaths::new(dir.path(), dir.path().join("backups"));
        let (tx, _rx) = mpsc::unbounded_channel();
        let b = LocalBackend::new(settings(&command, Some(230000..=230099)), paths, tx).unwrap();
        let mut s = session("abc12345");
        let started = b.start(&s, &TIER, deadline()).await.unwrap();
        let workspace = dir.path().join("workspaces/abc12345");
        let uid: u32 = std::fs::read_to_string(workspace.join("uid")).unwrap().trim().parse().unwrap();
        assert!((230000..=230099).contains(&uid), "{uid}");
        use std::os::unix::fs::MetadataExt;
        for folder in [&workspace, &dir.path().join("state/abc12345")] {
            let meta = std::fs::metadata(folder).unwrap();
            assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (uid, uid, 0o700), "{}", folder.display());
        }
        assert_eq!(std::fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o711);
        let socket_dir = std::fs::metadata(dir.path().join("sockets/abc12345")).unwrap();
        assert_eq!((socket_dir.uid(), socket_dir.mode() & 0o777), (0, 0o700), "taken back once it answered");
        let socket = std::fs::symlink_metadata(dir.path().join("sockets/abc12345/workspace.sock")).unwrap();
        assert_eq!(socket.uid(), uid);
        assert!(isolation::processes_of(uid).len() >= 2, "the server and the detached sleep");
        s.placement = Some(started.placement);
        b.stop(&s).await.unwrap();
        assert_eq!(isolation::processes_of(uid), Vec::<i32>::new(), "the setsid process is gone too");
        // A restart finds the same uid from the folder's owner.
        let (tx, _rx) = mpsc::unbounded_channel();
        let again = LocalBackend::new(
            settings(&command, Some(230000..=230099)),
            LocalPaths::new(dir.path(), dir.path().join("backups")),
            tx,
        )
        .unwrap();
        assert_eq!(again.uid_of("abc12345"), Some(uid));
        // A command built around a TCP port is refused when isolated.
        let (tx, _rx) = mpsc::unbounded_channel();
        let paths = LocalPaths::new(dir.path(), dir.path().join("backups"));
        let refused = LocalBackend::new(settings("srv --port {port}", Some(230000..=230099)), paths, tx);
        assert!(refused.err().unwrap().contains("{socket}"));
    }

    #[test]
    fn a_group_of_zombies_is_not_alive() {
        use std::os::unix::process::CommandExt;
        // A child that exits and is not reaped yet: its group holds only a zombie.
        let mut child = std::process::Command::new("true").process_group(0).spawn().unwrap();
        let pgid = child.id();
        while start_ticks(pgid).is_some() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(killpg(Pid::from_raw(pgid as i32), None).is_ok(), "the zombie still counts for the kernel");
        assert!(!group_exists(pgid));
        child.wait().unwrap();
        let mut running = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        assert!(group_exists(running.id()));
        running.kill().unwrap();
        running.wait().unwrap();
    }

    #[test]
    fn our_own_start_ticks_are_readable() {
        assert!(start_ticks(std::process::id()).is_some());
        assert!(start_ticks(u32::MAX - 1).is_none());
    }
}
