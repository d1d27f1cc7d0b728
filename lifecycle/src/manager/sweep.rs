//! The background loop (sweep, checkpoints, backend and store events), supervised so a panic in
//! one step is logged, counted and followed by the next, and the sweep: the idle policy applied
//! by the one replica holding the sweep lease to the sessions due (see `deadlines`) and every
//! running one, or to every session in the store when the deadline index may be incomplete, and
//! backups pruned after `backup_retention`.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use wakeway_proxy::SessionId;

use super::{FULL_SWEEP_SAFETY_NET, LifecycleError, Manager, Result, SleepReason};
use crate::backend::BackendEvent;
use crate::policy::Action;
use crate::session::{Session, State};

impl Manager {
    /// Run the sweep, checkpoints, backend events and (shared store) the publication of
    /// sessions active again until `shutdown` fires.
    pub async fn run_background(
        &self,
        events: mpsc::UnboundedReceiver<BackendEvent>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        // Beside the loop, not in it: a sweep may take minutes (backups) and publication is the
        // point of being prompt.
        tokio::join!(self.background_loop(events, shutdown.clone()), self.publish_active_again_until(shutdown));
    }

    async fn background_loop(
        &self,
        mut events: mpsc::UnboundedReceiver<BackendEvent>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut store_events = self.inner.store.subscribe().await;
        let mut sweep = tokio::time::interval(self.inner.config.lifecycle.sweep_interval);
        let mut checkpoint = tokio::time::interval(self.inner.config.lifecycle.checkpoint_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut restarts = Restarts::default();
        loop {
            tokio::select! {
                _ = sweep.tick() => restarts.run(self, "sweep", async { let _ = self.sweep().await; }).await,
                _ = checkpoint.tick() => restarts.run(self, "checkpoint", self.checkpoint()).await,
                Some(event) = events.recv() => restarts.run(self, "backend_events", self.on_event(event)).await,
                Some(id) = async { match store_events.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    restarts.run(self, "store_events", self.on_store_event(&id)).await
                }
                _ = shutdown.changed() => break,
            }
        }
        restarts.run(self, "checkpoint", self.checkpoint()).await;
    }

    /// Apply the policy to every session once. Skips everything if the store cannot be read
    /// (never decide on stale data).
    pub async fn sweep(&self) -> Result<()> {
        if !self.inner.shared {
            return self.sweep_as_leader().await;
        }
        let ttl = self.inner.config.store.lease_ttl;
        match self.inner.store.lease("sweep", &self.inner.replica, ttl).await {
            Ok(true) => {
                if !self.inner.leading.swap(true, Ordering::AcqRel) {
                    // Records may have been lost while another replica led (or none did), and
                    // this replica's deadline index may have missed changes meanwhile.
                    self.inner.discover_due.store(true, Ordering::Release);
                    self.inner.full_sweep_due.store(true, Ordering::Release);
                }
            }
            Ok(false) => {
                self.inner.leading.store(false, Ordering::Release);
                // Other replicas' changes arrive as store events; reading every record again is
                // the safety net for lost ones (and is redone at every reconnect).
                if !self.full_sweep_due() {
                    return Ok(());
                }
                self.resync().await?;
                self.full_sweep_done();
                return Ok(());
            }
            Err(e) => {
                self.inner.leading.store(false, Ordering::Release);
                self.note_store_error(&e);
                tracing::warn!(error = %e, "sweep skipped: the store is unavailable");
                return Err(e.into());
            }
        }
        // Keep the lease while sweeping; stop issuing actions if it is lost.
        let renew = async {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if !matches!(self.inner.store.lease("sweep", &self.inner.replica, ttl).await, Ok(true)) {
                    tracing::warn!("the sweep lease was lost; stopping this sweep");
                    self.inner.leading.store(false, Ordering::Release);
                    return;
                }
            }
        };
        tokio::select! {
            result = self.sweep_as_leader() => result,
            () = renew => Ok(()),
        }
    }

    async fn sweep_as_leader(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self.sweep_every_session().await;
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.inner.metrics.sweep_seconds.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
        result
    }

    async fn sweep_every_session(&self) -> Result<()> {
        if self.inner.shared {
            self.merge_activity().await;
            self.rebuild_missing().await;
        }
        if self.full_sweep_due() {
            return self.sweep_all().await;
        }
        let now = self.now();
        let due = self.load_each(self.to_visit(now)).await?;
        self.prune_backups(now, &due).await;
        self.prune_tokens().await;
        for s in due {
            self.sweep_session(s, now).await;
        }
        Ok(())
    }

    /// Whether this sweep reads every record: the deadline index is not known complete yet (see
    /// [`Manager::full_sweep_done`]) or, with a shared store, the last full sweep is
    /// [`FULL_SWEEP_SAFETY_NET`] old.
    fn full_sweep_due(&self) -> bool {
        if self.inner.full_sweep_due.load(Ordering::Acquire) {
            return true;
        }
        let since = self.inner.clock.now_ms() - self.inner.last_full_sweep_ms.load(Ordering::Acquire);
        self.inner.shared && since >= FULL_SWEEP_SAFETY_NET.as_millis() as i64
    }

    /// Every record has been indexed: from now on the sweep visits only the sessions due.
    pub(super) fn full_sweep_done(&self) {
        self.inner.last_full_sweep_ms.store(self.inner.clock.now_ms(), Ordering::Release);
        self.inner.full_sweep_due.store(false, Ordering::Release);
    }

    /// The policy applied to every record in the store, each indexed on the way.
    async fn sweep_all(&self) -> Result<()> {
        let all = match self.inner.store.list().await {
            Ok(all) => all,
            Err(e) => {
                self.note_store_error(&e);
                tracing::warn!(error = %e, "sweep skipped: the store is unavailable");
                return Err(e.into());
            }
        };
        let now = self.now();
        self.prune_backups(now, &all).await;
        self.prune_tokens().await;
        for s in all {
            self.observe(&s);
            self.sweep_session(s, now).await;
        }
        self.full_sweep_done();
        Ok(())
    }

    /// The sessions to look at now: those the deadline index says are due, and every running
    /// one (a workspace that died is noticed at the next sweep; they are few and in memory).
    fn to_visit(&self, now: DateTime<Utc>) -> Vec<SessionId> {
        let mut ids = self.inner.deadlines.due(now);
        ids.extend(self.inner.sessions.iter().filter(|rt| rt.state() == State::Running).map(|rt| rt.key().clone()));
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The stored record of each of `ids`; one that is gone leaves the deadline index (forgotten,
    /// or lost and rebuilt by `rebuild_missing`, which indexes it again). Nothing is decided
    /// when the store cannot be read.
    async fn load_each(&self, ids: Vec<SessionId>) -> Result<Vec<Session>> {
        let wanted: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        let found = self.inner.store.get_many(&wanted).await.map_err(|e| {
            self.note_store_error(&e);
            tracing::warn!(error = %e, "sweep skipped: the store is unavailable");
            LifecycleError::from(e)
        })?;
        let present: HashSet<&str> = found.iter().map(|s| s.uuid.as_str()).collect();
        for id in ids.iter().filter(|id| !present.contains(id.as_str())) {
            self.inner.deadlines.remove(id);
        }
        Ok(found)
    }

    /// Decide what `s` needs now and do it (sleep, finish a sleep, delete, forget, finish a
    /// restore), or send the warning due.
    async fn sweep_session(&self, mut s: Session, now: DateTime<Utc>) {
        let rt = self.runtime_for(&s);
        self.publish_if_idle(&rt, &s);
        // An operation in flight owns this session right now; look again next sweep.
        let Ok(guard) = rt.op.try_lock() else { return };
        let crashed = s.state == State::Running && !self.inner.backend.is_alive(&s);
        let action = if crashed { Action::FinishSleep } else { self.decide(&rt, &s) };
        // Looked at now: due again at its next deadline. Indexed before a warning changes `s`
        // (a warning that could not be recorded stays due); what an action writes is indexed
        // when it is written.
        self.index_deadline(&s);
        if action == Action::Nothing {
            let seen = self.seen(&rt, &s);
            self.warn_if_due(&rt, &mut s, seen, now).await;
        }
        drop(guard);
        let id = rt.handle.id.clone();
        let result = match action {
            Action::Nothing => Ok(()),
            Action::Sleep => self.sleep(&id, SleepReason::Idle).await.map(drop),
            Action::SleepOpenTab => self.sleep(&id, SleepReason::OpenTabCap).await.map(drop),
            Action::FinishSleep => {
                self.sleep(&id, if crashed { SleepReason::Crashed } else { SleepReason::Shutdown }).await.map(drop)
            }
            Action::BackUpAndDelete => self.delete(&id, false).await.map(drop),
            Action::Forget => self.forget(&id).await,
            Action::FinishRestore => self.finish_restore(&id).await.map(drop),
        };
        match result {
            // Another replica runs an operation on it; its lease expires if that replica dies.
            Err(LifecycleError::Busy { .. }) => tracing::debug!(session = %id, ?action, "sweep action deferred: busy"),
            Err(e) => tracing::warn!(session = %id, ?action, error = %e, "sweep action failed"),
            Ok(()) => {}
        }
    }

    /// Delete backups older than `backup_retention` (by the time in their name), except those
    /// marked `keep` and those a session still needs (a restore or a deletion in flight).
    /// `sessions` holds at least every session in those states: they are due at every sweep.
    async fn prune_backups(&self, now: DateTime<Utc>, sessions: &[Session]) {
        let cutoff = crate::policy::before(now, self.inner.config.lifecycle.backup_retention);
        let protected = backups_in_use(sessions);
        let catalog = self.inner.catalog.clone();
        let Ok(pruned) = tokio::task::spawn_blocking(move || catalog.prune(cutoff, &protected)).await else { return };
        for (id, result) in pruned {
            match result {
                Ok(()) => {
                    self.inner.metrics.backups_pruned.with_label_values(&["ok"]).inc();
                    tracing::info!(backup = %id, "backup pruned after backup_retention");
                }
                Err(e) => {
                    self.inner.metrics.backups_pruned.with_label_values(&["failed"]).inc();
                    tracing::warn!(backup = %id, error = %e, "could not prune backup");
                }
            }
        }
    }
}

/// The backups a session still needs: those of a restore or a deletion in flight.
fn backups_in_use(sessions: &[Session]) -> HashSet<String> {
    let mut protected = HashSet::new();
    for s in sessions {
        if let Some(op) = &s.restore {
            protected.insert(op.backup.clone());
            protected.extend(op.safety_backup.clone());
        }
        if matches!(s.state, State::BackingUp | State::Deleting)
            && let Some(b) = &s.backup
        {
            protected.insert(b.file.trim_end_matches(".zip").to_string());
        }
    }
    protected
}

/// The background loop's supervision: a step that panics (a bug) is logged at error and counted
/// in `wakeway_background_restarts_total{task}`, and the loop goes on after a pause that doubles
/// while steps keep panicking (so a step that always panics neither spins nor stops every sweep).
#[derive(Default)]
struct Restarts {
    consecutive: u32,
}

/// The first pause after a panic; the longest is [`MAX_RESTART_BACKOFF`].
const RESTART_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

impl Restarts {
    async fn run(&mut self, manager: &Manager, task: &'static str, step: impl Future<Output = ()>) {
        let Err(panic) = AssertUnwindSafe(step).catch_unwind().await else {
            self.consecutive = 0;
            return;
        };
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        manager.inner.metrics.background_restarts.with_label_values(&[task]).inc();
        let backoff = RESTART_BACKOFF.saturating_mul(1 << self.consecutive.min(16)).min(MAX_RESTART_BACKOFF);
        self.consecutive += 1;
        tracing::error!(task, panic = %why, restart_in = ?backoff, "a background task panicked (a bug in wakeway); restarting it");
        tokio::time::sleep(backoff).await;
    }
}
