//! A workspace's processes: started (`sh -c <command>` in a process group of its own, as its
//! uid, with its environment), watched until they answer or exit, recognised again after a
//! restart (pid and start time), and stopped (SIGTERM, then SIGKILL after `stop_grace`).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use dashmap::DashMap;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::Instant;
use wakeway_config::Tier;
use wakeway_proxy::Upstream;

use super::isolation::{self, RunAs};
use super::{BackendError, BackendEvent, LocalBackend, Started};
use crate::probe;
use crate::session::{Placement, Session};

/// One process this wakeway started (and reaps).
pub(super) struct Running {
    pub(super) pid: u32,
    pub(super) port: u16,
    /// `Some(detail)` once it exited.
    pub(super) exited: watch::Receiver<Option<String>>,
}

/// Why one start attempt failed, and whether another port may help.
pub(super) struct StartFailure {
    pub(super) message: String,
    pub(super) port_taken: bool,
}

fn fail(message: String) -> StartFailure {
    StartFailure { message, port_taken: false }
}

/// A workspace process just started, not known to answer yet.
struct Launched {
    addr: Upstream,
    placement: Placement,
    pid: u32,
    port: u16,
    uid: Option<u32>,
    /// The log's length before the start: what follows is this start's output.
    log_start: u64,
    exited: watch::Receiver<Option<String>>,
}

/// Log lines that say the port was taken between our check and the workspace's bind.
const PORT_TAKEN: [&str; 3] = ["address already in use", "eaddrinuse", "address in use"];

impl LocalBackend {
    /// Start the workspace, trying another port when the one picked was taken meanwhile.
    pub(super) async fn start_process(
        &self,
        session: &Session,
        tier: &Tier,
        deadline: Instant,
    ) -> Result<Started, BackendError> {
        // A port that was free when picked can be taken before the workspace binds it (another
        // program on the machine): that start fails fast, and another port is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.start_once(session, tier, deadline).await {
                Err(StartFailure { message, port_taken: true }) if attempt < 3 => {
                    tracing::warn!(session = %session.uuid, %message, "workspace port was taken; trying another");
                }
                Err(failure) => return Err(BackendError::Start(failure.message)),
                Ok(started) => return Ok(started),
            }
        }
    }

    /// One attempt at starting the workspace (on a freshly picked port, or on its socket).
    async fn start_once(&self, session: &Session, tier: &Tier, deadline: Instant) -> Result<Started, StartFailure> {
        let id = session.uuid.as_str();
        let run_as = self.run_as(id).await.map_err(|e| fail(format!("no uid for the workspace: {e}")))?;
        let (addr, port) = self.address(id, run_as).await?;
        let command = self.render(session, port, tier);
        let (log, log_start) =
            self.open_log(id).await.map_err(|e| fail(format!("cannot open the workspace log: {e}")))?;
        let child = self
            .command(id, &command, port, tier, run_as, log)?
            .spawn()
            .map_err(|e| fail(format!("cannot run `sh -c {command}`: {e}")))?;
        let pid = child.id().ok_or_else(|| fail("the workspace exited at once".into()))?;
        let socket = match &addr {
            Upstream::Unix(path) => Some(PathBuf::from(&**path)),
            Upstream::Tcp(_) => None,
        };
        let uid = match run_as {
            RunAs::Uid(uid) => Some(uid),
            RunAs::Wakeway => None,
        };
        let placement = Placement::Local { pid, start_ticks: start_ticks(pid).unwrap_or(0), port, socket, uid };
        let exited = self.track(id, &addr, &placement, child).await;
        let launched = Launched { addr, placement, pid, port, uid, log_start, exited };
        self.until_ready(id, launched, deadline).await
    }

    /// Where the workspace will answer: a free loopback port when its command asks for one, else
    /// its socket (whose folder is handed to it for the start). The port is 0 for a socket.
    async fn address(&self, id: &str, run_as: RunAs) -> Result<(Upstream, u16), StartFailure> {
        if self.serves_on_port() {
            let port =
                free_port(&self.settings.port_range, &self.ports).map_err(|e| fail(format!("no free port: {e}")))?;
            return Ok((Upstream::Tcp(SocketAddr::from(([127, 0, 0, 1], port))), port));
        }
        self.open_socket_dir(id, run_as).await.map_err(|e| fail(format!("cannot prepare the socket's folder: {e}")))?;
        Ok((Upstream::Unix(self.paths.socket(id).to_string_lossy().into()), 0))
    }

    /// `sh -c <command>` in the workspace folder, with the workspace's environment alone, in a
    /// process group of its own, as its uid, its output appended to `log`.
    fn command(
        &self,
        id: &str,
        command: &str,
        port: u16,
        tier: &Tier,
        run_as: RunAs,
        log: std::fs::File,
    ) -> Result<tokio::process::Command, StartFailure> {
        let log_err = log.try_clone().map_err(|e| fail(e.to_string()))?;
        let user = match run_as {
            RunAs::Uid(_) => format!("ws-{id}"),
            RunAs::Wakeway => std::env::var("USER").unwrap_or_else(|_| "wakeway".into()),
        };
        let env = isolation::workspace_env(std::env::vars_os(), &self.paths.home(id), &user, &self.settings.env);
        let mut spawn = tokio::process::Command::new("sh");
        spawn
            .arg("-c")
            // The usual umask for the user's files (wakeway's own is 077).
            .arg(format!("umask 022; {command}"))
            .current_dir(self.paths.workspace(id))
            .env_clear()
            .envs(env)
            .env("WAKEWAY_SESSION", id)
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
        Ok(spawn)
    }

    /// Remember the process just started (its port, its run record, `running`) and reap it in
    /// the background: its exit is sent as a [`BackendEvent::Exited`], and on the receiver returned.
    async fn track(
        &self,
        id: &str,
        addr: &Upstream,
        placement: &Placement,
        mut child: tokio::process::Child,
    ) -> watch::Receiver<Option<String>> {
        let Placement::Local { pid, port, uid, .. } = *placement else { unreachable!("a local placement") };
        if port != 0 {
            self.ports.insert(port, id.to_owned());
        }
        tracing::info!(session = %id, pid, %addr, ?uid, "workspace process started");
        if let Err(e) = self.write_run_record(id, placement).await {
            tracing::warn!(session = %id, error = %e, "cannot record the workspace process; a crash now could leave it running");
        }
        let (tx, exited) = watch::channel(None);
        self.running.insert(id.to_owned(), Running { pid, port, exited: exited.clone() });
        let (events, watched, watched_id) = (self.events.clone(), placement.clone(), id.to_owned());
        tokio::spawn(async move {
            let detail = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = tx.send(Some(detail.clone()));
            let _ = events.send(BackendEvent::Exited { id: watched_id, placement: watched, detail });
        });
        exited
    }

    /// Wait until the process started answers (then it is the workspace), or exits, or the
    /// deadline passes (then it is stopped, and the failure says why, with its log's last lines).
    async fn until_ready(&self, id: &str, launched: Launched, deadline: Instant) -> Result<Started, StartFailure> {
        let mut exit_rx = launched.exited.clone();
        let exited_early = async move {
            let _ = exit_rx.wait_for(|e| e.is_some()).await;
        };
        // Whoever answers must be our process: if it died meanwhile, the answer came from
        // another program that holds the port, and traffic must never go there.
        if probe::wait_until_answers(&launched.addr, deadline, exited_early).await && launched.exited.borrow().is_none()
        {
            let checked = if launched.port == 0 { self.close_socket_dir(id, launched.uid).await } else { Ok(()) };
            if let Err(e) = checked {
                self.abandon(id, &launched).await;
                return Err(fail(e));
            }
            return Ok(Started {
                addr: launched.addr,
                placement: launched.placement,
                objects: None,
                phases: Vec::new(),
            });
        }
        let exit = launched.exited.borrow().clone();
        self.abandon(id, &launched).await;
        let new_log = self.log_since(id, launched.log_start).await;
        let port_taken = launched.port != 0 && exit.is_some() && PORT_TAKEN.iter().any(|m| new_log.contains(m));
        let why = match exit {
            Some(detail) => format!("the workspace command exited ({detail}) before answering on {}", launched.addr),
            None => format!("nothing answered on {} before the start timeout", launched.addr),
        };
        Err(StartFailure { message: format!("{why}{}", self.log_tail(id).await), port_taken })
    }

    /// Stop a start that failed and forget it.
    async fn abandon(&self, id: &str, launched: &Launched) {
        let _ = self.stop_processes(id, Some(launched.pid), launched.uid).await;
        self.running.remove(id);
        self.ports.remove(&launched.port);
    }

    /// The workspace command with its placeholders filled in (paths quoted for `sh`).
    fn render(&self, session: &Session, port: u16, tier: &Tier) -> String {
        let id = &session.uuid;
        self.settings
            .command
            .replace("{socket}", &shell_quote(&self.paths.socket(id).to_string_lossy()))
            .replace("{port}", &port.to_string())
            .replace("{workspace}", &shell_quote(&self.paths.workspace(id).to_string_lossy()))
            .replace("{state}", &shell_quote(&self.paths.home(id).to_string_lossy()))
            .replace("{cpu}", &tier.cpu.to_string())
            .replace("{memory_mib}", &tier.memory_mib.to_string())
            .replace("{id}", id)
    }

    /// Stop whatever runs of the session: the process this wakeway started, the recorded
    /// placement, and the process last started (which a crash may have kept from the store).
    pub(super) async fn stop_session(&self, session: &Session) -> Result<(), BackendError> {
        let id = &session.uuid;
        let mut pids = Vec::new();
        if let Some(r) = self.running.get(id)
            && (r.exited.borrow().is_none() || group_exists(r.pid))
        {
            pids.push(r.pid);
        }
        for placement in session.placement.iter().cloned().chain(self.read_run_record(id).await) {
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
        self.remove_run_record(id).await;
        Ok(())
    }

    /// Is the group led by `placement`'s pid still there, and is it ours (not a reused pid)?
    pub(super) fn placement_alive(&self, placement: &Placement) -> bool {
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
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
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

    /// Stop a workspace's processes: SIGTERM its process group (led by `pgid`) and, when it runs
    /// under a uid of its own, every process of that uid (whatever it detached); SIGKILL what is
    /// left after `stop_grace`.
    pub(super) async fn stop_processes(
        &self,
        id: &str,
        pgid: Option<u32>,
        uid: Option<u32>,
    ) -> Result<(), BackendError> {
        // One grace for the group and the uid's other processes together, not one after the other.
        let deadline = Instant::now() + self.settings.stop_grace;
        if let Some(uid) = uid {
            isolation::signal_all(uid, Signal::SIGTERM);
        }
        if let Some(pgid) = pgid {
            self.stop_group(pgid).await?;
        }
        let Some(uid) = uid else { return Ok(()) };
        while !isolation::processes_of(uid).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if isolation::kill_all(uid).await {
            Ok(())
        } else {
            Err(BackendError::Stop(format!("processes of workspace {id} (uid {uid}) survived SIGKILL")))
        }
    }
}

/// Quote for `sh`: `'…'` with embedded quotes escaped.
pub(super) fn shell_quote(text: &str) -> String {
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
pub(super) fn start_ticks(pid: u32) -> Option<u64> {
    isolation::proc_stat(pid).filter(|s| !s.zombie).map(|s| s.start_ticks)
}

/// Whether the process group `pgid` still has a member that runs. A group of zombies does not
/// count: once wakeway is not their parent (after a restart) nobody may reap them soon — a
/// container's PID 1 often does not — and a dead workspace must not look alive.
pub(super) fn group_exists(pgid: u32) -> bool {
    !matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH)) && isolation::group_runs(pgid)
}
