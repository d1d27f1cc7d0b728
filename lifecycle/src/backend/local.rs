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

use super::{Backend, BackendError, BackendEvent, Started};
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
    /// `Some(detail)` once it exited.
    exited: watch::Receiver<Option<String>>,
}

/// Runs workspaces as local processes.
pub struct LocalBackend {
    command: String,
    paths: LocalPaths,
    stop_grace: Duration,
    running: DashMap<String, Running>,
    events: mpsc::UnboundedSender<BackendEvent>,
}

impl LocalBackend {
    /// `command` is the template (see `workspace_command`), already resolved (non-empty).
    pub fn new(
        command: String,
        paths: LocalPaths,
        stop_grace: Duration,
        events: mpsc::UnboundedSender<BackendEvent>,
    ) -> Arc<Self> {
        Arc::new(LocalBackend { command, paths, stop_grace, running: DashMap::new(), events })
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

/// A free loopback port (the OS picks; the tiny race with other programs is retried by the caller).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
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
        let Placement::Local { pid, start_ticks: ticks, .. } = placement;
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
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn create(&self, session: &Session) -> Result<(), BackendError> {
        for dir in [self.paths.workspace(&session.uuid), self.paths.state.join(&session.uuid), self.paths.logs.clone()]
        {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| BackendError::Io(format!("cannot create {}: {e}", dir.display())))?;
        }
        Ok(())
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
            return Ok(Started { addr, placement });
        }
        // Whatever is left of an earlier run of this session must not keep the folder busy.
        self.stop(session).await?;
        self.create(session).await?;
        let port = free_port().map_err(|e| BackendError::Start(format!("no free port: {e}")))?;
        let command = self.render(session, port, tier);
        let state = self.paths.state.join(&id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&id))
            .map_err(|e| BackendError::Start(format!("cannot open the workspace log: {e}")))?;
        let log_err = log.try_clone().map_err(|e| BackendError::Start(e.to_string()))?;
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
            .map_err(|e| BackendError::Start(format!("cannot run `sh -c {command}`: {e}")))?;
        let pid = child.id().ok_or_else(|| BackendError::Start("the workspace exited at once".into()))?;
        let ticks = start_ticks(pid).unwrap_or(0);
        let placement = Placement::Local { pid, start_ticks: ticks, port };
        tracing::info!(session = %id, pid, port, "workspace process started");
        if let Err(e) = self.write_run_record(&id, &placement) {
            tracing::warn!(session = %id, error = %e, "cannot record the workspace process; a crash now could leave it running");
        }

        let (tx, exited) = watch::channel(None);
        self.running.insert(id.clone(), Running { pid, exited: exited.clone() });
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
        if probe::wait_until_answers(addr, deadline, exited_early).await {
            return Ok(Started { addr, placement });
        }
        let why = match exited.borrow().clone() {
            Some(detail) => format!("the workspace command exited ({detail}) before answering on port {port}"),
            None => format!("nothing answered on port {port} before the start timeout"),
        };
        let _ = self.stop_group(pid).await;
        Err(BackendError::Start(format!("{why}{}", self.log_tail(&id))))
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
            let Placement::Local { pid, .. } = placement;
            if !pids.contains(&pid) && self.placement_alive(&placement) {
                pids.push(pid);
            }
        }
        for pid in pids {
            self.stop_group(pid).await?;
            tracing::info!(session = %session.uuid, pid, "workspace process stopped");
        }
        self.running.remove(&session.uuid);
        let _ = std::fs::remove_file(self.run_path(&session.uuid));
        Ok(())
    }

    async fn find_running(&self, session: &Session) -> Option<SocketAddr> {
        let placement = session.placement.as_ref()?;
        let Placement::Local { port, .. } = placement;
        if !self.placement_alive(placement) {
            return None;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], *port));
        probe::answers_http(addr).await.then_some(addr)
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

    #[test]
    fn our_own_start_ticks_are_readable() {
        assert!(start_ticks(std::process::id()).is_some());
        assert!(start_ticks(u32::MAX - 1).is_none());
    }
}
