//! Creating a session: a fresh id, its record (state `creating`) and its storage; the workspace
//! then starts in the background like any wake (the seed starts the pod on creation).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::json;
use wakeway_proxy::{ActivitySource, SessionId};

use super::runtime::SessionRuntime;
use super::{Manager, Result};
use crate::session::{Session, State};
use crate::store::StoreError;
use crate::webhook::Event;

impl Manager {
    /// Create a session and start its workspace in the background. Returns the stored record.
    pub async fn create(&self, user_id: &str) -> Result<Session> {
        self.create_in_tier(user_id, &self.inner.config.workspaces.default_tier).await
    }

    /// [`Manager::create`] with `tier`'s resources (a tier of the configuration) instead of
    /// `default_tier`'s: the home page's "New workspace".
    pub async fn create_in_tier(&self, user_id: &str, tier: &str) -> Result<Session> {
        let (rt, s) = self.create_record(user_id, tier).await?;
        self.event(Event::Created, &s, json!({ "tier": s.tier }));
        self.request_wake(&rt.handle, ActivitySource::Created);
        Ok(s)
    }

    /// Store a new session record and prepare its storage (state `creating`).
    pub(super) async fn create_record(&self, user_id: &str, tier: &str) -> Result<(Arc<SessionRuntime>, Session)> {
        let now = self.now();
        let mut s = self.store_new_record(user_id, tier, now).await?;
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

    /// Store a record under a random id no session has (here or in the store).
    async fn store_new_record(&self, user_id: &str, tier: &str, now: DateTime<Utc>) -> Result<Session> {
        loop {
            let id = SessionId::parse(&format!("{:08x}", rand::rng().random::<u32>())).expect("8 hex digits");
            if self.inner.sessions.contains_key(&id) {
                continue;
            }
            match self.inner.store.put(&Session::new(&id, user_id, tier, now)).await {
                Ok(stored) => {
                    self.observe(&stored);
                    return Ok(stored);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => {
                    self.note_store_error(&e);
                    return Err(e.into());
                }
            }
        }
    }
}
