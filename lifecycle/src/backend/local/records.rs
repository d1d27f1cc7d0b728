//! What the local backend keeps beside its workspaces, where only wakeway writes: the session
//! record (rebuilds what a store lost), the run record (the process last started, found again
//! after a crash) and each workspace's log. All of it through `tokio::fs`: these run on the
//! lifecycle runtime.

use std::path::{Path, PathBuf};

use super::{BackendError, Discovered, LocalBackend};
use crate::session::{Placement, Session, SessionId};

impl LocalBackend {
    fn session_record_path(&self, id: &str) -> PathBuf {
        self.paths.sessions.join(format!("{id}.json"))
    }

    /// Who this workspace belongs to and its [`crate::session::Durable`] part, where wakeway alone can write
    /// (`sessions/`, 0700): a record the store loses is rebuilt from it. Replaced atomically.
    pub(super) async fn write_session_record(&self, session: &Session) -> Result<(), BackendError> {
        let json = serde_json::json!({
            "uuid": session.uuid, "user_id": session.user_id, "tier": session.tier, "created_at": session.created_at,
            "durable": session.durable(),
        });
        let path = self.session_record_path(&session.uuid);
        replace(&path, json.to_string().as_bytes())
            .await
            .map_err(|e| BackendError::Io(format!("cannot write {}: {e}", path.display())))
    }

    /// Every workspace folder, with what its session record says (defaults where it has none).
    pub(super) async fn discover_workspaces(&self) -> Result<Vec<Discovered>, BackendError> {
        let mut found = Vec::new();
        let mut dirs = match tokio::fs::read_dir(&self.paths.workspaces).await {
            Ok(dirs) => dirs,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(BackendError::Io(format!("cannot list {}: {e}", self.paths.workspaces.display()))),
        };
        while let Ok(Some(entry)) = dirs.next_entry().await {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = SessionId::parse(&name) else { continue };
            let meta = self.read_session_record(&id).await;
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

    /// `id`'s session record (`Null` when there is none, or it does not parse).
    async fn read_session_record(&self, id: &SessionId) -> serde_json::Value {
        let mut record = tokio::fs::read(self.session_record_path(id.as_str())).await.ok();
        if record.is_none() && !self.isolated() {
            // Written inside HOME before 0.2; only trusted where the workspace is wakeway's
            // own user anyway.
            record = tokio::fs::read(self.paths.state.join(id.as_str()).join("session.json")).await.ok();
        }
        record.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub(super) async fn remove_session_record(&self, id: &str) {
        let _ = tokio::fs::remove_file(self.session_record_path(id)).await;
    }

    fn run_path(&self, id: &str) -> PathBuf {
        self.paths.run.join(format!("{id}.json"))
    }

    /// Record the process just started for `id`. It must outlive a crash of wakeway, not of the
    /// machine (which takes the process with it): no fsync, the page cache keeps it.
    pub(super) async fn write_run_record(&self, id: &str, placement: &Placement) -> std::io::Result<()> {
        tokio::fs::create_dir_all(&self.paths.run).await?;
        replace(&self.run_path(id), &serde_json::to_vec(placement).map_err(std::io::Error::other)?).await
    }

    pub(super) async fn read_run_record(&self, id: &str) -> Option<Placement> {
        serde_json::from_slice(&tokio::fs::read(self.run_path(id)).await.ok()?).ok()
    }

    pub(super) async fn remove_run_record(&self, id: &str) {
        let _ = tokio::fs::remove_file(self.run_path(id)).await;
    }

    pub(super) fn log_path(&self, id: &str) -> PathBuf {
        self.paths.logs.join(format!("{id}.log"))
    }

    /// `id`'s log, opened for appending (a started process writes to it), and its length now.
    pub(super) async fn open_log(&self, id: &str) -> std::io::Result<(std::fs::File, u64)> {
        let log = tokio::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).await?;
        let start = log.metadata().await.map_or(0, |m| m.len());
        Ok((log.into_std().await, start))
    }

    /// What `id`'s log gained past byte `start`, lowercased (to look for known failures in).
    pub(super) async fn log_since(&self, id: &str, start: u64) -> String {
        let new_log = tokio::fs::read(self.log_path(id))
            .await
            .map(|b| b.get(start as usize..).map(<[u8]>::to_vec))
            .ok()
            .flatten();
        String::from_utf8_lossy(&new_log.unwrap_or_default()).to_ascii_lowercase()
    }

    /// The last lines of the workspace's log, to explain a failed start.
    pub(super) async fn log_tail(&self, id: &str) -> String {
        let text = tokio::fs::read_to_string(self.log_path(id)).await.unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        if tail.is_empty() { String::new() } else { format!("; last log lines: {}", tail.join(" | ")) }
    }
}

/// Replace `path` with `bytes` atomically (a `.tmp` beside it, renamed over it).
async fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}
