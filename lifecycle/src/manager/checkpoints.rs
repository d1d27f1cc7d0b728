//! Activity checkpoints (the proxy's in-memory activity written to the store, or max-merged
//! across replicas on a shared store), the sleep and delete warnings, and the lifecycle events
//! sent to the webhook.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use wakeway_proxy::SessionId;

use super::Manager;
use super::runtime::SessionRuntime;
use crate::catalog::BackupReason;
use crate::policy::{Seen, Warning};
use crate::session::{BackupInfo, Session, State};
use crate::store::ActivityCheckpoint;
use crate::webhook::Event;

impl Manager {
    /// Send a lifecycle event to the webhook (if any). Never waits.
    pub(super) fn event(&self, kind: Event, s: &Session, fields: Value) {
        let now = self.now();
        self.inner.backend.lifecycle_event(&kind, s, now, &fields);
        self.inner.notifier.send(kind, &s.uuid, &s.user_id, now, fields);
    }

    /// Write in-memory activity to the store for sessions whose activity moved.
    pub async fn checkpoint(&self) {
        if self.inner.shared {
            return self.merge_activity().await;
        }
        let runtimes: Vec<Arc<SessionRuntime>> = self.inner.sessions.iter().map(|r| r.clone()).collect();
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

    /// With a shared store: send every session's activity (and open connections) in one
    /// pipeline, and take back what all replicas saw (max-merged), so a sleep decision anywhere
    /// counts activity seen everywhere.
    pub(super) async fn merge_activity(&self) {
        self.merge_activity_of(|_| true).await;
    }

    /// [`Manager::merge_activity`] for the sessions `which` picks.
    async fn merge_activity_of(&self, which: impl Fn(&SessionId) -> bool) {
        let batch: Vec<ActivityCheckpoint> = self
            .inner
            .sessions
            .iter()
            .filter(|rt| rt.state() != State::Deleted && which(rt.key()))
            .map(|rt| ActivityCheckpoint {
                id: rt.handle.id.to_string(),
                replica: self.inner.replica.clone(),
                last_activity_ms: rt.handle.activity.last_activity_ms(),
                last_interaction_ms: rt.handle.activity.last_interaction_ms(),
                open_connections: rt.handle.activity.open_connections(),
            })
            .collect();
        if batch.is_empty() {
            return;
        }
        let ttl = self.inner.config.lifecycle.checkpoint_interval * 3;
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

    /// Activity on `id` ended a quiet spell here (the proxy's [`Activity::touch`] said so): with
    /// a shared store, publish it now instead of at the next checkpoint. The quiet spell is set
    /// (see [`Manager::quiet_spells`]) so that any activity the sweep leader has not heard of by
    /// then reaches it by the next checkpoint, before the session could be put to sleep; so the
    /// leader decides with a small margin instead of a whole checkpoint interval.
    ///
    /// [`Activity::touch`]: wakeway_proxy::Activity::touch
    pub fn note_active_again(&self, id: &SessionId) {
        if !self.inner.shared {
            return;
        }
        self.inner.active_again.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        self.inner.active_again_notify.notify_one();
    }

    /// Count activity on `handle` that the lifecycle itself sees (a wake asked through the API or
    /// the admin page), published at once when it ends a quiet spell, as the proxy's is.
    pub(super) fn touch(&self, handle: &wakeway_proxy::SessionHandle, source: wakeway_proxy::ActivitySource) {
        if handle.activity.touch(self.now().timestamp_millis(), source) {
            self.note_active_again(&handle.id);
        }
    }

    /// Publish the activity of every session noted active again (one pipeline for all of them).
    pub async fn publish_active_again(&self) {
        let ids = std::mem::take(&mut *self.inner.active_again.lock().unwrap_or_else(|p| p.into_inner()));
        if !ids.is_empty() {
            self.inner.metrics.activity_published.with_label_values::<&str>(&[]).inc_by(ids.len() as u64);
            self.merge_activity_of(|id| ids.contains(id)).await;
        }
    }

    /// Publish sessions noted active again as they come, at most one pipeline per
    /// [`PUBLISH_BATCH`] (a burst of sessions coming back is one call), until `shutdown`.
    pub(super) async fn publish_active_again_until(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = self.inner.active_again_notify.notified() => {}
                _ = shutdown.changed() => return,
            }
            tokio::time::sleep(PUBLISH_BATCH).await;
            self.publish_active_again().await;
        }
    }

    /// With a shared store: how long without activity, and without interaction, makes a quiet
    /// spell for `s`, and how long after its deadline the leader waits before sleeping it.
    ///
    /// Activity the leader has not heard of either ended a quiet spell (published at once) or
    /// came less than `quiet` after activity it knows of (at `L`); other replicas write it by
    /// the next checkpoint, so by `L + quiet + checkpoint`. Sleeping no earlier than
    /// `L + timeout + grace` is safe when `grace ≥ quiet + checkpoint − timeout`: with
    /// `quiet = timeout − 2 × checkpoint` (one checkpoint of slack for a late tick) the grace
    /// is [`ACTIVITY_MARGIN`] (clocks and the publication's own latency). Timeouts under three
    /// checkpoint intervals use `quiet = checkpoint` and a grace that keeps the rule.
    pub(super) fn quiet_spells(&self, s: &Session) -> QuietSpells {
        let checkpoint = self.inner.config.lifecycle.checkpoint_interval;
        let margin = ACTIVITY_MARGIN.min(checkpoint);
        let spell = |timeout: Duration| {
            let quiet = timeout.saturating_sub(2 * checkpoint).max(checkpoint);
            (quiet, (quiet + checkpoint).saturating_sub(timeout).max(margin))
        };
        let (activity, grace) = spell(self.inner.policy.idle_timeout(s));
        let (interaction, open_tab_grace) = spell(self.inner.policy.max_awake_with_open_tab);
        QuietSpells { activity, interaction, grace: grace.max(open_tab_grace) }
    }
    /// Send the warning due for `s` now, once per deadline (the caller holds its op lock).
    pub(super) async fn warn_if_due(&self, rt: &SessionRuntime, s: &mut Session, seen: Seen, now: DateTime<Utc>) {
        if !self.inner.notifier.enabled() {
            return;
        }
        let config = &self.inner.config;
        let Some(warning) = self.inner.policy.warning(
            s,
            seen,
            now,
            config.lifecycle.warn_before_sleep,
            config.lifecycle.warn_before_delete,
        ) else {
            return;
        };
        let (kind, field, at) = match warning {
            Warning::Sleep(at) => {
                s.warned_sleep_for = Some(at);
                (Event::SleepWarning, "sleeps_at", at)
            }
            Warning::Delete(at) => {
                s.warned_delete_for = Some(at);
                (Event::DeleteWarning, "deletes_at", at)
            }
        };
        // Recorded first: a warning is sent once per deadline, even across restarts.
        if let Err(e) = self.save(rt, s).await {
            tracing::debug!(session = %s.uuid, error = %e, "warning not recorded; retried next sweep");
            return;
        }
        let mut fields = serde_json::Map::new();
        fields.insert(field.into(), json!(rfc3339(at)));
        fields.insert("in_seconds".into(), json!((at - now).num_milliseconds().max(0) as f64 / 1000.0));
        tracing::info!(session = %s.uuid, warning = %kind, at = %rfc3339(at), "warning sent");
        self.event(kind, s, Value::Object(fields));
    }
}

/// The most a publication of activity waits for others to send with it.
const PUBLISH_BATCH: Duration = Duration::from_millis(100);

/// Allowance for clocks between replicas and a publication's latency (see
/// [`Manager::quiet_spells`]).
const ACTIVITY_MARGIN: Duration = Duration::from_secs(2);

/// See [`Manager::quiet_spells`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QuietSpells {
    pub activity: Duration,
    pub interaction: Duration,
    pub grace: Duration,
}

/// A time as events and answers write it (RFC 3339, milliseconds, `Z`).
pub(super) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An event's fields for a verified backup written for `reason`.
pub(super) fn backup_fields(info: &BackupInfo, reason: &BackupReason) -> Value {
    json!({
        "backup": info.file.trim_end_matches(".zip"),
        "reason": reason,
        "size": info.size,
        "sha256": info.sha256,
        "entries": info.entries,
        "skipped": info.skipped,
    })
}
