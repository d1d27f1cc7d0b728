//! Reading and writing session records: load, save (compare-and-set, merging the proxy's
//! activity first, then publishing the new phase) and state transitions through the one
//! transition table (`Session::transition`).

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use wakeway_proxy::SessionId;

use super::runtime::SessionRuntime;
use super::{LifecycleError, Manager, Result};
use crate::policy::Seen;
use crate::session::{Session, State};
use crate::store::StoreError;
use crate::usage::Since;

impl Manager {
    /// Persist `s` (compare-and-set), merging in-memory activity first; publish the new phase.
    pub(super) async fn save(&self, rt: &SessionRuntime, s: &mut Session) -> Result<()> {
        let seen = self.seen(rt, s);
        if seen.last_activity > s.last_activity {
            s.last_activity = seen.last_activity;
            s.activity_source = rt.handle.activity.source().into();
        }
        s.last_interaction = Some(seen.last_interaction);
        // A revocation this replica applied before it could write it (see `revoke_cookies`).
        s.cookie_generation = s.cookie_generation.max(rt.handle.cookie_generation());
        // Counted only in this compare-and-set write: a write that loses takes its count with it.
        let counted = s.usage.account(self.now(), Since::of(s));
        let stored = self.inner.store.put(s).await.inspect_err(|e| self.note_store_error(e))?;
        self.observe(&stored);
        if let Some(c) = counted {
            let seconds = c.ms as f64 / 1000.0;
            self.inner
                .metrics
                .state_seconds
                .with_label_values(&[c.since.bucket.as_str(), &c.since.tier])
                .inc_by(seconds);
        }
        self.inner.store_up.store(true, Ordering::Relaxed);
        rt.persisted_activity_ms.fetch_max(stored.last_activity.timestamp_millis(), Ordering::Relaxed);
        *s = stored;
        self.publish(rt, s);
        self.save_durable(rt, s).await;
        Ok(())
    }

    /// Give the backend the record's policy and pending operation when they changed, so a record
    /// the store loses is rebuilt with them. After the store's write: the backend's copy never
    /// says what the store refused. A failure is logged; the next save tries again.
    async fn save_durable(&self, rt: &SessionRuntime, s: &Session) {
        let durable = s.durable();
        let unchanged = rt.durable_saved.lock().unwrap_or_else(|p| p.into_inner()).as_ref() == Some(&durable);
        if unchanged || s.state == State::Deleted {
            return;
        }
        match self.inner.backend.save_durable(s).await {
            Ok(()) => *rt.durable_saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(durable),
            Err(e) => {
                tracing::warn!(session = %s.uuid, error = %e, "could not keep the session's policy with its workspace")
            }
        }
    }

    /// Activity merged from the record and the proxy's counters.
    pub(super) fn seen(&self, rt: &SessionRuntime, s: &Session) -> Seen {
        let ms = |t: i64, stored: DateTime<Utc>| {
            DateTime::from_timestamp_millis(t.max(stored.timestamp_millis())).unwrap_or(stored)
        };
        let activity = &rt.handle.activity;
        Seen {
            last_activity: ms(activity.last_activity_ms(), s.last_activity),
            last_interaction: ms(activity.last_interaction_ms(), s.last_interaction()),
        }
    }

    /// Note that the store is down (the `store_up` gauge), if that is what `e` says.
    pub(super) fn note_store_error(&self, e: &StoreError) {
        if matches!(e, StoreError::Unavailable(_)) {
            self.inner.store_up.store(false, Ordering::Relaxed);
        }
    }

    /// The stored record of `id`.
    pub(super) async fn load(&self, id: &SessionId) -> Result<Session> {
        let found = self.inner.store.get(id.as_str()).await.inspect_err(|e| self.note_store_error(e))?;
        found.ok_or_else(|| LifecycleError::NotFound(id.to_string()))
    }

    /// Move `s` to `next` (refused unless the state table allows it) and save it.
    pub(super) async fn transition(&self, rt: &SessionRuntime, s: &mut Session, next: State) -> Result<()> {
        let now = self.now();
        s.transition(next, now).map_err(|e| LifecycleError::Conflict {
            id: s.uuid.clone(),
            state: e.from.as_str(),
            what: e.to_string(),
        })?;
        self.save(rt, s).await
    }
}
