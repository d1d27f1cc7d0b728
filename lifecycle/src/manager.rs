//! The session manager: every lifecycle operation (create, wake, sleep, scale, delete), the sweep
//! that applies the idle policy, activity checkpoints, crash recovery at start-up, and the
//! in-memory session map the proxy reads on every request.
//!
//! Operations on one session are serialized by that session's `op` lock and each persisted step is
//! a compare-and-set, so a crash between steps leaves a state the next start (or sweep) resumes.
//! Restores, the backup catalog and per-session policy live in `manager/backups.rs`.

mod backups;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use dashmap::DashMap;
use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use wakeway_config::{Config, Tier};
use wakeway_proxy::{ActivitySource, Clock, Phase, ProxyStats, SessionHandle, SessionId, Upstream};

use crate::backend::{Backend, BackendError, BackendEvent};
use crate::catalog::Catalog;
use crate::failpoint;
use crate::metrics::Metrics;
use crate::policy::{Action, Policy, Seen, Warning};
use crate::restore::Limits;
use crate::session::{InvalidTransition, Placement, Session, State};
use crate::store::{ActivityCheckpoint, Store, StoreError};
use crate::webhook::Notifier;

pub use backups::{BackupFilter, PolicyPatch, RestoreRequest};

/// The sweep leader asks the backend for its workspaces at least this often (shared store).
pub const DISCOVERY_SAFETY_NET: Duration = Duration::from_secs(600);

/// Lifecycle failures, mapped to HTTP statuses in one place (`api::error`).
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("no session {0}")]
    NotFound(String),
    #[error("session {0} was deleted")]
    Deleted(String),
    #[error("session {id} is {state}: {what}")]
    Conflict { id: String, state: &'static str, what: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup failed, nothing was deleted: {0}")]
    BackupFailed(String),
    #[error("no backup {0}")]
    BackupNotFound(String),
    #[error("backup {id} failed verification ({why}): it cannot be used")]
    BackupUnverified { id: String, why: String },
    #[error("could not back up the current content of {id} before restoring, so nothing was changed: {why}")]
    SafetyBackupFailed { id: String, why: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<InvalidTransition> for LifecycleError {
    fn from(e: InvalidTransition) -> Self {
        LifecycleError::Conflict { id: String::new(), state: e.from.as_str(), what: e.to_string() }
    }
}

type Result<T, E = LifecycleError> = std::result::Result<T, E>;

/// Per-session in-memory state.
struct Runtime {
    handle: Arc<SessionHandle>,
    op: tokio::sync::Mutex<()>,
    /// A wake task is queued or running (single-flight).
    wake_queued: AtomicBool,
    /// The state as last persisted (for metrics and status without I/O).
    state: AtomicU8,
    /// Activity already written to the store (ms).
    persisted_activity_ms: AtomicI64,
    /// Open connections over every replica (shared store), as of the last checkpoint.
    open_everywhere: std::sync::atomic::AtomicUsize,
    /// The placement last published while running (None once it stops: sleep, deletion, crash).
    /// Kept to rebuild a lost record of a running workspace (the local backend's identity check
    /// needs pid and start time, which the proxy's address alone does not give).
    placement: std::sync::Mutex<Option<Placement>>,
}

impl Runtime {
    fn state(&self) -> State {
        State::ALL[self.state.load(Ordering::Relaxed) as usize]
    }
}

fn state_index(s: State) -> u8 {
    State::ALL.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// The placement of a running workspace this replica still routes to (its published phase is
/// `Ready` at that placement's address).
fn routed_placement(rt: &Runtime) -> Option<Placement> {
    let placement = rt.placement.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
    (rt.handle.phase() == Phase::Ready(placement.upstream())).then_some(placement)
}

/// Which way to scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleDirection {
    Up,
    Down,
}

/// Why a session is being put to sleep (a metric label and a log field).
#[derive(Debug, Clone, Copy)]
pub enum SleepReason {
    Idle,
    /// Only raw WebSocket traffic for `max_awake_with_open_tab`.
    OpenTabCap,
    Api,
    Crashed,
    Shutdown,
}

impl SleepReason {
    fn as_str(self) -> &'static str {
        match self {
            SleepReason::Idle => "idle",
            SleepReason::OpenTabCap => "open_tab_cap",
            SleepReason::Api => "api",
            SleepReason::Crashed => "crashed",
            SleepReason::Shutdown => "shutdown",
        }
    }
}

/// A live view of one session for status answers.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub session: Session,
    pub last_activity: DateTime<Utc>,
    pub activity_source: String,
    pub sleeps_at: Option<DateTime<Utc>>,
    pub deletes_at: Option<DateTime<Utc>>,
    pub replicas: u8,
    pub queue_length: usize,
    pub open_connections: usize,
}

struct Inner {
    config: Arc<Config>,
    policy: Policy,
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    runtimes: DashMap<SessionId, Arc<Runtime>>,
    metrics: Metrics,
    stats: Arc<ProxyStats>,
    store_up: AtomicBool,
    /// Problems worth showing in `/health` (component → message), e.g. ACME failures.
    problems: DashMap<&'static str, String>,
    /// Notified when a session is created or deleted (certificates follow sessions).
    changed: Arc<tokio::sync::Notify>,
    /// Several replicas share the store: activity, the sweep lease and events go through it.
    shared: bool,
    /// This replica's name (leases, activity checkpoints).
    replica: String,
    /// This replica held the sweep lease at its last sweep (shared store).
    leading: AtomicBool,
    /// The next sweep as leader asks the backend for its workspaces even if every session this
    /// replica knows has a record: set on becoming leader and when the store resyncs.
    discover_due: AtomicBool,
    /// When the sweep leader last asked the backend for its workspaces (clock ms).
    last_discovery_ms: AtomicI64,
    /// The runtime every lifecycle task runs on (the proxy calls in from its own runtimes).
    rt: tokio::runtime::Handle,
    catalog: Arc<Catalog>,
    notifier: Notifier,
    limits: Limits,
}

/// The manager. Cheap to clone.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

impl Manager {
    /// Build a manager. Call [`Manager::recover`] before serving, then run
    /// [`Manager::run_background`] for the sweep, checkpoints and backend events.
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        backend: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
        stats: Arc<ProxyStats>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        let policy = Policy::from(config.as_ref());
        let store_shared = store.shared();
        let config_replica = config.replica_id.clone();
        let metrics = Metrics::new();
        let notifier = Notifier::new(&config, &metrics, &rt).unwrap_or_else(|e| {
            tracing::error!(error = %e, "webhooks are off");
            Notifier::disabled()
        });
        let limits = Limits::from_config(&config);
        let catalog = Arc::new(Catalog::new(config.backup_dir(), config.restore_max_bytes));
        Manager {
            inner: Arc::new(Inner {
                config,
                policy,
                store,
                backend,
                clock,
                runtimes: DashMap::new(),
                metrics,
                stats,
                store_up: AtomicBool::new(true),
                problems: DashMap::new(),
                changed: Arc::new(tokio::sync::Notify::new()),
                shared: store_shared,
                replica: replica_name(&config_replica),
                leading: AtomicBool::new(false),
                discover_due: AtomicBool::new(true),
                last_discovery_ms: AtomicI64::new(0),
                rt,
                catalog,
                notifier,
                limits,
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The idle policy (configured durations; per-session overrides apply through it).
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Send a lifecycle event to the webhook (if any). Never waits.
    fn event(&self, kind: &'static str, s: &Session, fields: Value) {
        self.inner.notifier.send(kind, &s.uuid, &s.user_id, self.now(), fields);
    }

    pub fn backend_kind(&self) -> &'static str {
        self.inner.backend.kind()
    }

    pub fn store_kind(&self) -> &'static str {
        self.inner.store.kind()
    }

    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.inner.clock.now_ms()).unwrap_or_default()
    }

    fn tier(&self, name: &str) -> Tier {
        let tiers = &self.inner.config.tiers;
        tiers
            .get(name)
            .or_else(|| tiers.get(&self.inner.config.default_tier))
            .cloned()
            .unwrap_or(Tier { cpu: 1.0, memory_mib: 1024 })
    }

    // ---- the in-memory map ---------------------------------------------------------------

    /// The proxy's handle for `id`, if known.
    pub fn handle(&self, id: &SessionId) -> Option<Arc<SessionHandle>> {
        self.inner.runtimes.get(id).map(|r| r.handle.clone())
    }

    fn runtime(&self, id: &SessionId) -> Option<Arc<Runtime>> {
        self.inner.runtimes.get(id).map(|r| r.clone())
    }

    fn runtime_for(&self, s: &Session) -> Arc<Runtime> {
        let id = s.id();
        self.inner
            .runtimes
            .entry(id.clone())
            .or_insert_with(|| {
                let handle = SessionHandle::new(id, Phase::Asleep);
                handle.raise_cookie_generation(s.cookie_generation);
                let ms = s.last_activity.timestamp_millis();
                handle.activity.restore(ms, s.last_interaction().timestamp_millis());
                Arc::new(Runtime {
                    handle: Arc::new(handle),
                    op: tokio::sync::Mutex::new(()),
                    wake_queued: AtomicBool::new(false),
                    state: AtomicU8::new(state_index(s.state)),
                    persisted_activity_ms: AtomicI64::new(ms),
                    open_everywhere: std::sync::atomic::AtomicUsize::new(0),
                    placement: std::sync::Mutex::new(None),
                })
            })
            .clone()
    }

    /// Publish the phase that follows from a persisted state.
    fn publish(&self, rt: &Runtime, s: &Session) {
        rt.handle.raise_cookie_generation(s.cookie_generation);
        rt.state.store(state_index(s.state), Ordering::Relaxed);
        let running = if s.state == State::Running { s.placement.clone() } else { None };
        *rt.placement.lock().unwrap_or_else(|e| e.into_inner()) = running;
        let phase = match s.state {
            State::Running => match &s.placement {
                Some(p) => Phase::Ready(p.upstream()),
                None => Phase::Asleep,
            },
            State::Creating | State::Starting | State::Waking | State::Resizing => Phase::Starting,
            State::Stopping | State::BackingUp | State::Restoring => Phase::Busy,
            State::Deleting | State::Deleted => Phase::Gone,
            State::Sleeping | State::BackupFailed | State::Failed => Phase::Asleep,
        };
        rt.handle.set_phase(phase);
    }

    /// Persist `s` (compare-and-set), merging in-memory activity first; publish the new phase.
    async fn save(&self, rt: &Runtime, s: &mut Session) -> Result<()> {
        let seen = self.seen(rt, s);
        if seen.last_activity > s.last_activity {
            s.last_activity = seen.last_activity;
            s.activity_source = rt.handle.activity.source().as_str().to_string();
        }
        s.last_interaction = Some(seen.last_interaction);
        // A revocation this replica applied before it could write it (see `revoke_cookies`).
        s.cookie_generation = s.cookie_generation.max(rt.handle.cookie_generation());
        let stored = self.inner.store.put(s).await.inspect_err(|e| self.note_store_error(e))?;
        self.inner.store_up.store(true, Ordering::Relaxed);
        rt.persisted_activity_ms.fetch_max(stored.last_activity.timestamp_millis(), Ordering::Relaxed);
        *s = stored;
        self.publish(rt, s);
        Ok(())
    }

    /// Activity merged from the record and the proxy's counters.
    fn seen(&self, rt: &Runtime, s: &Session) -> Seen {
        let ms = |t: i64, stored: DateTime<Utc>| {
            DateTime::from_timestamp_millis(t.max(stored.timestamp_millis())).unwrap_or(stored)
        };
        let activity = &rt.handle.activity;
        Seen {
            last_activity: ms(activity.last_activity_ms(), s.last_activity),
            last_interaction: ms(activity.last_interaction_ms(), s.last_interaction()),
        }
    }

    fn note_store_error(&self, e: &StoreError) {
        if matches!(e, StoreError::Unavailable(_)) {
            self.inner.store_up.store(false, Ordering::Relaxed);
        }
    }

    async fn load(&self, id: &SessionId) -> Result<Session> {
        let found = self.inner.store.get(id.as_str()).await.inspect_err(|e| self.note_store_error(e))?;
        found.ok_or_else(|| LifecycleError::NotFound(id.to_string()))
    }

    async fn transition(&self, rt: &Runtime, s: &mut Session, next: State) -> Result<()> {
        let now = self.now();
        s.transition(next, now).map_err(|e| LifecycleError::Conflict {
            id: s.uuid.clone(),
            state: e.from.as_str(),
            what: e.to_string(),
        })?;
        self.save(rt, s).await
    }

    // ---- operations -------------------------------------------------------------------

    /// Create a session and start its workspace in the background (the seed starts the pod on
    /// creation). Returns the stored record.
    pub async fn create(&self, user_id: &str) -> Result<Session> {
        let (rt, s) = self.create_record(user_id).await?;
        self.event("created", &s, json!({ "tier": s.tier }));
        self.request_wake(&rt.handle, ActivitySource::Created);
        Ok(s)
    }

    /// Store a new session record and prepare its storage (state `creating`).
    async fn create_record(&self, user_id: &str) -> Result<(Arc<Runtime>, Session)> {
        let tier = self.inner.config.default_tier.clone();
        let now = self.now();
        let mut s = loop {
            let id = SessionId::parse(&format!("{:08x}", rand::rng().random::<u32>())).expect("8 hex digits");
            if self.inner.runtimes.contains_key(&id) {
                continue;
            }
            let candidate = Session::new(&id, user_id, &tier, now);
            match self.inner.store.put(&candidate).await {
                Ok(stored) => break stored,
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => {
                    self.note_store_error(&e);
                    return Err(e.into());
                }
            }
        };
        let rt = self.runtime_for(&s);
        rt.handle.activity.touch(now.timestamp_millis(), ActivitySource::Created);
        self.publish(&rt, &s);
        match self.inner.backend.create(&s).await {
            Ok(None) => {}
            Ok(objects @ Some(_)) => {
                s.objects = objects;
                self.save(&rt, &mut s).await?;
            }
            Err(e) => {
                s.last_error = Some(e.to_string());
                self.transition(&rt, &mut s, State::Failed).await?;
                return Err(e.into());
            }
        }
        tracing::info!(session = %s.uuid, user = %s.user_id, "session created");
        self.inner.changed.notify_one();
        Ok((rt, s))
    }

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
        self.inner.rt.spawn(async move {
            if let Err(e) = this.wake_locked(&rt, source).await {
                tracing::debug!(session = %rt.handle.id, error = %e, "wake did not happen");
            }
        });
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
        let this = self.clone();
        let task = self.inner.rt.spawn(async move { this.wake_locked(&rt, source).await });
        task.await.map_err(|e| LifecycleError::Invalid(format!("wake task failed: {e}")))?
    }

    async fn wake_locked(&self, rt: &Arc<Runtime>, source: ActivitySource) -> Result<Session> {
        let _op = rt.op.lock().await;
        let result = self.wake_inner(rt, source).await;
        if let Err(e) = &result
            && rt.handle.phase() == Phase::Starting
        {
            // Nothing else settles the phase of a wake refused before it started.
            rt.handle.set_phase(Phase::Failed(Arc::from(e.to_string())));
        }
        rt.wake_queued.store(false, Ordering::Release);
        result
    }

    async fn wake_inner(&self, rt: &Runtime, source: ActivitySource) -> Result<Session> {
        let id = rt.handle.id.clone();
        let mut s = self.load(&id).await?;
        if self.inner.shared {
            s = self.follow_other_replica(rt, s).await?;
            if matches!(s.state, State::Starting | State::Waking | State::Resizing) {
                return Ok(s); // another replica is starting it; its events release our waiters
            }
        }
        match s.state {
            State::Running if self.inner.backend.is_alive(&s) => {
                self.publish(rt, &s);
                return Ok(s);
            }
            State::Running => {
                s.last_error = Some("the workspace process was gone".into());
                s.placement = None;
                self.transition(rt, &mut s, State::Sleeping).await?;
            }
            State::Deleting | State::Deleted => {
                self.publish(rt, &s);
                return Err(LifecycleError::Deleted(s.uuid));
            }
            State::Stopping => self.finish_sleep(rt, &mut s, SleepReason::Api).await?,
            State::BackingUp => {
                // A backup was interrupted (crash): the data is intact, the zip is not trusted.
                self.transition(rt, &mut s, State::Sleeping).await?;
            }
            State::Restoring => {
                // A restore was interrupted (crash): finish it first, then wake.
                let _ = self.run_restore(rt, &mut s).await;
                s = self.load(&id).await?;
                if s.state != State::Sleeping {
                    return Err(LifecycleError::Conflict {
                        id: s.uuid.clone(),
                        state: s.state.as_str(),
                        what: "an interrupted restore could not be finished".into(),
                    });
                }
            }
            _ if s.delete_requested => {
                self.publish(rt, &s);
                return Err(LifecycleError::Conflict {
                    id: s.uuid.clone(),
                    state: s.state.as_str(),
                    what: "deletion was requested; it waits for a verified backup".into(),
                });
            }
            _ => {}
        }
        let now = self.now();
        rt.handle.activity.touch(now.timestamp_millis(), source);
        let started_at = Instant::now();
        if !s.state.is_awake() {
            let next = if s.state == State::Creating { State::Starting } else { State::Waking };
            s.last_error = None;
            s.backup_failures = 0;
            s.next_backup_attempt = None;
            match self.transition(rt, &mut s, next).await {
                Err(LifecycleError::Store(StoreError::Conflict { .. })) if self.inner.shared => {
                    // Another replica changed it first (most likely: it is waking it). Follow it.
                    let now = self.load(&id).await?;
                    self.publish(rt, &now);
                    return Ok(now);
                }
                other => other?,
            }
            failpoint::hit("wake.after_waking_saved");
        } else {
            self.publish(rt, &s);
        }
        let tier = self.tier(&s.tier);
        let deadline = tokio::time::Instant::now() + self.inner.config.start_timeout;
        let result = self.inner.backend.start(&s, &tier, deadline).await;
        let elapsed = started_at.elapsed().as_secs_f64();
        match result {
            Ok(started) => {
                failpoint::hit("wake.after_start");
                s.placement = Some(started.placement);
                if started.objects.is_some() {
                    s.objects = started.objects;
                }
                self.transition(rt, &mut s, State::Running).await?;
                self.inner.metrics.wakes.with_label_values(&["ok"]).inc();
                self.inner.metrics.wake_seconds.with_label_values(&["ok"]).observe(elapsed);
                tracing::info!(session = %s.uuid, addr = %started.addr, seconds = elapsed, source = source.as_str(), "workspace awake");
                self.event("woke", &s, json!({ "source": source.as_str(), "seconds": elapsed }));
                Ok(s)
            }
            Err(e) => {
                self.inner.metrics.wakes.with_label_values(&["failed"]).inc();
                self.inner.metrics.wake_seconds.with_label_values(&["failed"]).observe(elapsed);
                tracing::error!(session = %s.uuid, error = %e, "workspace failed to start");
                let message: Arc<str> = Arc::from(e.to_string());
                s.last_error = Some(e.to_string());
                s.placement = None;
                self.transition(rt, &mut s, State::Sleeping).await?;
                rt.handle.set_phase(Phase::Failed(message));
                Err(e.into())
            }
        }
    }

    /// With a shared store, a stop, backup or start another replica is doing shows as a
    /// transitional state: wait (bounded by `start_timeout`) for it to finish instead of acting on
    /// it. A state still transitional after that is a leftover of a dead replica: act on it.
    async fn follow_other_replica(&self, rt: &Runtime, mut s: Session) -> Result<Session> {
        let deadline = tokio::time::Instant::now() + self.inner.config.start_timeout;
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

    /// Put a session to sleep (idempotent for a sleeping one).
    pub async fn sleep(&self, id: &SessionId, reason: SleepReason) -> Result<Session> {
        let rt = self.runtime(id).ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        let this = self.clone();
        let task = self.inner.rt.spawn(async move {
            let _op = rt.op.lock().await;
            let mut s = this.load(&rt.handle.id).await?;
            // A policy sleep is decided again under the lock: a request may have come meanwhile.
            if matches!(reason, SleepReason::Idle | SleepReason::OpenTabCap)
                && !matches!(this.decide(&rt, &s), Action::Sleep | Action::SleepOpenTab)
            {
                return Ok(s);
            }
            this.sleep_inner(&rt, &mut s, reason).await?;
            Ok(s)
        });
        task.await.map_err(|e| LifecycleError::Invalid(format!("sleep task failed: {e}")))?
    }

    /// The policy's decision for `s` now, with other replicas' activity given one checkpoint
    /// interval to arrive when the store is shared.
    fn decide(&self, rt: &Runtime, s: &Session) -> Action {
        let grace = if self.inner.shared { self.inner.config.checkpoint_interval } else { Duration::ZERO };
        let at = self.now() - chrono::Duration::from_std(grace).unwrap_or_default();
        self.inner.policy.decide(s, self.seen(rt, s), at)
    }

    async fn sleep_inner(&self, rt: &Runtime, s: &mut Session, reason: SleepReason) -> Result<()> {
        match s.state {
            State::Sleeping | State::BackupFailed | State::Failed => Ok(()),
            State::Running | State::Stopping | State::Starting | State::Waking | State::Resizing => {
                if s.state != State::Stopping {
                    if s.state == State::Running {
                        self.transition(rt, s, State::Stopping).await?;
                        failpoint::hit("sleep.after_stopping_saved");
                    } else {
                        self.publish(rt, s);
                    }
                }
                self.finish_sleep(rt, s, reason).await
            }
            State::Deleting | State::Deleted => Err(LifecycleError::Deleted(s.uuid.clone())),
            other => Err(LifecycleError::Conflict {
                id: s.uuid.clone(),
                state: other.as_str(),
                what: "it cannot be put to sleep now".into(),
            }),
        }
    }

    async fn finish_sleep(&self, rt: &Runtime, s: &mut Session, reason: SleepReason) -> Result<()> {
        rt.handle.set_phase(Phase::Busy);
        self.inner.backend.stop(s).await?;
        failpoint::hit("sleep.after_stop");
        s.placement = None;
        self.transition(rt, s, State::Sleeping).await?;
        self.inner.metrics.sleeps.with_label_values(&[reason.as_str()]).inc();
        tracing::info!(session = %s.uuid, reason = reason.as_str(), "workspace asleep");
        self.event("slept", s, json!({ "reason": reason.as_str() }));
        Ok(())
    }

    /// Change a session's tier. A running workspace is restarted with the new resources (held
    /// requests wait through it); a sleeping one gets them on its next wake.
    pub async fn scale(&self, id: &SessionId, direction: ScaleDirection) -> Result<Session> {
        let rt = self.runtime(id).ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        let this = self.clone();
        let task = self.inner.rt.spawn(async move {
            let _op = rt.op.lock().await;
            this.scale_inner(&rt, direction).await
        });
        task.await.map_err(|e| LifecycleError::Invalid(format!("scale task failed: {e}")))?
    }

    async fn scale_inner(&self, rt: &Runtime, direction: ScaleDirection) -> Result<Session> {
        let mut s = self.load(&rt.handle.id).await?;
        let config = &self.inner.config;
        let tier = match direction {
            ScaleDirection::Up => config.scale_up_tier.clone(),
            ScaleDirection::Down => config.scale_down_tier.clone(),
        };
        match s.state {
            State::Running => {
                if s.tier == tier {
                    return Ok(s);
                }
                self.transition(rt, &mut s, State::Resizing).await?;
                self.inner.backend.stop(&s).await?;
                failpoint::hit("scale.after_stop");
                s.placement = None;
                s.tier = tier;
                let deadline = tokio::time::Instant::now() + config.start_timeout;
                match self.inner.backend.start(&s, &self.tier(&s.tier), deadline).await {
                    Ok(started) => {
                        failpoint::hit("scale.after_start");
                        s.placement = Some(started.placement);
                        if started.objects.is_some() {
                            s.objects = started.objects;
                        }
                        self.transition(rt, &mut s, State::Running).await?;
                        tracing::info!(session = %s.uuid, tier = %s.tier, "workspace resized");
                        Ok(s)
                    }
                    Err(e) => {
                        s.last_error = Some(e.to_string());
                        self.transition(rt, &mut s, State::Sleeping).await?;
                        rt.handle.set_phase(Phase::Failed(Arc::from(e.to_string())));
                        Err(e.into())
                    }
                }
            }
            State::Sleeping | State::BackupFailed | State::Failed => {
                s.tier = tier;
                self.save(rt, &mut s).await?;
                Ok(s)
            }
            State::Deleting | State::Deleted => Err(LifecycleError::Deleted(s.uuid)),
            other => Err(LifecycleError::Conflict {
                id: s.uuid.clone(),
                state: other.as_str(),
                what: "it cannot be resized now; try again when it is running or asleep".into(),
            }),
        }
    }

    /// Back up (verified) and delete. `requested` marks an API delete (kept across failures and
    /// retried by the sweep until it succeeds).
    pub async fn delete(&self, id: &SessionId, requested: bool) -> Result<Session> {
        let rt = self.runtime(id).ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        let this = self.clone();
        let task = self.inner.rt.spawn(async move {
            let _op = rt.op.lock().await;
            this.delete_inner(&rt, requested).await
        });
        task.await.map_err(|e| LifecycleError::Invalid(format!("delete task failed: {e}")))?
    }

    async fn delete_inner(&self, rt: &Runtime, requested: bool) -> Result<Session> {
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
            self.transition(rt, &mut s, State::BackingUp).await?;
            let started = Instant::now();
            match self.inner.backend.backup(&s, self.now(), "delete").await {
                Ok(info) => {
                    failpoint::hit("backup.after_rename");
                    let secs = started.elapsed().as_secs_f64();
                    self.inner.metrics.backups.with_label_values(&["ok"]).inc();
                    self.inner.metrics.backup_seconds.with_label_values(&["ok"]).observe(secs);
                    tracing::info!(session = %s.uuid, file = %info.file, bytes = info.size, entries = info.entries, sha256 = %info.sha256, "backup written and verified");
                    self.event("backup_verified", &s, backup_fields(&info, "delete"));
                    s.backup = Some(info);
                    s.last_error = None;
                    self.transition(rt, &mut s, State::Deleting).await?;
                }
                Err(e) => {
                    let secs = started.elapsed().as_secs_f64();
                    self.inner.metrics.backups.with_label_values(&["failed"]).inc();
                    self.inner.metrics.backup_seconds.with_label_values(&["failed"]).observe(secs);
                    s.backup_failures += 1;
                    let backoff = self
                        .inner
                        .config
                        .backup_retry
                        .saturating_mul(1 << (s.backup_failures - 1).min(10))
                        .min(Duration::from_secs(3600));
                    s.next_backup_attempt = Some(self.now() + chrono::Duration::from_std(backoff).unwrap_or_default());
                    s.last_error = Some(format!("backup failed (attempt {}): {e}", s.backup_failures));
                    tracing::error!(session = %s.uuid, attempt = s.backup_failures, retry_in = ?backoff, error = %e, "backup failed; the workspace is kept");
                    self.event(
                        "backup_failed",
                        &s,
                        json!({
                            "error": e.to_string(),
                            "attempt": s.backup_failures,
                            "next_attempt": s.next_backup_attempt.map(rfc3339),
                        }),
                    );
                    self.transition(rt, &mut s, State::BackupFailed).await?;
                    return Err(LifecycleError::BackupFailed(e.to_string()));
                }
            }
        }
        failpoint::hit("delete.before_destroy");
        if let Err(e) = self.inner.backend.destroy(&s).await {
            s.last_error = Some(format!("delete failed after a verified backup: {e}"));
            self.save(rt, &mut s).await?;
            return Err(e.into());
        }
        failpoint::hit("delete.after_destroy");
        s.placement = None;
        self.transition(rt, &mut s, State::Deleted).await?;
        let trigger = if s.delete_requested { "api" } else { "policy" };
        self.inner.metrics.deletes.with_label_values(&[trigger]).inc();
        self.inner.changed.notify_one();
        tracing::info!(session = %s.uuid, trigger, backup = ?s.backup.as_ref().map(|b| &b.file), "workspace deleted");
        let backup = s.backup.as_ref().map(|b| b.file.trim_end_matches(".zip").to_string());
        self.event("deleted", &s, json!({ "trigger": trigger, "backup": backup }));
        Ok(s)
    }

    // ---- health notes and change notifications ---------------------------------------

    /// Record (or clear) a problem of a component, shown in `/health`.
    pub fn set_problem(&self, component: &'static str, problem: Option<String>) {
        match problem {
            Some(p) => {
                self.inner.problems.insert(component, p);
            }
            None => {
                self.inner.problems.remove(component);
            }
        }
    }

    /// Current problems by component.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut all: Vec<_> = self.inner.problems.iter().map(|p| (*p.key(), p.value().clone())).collect();
        all.sort();
        all
    }

    /// Notified whenever a session is created or deleted.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.inner.changed.clone()
    }

    // ---- workspace sign-in -------------------------------------------------------------

    /// Mint a one-time sign-in token for `id`, valid for `access_token_ttl` and until the
    /// session's cookies are next revoked. Returns the `access_url` and its expiry.
    pub async fn mint_token(&self, id: &SessionId) -> Result<(String, DateTime<Utc>)> {
        let s = self.load(id).await?;
        let generation = self.handle(id).map_or(0, |h| h.cookie_generation()).max(s.cookie_generation);
        if matches!(s.state, State::Deleting | State::Deleted) {
            return Err(LifecycleError::Deleted(s.uuid));
        }
        let bytes: [u8; 24] = rand::rng().random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = self.now();
        let ttl = self.inner.config.access_token_ttl;
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
        // In the store (only a digest): whichever replica the browser reaches redeems it, once.
        let record =
            json!({ "session": id.as_str(), "expires_ms": expires.timestamp_millis(), "generation": generation });
        self.inner.store.put_expiring(&token_key(&token), record.to_string().as_bytes(), ttl).await?;
        let url =
            format!("{}/?{}={token}", self.inner.config.workspace_url(id.as_str()), wakeway_proxy::auth::TOKEN_PARAM);
        Ok((url, expires))
    }

    /// Consume a sign-in token: the cookie generation to sign the cookie with, if it was minted
    /// for `id`, has not expired, and the session's cookies were not revoked since.
    pub async fn redeem_token(&self, id: &SessionId, token: &str) -> Option<u64> {
        if token.len() != 48 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let Ok(Some(bytes)) = self.inner.store.take_blob(&token_key(token)).await else { return None };
        let record: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let generation = record["generation"].as_u64().unwrap_or(0);
        let current = self.handle(id)?.cookie_generation();
        let valid = record["session"] == id.as_str()
            && record["expires_ms"].as_i64().is_some_and(|t| t > self.now().timestamp_millis())
            && generation >= current;
        valid.then_some(generation)
    }

    /// End every cookie (and unused sign-in link) issued for `id`: its cookie generation goes
    /// up. Refused on this replica at once; the other replicas learn it from the record.
    pub async fn revoke_cookies(&self, id: &SessionId) -> Result<Session> {
        let rt = self.runtime(id).ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        rt.handle.raise_cookie_generation(rt.handle.cookie_generation() + 1);
        let this = self.clone();
        let task = self.inner.rt.spawn(async move {
            let _op = rt.op.lock().await;
            let mut s = this.load(&rt.handle.id).await?;
            end_cookies(&rt, &mut s);
            this.save(&rt, &mut s).await?;
            tracing::info!(session = %s.uuid, generation = s.cookie_generation, "workspace cookies revoked");
            Ok(s)
        });
        task.await.map_err(|e| LifecycleError::Invalid(format!("revoke task failed: {e}")))?
    }

    /// Remove sign-in tokens that expired unused (stores without expiry keep them until here).
    async fn prune_tokens(&self) {
        let Ok(keys) = self.inner.store.list_blobs(TOKEN_PREFIX).await else { return };
        let now = self.now().timestamp_millis();
        for key in keys {
            if let Ok(Some(bytes)) = self.inner.store.get_blob(&key).await {
                let record: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if record["expires_ms"].as_i64().is_none_or(|t| t <= now) {
                    let _ = self.inner.store.take_blob(&key).await;
                }
            }
        }
    }

    // ---- reads ------------------------------------------------------------------------

    /// A session with its live fields.
    pub async fn view(&self, id: &SessionId) -> Result<SessionView> {
        let s = self.load(id).await?;
        Ok(self.view_of(s))
    }

    fn view_of(&self, s: Session) -> SessionView {
        let (seen, source, queue_length, open_connections) = match self.runtime(&s.id()) {
            Some(rt) => {
                let seen = self.seen(&rt, &s);
                let activity = &rt.handle.activity;
                let source = if seen.last_activity > s.last_activity {
                    activity.source().as_str().to_string()
                } else {
                    s.activity_source.clone()
                };
                let open = activity.open_connections().max(rt.open_everywhere.load(Ordering::Relaxed));
                (seen, source, rt.handle.held(), open)
            }
            None => (
                Seen { last_activity: s.last_activity, last_interaction: s.last_interaction() },
                s.activity_source.clone(),
                0,
                0,
            ),
        };
        SessionView {
            sleeps_at: self.inner.policy.sleeps_at(&s, seen),
            deletes_at: self.inner.policy.deletes_at(&s),
            replicas: u8::from(s.state.is_awake() && s.placement.is_some()),
            last_activity: seen.last_activity,
            activity_source: source,
            queue_length,
            open_connections,
            session: s,
        }
    }

    /// Every session (deleted ones only when asked).
    pub async fn list(&self, include_deleted: bool) -> Result<Vec<SessionView>> {
        let all = self.inner.store.list().await.inspect_err(|e| self.note_store_error(e))?;
        Ok(all.into_iter().filter(|s| include_deleted || s.state != State::Deleted).map(|s| self.view_of(s)).collect())
    }

    /// Session counts by state (from memory).
    pub fn state_counts(&self) -> Vec<(State, usize)> {
        let mut counts = vec![0usize; State::ALL.len()];
        for rt in self.inner.runtimes.iter() {
            counts[state_index(rt.state()) as usize] += 1;
        }
        State::ALL.iter().copied().zip(counts).collect()
    }

    /// The Prometheus exposition.
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render(&self.state_counts(), &self.inner.stats, self.inner.store_up.load(Ordering::Relaxed))
    }

    /// Store health (also refreshes the `store_up` gauge).
    pub async fn store_health(&self) -> Result<(), StoreError> {
        let result = self.inner.store.health().await;
        self.inner.store_up.store(result.is_ok(), Ordering::Relaxed);
        result
    }

    // ---- recovery, sweep, checkpoints, events -----------------------------------------

    /// Load every session and bring it to a consistent state after a (possibly unclean) stop:
    /// running workspaces that still answer are adopted, others are marked asleep; interrupted
    /// stops are finished; interrupted backups and deletions are left for the sweep to resume.
    pub async fn recover(&self) -> Result<()> {
        let catalog = self.inner.catalog.clone();
        if let Ok(removed) = tokio::task::spawn_blocking(move || catalog.clean_leftovers()).await {
            for name in removed {
                tracing::warn!(file = %name, "removed what an interrupted backup left (never trusted)");
            }
        }
        if self.inner.shared {
            // Other replicas may be acting on these sessions right now: only learn the routes.
            // Leftovers of a dead replica are the sweep leader's to finish.
            self.resync().await?;
            tracing::info!(sessions = self.inner.runtimes.len(), replica = %self.inner.replica, "sessions loaded from the shared store");
            return Ok(());
        }
        let all = self.inner.store.list().await?;
        let total = all.len();
        match self.inner.backend.reconcile(&all).await {
            Ok(report) => log_reconcile(&report),
            Err(e) => tracing::warn!(error = %e, "could not compare the cluster with the sessions"),
        }
        let mut adopted = 0;
        for mut s in all {
            let rt = self.runtime_for(&s);
            let _op = rt.op.lock().await;
            let result = async {
                match s.state {
                    State::Creating | State::Starting | State::Waking | State::Resizing | State::Running => {
                        match self.inner.backend.find_running(&s).await {
                            Some(_) if s.state != State::Creating => {
                                adopted += 1;
                                if s.state != State::Running {
                                    s.transition(State::Running, self.now())?;
                                    self.save(&rt, &mut s).await?;
                                }
                                self.publish(&rt, &s);
                            }
                            _ => {
                                self.inner.backend.stop(&s).await?;
                                s.placement = None;
                                self.transition(&rt, &mut s, State::Sleeping).await?;
                            }
                        }
                    }
                    State::Stopping => self.finish_sleep(&rt, &mut s, SleepReason::Shutdown).await?,
                    _ => self.publish(&rt, &s),
                }
                Ok::<_, LifecycleError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::error!(session = %s.uuid, error = %e, "could not recover session; the sweep will retry");
            }
        }
        tracing::info!(sessions = total, adopted, "sessions recovered");
        Ok(())
    }

    /// Apply the policy to every session once. Skips everything if the store cannot be read
    /// (never decide on stale data).
    pub async fn sweep(&self) -> Result<()> {
        if self.inner.shared {
            let ttl = self.inner.config.lease_ttl;
            match self.inner.store.lease("sweep", &self.inner.replica, ttl).await {
                Ok(true) => {
                    if !self.inner.leading.swap(true, Ordering::AcqRel) {
                        // Records may have been lost while another replica led (or none did).
                        self.inner.discover_due.store(true, Ordering::Release);
                    }
                }
                Ok(false) => {
                    self.inner.leading.store(false, Ordering::Release);
                    return self.resync().await;
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
            return tokio::select! {
                result = self.sweep_as_leader() => result,
                () = renew => Ok(()),
            };
        }
        self.sweep_as_leader().await
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
        for mut s in all {
            let rt = self.runtime_for(&s);
            self.publish_if_idle(&rt, &s);
            // An operation in flight owns this session right now; look again next sweep.
            let Ok(guard) = rt.op.try_lock() else { continue };
            let crashed = s.state == State::Running && !self.inner.backend.is_alive(&s);
            let action = if crashed { Action::FinishSleep } else { self.decide(&rt, &s) };
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
                Action::Forget => self.forget(&rt).await,
                Action::FinishRestore => self.finish_restore(&id).await.map(drop),
            };
            if let Err(e) = result {
                tracing::warn!(session = %id, ?action, error = %e, "sweep action failed");
            }
        }
        Ok(())
    }

    /// Publish a record's phase unless a local operation owns the session (it publishes itself).
    /// Its cookie generation is learnt either way: a revocation on another replica takes effect
    /// here even while an operation runs.
    fn publish_if_idle(&self, rt: &Runtime, s: &Session) {
        rt.handle.raise_cookie_generation(s.cookie_generation);
        if let Ok(_op) = rt.op.try_lock() {
            self.publish(rt, s);
        }
    }

    /// Bring the in-memory map in line with the store (other replicas' changes).
    async fn resync(&self) -> Result<()> {
        let all = self.inner.store.list().await.inspect_err(|e| self.note_store_error(e))?;
        for s in &all {
            let rt = self.runtime_for(s);
            self.publish_if_idle(&rt, s);
        }
        let listed: std::collections::HashSet<&str> = all.iter().map(|s| s.uuid.as_str()).collect();
        // Deleted sessions the leader forgot (after backup_retention) are forgotten here too.
        self.inner.runtimes.retain(|id, rt| rt.state() != State::Deleted || listed.contains(id.as_str()));
        Ok(())
    }

    /// A session another replica changed.
    async fn on_store_event(&self, id: &str) {
        if id.is_empty() {
            // (Re)connected: the store may have lost records meanwhile (Redis restarted empty).
            self.inner.discover_due.store(true, Ordering::Release);
            let _ = self.resync().await;
            return;
        }
        let Some(id) = SessionId::parse(id) else { return };
        match self.inner.store.get(id.as_str()).await {
            Ok(Some(s)) => {
                let rt = self.runtime_for(&s);
                self.publish_if_idle(&rt, &s);
                if s.state == State::Deleted {
                    self.inner.changed.notify_one();
                }
            }
            // Forgotten by the leader after backup_retention: forget it here too. In any other
            // state the store lost it, and the leader rebuilds it from the backend.
            Ok(None) => {
                self.inner.runtimes.remove_if(&id, |_, rt| rt.state() == State::Deleted);
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
    async fn rebuild_missing(&self) {
        let Ok(records) = self.inner.store.list().await else { return };
        let known: std::collections::HashSet<&str> = records.iter().map(|s| s.uuid.as_str()).collect();
        // A deleted session may have been forgotten by the leader (its record removed): no loss.
        let lost =
            self.inner.runtimes.iter().any(|rt| rt.state() != State::Deleted && !known.contains(rt.key().as_str()));
        let now_ms = self.inner.clock.now_ms();
        let stale =
            now_ms - self.inner.last_discovery_ms.load(Ordering::Acquire) >= DISCOVERY_SAFETY_NET.as_millis() as i64;
        if !self.inner.discover_due.swap(false, Ordering::AcqRel) && !lost && !stale {
            return;
        }
        self.inner.last_discovery_ms.store(now_ms, Ordering::Release);
        let found = match self.inner.backend.discover().await {
            Ok(found) => found,
            Err(e) => {
                self.inner.discover_due.store(true, Ordering::Release);
                tracing::debug!(error = %e, "could not list the backend's workspaces; retried next sweep");
                return;
            }
        };
        for d in found.into_iter().filter(|d| !known.contains(d.id.as_str())) {
            let Some(id) = SessionId::parse(&d.id) else { continue };
            let now = self.now();
            let mut s = Session::new(&id, &d.user_id, &d.tier, d.created_at.unwrap_or(now));
            s.state = State::Sleeping;
            s.slept_at = Some(now);
            s.last_error = Some("rebuilt from the workspace after the store lost its record".into());
            // Adopted if this replica still routes to it and it is still that workspace.
            s.placement = self.runtime(&id).and_then(|rt| routed_placement(&rt));
            if s.placement.is_some() && self.inner.backend.is_alive(&s) {
                s.state = State::Running;
                s.slept_at = None;
                s.awake_since = Some(now);
            } else {
                s.placement = None;
            }
            match self.inner.store.put(&s).await {
                Ok(stored) => {
                    tracing::warn!(session = %stored.uuid, state = stored.state.as_str(), "session record rebuilt from its workspace");
                    let rt = self.runtime_for(&stored);
                    self.publish_if_idle(&rt, &stored);
                }
                Err(e) => tracing::debug!(session = %id, error = %e, "rebuild raced with another writer"),
            }
        }
    }

    /// How many sessions this replica knows a running placement of (tests: stopped ones are
    /// forgotten).
    #[cfg(test)]
    pub(crate) fn placements_known(&self) -> usize {
        self.inner.runtimes.iter().filter(|rt| rt.placement.lock().unwrap_or_else(|e| e.into_inner()).is_some()).count()
    }

    /// Send the warning due for `s` now, once per deadline (the caller holds its op lock).
    async fn warn_if_due(&self, rt: &Runtime, s: &mut Session, seen: Seen, now: DateTime<Utc>) {
        if !self.inner.notifier.enabled() {
            return;
        }
        let config = &self.inner.config;
        let Some(warning) =
            self.inner.policy.warning(s, seen, now, config.warn_before_sleep, config.warn_before_delete)
        else {
            return;
        };
        let (kind, at) = match warning {
            Warning::Sleep(at) => {
                s.warned_sleep_for = Some(at);
                ("sleep_warning", at)
            }
            Warning::Delete(at) => {
                s.warned_delete_for = Some(at);
                ("delete_warning", at)
            }
        };
        // Recorded first: a warning is sent once per deadline, even across restarts.
        if let Err(e) = self.save(rt, s).await {
            tracing::debug!(session = %s.uuid, error = %e, "warning not recorded; retried next sweep");
            return;
        }
        let field = if kind == "sleep_warning" { "sleeps_at" } else { "deletes_at" };
        let mut fields = serde_json::Map::new();
        fields.insert(field.into(), json!(rfc3339(at)));
        fields.insert("in_seconds".into(), json!((at - now).num_milliseconds().max(0) as f64 / 1000.0));
        tracing::info!(session = %s.uuid, warning = kind, at = %rfc3339(at), "warning sent");
        self.event(kind, s, Value::Object(fields));
    }

    async fn forget(&self, rt: &Arc<Runtime>) -> Result<()> {
        let _op = rt.op.lock().await;
        let s = self.load(&rt.handle.id).await?;
        if s.state != State::Deleted {
            return Ok(());
        }
        self.inner.store.remove(&s.uuid, s.version).await?;
        self.inner.runtimes.remove(&rt.handle.id);
        tracing::info!(session = %s.uuid, "deleted session record forgotten after backup_retention");
        Ok(())
    }

    /// Delete backups older than `backup_retention` (by the time in their name), except those
    /// marked `keep` and those a session still needs (a restore or a deletion in flight).
    async fn prune_backups(&self, now: DateTime<Utc>, sessions: &[Session]) {
        let cutoff =
            now - chrono::Duration::from_std(self.inner.config.backup_retention).unwrap_or(chrono::Duration::MAX);
        let mut protected = std::collections::HashSet::new();
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

    /// With a shared store: send every session's activity (and open connections) in one
    /// pipeline, and take back what all replicas saw (max-merged), so a sleep decision anywhere
    /// counts activity seen everywhere.
    async fn merge_activity(&self) {
        let runtimes: Vec<Arc<Runtime>> = self.inner.runtimes.iter().map(|r| r.clone()).collect();
        let batch: Vec<ActivityCheckpoint> = runtimes
            .iter()
            .filter(|rt| rt.state() != State::Deleted)
            .map(|rt| ActivityCheckpoint {
                id: rt.handle.id.to_string(),
                replica: self.inner.replica.clone(),
                last_activity_ms: rt.handle.activity.last_activity_ms(),
                last_interaction_ms: rt.handle.activity.last_interaction_ms(),
                open_connections: rt.handle.activity.open_connections(),
            })
            .collect();
        let ttl = self.inner.config.checkpoint_interval * 3;
        match self.inner.store.merge_activity(&batch, self.now().timestamp_millis(), ttl).await {
            Ok(merged) => {
                for m in merged {
                    if let Some(rt) = SessionId::parse(&m.id).and_then(|id| self.runtime(&id)) {
                        rt.handle.activity.restore(m.last_activity_ms, m.last_interaction_ms);
                        rt.open_everywhere.store(m.open_connections, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                self.note_store_error(&e);
                tracing::debug!(error = %e, "activity checkpoint failed; kept in memory and retried");
            }
        }
    }

    /// Write in-memory activity to the store for sessions whose activity moved.
    pub async fn checkpoint(&self) {
        if self.inner.shared {
            return self.merge_activity().await;
        }
        let runtimes: Vec<Arc<Runtime>> = self.inner.runtimes.iter().map(|r| r.clone()).collect();
        for rt in runtimes {
            let ms = rt.handle.activity.last_activity_ms();
            if ms <= rt.persisted_activity_ms.load(Ordering::Relaxed) {
                continue;
            }
            // An operation in flight persists activity itself when it saves.
            let Ok(_op) = rt.op.try_lock() else { continue };
            let Ok(mut s) = self.load(&rt.handle.id).await else { continue };
            if let Err(e) = self.save(&rt, &mut s).await {
                tracing::debug!(session = %rt.handle.id, error = %e, "activity checkpoint failed; retried next interval");
            }
        }
    }

    async fn on_event(&self, event: BackendEvent) {
        let BackendEvent::Exited { id, placement, detail } = event;
        let Some(id) = SessionId::parse(&id) else { return };
        let Some(rt) = self.runtime(&id) else { return };
        let _op = rt.op.lock().await;
        let Ok(mut s) = self.load(&id).await else { return };
        if s.state != State::Running || s.placement.as_ref() != Some(&placement) {
            return; // an expected exit (sleep, resize) or an old process
        }
        tracing::warn!(session = %id, %detail, "workspace exited unexpectedly; it is asleep until the next request");
        s.last_error = Some(format!("the workspace exited unexpectedly ({detail})"));
        s.placement = None;
        if self.transition(&rt, &mut s, State::Sleeping).await.is_ok() {
            self.inner.metrics.sleeps.with_label_values(&["crashed"]).inc();
        }
    }

    /// Run the sweep, checkpoints and backend events until `shutdown` fires.
    pub async fn run_background(
        &self,
        mut events: mpsc::UnboundedReceiver<BackendEvent>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut store_events = self.inner.store.subscribe().await;
        let mut sweep = tokio::time::interval(self.inner.config.sweep_interval);
        let mut checkpoint = tokio::time::interval(self.inner.config.checkpoint_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sweep.tick() => { let _ = self.sweep().await; }
                _ = checkpoint.tick() => self.checkpoint().await,
                Some(event) = events.recv() => self.on_event(event).await,
                Some(id) = async { match store_events.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    self.on_store_event(&id).await
                }
                _ = shutdown.changed() => break,
            }
        }
        self.checkpoint().await;
    }

    /// Stop every running workspace (wakeway is exiting). They wake again on the next request.
    pub async fn stop_all(&self) {
        let awake: Vec<SessionId> =
            self.inner.runtimes.iter().filter(|r| r.state().is_awake()).map(|r| r.key().clone()).collect();
        let stops = awake.iter().map(|id| self.sleep(id, SleepReason::Shutdown));
        for (id, result) in awake.iter().zip(futures::future::join_all(stops).await) {
            if let Err(e) = result {
                tracing::warn!(session = %id, error = %e, "could not stop workspace at exit");
            }
        }
    }
}

/// The replica's name: configured, or hostname and process id.
fn replica_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// Log what reconciliation found. Nothing here is acted on: objects are never deleted because
/// of a report, and a session whose objects vanished shows it when it next starts.
fn log_reconcile(report: &crate::backend::ReconcileReport) {
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

const TOKEN_PREFIX: &str = "signin/";

/// Raise `s`'s cookie generation past every generation a cookie may carry (the record's and this
/// replica's); saved with the record's next write.
fn end_cookies(rt: &Runtime, s: &mut Session) {
    s.cookie_generation = s.cookie_generation.max(rt.handle.cookie_generation()) + 1;
    rt.handle.raise_cookie_generation(s.cookie_generation);
}

/// Where a sign-in token is kept: its SHA-256, never the token itself.
fn token_key(token: &str) -> String {
    use sha2::Digest;
    format!("{TOKEN_PREFIX}{:x}", sha2::Sha256::digest(token.as_bytes()))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn backup_fields(info: &crate::session::BackupInfo, reason: &str) -> Value {
    json!({
        "backup": info.file.trim_end_matches(".zip"),
        "reason": reason,
        "size": info.size,
        "sha256": info.sha256,
        "entries": info.entries,
        "skipped": info.skipped,
    })
}
