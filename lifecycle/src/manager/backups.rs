//! The manager's operations on backups: the catalog (list, details, `keep`, download), restores
//! (into a new session or a sleeping one), and per-session policy overrides.
//!
//! A restore into an existing session first takes a verified backup of what the folder holds
//! (`pre_restore`): replacing content is deleting it, and nothing is deleted without a verified
//! backup. Every step is persisted (state `restoring` with the restore recorded) before the folder
//! is touched, so a crash anywhere is finished by the next sweep or wake.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wakeway_proxy::{ActivitySource, SessionId};

use super::checkpoints::backup_fields;
use super::runtime::SessionRuntime;
use super::{LifecycleError, Manager, Result};
use crate::backend::BackendError;
use crate::catalog::{BackupReason, BackupRecord, CatalogError};
use crate::failpoint;
use crate::restore::{self, Options, Report, RestoreError};
use crate::session::{RestoreOp, Session, State};
use crate::webhook::Event;

/// What to restore, and how.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// Catalog id of the backup.
    pub backup: String,
    /// Skip (and report) symlinks that point outside the workspace instead of refusing the zip.
    pub skip_escaping_symlinks: bool,
}

/// `GET /backups` filters.
#[derive(Debug, Clone, Default)]
pub struct BackupFilter {
    pub user_id: Option<String>,
    pub session: Option<String>,
}

/// A change to a session's policy overrides: `Some(None)` clears an override.
#[derive(Debug, Clone, Default)]
pub struct PolicyPatch {
    pub idle_timeout: Option<Option<Duration>>,
    pub sleep_to_delete: Option<Option<Duration>>,
    pub keep: Option<bool>,
}

fn catalog_error(e: CatalogError) -> LifecycleError {
    match e {
        CatalogError::NotFound(id) => LifecycleError::BackupNotFound(id),
        CatalogError::Io(why) => LifecycleError::Backend(BackendError::Io(why)),
    }
}

fn task_error(e: tokio::task::JoinError) -> LifecycleError {
    LifecycleError::task_failed("catalog", e)
}

impl Manager {
    /// Session id → user, to name the user of backups found without a record.
    async fn users(&self) -> Arc<HashMap<String, String>> {
        let all = self.inner.store.list().await.unwrap_or_default();
        Arc::new(all.into_iter().map(|s| (s.uuid, s.user_id)).collect())
    }

    /// Every backup in the catalog matching `filter`, oldest first.
    pub async fn backups(&self, filter: BackupFilter) -> Result<Vec<BackupRecord>> {
        let users = self.users().await;
        let catalog = self.inner.catalog.clone();
        let now = self.now();
        let all = tokio::task::spawn_blocking(move || catalog.list(now, &|s| users.get(s).cloned()))
            .await
            .map_err(task_error)?;
        Ok(all
            .into_iter()
            .filter(|r| filter.user_id.as_deref().is_none_or(|u| r.user_id.as_deref() == Some(u)))
            .filter(|r| filter.session.as_deref().is_none_or(|id| r.session.as_deref() == Some(id)))
            .collect())
    }

    /// One backup; verified again end to end when `verify`, or when its file changed.
    pub async fn backup_record(&self, id: &str, verify: bool) -> Result<BackupRecord> {
        let users = self.users().await;
        let catalog = self.inner.catalog.clone();
        let (id, now) = (id.to_string(), self.now());
        tokio::task::spawn_blocking(move || catalog.get(&id, now, &|s| users.get(s).cloned(), verify))
            .await
            .map_err(task_error)?
            .map_err(catalog_error)
    }

    /// Mark a backup `keep` (exempt from `backup_retention`) or clear it.
    pub async fn set_backup_keep(&self, id: &str, keep: bool) -> Result<BackupRecord> {
        let users = self.users().await;
        let catalog = self.inner.catalog.clone();
        let (id, now) = (id.to_string(), self.now());
        let record = tokio::task::spawn_blocking(move || catalog.set_keep(&id, keep, now, &|s| users.get(s).cloned()))
            .await
            .map_err(task_error)?
            .map_err(catalog_error)?;
        tracing::info!(backup = %record.id, keep, "backup keep flag set");
        Ok(record)
    }

    /// A verified backup's zip and record, for download.
    pub async fn backup_download(&self, id: &str) -> Result<(PathBuf, BackupRecord)> {
        let record = self.verified_backup(id).await?;
        Ok((self.inner.catalog.zip_path(&record.id), record))
    }

    async fn verified_backup(&self, id: &str) -> Result<BackupRecord> {
        let record = self.backup_record(id, false).await?;
        if !record.verified {
            return Err(LifecycleError::BackupUnverified {
                id: record.id,
                why: record.error.unwrap_or_else(|| "not verified".into()),
            });
        }
        Ok(record)
    }

    /// Check that `req` can be restored (a verified backup, every entry safe, within limits;
    /// with `whole_file`, its SHA-256 too) before any state changes. A refusal is counted.
    async fn restorable(&self, req: &RestoreRequest, whole_file: bool) -> Result<BackupRecord> {
        let result = async {
            let record = self.verified_backup(&req.backup).await?;
            let zip = self.inner.catalog.zip_path(&record.id);
            let limits = self.inner.limits;
            let options = Options {
                skip_escaping_symlinks: req.skip_escaping_symlinks,
                expected_sha256: whole_file.then(|| record.sha256.clone()),
            };
            tokio::task::spawn_blocking(move || restore::inspect(&zip, &limits, &options))
                .await
                .map_err(|e| LifecycleError::task_failed("restore check", e))?
                .map_err(|e| LifecycleError::Backend(BackendError::Restore(e)))?;
            Ok(record)
        }
        .await;
        if let Err(e) = &result {
            self.restore_refused(&req.backup, e).await;
        }
        result
    }

    /// Count a refused or failed restore; a zip found damaged is marked failed in the catalog.
    async fn restore_refused(&self, backup: &str, e: &LifecycleError) -> &'static str {
        if let LifecycleError::Backend(BackendError::Restore(RestoreError::Corrupt(why))) = e {
            let catalog = self.inner.catalog.clone();
            let (id, why) = (backup.to_string(), why.clone());
            let _ = tokio::task::spawn_blocking(move || catalog.mark_failed(&id, &why)).await;
        }
        let label = match e {
            LifecycleError::BackupNotFound(_)
            | LifecycleError::BackupUnverified { .. }
            | LifecycleError::Backend(BackendError::Restore(RestoreError::Rejected(_) | RestoreError::Corrupt(_))) => {
                "rejected"
            }
            _ => "failed",
        };
        self.inner.metrics.restores.with_label_values(&[label]).inc();
        tracing::warn!(backup, error = %e, "restore refused");
        label
    }

    /// Create a session whose workspace starts as the backup `req` names. The backup is checked
    /// before the session exists. Returns the session and the restore's result: a session whose
    /// restore failed afterwards exists, asleep, with an empty workspace.
    pub async fn create_restored(&self, user_id: &str, req: RestoreRequest) -> Result<(Session, Result<Report>)> {
        // The whole file is checked here: a damaged zip must not leave an empty session behind.
        self.restorable(&req, true).await?;
        let this = self.clone();
        let user_id = user_id.to_string();
        self.run_task("create", async move {
            let (rt, mut s) = this.create_record(&user_id, &this.inner.config.workspaces.default_tier).await?;
            let _op = rt.op.lock().await;
            s.restore = Some(RestoreOp {
                backup: req.backup.clone(),
                safety_backup: None,
                fresh: true,
                skip_escaping_symlinks: req.skip_escaping_symlinks,
                started_at: this.now(),
            });
            this.transition(&rt, &mut s, State::Restoring).await?;
            this.event(Event::Created, &s, json!({ "tier": s.tier, "restore_from": req.backup }));
            let result = this.run_restore(&rt, &mut s).await;
            drop(_op);
            if result.is_ok() {
                this.request_wake(&rt.handle, ActivitySource::Created);
            }
            Ok((s, result))
        })
        .await
    }

    /// Restore backup `req` into sleeping session `id`, after a verified backup of its current
    /// content.
    pub async fn restore(&self, id: &SessionId, req: RestoreRequest) -> Result<(Session, Report)> {
        self.run_locked(id, "restore", move |this, rt| async move {
            let mut s = this.load(&rt.handle.id).await?;
            match s.state {
                State::Sleeping => {}
                State::Deleting | State::Deleted => return Err(LifecycleError::Deleted(s.uuid)),
                other => {
                    return Err(LifecycleError::Conflict {
                        id: s.uuid.clone(),
                        state: other.as_str(),
                        what: "a backup is restored only into a sleeping workspace; put it to sleep first \
                               (POST /session/{uuid}/sleep)"
                            .into(),
                    });
                }
            }
            this.restorable(&req, false).await?;
            s.restore = Some(RestoreOp {
                backup: req.backup.clone(),
                safety_backup: None,
                fresh: false,
                skip_escaping_symlinks: req.skip_escaping_symlinks,
                started_at: this.now(),
            });
            this.transition(&rt, &mut s, State::Restoring).await?;
            let report = this.run_restore(&rt, &mut s).await?;
            Ok((s, report))
        })
        .await
    }

    /// Finish a restore a crash interrupted (the sweep's `FinishRestore`).
    pub(super) async fn finish_restore(&self, id: &SessionId) -> Result<Session> {
        self.run_locked(id, "restore", move |this, rt| async move {
            let mut s = this.load(&rt.handle.id).await?;
            if s.state == State::Restoring {
                tracing::info!(session = %s.uuid, "resuming an interrupted restore");
                this.run_restore(&rt, &mut s).await?;
            }
            Ok(s)
        })
        .await
    }

    /// Run (or resume) the restore recorded in `s` (state `restoring`, op lock held). Always ends
    /// with the session asleep: restored, or unchanged with `last_error` saying why.
    pub(super) async fn run_restore(&self, rt: &SessionRuntime, s: &mut Session) -> Result<Report> {
        let Some(op) = s.restore.clone() else {
            self.inner.backend.clean_interrupted_restore(s).await?;
            self.transition(rt, s, State::Sleeping).await?;
            return Err(LifecycleError::Conflict {
                id: s.uuid.clone(),
                state: "restoring",
                what: "no restore was recorded".into(),
            });
        };
        let started = Instant::now();
        let result = self.restore_steps(rt, s, &op).await;
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(report) => {
                failpoint::hit("restore.after_swap");
                self.record_restored(rt, s, &op, &report, secs).await?;
                Ok(report)
            }
            Err(e) => {
                self.record_restore_failed(rt, s, &op, &e, secs).await;
                Err(e)
            }
        }
    }

    /// Record a finished restore: asleep, restored from `op.backup`.
    async fn record_restored(
        &self,
        rt: &SessionRuntime,
        s: &mut Session,
        op: &RestoreOp,
        report: &Report,
        secs: f64,
    ) -> Result<()> {
        let now = self.now();
        let safety_backup = s.restore.as_ref().and_then(|o| o.safety_backup.clone());
        s.restore = None;
        s.restored_from = Some(op.backup.clone());
        s.restored_at = Some(now);
        s.pre_restore_backup = safety_backup.clone();
        s.last_error = None;
        // A restored workspace gets a full sleep_to_delete before the policy deletes it.
        s.slept_at = Some(now);
        s.warned_delete_for = None;
        self.transition(rt, s, State::Sleeping).await?;
        self.inner.metrics.restores.with_label_values(&["ok"]).inc();
        self.inner.metrics.restore_seconds.with_label_values(&["ok"]).observe(secs);
        tracing::info!(session = %s.uuid, backup = %op.backup, files = report.files, bytes = report.bytes, skipped = report.skipped.len(), seconds = secs, "backup restored");
        let fields = json!({
            "backup": op.backup,
            "safety_backup": safety_backup,
            "files": report.files,
            "bytes": report.bytes,
            "skipped": report.skipped,
        });
        self.event(Event::Restored, s, fields);
        Ok(())
    }

    /// Record a failed restore: the folder tidied up, the session asleep and unchanged, with
    /// `last_error` saying why.
    async fn record_restore_failed(
        &self,
        rt: &SessionRuntime,
        s: &mut Session,
        op: &RestoreOp,
        e: &LifecycleError,
        secs: f64,
    ) {
        if let Err(clean) = self.inner.backend.clean_interrupted_restore(s).await {
            tracing::error!(session = %s.uuid, error = %clean, "cannot tidy up after a failed restore");
        }
        let label = self.restore_refused(&op.backup, e).await;
        self.inner.metrics.restore_seconds.with_label_values(&[label]).observe(secs);
        tracing::error!(session = %s.uuid, backup = %op.backup, error = %e, "restore failed; the workspace is unchanged");
        // The record may be stale if the store failed; the sweep retries from `restoring`.
        if let Ok(fresh) = self.load(&rt.handle.id).await {
            *s = fresh;
        }
        s.restore = None;
        s.last_error = Some(format!("restore of {} failed, the workspace is unchanged: {e}", op.backup));
        if let Err(save) = self.transition(rt, s, State::Sleeping).await {
            tracing::error!(session = %s.uuid, error = %save, "cannot record the failed restore; the sweep retries");
        }
        self.event(Event::RestoreFailed, s, json!({ "backup": op.backup, "error": e.to_string() }));
    }

    async fn restore_steps(&self, rt: &SessionRuntime, s: &mut Session, op: &RestoreOp) -> Result<Report> {
        let record = self.verified_backup(&op.backup).await?;
        if !op.fresh && op.safety_backup.is_none() {
            // The folder must hold the old content (a crash mid-swap is finished first).
            self.inner.backend.clean_interrupted_restore(s).await?;
            let info = self.inner.backend.backup(s, self.now(), BackupReason::PreRestore).await.map_err(|e| {
                self.inner.metrics.backups.with_label_values(&["failed"]).inc();
                LifecycleError::SafetyBackupFailed { id: s.uuid.clone(), source: e }
            })?;
            self.inner.metrics.backups.with_label_values(&["ok"]).inc();
            tracing::info!(session = %s.uuid, file = %info.file, "backup of the content being replaced written and verified");
            self.event(Event::BackupVerified, s, backup_fields(&info, &BackupReason::PreRestore));
            if let Some(op) = s.restore.as_mut() {
                op.safety_backup = Some(info.file.trim_end_matches(".zip").to_string());
            }
            self.save(rt, s).await?;
            failpoint::hit("restore.after_safety_backup");
        }
        let zip = self.inner.catalog.zip_path(&record.id);
        let options =
            Options { skip_escaping_symlinks: op.skip_escaping_symlinks, expected_sha256: Some(record.sha256.clone()) };
        Ok(self.inner.backend.restore(s, &zip, self.inner.limits, options).await?)
    }

    /// Change a session's policy overrides (the API checked them against the admin's bounds).
    pub async fn set_policy(&self, id: &SessionId, patch: PolicyPatch) -> Result<Session> {
        self.run_locked(id, "policy", move |this, rt| async move {
            let mut s = this.load(&rt.handle.id).await?;
            if matches!(s.state, State::Deleting | State::Deleted) {
                return Err(LifecycleError::Deleted(s.uuid));
            }
            let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
            if let Some(idle) = patch.idle_timeout {
                s.policy.idle_timeout_ms = idle.map(ms);
            }
            if let Some(sleep) = patch.sleep_to_delete {
                s.policy.sleep_to_delete_ms = sleep.map(ms);
            }
            if let Some(keep) = patch.keep {
                s.policy.keep = keep;
            }
            this.save(&rt, &mut s).await?;
            tracing::info!(session = %s.uuid, policy = ?s.policy, "policy overrides set");
            Ok(s)
        })
        .await
    }
}
