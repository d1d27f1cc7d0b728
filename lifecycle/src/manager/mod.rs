//! The session manager: every lifecycle operation (create, wake, sleep, scale, delete, restore),
//! the sweep that applies the idle policy, activity checkpoints, crash recovery at start-up, and
//! the in-memory session map the proxy reads on every request.
//!
//! Operations on one session are serialized by that session's operation lock
//! ([`Manager::run_locked`]) and each persisted step is a compare-and-set, so a crash between
//! steps leaves a state the next start (or sweep) resumes. One concern per file:
//! - `runtime`: the per-session in-memory state, publishing phases, running under the lock;
//! - `lease`: the per-session operation lease across replicas (shared store);
//! - `transitions`: load, save (compare-and-set) and state transitions;
//! - `create`, `wake`, `sleep` (sleep and scale), `delete`, `backups` (catalog, restores,
//!   per-session policy): the operations;
//! - `sweep` (the background loop, the policy sweep, its leader lease), `deadlines` (whom the
//!   sweep visits), `recovery` (start-up, other replicas' changes, lost records, crashed
//!   workspaces), `checkpoints` (activity, warnings, webhook events);
//! - `tokens` (sign-in links, cookie generations), `views` (status, counts, metrics, health).

mod backups;
mod checkpoints;
mod create;
mod deadlines;
mod delete;
mod error;
mod lease;
mod recovery;
mod runtime;
mod sleep;
mod sweep;
#[cfg(test)]
mod tests;
mod tokens;
mod transitions;
mod views;
mod wake;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use wakeway_config::Config;
use wakeway_proxy::{Clock, ProxyStats, SessionId};

use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::restore::Limits;
use crate::store::Store;
use crate::webhook::Notifier;
use runtime::SessionRuntime;

pub use backups::{BackupFilter, PolicyPatch, RestoreRequest};
use error::Result;
pub use error::{Fault, LifecycleError};
pub use sleep::{ScaleDirection, SleepReason};
pub use views::{Component, SessionView};

/// The sweep leader asks the backend for its workspaces at least this often (shared store).
pub const DISCOVERY_SAFETY_NET: Duration = Duration::from_secs(600);

/// With a shared store, the sweep leader reads every record (instead of only the sessions its
/// deadline index says are due) at least this often: a safety net for changes other replicas
/// made whose notice this replica lost (see `deadlines`).
pub const FULL_SWEEP_SAFETY_NET: Duration = Duration::from_secs(600);

struct Inner {
    config: Arc<Config>,
    policy: Policy,
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    /// Every session this replica knows, by id.
    sessions: DashMap<SessionId, Arc<SessionRuntime>>,
    metrics: Metrics,
    stats: Arc<ProxyStats>,
    store_up: AtomicBool,
    /// Problems worth showing in `/health` (component → message), e.g. ACME failures.
    problems: DashMap<Component, String>,
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
    tasks: tokio::runtime::Handle,
    catalog: Arc<Catalog>,
    notifier: Notifier,
    limits: Limits,
    /// Every session's usage, kept current with each record written or read here (`/usage`).
    usage: crate::usage::UsageIndex,
    /// The index was filled from the whole store once (at the first `/usage`).
    usage_loaded: tokio::sync::OnceCell<()>,
    /// When the sweep next needs to look at each session (see `deadlines`).
    deadlines: deadlines::DeadlineIndex,
    /// The next sweep as leader reads every record: until `recover` or a full sweep filled the
    /// deadline index, and on becoming the leader.
    full_sweep_due: AtomicBool,
    /// When the last full sweep ended (clock ms; see [`FULL_SWEEP_SAFETY_NET`]).
    last_full_sweep_ms: AtomicI64,
    /// Sessions whose quiet spell ended here since the last publication (shared store; see
    /// `checkpoints`), and the publisher's wake-up.
    active_again: std::sync::Mutex<std::collections::HashSet<SessionId>>,
    active_again_notify: tokio::sync::Notify,
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
        let metrics = Metrics::new();
        let notifier = Notifier::new(&config, &metrics, store.clone(), &rt).unwrap_or_else(|e| {
            tracing::error!(error = %e, "webhooks are off");
            Notifier::disabled()
        });
        Manager {
            inner: Arc::new(Inner {
                policy: Policy::from(config.as_ref()),
                shared: store.shared(),
                replica: replica_name(config.store.replica_id.as_deref()),
                limits: Limits::from_config(&config),
                usage: crate::usage::UsageIndex::new(crate::usage::Prices::from_config(&config)),
                usage_loaded: tokio::sync::OnceCell::new(),
                deadlines: deadlines::DeadlineIndex::default(),
                full_sweep_due: AtomicBool::new(true),
                last_full_sweep_ms: AtomicI64::new(0),
                active_again: Default::default(),
                active_again_notify: tokio::sync::Notify::new(),
                catalog: Arc::new(Catalog::new(config.backup_dir(), config.restore.max_bytes)),
                config,
                store,
                backend,
                clock,
                sessions: DashMap::new(),
                metrics,
                stats,
                store_up: AtomicBool::new(true),
                problems: DashMap::new(),
                changed: Arc::new(tokio::sync::Notify::new()),
                leading: AtomicBool::new(false),
                discover_due: AtomicBool::new(true),
                last_discovery_ms: AtomicI64::new(0),
                tasks: rt,
                notifier,
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

    pub fn backend_kind(&self) -> &'static str {
        self.inner.backend.kind()
    }

    pub fn store_kind(&self) -> &'static str {
        self.inner.store.kind()
    }

    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.inner.clock.now_ms()).unwrap_or_default()
    }

    /// Notified whenever a session is created or deleted.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.inner.changed.clone()
    }
}

/// The replica's name: configured, or hostname and process id.
pub fn replica_name(configured: Option<&str>) -> String {
    if let Some(name) = configured {
        return name.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
