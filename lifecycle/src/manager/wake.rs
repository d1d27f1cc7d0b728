//! Waking: the proxy's single-flight wake requests, the API's waited wake, following another
//! replica's start, and starting a workspace (shared with scale).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use wakeway_config::Tier;
use wakeway_proxy::{ActivitySource, Phase, SessionHandle, SessionId, Upstream};

use super::runtime::SessionRuntime;
use super::{LifecycleError, Manager, Result, SleepReason};
use crate::backend::{BackendError, Started};
use crate::failpoint;
use crate::session::{Session, State};
use crate::store::StoreError;
use crate::webhook::Event;

impl Manager {
    /// Ask for a wake without waiting (single-flight; see [`wakeway_proxy::Lifecycle`]).
    pub fn request_wake(&self, handle: &Arc<SessionHandle>, source: ActivitySource) {
        if matches!(handle.phase(), Phase::Ready(_) | Phase::Gone) {
            return;
        }
        let Some(rt) = self.runtime(&handle.id) else { return };
        if rt.wake_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        // Starting from now on: requests held from now on wait for this attempt (not for a failure
        // before it), and the waiting page says so at once. The attempt publishes where it ends.
        if matches!(handle.phase(), Phase::Failed(_) | Phase::Asleep) {
            handle.set_phase(Phase::Starting);
        }
        let this = self.clone();
        let id = handle.id.clone();
        self.inner.tasks.spawn(async move {
            let woken =
                this.run_locked(&id, "wake", move |this, rt| async move { this.wake_attempt(&rt, source).await });
            match woken.await {
                // Another replica's operation held the session for all of `hold_timeout`: the
                // attempt never ran. Held requests got their 503; the next request asks again,
                // and that replica's writes publish where the session ends up.
                Err(LifecycleError::Busy { .. }) => {
                    if let Some(rt) = this.runtime(&id) {
                        rt.wake_queued.store(false, Ordering::Release);
                    }
                    tracing::debug!(session = %id, "wake waited for another replica's operation; not woken yet");
                }
                Err(e) => tracing::debug!(session = %id, error = %e, "wake did not happen"),
                Ok(_) => {}
            }
        });
    }

    /// Count an API-style wake as activity and start it without waiting (the API's `wake`
    /// without `wait`, the admin page's Wake). The session as it is now; a deleted one is refused.
    pub async fn wake_in_background(&self, id: &SessionId, source: ActivitySource) -> Result<super::SessionView> {
        let handle = self.handle(id).ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        let v = self.view(id).await?;
        if v.session.state == State::Deleted {
            return Err(LifecycleError::Deleted(id.to_string()));
        }
        self.touch(&handle, source);
        self.request_wake(&handle, source);
        Ok(v)
    }

    /// The proxy could not connect to `addr`: if that is still the published address, stop
    /// routing there and let a wake find the truth (running elsewhere, being stopped by another
    /// replica, crashed): it publishes where the workspace is, waking it if it sleeps.
    pub fn upstream_failed(&self, handle: &Arc<SessionHandle>, addr: &Upstream) {
        if matches!(handle.phase(), Phase::Ready(ref at) if at == addr) {
            tracing::debug!(session = %handle.id, %addr, "workspace refused a connection; checking where it is");
            handle.set_phase(Phase::Starting);
        }
        self.request_wake(handle, ActivitySource::Http);
    }

    /// Wake and wait until ready (or failed). Used by the API's `wake?wait=true` and tests.
    pub async fn wake(&self, id: &SessionId, source: ActivitySource) -> Result<Session> {
        let rt = self.runtime(id).ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        rt.wake_queued.store(true, Ordering::Release);
        self.run_locked(id, "wake", move |this, rt| async move { this.wake_attempt(&rt, source).await }).await
    }

    /// One wake attempt (op lock held). A wake refused before it started settles the phase here.
    async fn wake_attempt(&self, rt: &SessionRuntime, source: ActivitySource) -> Result<Session> {
        let attempt = WakeAttempt(rt);
        let result = self.wake_inner(rt, source).await;
        if let Err(e) = &result
            && rt.handle.phase() == Phase::Starting
        {
            // Nothing else settles the phase of a wake refused before it started.
            rt.handle.set_phase(Phase::Failed(Arc::from(e.to_string())));
        }
        drop(attempt);
        result
    }

    async fn wake_inner(&self, rt: &SessionRuntime, source: ActivitySource) -> Result<Session> {
        let mut s = self.load(&rt.handle.id).await?;
        if self.inner.shared {
            s = self.follow_other_replica(rt, s).await?;
            if matches!(s.state, State::Starting | State::Waking | State::Resizing) {
                return Ok(s); // another replica is starting it; its events release our waiters
            }
        }
        if self.settle_before_wake(rt, &mut s).await?.is_break() {
            return Ok(s);
        }
        self.touch(&rt.handle, source);
        let started_at = Instant::now();
        if !s.state.is_awake() {
            s.usage.count_wake(self.now(), source.as_str());
            if let ControlFlow::Break(theirs) = self.mark_waking(rt, &mut s).await? {
                return Ok(theirs);
            }
        } else {
            self.publish(rt, &s);
        }
        let result = self.start(&s).await;
        let elapsed = started_at.elapsed().as_secs_f64();
        let metrics = &self.inner.metrics;
        match result {
            Ok(started) => {
                failpoint::hit("wake.after_start");
                self.record_started(rt, &mut s, &started).await?;
                metrics.wakes.with_label_values(&["ok"]).inc();
                metrics.wake_seconds.with_label_values(&["ok"]).observe(elapsed);
                for (phase, seconds) in &started.phases {
                    metrics.wake_phase_seconds.with_label_values(&[phase]).observe(*seconds);
                }
                tracing::info!(session = %s.uuid, addr = %started.addr, seconds = elapsed, source = source.as_str(), "workspace awake");
                self.event(Event::Woke, &s, json!({ "source": source.as_str(), "seconds": elapsed }));
                Ok(s)
            }
            Err(e) => {
                metrics.wakes.with_label_values(&["failed"]).inc();
                metrics.wake_seconds.with_label_values(&["failed"]).observe(elapsed);
                tracing::error!(session = %s.uuid, error = %e, "workspace failed to start");
                self.record_start_failed(rt, &mut s, &e).await?;
                Err(e.into())
            }
        }
    }

    /// Bring `s` to a state a wake starts from, finishing what a crash or another operation left
    /// (a stop, a backup, a restore). `Break`: the workspace runs already, `s` is the answer.
    async fn settle_before_wake(&self, rt: &SessionRuntime, s: &mut Session) -> Result<ControlFlow<()>> {
        match s.state {
            State::Running if self.inner.backend.is_alive(s) => {
                self.publish(rt, s);
                return Ok(ControlFlow::Break(()));
            }
            State::Running => {
                s.last_error = Some("the workspace process was gone".into());
                s.placement = None;
                self.transition(rt, s, State::Sleeping).await?;
            }
            State::Deleting | State::Deleted => {
                self.publish(rt, s);
                return Err(LifecycleError::Deleted(s.uuid.clone()));
            }
            State::Stopping => self.finish_sleep(rt, s, SleepReason::Api).await?,
            State::BackingUp => {
                // A backup was interrupted (crash): the data is intact, the zip is not trusted.
                self.transition(rt, s, State::Sleeping).await?;
            }
            State::Restoring => self.finish_restore_before_wake(rt, s).await?,
            _ if s.delete_requested => {
                self.publish(rt, s);
                return Err(LifecycleError::Conflict {
                    id: s.uuid.clone(),
                    state: s.state.as_str(),
                    what: "deletion was requested; it waits for a verified backup".into(),
                });
            }
            _ => {}
        }
        Ok(ControlFlow::Continue(()))
    }

    /// A restore was interrupted (crash): finish it first; the wake goes on from `sleeping`.
    async fn finish_restore_before_wake(&self, rt: &SessionRuntime, s: &mut Session) -> Result<()> {
        let _ = self.run_restore(rt, s).await;
        *s = self.load(&rt.handle.id).await?;
        if s.state != State::Sleeping {
            return Err(LifecycleError::Conflict {
                id: s.uuid.clone(),
                state: s.state.as_str(),
                what: "an interrupted restore could not be finished".into(),
            });
        }
        Ok(())
    }

    /// Record that the workspace is being started (`starting` or `waking`). `Break` with the
    /// record another replica wrote first (most likely: it is waking it), to follow.
    async fn mark_waking(&self, rt: &SessionRuntime, s: &mut Session) -> Result<ControlFlow<Session>> {
        let next = if s.state == State::Creating { State::Starting } else { State::Waking };
        s.last_error = None;
        s.backup_failures = 0;
        s.next_backup_attempt = None;
        match self.transition(rt, s, next).await {
            Err(LifecycleError::Store(StoreError::Conflict { .. })) if self.inner.shared => {
                let theirs = self.load(&rt.handle.id).await?;
                self.publish(rt, &theirs);
                return Ok(ControlFlow::Break(theirs));
            }
            other => other?,
        }
        failpoint::hit("wake.after_waking_saved");
        Ok(ControlFlow::Continue(()))
    }

    /// With a shared store, a stop, backup or start another replica is doing shows as a
    /// transitional state: wait (bounded by `start_timeout`) for it to finish instead of acting on
    /// it. A state still transitional after that is a leftover of a dead replica: act on it.
    async fn follow_other_replica(&self, rt: &SessionRuntime, mut s: Session) -> Result<Session> {
        let deadline = tokio::time::Instant::now() + self.inner.config.lifecycle.start_timeout;
        while matches!(s.state, State::Stopping | State::BackingUp | State::Starting | State::Waking | State::Resizing)
            && tokio::time::Instant::now() < deadline
        {
            self.publish(rt, &s);
            if matches!(s.state, State::Starting | State::Waking | State::Resizing) {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            s = self.load(&rt.handle.id).await?;
        }
        Ok(s)
    }

    /// Start `s`'s workspace with its tier's resources, within `start_timeout`.
    pub(super) async fn start(&self, s: &Session) -> Result<Started, BackendError> {
        let deadline = tokio::time::Instant::now() + self.inner.config.lifecycle.start_timeout;
        self.inner.backend.start(s, &self.tier(&s.tier), deadline).await
    }

    /// Record a started workspace: `running` at its placement.
    pub(super) async fn record_started(&self, rt: &SessionRuntime, s: &mut Session, started: &Started) -> Result<()> {
        s.placement = Some(started.placement.clone());
        if started.objects.is_some() {
            s.objects = started.objects.clone();
        }
        self.transition(rt, s, State::Running).await
    }

    /// Record a workspace that failed to start: asleep, with the reason, which the phase shows
    /// (held requests and the waiting page get it).
    pub(super) async fn record_start_failed(
        &self,
        rt: &SessionRuntime,
        s: &mut Session,
        e: &BackendError,
    ) -> Result<()> {
        s.last_error = Some(e.to_string());
        s.placement = None;
        self.transition(rt, s, State::Sleeping).await?;
        rt.handle.set_phase(Phase::Failed(Arc::from(e.to_string())));
        self.event(Event::WakeFailed, s, json!({ "error": e.to_string() }));
        Ok(())
    }

    /// The resources of tier `name` (the default tier's if it is no longer configured).
    fn tier(&self, name: &str) -> Tier {
        let tiers = &self.inner.config.workspaces.tiers;
        tiers
            .get(name)
            .or_else(|| tiers.get(&self.inner.config.workspaces.default_tier))
            .cloned()
            .unwrap_or(Tier { cpu: 1.0, memory_mib: 1024 })
    }
}

/// Ends a wake attempt however it ends, a panic included: the next request may start another
/// wake, and requests held for this one are answered instead of waiting on a phase nobody settles.
struct WakeAttempt<'a>(&'a SessionRuntime);

impl Drop for WakeAttempt<'_> {
    fn drop(&mut self) {
        let handle = &self.0.handle;
        if std::thread::panicking() && handle.phase() == Phase::Starting {
            handle.set_phase(Phase::Failed(Arc::from("the wake failed unexpectedly (a bug in wakeway, logged)")));
        }
        self.0.wake_queued.store(false, Ordering::Release);
    }
}
