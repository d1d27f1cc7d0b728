//! What this replica holds in memory for each session (`SessionRuntime`, read by the proxy on
//! every request), publishing a persisted state as the phase the proxy routes by, and running an
//! operation under a session's lock.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use wakeway_proxy::{Phase, SessionHandle, SessionId};

use super::{LifecycleError, Manager, Result};
use crate::session::{Durable, Placement, Session, State};

/// One session's in-memory state on this replica: the proxy's handle, the lock that serializes
/// operations on the session, and what the last persisted record said.
pub(super) struct SessionRuntime {
    pub(super) handle: Arc<SessionHandle>,
    /// Held for the whole of an operation (see [`Manager::run_locked`]).
    pub(super) op: tokio::sync::Mutex<()>,
    /// A wake task is queued or running (single-flight).
    pub(super) wake_queued: AtomicBool,
    /// The state as last persisted (for metrics and status without I/O).
    state: AtomicU8,
    /// Activity already written to the store (ms).
    pub(super) persisted_activity_ms: AtomicI64,
    /// Open connections over every replica (shared store), as of the last checkpoint.
    pub(super) open_everywhere: AtomicUsize,
    /// The placement last published while running (None once it stops: sleep, deletion, crash).
    /// Kept to rebuild a lost record of a running workspace (the local backend's identity check
    /// needs pid and start time, which the proxy's address alone does not give).
    placement: std::sync::Mutex<Option<Placement>>,
    /// The policy and pending operation this replica last gave the backend to keep (None: not
    /// yet since it started), so they are written only when they change.
    pub(super) durable_saved: std::sync::Mutex<Option<Durable>>,
}

impl SessionRuntime {
    fn new(s: &Session) -> Self {
        let handle = SessionHandle::new(s.id(), Phase::Asleep);
        handle.raise_cookie_generation(s.cookie_generation);
        let ms = s.last_activity.timestamp_millis();
        handle.activity.restore(ms, s.last_interaction().timestamp_millis());
        SessionRuntime {
            handle: Arc::new(handle),
            op: tokio::sync::Mutex::new(()),
            wake_queued: AtomicBool::new(false),
            state: AtomicU8::new(state_index(s.state)),
            persisted_activity_ms: AtomicI64::new(ms),
            open_everywhere: AtomicUsize::new(0),
            placement: std::sync::Mutex::new(None),
            durable_saved: std::sync::Mutex::new(None),
        }
    }

    /// The state as last persisted.
    pub(super) fn state(&self) -> State {
        State::ALL[self.state.load(Ordering::Relaxed) as usize]
    }

    fn placement(&self) -> std::sync::MutexGuard<'_, Option<Placement>> {
        self.placement.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The placement of a running workspace this replica still routes to (its published phase is
    /// `Ready` at that placement's address).
    pub(super) fn routed_placement(&self) -> Option<Placement> {
        let placement = self.placement().clone()?;
        (self.handle.phase() == Phase::Ready(placement.upstream())).then_some(placement)
    }
}

/// `s`'s position in [`State::ALL`] (how a state is kept in an atomic).
pub(super) fn state_index(s: State) -> u8 {
    State::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// The phase the proxy routes by for a persisted record.
fn phase_of(s: &Session) -> Phase {
    match s.state {
        State::Running => match &s.placement {
            Some(p) => Phase::Ready(p.upstream()),
            None => Phase::Asleep,
        },
        State::Creating | State::Starting | State::Waking | State::Resizing => Phase::Starting,
        State::Stopping | State::BackingUp | State::Restoring => Phase::Busy,
        State::Deleting | State::Deleted => Phase::Gone,
        State::Sleeping | State::BackupFailed | State::Failed => Phase::Asleep,
    }
}

impl Manager {
    /// The proxy's handle for `id`, if known.
    pub fn handle(&self, id: &SessionId) -> Option<Arc<SessionHandle>> {
        self.inner.sessions.get(id).map(|r| r.handle.clone())
    }

    pub(super) fn runtime(&self, id: &SessionId) -> Option<Arc<SessionRuntime>> {
        self.inner.sessions.get(id).map(|r| r.clone())
    }

    /// `s`'s runtime, made from the record if this replica did not know the session yet.
    pub(super) fn runtime_for(&self, s: &Session) -> Arc<SessionRuntime> {
        let made = || {
            let rt = SessionRuntime::new(s);
            self.set_quiet_spells(&rt, s);
            Arc::new(rt)
        };
        self.inner.sessions.entry(s.id()).or_insert_with(made).clone()
    }

    /// With a shared store, tell the proxy when activity on `s` ends a quiet spell (see
    /// [`Manager::quiet_spells`]); set when its runtime is made and whenever a record is published
    /// (its idle timeout may have changed).
    fn set_quiet_spells(&self, rt: &SessionRuntime, s: &Session) {
        if self.inner.shared {
            let quiet = self.quiet_spells(s);
            rt.handle.activity.set_quiet(quiet.activity, quiet.interaction);
        }
    }

    /// Publish the phase that follows from a persisted state.
    pub(super) fn publish(&self, rt: &SessionRuntime, s: &Session) {
        rt.handle.raise_cookie_generation(s.cookie_generation);
        self.set_quiet_spells(rt, s);
        rt.state.store(state_index(s.state), Ordering::Relaxed);
        *rt.placement() = if s.state == State::Running { s.placement.clone() } else { None };
        rt.handle.set_phase(phase_of(s));
    }

    /// Publish a record's phase unless a local operation owns the session (it publishes itself).
    /// Its cookie generation is learnt either way: a revocation on another replica takes effect
    /// here even while an operation runs.
    pub(super) fn publish_if_idle(&self, rt: &SessionRuntime, s: &Session) {
        rt.handle.raise_cookie_generation(s.cookie_generation);
        if let Ok(_op) = rt.op.try_lock() {
            self.publish(rt, s);
        }
    }

    /// Run `op` on the lifecycle runtime with session `id`'s operation lock held — and, with a
    /// shared store, its operation lease across replicas (see `lease`): while another replica
    /// holds it, a wake waits up to `hold_timeout` and anything else is refused at once
    /// ([`LifecycleError::Busy`], 503 with Retry-After). It runs to its end even if the caller
    /// stops waiting: an API client hanging up never cuts a step in half.
    pub(super) async fn run_locked<T, F, Fut>(&self, id: &SessionId, what: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Manager, Arc<SessionRuntime>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let rt = self.runtime(id).ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        let this = self.clone();
        self.run_task(what, async move {
            let _op = rt.op.lock().await;
            let patience = if what == "wake" { this.inner.config.lifecycle.hold_timeout } else { Duration::ZERO };
            match this.take_op_lease(&rt.handle.id, patience).await? {
                Some(lease) => this.holding(lease, op(this.clone(), rt.clone())).await,
                None => op(this, rt.clone()).await,
            }
        })
        .await
    }

    /// Run `task` on the lifecycle runtime (the proxy calls in from its own runtimes) and wait
    /// for its answer. A task that panicked is [`LifecycleError::TaskFailed`] (a 500), logged.
    pub(super) async fn run_task<T: Send + 'static>(
        &self,
        what: &'static str,
        task: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.inner.tasks.spawn(task).await.map_err(|e| LifecycleError::task_failed(what, e))?
    }

    /// How many sessions this replica knows a running placement of (tests: stopped ones are
    /// forgotten).
    #[cfg(test)]
    pub(crate) fn placements_known(&self) -> usize {
        self.inner.sessions.iter().filter(|rt| rt.placement().is_some()).count()
    }
}
