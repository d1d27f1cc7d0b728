//! The local backend: each workspace is a process (by default code-server) in its own process
//! group, with `<data_dir>/workspaces/<id>/` as its workspace folder and `<data_dir>/state/<id>/`
//! as its HOME. Sleep = SIGTERM the group, SIGKILL after `stop_grace`; wake = start again.
//!
//! Each started process is also recorded in `<data_dir>/run/<id>.json` (pid, start time, port)
//! before wakeway waits for it to answer, so a process started just before a crash is still found
//! and stopped by the next wakeway, even though its placement never reached the store.

use std::net::{SocketAddr, TcpListener};
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

use super::{Backend, BackendError, BackendEvent, Discovered, Started};
use crate::backup::{backup_file_name, write_verified_zip};
use crate::catalog::Origin;
use crate::probe;
use crate::restore::{self, Limits, Options, Report, Swap};
use crate::session::{BackupInfo, Placement, Session};

/// Folders the local backend uses, all under `data_dir` except backups.
#[derive(Debug, Clone)]
pub struct LocalPaths {
    pub workspaces: PathBuf,
    pub state: PathBuf,
    pub logs: PathBuf,
    pub backups: PathBuf,
    /// `<id>.json`: the process last started for a session.
    pub run: PathBuf,
}

impl LocalPaths {
    pub fn new(data_dir: &Path, backups: PathBuf) -> Self {
        LocalPaths {
            workspaces: data_dir.join("workspaces"),
            state: data_dir.join("state"),
            logs: data_dir.join("logs"),
            backups,
            run: data_dir.join("run"),
        }
    }

    pub fn workspace(&self, id: &str) -> PathBuf {
        self.workspaces.join(id)
    }
}

/// One process this wakeway started (and reaps).
struct Running {
    pid: u32,
    port: u16,
    /// `Some(detail)` once it exited.
    exited: watch::Receiver<Option<String>>,
}

/// Runs workspaces as local processes.
pub struct LocalBackend {
    command: String,
    paths: LocalPaths,
    stop_grace: Duration,
    running: DashMap<String, Running>,
    /// Ports our workspaces listen on (started or adopted) → session id.
    ports: DashMap<u16, String>,
    port_range: std::ops::RangeInclusive<u16>,
    events: mpsc::UnboundedSender<BackendEvent>,
}

impl LocalBackend {
    /// `command` is the template (see `workspace_command`), already resolved (non-empty).
    /// `port_range`: where workspaces listen (`workspace_ports`).
    pub fn new(
        command: String,
        paths: LocalPaths,
        port_range: std::ops::RangeInclusive<u16>,
        stop_grace: Duration,
        events: mpsc::UnboundedSender<BackendEvent>,
    ) -> Arc<Self> {
        Arc::new(LocalBackend {
            command,
            paths,
            stop_grace,
            running: DashMap::new(),
            ports: DashMap::new(),
            port_range,
            events,
        })
    }

    pub fn paths(&self) -> &LocalPaths {
        &self.paths
    }

    fn render(&self, session: &Session, port: u16, tier: &Tier) -> String {
        let id = &session.uuid;
        let workspace = self.paths.workspace(id);
        let state = self.paths.state.join(id);
        self.command
            .replace("{port}", &port.to_string())
            .replace("{workspace}", &shell_quote(&workspace.to_string_lossy()))
            .replace("{state}", &shell_quote(&state.to_string_lossy()))
            .replace("{cpu}", &tier.cpu.to_string())
            .replace("{memory_mib}", &tier.memory_mib.to_string())
            .replace("{id}", id)
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

/// Start time of `pid` in clock ticks since boot, from `/proc/<pid>/stat` (None: no such process,
/// or a zombie).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 (starttime) is index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn group_exists(pgid: u32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH))
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
        if gone(self.stop_grace).await {
            return Ok(());
        }
        tracing::warn!(pgid, grace = ?self.stop_grace, "workspace ignored SIGTERM; sending SIGKILL");
        let _ = killpg(group, Signal::SIGKILL);
        if gone(Duration::from_secs(5)).await {
            Ok(())
        } else {
            Err(BackendError::Stop(format!("process group {pgid} survived SIGKILL")))
        }
    }
    /// One attempt at starting the workspace on a freshly picked port.
    async fn start_once(
        &self,
        session: &Session,
        tier: &Tier,
        deadline: tokio::time::Instant,
    ) -> Result<Started, StartFailure> {
        let id = session.uuid.clone();
        let fail = |message: String| StartFailure { message, port_taken: false };
        let port = free_port(&self.port_range, &self.ports).map_err(|e| fail(format!("no free port: {e}")))?;
        let command = self.render(session, port, tier);
        let state = self.paths.state.join(&id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&id))
            .map_err(|e| fail(format!("cannot open the workspace log: {e}")))?;
        let log_start = log.metadata().map_or(0, |m| m.len());
        let log_err = log.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(self.paths.workspace(&id))
            .env("HOME", &state)
            .env("XDG_CONFIG_HOME", state.join(".config"))
            .env("XDG_DATA_HOME", state.join(".local/share"))
            .env("XDG_CACHE_HOME", state.join(".cache"))
            .env("PORT", port.to_string())
            .env("WAKEWAY_SESSION", &id)
            .env("WAKEWAY_CPU", tier.cpu.to_string())
            .env("WAKEWAY_MEMORY_MIB", tier.memory_mib.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| fail(format!("cannot run `sh -c {command}`: {e}")))?;
        let pid = child.id().ok_or_else(|| fail("the workspace exited at once".into()))?;
        let ticks = start_ticks(pid).unwrap_or(0);
        let placement = Placement::Local { pid, start_ticks: ticks, port };
        self.ports.insert(port, id.clone());
        tracing::info!(session = %id, pid, port, "workspace process started");
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

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut exit_rx = exited.clone();
        let exited_early = async move {
            let _ = exit_rx.wait_for(|e| e.is_some()).await;
        };
        // Whoever answers must be our process: if it died meanwhile, the answer came from
        // another program that holds the port, and traffic must never go there.
        if probe::wait_until_answers(addr, deadline, exited_early).await && exited.borrow().is_none() {
            return Ok(Started { addr, placement, objects: None });
        }
        let exit = exited.borrow().clone();
        let _ = self.stop_group(pid).await;
        self.running.remove(&id);
        self.ports.remove(&port);
        let new_log =
            std::fs::read(self.log_path(&id)).map(|b| b.get(log_start as usize..).map(<[u8]>::to_vec)).ok().flatten();
        let new_log = String::from_utf8_lossy(&new_log.unwrap_or_default()).to_ascii_lowercase();
        let port_taken = exit.is_some()
            && ["address already in use", "eaddrinuse", "address in use"].iter().any(|m| new_log.contains(m));
        let why = match exit {
            Some(detail) => format!("the workspace command exited ({detail}) before answering on port {port}"),
            None => format!("nothing answered on port {port} before the start timeout"),
        };
        Err(StartFailure { message: format!("{why}{}", self.log_tail(&id)), port_taken })
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
        for dir in [self.paths.workspace(&session.uuid), self.paths.state.join(&session.uuid), self.paths.logs.clone()]
        {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| BackendError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Who this workspace belongs to, beside it: the store can be rebuilt from it.
        let sidecar = Discovered {
            id: session.uuid.clone(),
            user_id: session.user_id.clone(),
            tier: session.tier.clone(),
            created_at: Some(session.created_at),
        };
        let json = serde_json::json!({
            "uuid": sidecar.id, "user_id": sidecar.user_id, "tier": sidecar.tier, "created_at": sidecar.created_at,
        });
        let path = self.paths.state.join(&session.uuid).join("session.json");
        tokio::fs::write(&path, json.to_string())
            .await
            .map_err(|e| BackendError::Io(format!("cannot write {}: {e}", path.display())))?;
        Ok(None)
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
            let sidecar = tokio::fs::read(self.paths.state.join(id.as_str()).join("session.json")).await.ok();
            let meta: serde_json::Value = sidecar.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
            found.push(Discovered {
                id: id.to_string(),
                user_id: meta["user_id"].as_str().unwrap_or("unknown").to_string(),
                tier: meta["tier"].as_str().unwrap_or("small").to_string(),
                created_at: meta["created_at"].as_str().and_then(|t| t.parse().ok()),
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
        let mut pids = Vec::new();
        if let Some(r) = self.running.get(&session.uuid)
            && (r.exited.borrow().is_none() || group_exists(r.pid))
        {
            pids.push(r.pid);
        }
        // The recorded placement, and the process last started (which a crash may have kept
        // from reaching the store).
        for placement in session.placement.iter().cloned().chain(self.read_run_record(&session.uuid)) {
            let Placement::Local { pid, .. } = placement else { continue };
            if !pids.contains(&pid) && self.placement_alive(&placement) {
                pids.push(pid);
            }
        }
        for pid in pids {
            self.stop_group(pid).await?;
            tracing::info!(session = %session.uuid, pid, "workspace process stopped");
        }
        if let Some((_, running)) = self.running.remove(&session.uuid) {
            self.ports.remove(&running.port);
        }
        if let Some(Placement::Local { port, .. }) = &session.placement {
            self.ports.remove_if(port, |_, owner| owner == &session.uuid);
        }
        let _ = std::fs::remove_file(self.run_path(&session.uuid));
        Ok(())
    }

    async fn find_running(&self, session: &Session) -> Option<SocketAddr> {
        let placement = session.placement.as_ref()?;
        let Placement::Local { port, .. } = placement else { return None };
        if !self.placement_alive(placement) {
            return None;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], *port));
        let answers = probe::answers_http(addr).await;
        if answers {
            self.ports.insert(*port, session.uuid.clone());
        }
        answers.then_some(addr)
    }

    fn is_alive(&self, session: &Session) -> bool {
        session.placement.as_ref().is_some_and(|p| self.placement_alive(p))
    }

    async fn backup(&self, session: &Session, now: DateTime<Utc>, reason: &str) -> Result<BackupInfo, BackendError> {
        let src = self.paths.workspace(&session.uuid);
        // Names have one-second resolution: a backup redone right after a crash may find its
        // name taken (by a verified zip, kept). Take the next free second.
        let mut dest = self.paths.backups.join(backup_file_name(&session.uuid, now));
        for later in 1..=60 {
            if !dest.exists() && !crate::catalog::sidecar_path(&dest).exists() {
                break;
            }
            dest = self.paths.backups.join(backup_file_name(&session.uuid, now + chrono::Duration::seconds(later)));
        }
        let origin = Origin::new(&session.uuid, &session.user_id, reason);
        tokio::task::spawn_blocking(move || write_verified_zip(&src, &dest, now, &origin))
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
        let target = self.paths.workspace(&session.uuid);
        let zip = zip.to_owned();
        tokio::task::spawn_blocking(move || restore::restore_into(&zip, &target, &limits, &options))
            .await
            .map_err(|e| BackendError::Io(format!("restore task failed: {e}")))?
            .map_err(BackendError::from)
    }

    async fn clean_interrupted_restore(&self, session: &Session) -> Result<(), BackendError> {
        let swap = Swap::for_target(&self.paths.workspace(&session.uuid));
        tokio::task::spawn_blocking(move || swap.recover().map(drop))
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
        for dir in [self.paths.workspace(&session.uuid), self.paths.state.join(&session.uuid)] {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BackendError::Io(format!("cannot remove {}: {e}", dir.display()))),
            }
        }
        let _ = tokio::fs::remove_file(self.log_path(&session.uuid)).await;
        let _ = tokio::fs::remove_file(self.run_path(&session.uuid)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    fn backend(dir: &Path, command: &str) -> Arc<LocalBackend> {
        let paths = LocalPaths::new(dir, dir.join("backups"));
        let (tx, _rx) = mpsc::unbounded_channel();
        LocalBackend::new(command.into(), paths, 21000..=21999, Duration::from_secs(2), tx)
    }

    fn session(id: &str) -> Session {
        Session::new(&crate::session::SessionId::parse(id).unwrap(), "u", "small", chrono::Utc::now())
    }

    #[tokio::test]
    async fn a_workspace_is_only_ready_while_its_own_process_runs() {
        let dir = tempfile::tempdir().unwrap();
        let tier = Tier { cpu: 1.0, memory_mib: 512 };
        let deadline = || tokio::time::Instant::now() + Duration::from_secs(20);
        // A command that leaves a server behind and exits: whoever answers is not the workspace.
        let detaching = backend(dir.path(), "python3 -m http.server --bind 127.0.0.1 {port} >/dev/null 2>&1 & exit 0");
        let s = session("abc12345");
        let err = detaching.start(&s, &tier, deadline()).await.unwrap_err().to_string();
        assert!(err.contains("exited"), "{err}");
        // A foreground server is ready, on a port from the range, and stops with its group.
        let foreground = backend(dir.path(), "exec python3 -m http.server --bind 127.0.0.1 {port}");
        let started = foreground.start(&s, &tier, deadline()).await.unwrap();
        assert!((21000..=21999).contains(&started.addr.port()));
        let mut s = s;
        s.placement = Some(started.placement);
        assert!(foreground.is_alive(&s));
        foreground.stop(&s).await.unwrap();
        assert!(!foreground.is_alive(&s));
        assert!(!probe::answers_http(started.addr).await);
    }

    #[test]
    fn our_own_start_ticks_are_readable() {
        assert!(start_ticks(std::process::id()).is_some());
        assert!(start_ticks(u32::MAX - 1).is_none());
    }
}
