//! Deleting: stop, back up (verified) and only then destroy a workspace's data; a failed backup
//! keeps everything and is retried with backoff. Deleted records are forgotten after
//! `backup_retention`.

use std::time::{Duration, Instant};

use serde_json::json;
use wakeway_proxy::SessionId;

use super::checkpoints::{backup_fields, rfc3339};
use super::runtime::SessionRuntime;
use super::tokens::end_cookies;
use super::{LifecycleError, Manager, Result, SleepReason};
use crate::backend::BackendError;
use crate::catalog::BackupReason;
use crate::failpoint;
use crate::session::{Session, State};
use crate::store::StoreError;
use crate::webhook::Event;

impl Manager {
    /// Back up (verified) and delete. `requested` marks an API delete (kept across failures and
    /// retried by the sweep until it succeeds).
    pub async fn delete(&self, id: &SessionId, requested: bool) -> Result<Session> {
        self.run_locked(id, "delete", move |this, rt| async move { this.delete_inner(&rt, requested).await }).await
    }

    async fn delete_inner(&self, rt: &SessionRuntime, requested: bool) -> Result<Session> {
        let mut s = self.load(&rt.handle.id).await?;
        if s.state == State::Deleted {
            return Ok(s);
        }
        // Whatever happens next, nobody keeps a way in: every path below saves the record.
        end_cookies(rt, &mut s);
        if requested && !s.delete_requested {
            s.delete_requested = true;
            self.save(rt, &mut s).await?;
        }
        if s.state != State::Deleting {
            if s.state.is_awake() || s.state == State::Stopping {
                self.sleep_inner(rt, &mut s, SleepReason::Api).await?;
            }
            if s.state == State::Creating {
                self.transition(rt, &mut s, State::Sleeping).await?;
            }
            self.back_up_for_deletion(rt, &mut s).await?;
        }
        self.destroy(rt, &mut s).await?;
        Ok(s)
    }

    /// Back up the (stopped) workspace and verify the zip: then `deleting`. A failure keeps
    /// everything (`backup_failed`) and schedules a retry.
    async fn back_up_for_deletion(&self, rt: &SessionRuntime, s: &mut Session) -> Result<()> {
        self.transition(rt, s, State::BackingUp).await?;
        let started = Instant::now();
        let result = self.inner.backend.backup(s, self.now(), BackupReason::Delete).await;
        let secs = started.elapsed().as_secs_f64();
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.inner.metrics.backups.with_label_values(&[label]).inc();
        self.inner.metrics.backup_seconds.with_label_values(&[label]).observe(secs);
        match result {
            Ok(info) => {
                failpoint::hit("backup.after_rename");
                tracing::info!(session = %s.uuid, file = %info.file, bytes = info.size, entries = info.entries, sha256 = %info.sha256, "backup written and verified");
                self.event(Event::BackupVerified, s, backup_fields(&info, &BackupReason::Delete));
                s.backup = Some(info);
                s.last_error = None;
                self.transition(rt, s, State::Deleting).await
            }
            Err(e) => {
                self.record_backup_failure(s, &e);
                self.transition(rt, s, State::BackupFailed).await?;
                Err(LifecycleError::BackupFailed(e))
            }
        }
    }

    /// Count a failed backup on `s` and schedule the next attempt (doubling, at most an hour).
    fn record_backup_failure(&self, s: &mut Session, e: &BackendError) {
        s.backup_failures += 1;
        let backoff = self
            .inner
            .config
            .lifecycle
            .backup_retry
            .saturating_mul(1 << (s.backup_failures - 1).min(10))
            .min(Duration::from_secs(3600));
        s.next_backup_attempt = Some(crate::policy::after(self.now(), backoff));
        s.last_error = Some(format!("backup failed (attempt {}): {e}", s.backup_failures));
        tracing::error!(session = %s.uuid, attempt = s.backup_failures, retry_in = ?backoff, error = %e, "backup failed; the workspace is kept");
        let fields = json!({
            "error": e.to_string(),
            "attempt": s.backup_failures,
            "next_attempt": s.next_backup_attempt.map(rfc3339),
        });
        self.event(Event::BackupFailed, s, fields);
    }

    /// Delete the data of a session in `deleting` (its verified backup is recorded) and record it
    /// `deleted`.
    async fn destroy(&self, rt: &SessionRuntime, s: &mut Session) -> Result<()> {
        failpoint::hit("delete.before_destroy");
        if let Err(e) = self.inner.backend.destroy(s).await {
            s.last_error = Some(format!("delete failed after a verified backup: {e}"));
            self.save(rt, s).await?;
            return Err(e.into());
        }
        failpoint::hit("delete.after_destroy");
        s.placement = None;
        self.transition(rt, s, State::Deleted).await?;
        let trigger = if s.delete_requested { "api" } else { "policy" };
        self.inner.metrics.deletes.with_label_values(&[trigger]).inc();
        self.inner.changed.notify_one();
        tracing::info!(session = %s.uuid, trigger, backup = ?s.backup.as_ref().map(|b| &b.file), "workspace deleted");
        let backup = s.backup.as_ref().map(|b| b.file.trim_end_matches(".zip").to_string());
        self.event(Event::Deleted, s, json!({ "trigger": trigger, "backup": backup }));
        Ok(())
    }

    /// Remove the record of a session deleted `backup_retention` ago (the sweep's `Forget`).
    pub(super) async fn forget(&self, id: &SessionId) -> Result<()> {
        self.run_locked(id, "forget", move |this, rt| async move {
            let s = this.load(&rt.handle.id).await?;
            if s.state != State::Deleted {
                return Ok(());
            }
            // Its usage outlives it (`/usage` reads it back), kept before the record goes.
            let record = serde_json::to_vec(&s)
                .map_err(|e| StoreError::Corrupt { id: s.uuid.clone(), message: e.to_string() })?;
            this.inner.store.put_blob(&crate::usage::forgotten_key(&s.uuid), &record).await?;
            this.inner.store.remove(&s.uuid, s.version).await?;
            this.inner.sessions.remove(&rt.handle.id);
            this.inner.deadlines.remove(&rt.handle.id);
            tracing::info!(session = %s.uuid, "deleted session record forgotten after backup_retention");
            Ok(())
        })
        .await
    }
}
