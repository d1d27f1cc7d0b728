//! What the manager shows: a session with its live fields (status, lists), session counts by
//! state, the Prometheus exposition, store health and the problems `/health` reports.

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use wakeway_proxy::SessionId;

use super::runtime::state_index;
use super::{LifecycleError, Manager, Result};
use crate::policy::Seen;
use crate::session::{RecordedSource, Session, State};
use crate::store::StoreError;

/// A live view of one session for status answers.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub session: Session,
    pub last_activity: DateTime<Utc>,
    pub activity_source: RecordedSource,
    pub sleeps_at: Option<DateTime<Utc>>,
    pub deletes_at: Option<DateTime<Utc>>,
    pub replicas: u8,
    pub queue_length: usize,
    pub open_connections: usize,
}

impl Manager {
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
                    activity.source().into()
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

    /// Usage and cost over `q`'s days, from the usage index: filled from every record in the
    /// store (deleted and forgotten ones too) at the first call, kept current since by every
    /// record written or read (see `usage::index`). Summed off the async workers.
    pub async fn usage(&self, q: &crate::usage::Query) -> Result<crate::usage::Report> {
        self.inner.usage_loaded.get_or_try_init(|| self.load_usage()).await?;
        let (this, q, now) = (self.clone(), q.clone(), self.now());
        tokio::task::spawn_blocking(move || this.inner.usage.report(&q, now))
            .await
            .map_err(|e| LifecycleError::task_failed("the usage report", e))
    }

    /// Fill the usage index from the whole store.
    async fn load_usage(&self) -> Result<()> {
        let all = self.inner.store.list().await.inspect_err(|e| self.note_store_error(e))?;
        let forgotten = self.forgotten_records(&all).await?;
        for s in all.iter().chain(&forgotten) {
            self.inner.usage.observe(s);
        }
        tracing::info!(sessions = self.inner.usage.len(), "usage index filled from the store");
        Ok(())
    }

    /// The records forgotten after `backup_retention`, kept for their usage; not those still in
    /// `live` (a forget interrupted between keeping and removing: counted once, from the record).
    async fn forgotten_records(&self, live: &[Session]) -> Result<Vec<Session>> {
        let store = &self.inner.store;
        let keys = store.list_blobs(crate::usage::FORGOTTEN).await.inspect_err(|e| self.note_store_error(e))?;
        let live: std::collections::HashSet<&str> = live.iter().map(|s| s.uuid.as_str()).collect();
        let mut forgotten = Vec::new();
        let gone = |key: &&String| key.strip_prefix(crate::usage::FORGOTTEN).is_none_or(|id| !live.contains(id));
        for key in keys.iter().filter(gone) {
            let Some(bytes) = store.get_blob(key).await.inspect_err(|e| self.note_store_error(e))? else { continue };
            match serde_json::from_slice::<Session>(&bytes) {
                Ok(s) => forgotten.push(s),
                Err(e) => tracing::warn!(key = %key, error = %e, "a forgotten session's usage is unreadable; left out"),
            }
        }
        Ok(forgotten)
    }

    /// Session counts by state (from memory).
    pub fn state_counts(&self) -> Vec<(State, usize)> {
        let mut counts = vec![0usize; State::ALL.len()];
        for rt in self.inner.sessions.iter() {
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

    /// Record (or clear) a problem of a component, shown in `/health`.
    pub fn set_problem(&self, component: Component, problem: Option<String>) {
        match problem {
            Some(p) => {
                self.inner.problems.insert(component, p);
            }
            None => {
                self.inner.problems.remove(&component);
            }
        }
    }

    /// Current problems by component (by its name).
    pub fn problems(&self) -> Vec<(Component, String)> {
        let mut all: Vec<_> = self.inner.problems.iter().map(|p| (*p.key(), p.value().clone())).collect();
        all.sort_by_key(|(component, _)| component.as_str());
        all
    }
}

/// A part of wakeway whose problem `/health` reports, under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// Workspaces do not run under uids of their own (local backend).
    Isolation,
    /// The certificate files cannot be loaded.
    TlsFiles,
    /// ACME orders fail.
    Acme,
    /// The OpenID Connect provider does not answer (`workspace_auth = "oidc"`).
    Oidc,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Isolation => "isolation",
            Component::TlsFiles => "tls_files",
            Component::Acme => "acme",
            Component::Oidc => "oidc",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
