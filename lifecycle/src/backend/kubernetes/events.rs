//! Kubernetes Events (events.k8s.io/v1) on a session's Deployment for each lifecycle step the
//! manager reports (the same steps as the webhook's: created, woke, slept, backup verified or
//! failed, restored, deleted), so `kubectl describe deployment user-<id>` and `kubectl get
//! events` show what wakeway did and why.
//!
//! Recorded the way client-go's event recorder does: `reportingController` `wakeway.dev/wakeway`,
//! `reportingInstance` the replica's name; a step with the same reason and note on the same
//! Deployment within `SERIES_WINDOW` of the last one adds to that Event's series (a PATCH of
//! `series.count`) instead of a new Event; and each Deployment gets `BURST` Events, then one per
//! `REFILL` (client-go's spam filter). Recording never waits: steps go on a bounded queue that one
//! task writes out; a full queue or a refused request is logged and dropped.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as KubeEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::objects::deployment_name;
use crate::session::Session;
use crate::webhook::Event;

/// `reportingController` of every Event wakeway writes.
pub const REPORTING_CONTROLLER: &str = "wakeway.dev/wakeway";
/// The same step again within this long of the last one counts in its series (client-go: 6 min).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// Events per Deployment at once, then one per `REFILL` (client-go's spam filter: 25, 5 min).
const BURST: f64 = 25.0;
const REFILL: Duration = Duration::from_secs(5 * 60);
/// Steps waiting to be written at most; more are dropped.
const QUEUE: usize = 1024;
/// The API server refuses a longer note (1 kB).
const MAX_NOTE: usize = 1024;

/// One lifecycle step of one session, as an Event says it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub deployment: String,
    pub uid: Option<String>,
    /// Machine-readable, CamelCase: `Woke`, `Slept`, `BackupFailed`, …
    pub reason: &'static str,
    /// What wakeway did: `Create`, `Wake`, `Sleep`, `Backup`, `Restore`, `Delete`.
    pub action: &'static str,
    pub warning: bool,
    pub note: String,
}

fn text(fields: &Value, key: &str) -> String {
    match &fields[key] {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        other => other.to_string(),
    }
}

/// The Event of a lifecycle `event` (warnings ahead of a sleep or deletion are not steps: none).
pub(crate) fn step(event: &Event, session: &Session, fields: &Value) -> Option<Step> {
    let f = |key| text(fields, key);
    let (reason, action, warning, note) = match event {
        Event::Created => match fields["restore_from"].as_str() {
            Some(backup) => ("Created", "Create", false, format!("created (tier {}) from backup {backup}", f("tier"))),
            None => ("Created", "Create", false, format!("created (tier {})", f("tier"))),
        },
        Event::Woke => ("Woke", "Wake", false, format!("woken by {}", f("source"))),
        Event::WakeFailed => ("WakeFailed", "Wake", true, format!("wake failed: {}", f("error"))),
        Event::Slept => ("Slept", "Sleep", false, format!("asleep: {}", f("reason"))),
        Event::BackupVerified => (
            "BackupVerified",
            "Backup",
            false,
            format!("backup {} ({}) written and verified", f("backup"), f("reason")),
        ),
        Event::BackupFailed => ("BackupFailed", "Backup", true, format!("backup failed: {}", f("error"))),
        Event::Restored => ("Restored", "Restore", false, format!("restored from backup {}", f("backup"))),
        Event::RestoreFailed => {
            ("RestoreFailed", "Restore", true, format!("restore of backup {} failed: {}", f("backup"), f("error")))
        }
        Event::Deleted => {
            ("Deleted", "Delete", false, format!("deleted ({}), last backup {}", f("trigger"), f("backup")))
        }
        Event::SleepWarning | Event::DeleteWarning | Event::Other(_) => return None,
    };
    let mut note = note;
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    let uid = session.objects.as_ref().map(|o| o.deployment.clone());
    Some(Step { deployment: deployment_name(&session.uuid), uid, reason, action, warning, note })
}

/// Queues steps for the writer task. Cheap to call from anywhere; never waits.
pub(crate) struct Recorder {
    tx: mpsc::Sender<(Step, DateTime<Utc>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Start the writer (needs a Tokio runtime). `instance`: this replica's name.
    pub fn spawn(api: Api<KubeEvent>, namespace: String, instance: &str) -> Recorder {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        // reportingInstance holds at most 128 characters.
        let instance: String = instance.chars().take(128).collect();
        let mut writer =
            Writer { api, namespace, instance, series: HashMap::new(), budgets: HashMap::new(), last_name: 0 };
        let task = tokio::spawn(async move {
            while let Some((step, at)) = rx.recv().await {
                writer.write(step, at).await;
            }
        });
        Recorder { tx, task }
    }

    /// Record `step` (observed at `at`) in the background.
    pub fn record(&self, step: Step, at: DateTime<Utc>) {
        if let Err(full) = self.tx.try_send((step, at)) {
            let (step, _) = full.into_inner();
            tracing::warn!(deployment = %step.deployment, reason = step.reason, "Kubernetes Event queue full: event dropped");
        }
    }
}

/// An Event this replica wrote, counting the occurrences of its step.
struct Series {
    name: String,
    count: i32,
    last: Instant,
}

/// A Deployment's Event budget: tokens, refilled one per `REFILL` up to `BURST`.
struct Budget {
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn full(now: Instant) -> Budget {
        Budget { tokens: BURST, at: now }
    }

    /// Take one token, if there is one.
    fn spend(&mut self, now: Instant) -> bool {
        let refilled = now.duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + refilled).min(BURST);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

struct Writer {
    api: Api<KubeEvent>,
    namespace: String,
    instance: String,
    /// (Deployment, reason, note) → the Event that records it.
    series: HashMap<(String, &'static str, String), Series>,
    budgets: HashMap<String, Budget>,
    /// The last Event name's number (names must be unique; two steps can share a time).
    last_name: i64,
}

impl Writer {
    async fn write(&mut self, step: Step, at: DateTime<Utc>) {
        let now = Instant::now();
        // A budget untouched for this long is full again: forget it.
        self.budgets.retain(|_, b| now.duration_since(b.at) < REFILL.mul_f64(BURST));
        let budget = self.budgets.entry(step.deployment.clone()).or_insert_with(|| Budget::full(now));
        if !budget.spend(now) {
            tracing::debug!(deployment = %step.deployment, reason = step.reason, "Kubernetes Event rate-limited");
            return;
        }
        self.series.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
        let key = (step.deployment.clone(), step.reason, step.note.clone());
        let result = match self.series.get_mut(&key) {
            Some(series) => {
                series.count += 1;
                series.last = now;
                let patch =
                    json!({ "series": EventSeries { count: series.count, last_observed_time: micro_time(at) } });
                self.api.patch(&series.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
            }
            None => {
                let event = self.event(&step, at);
                let name = event.metadata.name.clone().unwrap_or_default();
                let created = self.api.create(&PostParams::default(), &event).await;
                if created.is_ok() {
                    self.series.insert(key, Series { name, count: 1, last: now });
                }
                created.map(|_| ())
            }
        };
        if let Err(e) = result {
            tracing::warn!(deployment = %step.deployment, reason = step.reason, error = %e, "could not record a Kubernetes Event");
        }
    }

    fn event(&mut self, step: &Step, at: DateTime<Utc>) -> KubeEvent {
        // As client-go names them: <object>.<time in hex>, kept unique here.
        self.last_name = at.timestamp_nanos_opt().unwrap_or_default().max(self.last_name + 1);
        KubeEvent {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", step.deployment, self.last_name)),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(micro_time(at)),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            action: Some(step.action.into()),
            reason: Some(step.reason.into()),
            type_: Some(if step.warning { "Warning" } else { "Normal" }.into()),
            note: Some(step.note.clone()),
            regarding: Some(ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some("Deployment".into()),
                name: Some(step.deployment.clone()),
                namespace: Some(self.namespace.clone()),
                uid: step.uid.clone(),
                ..ObjectReference::default()
            }),
            ..KubeEvent::default()
        }
    }
}

fn micro_time(at: DateTime<Utc>) -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::from_microsecond(at.timestamp_micros()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_gets_a_burst_of_events_then_one_per_refill() {
        let start = Instant::now();
        let mut budget = Budget::full(start);
        assert_eq!((0..30).filter(|_| budget.spend(start)).count(), 25);
        assert!(!budget.spend(start + REFILL / 2));
        assert!(budget.spend(start + REFILL), "one more after a refill");
        assert!(!budget.spend(start + REFILL));
        assert_eq!((0..30).filter(|_| budget.spend(start + REFILL * 100)).count(), 25, "never more than the burst");
    }

    #[test]
    fn steps_say_what_happened_and_warnings_are_not_steps() {
        let mut s = Session::new(
            &crate::session::SessionId::parse("abc12345").unwrap(),
            "ada@example.com",
            "small",
            Utc::now(),
        );
        assert_eq!(step(&Event::SleepWarning, &s, &json!({})), None);
        let created = step(&Event::Created, &s, &json!({"tier": "small"})).unwrap();
        assert_eq!((created.reason, created.action, created.uid), ("Created", "Create", None));
        assert_eq!(created.deployment, "user-abc12345");
        s.objects =
            Some(crate::session::ObjectUids { deployment: "d-uid".into(), service: "s".into(), pvc: "p".into() });
        let failed = step(&Event::BackupFailed, &s, &json!({"error": "x".repeat(5000)})).unwrap();
        assert!(failed.warning && failed.note.len() <= MAX_NOTE && failed.note.ends_with("..."));
        assert_eq!(failed.uid.as_deref(), Some("d-uid"));
        let woke = step(&Event::Woke, &s, &json!({"source": "http", "seconds": 1.5})).unwrap();
        assert_eq!(woke.note, "woken by http", "no duration: the same step aggregates");
    }
}
