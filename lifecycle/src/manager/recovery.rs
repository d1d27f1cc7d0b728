//! Recovery: bringing every session to a consistent state at start-up (adopting workspaces that
//! still run), following other replicas' changes (resync, store events), rebuilding records the
//! store lost from what the backend holds, and workspaces that exited on their own.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use wakeway_config::BackendKind;
use wakeway_proxy::SessionId;

use super::runtime::SessionRuntime;
use super::{DISCOVERY_SAFETY_NET, LifecycleError, Manager, Result, SleepReason};
use crate::backend::{BackendEvent, Discovered, ReconcileReport};
use crate::catalog::Leftovers;

/// How long another replica's local backup may go without writing before its leftovers count as
/// abandoned (a live backup writes continuously; the longest pause is its final fsync).
pub const LOCAL_WRITER_SILENCE: Duration = Duration::from_secs(3600);
use crate::session::{Session, State};

impl Manager {
    /// Which leftovers in the backup folder this start may remove: all of them when nothing else
    /// writes there (the local backend on its own store); otherwise this replica's own, and those
    /// nobody has written to for longer than a live writer can be silent (`[kubernetes]
    /// job_timeout` for backup Jobs, [`LOCAL_WRITER_SILENCE`] for other replicas' local backups).
    fn leftovers_rule(&self) -> Leftovers {
        let config = &self.inner.config;
        let local = config.workspaces.backend == BackendKind::Local;
        let silence = if local { LOCAL_WRITER_SILENCE } else { config.kubernetes.job_timeout };
        // Compared with files' modification times: the real clock, not the policy's.
        let now = SystemTime::now();
        Leftovers {
            sole_writer: local && !self.inner.shared,
            writer: self.inner.replica.clone(),
            stale_before: now.checked_sub(silence).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// Load every session and bring it to a consistent state after a (possibly unclean) stop:
    /// running workspaces that still answer are adopted, others are marked asleep; interrupted
    /// stops are finished; interrupted backups and deletions are left for the sweep to resume.
    pub async fn recover(&self) -> Result<()> {
        let catalog = self.inner.catalog.clone();
        let rule = self.leftovers_rule();
        if let Ok(removed) = tokio::task::spawn_blocking(move || catalog.clean_leftovers(&rule)).await {
            for name in removed {
                tracing::warn!(file = %name, "removed what an interrupted backup left (never trusted)");
            }
        }
        if self.inner.shared {
            // Other replicas may be acting on these sessions right now: only learn the routes.
            // Leftovers of a dead replica are the sweep leader's to finish.
            self.resync().await?;
            tracing::info!(sessions = self.inner.sessions.len(), replica = %self.inner.replica, "sessions loaded from the shared store");
            return Ok(());
        }
        let all = self.inner.store.list().await?;
        let total = all.len();
        match self.inner.backend.reconcile(&all).await {
            Ok(report) => log_reconcile(&report),
            Err(e) => tracing::warn!(error = %e, "could not compare the cluster with the sessions"),
        }
        let mut adopted = 0;
        for s in all {
            let uuid = s.uuid.clone();
            self.runtime_for(&s);
            self.observe(&s);
            match self
                .run_locked(&s.id(), "recover", move |this, rt| async move { this.recover_one(&rt, s).await })
                .await
            {
                Ok(true) => adopted += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(session = %uuid, error = %e, "could not recover session; the sweep will retry")
                }
            }
        }
        // Every record was indexed above and nothing else writes this store: the sweep can
        // start with the sessions due.
        self.full_sweep_done();
        tracing::info!(sessions = total, adopted, "sessions recovered");
        Ok(())
    }

    /// Recover one session from its record (op lock held): true when a running workspace was
    /// adopted.
    async fn recover_one(&self, rt: &SessionRuntime, mut s: Session) -> Result<bool> {
        match s.state {
            State::Creating | State::Starting | State::Waking | State::Resizing | State::Running => {
                match self.inner.backend.find_running(&s).await {
                    Some(_) if s.state != State::Creating => {
                        if s.state != State::Running {
                            s.transition(State::Running, self.now())?;
                            self.save(rt, &mut s).await?;
                        }
                        self.publish(rt, &s);
                        return Ok(true);
                    }
                    _ => {
                        self.inner.backend.stop(&s).await?;
                        s.placement = None;
                        self.transition(rt, &mut s, State::Sleeping).await?;
                    }
                }
            }
            State::Stopping => self.finish_sleep(rt, &mut s, SleepReason::Shutdown).await?,
            _ => self.publish(rt, &s),
        }
        Ok(false)
    }

    /// Bring the in-memory map in line with the store (other replicas' changes).
    pub(super) async fn resync(&self) -> Result<()> {
        let all = self.inner.store.list().await.inspect_err(|e| self.note_store_error(e))?;
        for s in &all {
            self.observe(s);
            let rt = self.runtime_for(s);
            self.publish_if_idle(&rt, s);
        }
        let listed: HashSet<&str> = all.iter().map(|s| s.uuid.as_str()).collect();
        // Deleted sessions the leader forgot (after backup_retention) are forgotten here too.
        self.inner.sessions.retain(|id, rt| rt.state() != State::Deleted || listed.contains(id.as_str()));
        Ok(())
    }

    /// A session another replica changed.
    pub(super) async fn on_store_event(&self, id: &str) {
        if id.is_empty() {
            // (Re)connected: the store may have lost records meanwhile (Redis restarted empty).
            self.inner.discover_due.store(true, Ordering::Release);
            let _ = self.resync().await;
            return;
        }
        let Some(id) = SessionId::parse(id) else { return };
        match self.inner.store.get(id.as_str()).await {
            Ok(Some(s)) => {
                self.observe(&s);
                let rt = self.runtime_for(&s);
                self.publish_if_idle(&rt, &s);
                if s.state == State::Deleted {
                    self.inner.changed.notify_one();
                }
            }
            // Forgotten by the leader after backup_retention: forget it here too. In any other
            // state the store lost it, and the leader rebuilds it from the backend.
            Ok(None) => {
                self.inner.deadlines.remove(&id);
                self.inner.sessions.remove_if(&id, |_, rt| rt.state() == State::Deleted);
            }
            Err(e) => self.note_store_error(&e),
        }
    }

    /// Records the store lost (Redis emptied): rebuilt from what the backend holds. A running
    /// workspace is adopted, the others come back asleep. Nothing is deleted for lack of a record.
    ///
    /// Asking the backend (a directory listing; two list calls on Kubernetes) happens only when
    /// it can find something: a session this replica knows has no record, this replica has just
    /// become the leader, or the store has just (re)connected — and, as a safety net for what
    /// none of these sees (the lease passing to another replica and back between two sweeps while
    /// a record this replica never knew was lost), every [`DISCOVERY_SAFETY_NET`].
    pub(super) async fn rebuild_missing(&self) {
        let Ok(ids) = self.inner.store.ids().await else { return };
        let known: HashSet<&str> = ids.iter().map(String::as_str).collect();
        if !self.discovery_due(&known) {
            return;
        }
        let found = match self.inner.backend.discover().await {
            Ok(found) => found,
            Err(e) => {
                self.inner.discover_due.store(true, Ordering::Release);
                tracing::debug!(error = %e, "could not list the backend's workspaces; retried next sweep");
                return;
            }
        };
        for d in found.into_iter().filter(|d| !known.contains(d.id.as_str())) {
            self.rebuild(d).await;
        }
    }

    /// Whether to ask the backend for its workspaces now (see [`Manager::rebuild_missing`]);
    /// noted as asked when it is.
    fn discovery_due(&self, known: &HashSet<&str>) -> bool {
        // A deleted session may have been forgotten by the leader (its record removed): no loss.
        let lost =
            self.inner.sessions.iter().any(|rt| rt.state() != State::Deleted && !known.contains(rt.key().as_str()));
        let now_ms = self.inner.clock.now_ms();
        let stale =
            now_ms - self.inner.last_discovery_ms.load(Ordering::Acquire) >= DISCOVERY_SAFETY_NET.as_millis() as i64;
        if !self.inner.discover_due.swap(false, Ordering::AcqRel) && !lost && !stale {
            return false;
        }
        self.inner.last_discovery_ms.store(now_ms, Ordering::Release);
        true
    }

    /// Write the record of a workspace the backend holds and the store lost.
    async fn rebuild(&self, d: Discovered) {
        let Some(id) = SessionId::parse(&d.id) else { return };
        let now = self.now();
        let mut s = Session::new(&id, &d.user_id, &d.tier, d.created_at.unwrap_or(now));
        s.state = State::Sleeping;
        s.slept_at = Some(now);
        s.last_error = Some("rebuilt from the workspace after the store lost its record".into());
        // Its policy (`keep`, overrides, a requested deletion) and a restore in flight, as kept
        // with the workspace: a kept session stays kept, an interrupted restore is finished.
        s.policy = d.durable.policy;
        s.delete_requested = d.durable.delete_requested;
        s.restore = d.durable.restore;
        // Adopted if this replica still routes to it and it is still that workspace.
        s.placement = self.runtime(&id).and_then(|rt| rt.routed_placement());
        if s.placement.is_some() && self.inner.backend.is_alive(&s) {
            s.state = State::Running;
            s.slept_at = None;
            s.awake_since = Some(now);
        } else {
            s.placement = None;
            if s.restore.is_some() {
                s.state = State::Restoring;
            }
        }
        // What the lost record counted is gone with it; counting starts again now, as it is now.
        s.usage = crate::usage::Usage::starting(now, crate::usage::Since::of(&s));
        match self.inner.store.put(&s).await {
            Ok(stored) => {
                self.observe(&stored);
                tracing::warn!(session = %stored.uuid, state = stored.state.as_str(), "session record rebuilt from its workspace");
                let rt = self.runtime_for(&stored);
                self.publish_if_idle(&rt, &stored);
            }
            Err(e) => tracing::debug!(session = %id, error = %e, "rebuild raced with another writer"),
        }
    }

    /// Something the backend noticed: a workspace that exited on its own is recorded asleep
    /// (it wakes on the next request).
    pub(super) async fn on_event(&self, event: BackendEvent) {
        let BackendEvent::Exited { id, placement, detail } = event;
        let Some(id) = SessionId::parse(&id) else { return };
        let _ = self
            .run_locked(&id, "exit", move |this, rt| async move {
                let mut s = this.load(&rt.handle.id).await?;
                if s.state != State::Running || s.placement.as_ref() != Some(&placement) {
                    return Ok(()); // an expected exit (sleep, resize) or an old process
                }
                tracing::warn!(session = %s.uuid, %detail, "workspace exited unexpectedly; it is asleep until the next request");
                s.last_error = Some(format!("the workspace exited unexpectedly ({detail})"));
                s.placement = None;
                this.transition(&rt, &mut s, State::Sleeping).await?;
                this.inner.metrics.sleeps.with_label_values(&["crashed"]).inc();
                Ok::<_, LifecycleError>(())
            })
            .await;
    }
}

/// Log what reconciliation found. Nothing here is acted on: objects are never deleted because
/// of a report, and a session whose objects vanished shows it when it next starts.
fn log_reconcile(report: &ReconcileReport) {
    if report.is_clean() {
        tracing::debug!("the backend's objects match the sessions");
        return;
    }
    for o in &report.orphans {
        tracing::warn!(kind = o.kind, name = %o.name, uid = %o.uid, session = %o.session, "object labelled managed-by=wakeway has no session; kept (back it up or delete it by hand)");
    }
    for m in &report.vanished {
        tracing::warn!(session = %m.session, kind = m.kind, name = %m.name, recorded_uid = %m.recorded_uid, found_uid = ?m.found_uid, "an object recorded at creation is gone or was replaced");
    }
    for d in &report.scaled_elsewhere {
        tracing::warn!(session = %d.session, name = %d.name, replicas = d.replicas, expected = ?d.expected, other_owners = ?d.other_owners, "Deployment scaled by someone other than wakeway (nothing else may own spec.replicas)");
    }
}
