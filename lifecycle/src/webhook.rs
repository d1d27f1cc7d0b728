//! Lifecycle events and warnings sent to `webhook_url` as signed JSON.
//!
//! [`Notifier::send`] never waits: it puts the event on a bounded queue (a full queue drops it,
//! counted). A background task delivers each event with `POST`, the body signed with HMAC-SHA256
//! under `webhook_secret` (`X-Wakeway-Signature: sha256=<hex>`), and retries connection errors,
//! 408, 429 and 5xx answers after `webhook_retry`, doubling up to 5 min, at most
//! `webhook_max_attempts` times. Every retry carries the same `X-Wakeway-Delivery` id, so a
//! receiver can drop duplicates. Each event is kept in the store (`webhook:<id>`) before its first
//! attempt until it is delivered or given up, and a start delivers what an earlier run left:
//! every event is delivered at least once, with its `id`, across restarts (with several replicas
//! sharing a store, a replica that starts while another still delivers an event may deliver it
//! too — the same `id`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use prometheus::IntCounterVec;
use rand::Rng;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc};
use wakeway_config::Config;

use crate::metrics::Metrics;
use crate::store::Store;

/// Store key prefix of an event not delivered (nor given up) yet.
const PENDING: &str = "webhook:";

/// Events waiting for delivery at most; more are dropped (and counted).
const QUEUE: usize = 4096;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 16;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

crate::names::named! {
    /// A lifecycle event: `event` in the webhook's body, its `X-Wakeway-Event` header, and the
    /// `event` label of `wakeway_webhooks_total`.
    pub enum Event {
        Created => "created",
        Woke => "woke",
        WakeFailed => "wake_failed",
        Slept => "slept",
        SleepWarning => "sleep_warning",
        DeleteWarning => "delete_warning",
        BackupVerified => "backup_verified",
        BackupFailed => "backup_failed",
        Deleted => "deleted",
        Restored => "restored",
        RestoreFailed => "restore_failed",
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`, as sent in `X-Wakeway-Signature`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

struct Delivery {
    id: String,
    event: Event,
    body: Vec<u8>,
    /// Already in the store (left by an earlier run): not written again.
    kept: bool,
}

struct Inner {
    url: String,
    secret: Vec<u8>,
    retry: Duration,
    max_attempts: u32,
    client: reqwest::Client,
    tx: mpsc::Sender<Delivery>,
    seq: AtomicU64,
    events: IntCounterVec,
    attempts: IntCounterVec,
    store: Arc<dyn Store>,
}

/// Sends events to the webhook, if one is configured. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

impl Notifier {
    /// No webhook: `send` does nothing.
    pub fn disabled() -> Self {
        Notifier { inner: None }
    }

    /// A notifier for `webhook_url` (disabled when unset), delivering on `rt`.
    pub fn new(
        config: &Config,
        metrics: &Metrics,
        store: Arc<dyn Store>,
        rt: &tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let Some(url) = &config.webhook.url else {
            return Ok(Notifier::disabled());
        };
        // reqwest is built without a bundled TLS provider: use ring, which rustls already has here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wakeway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            url: url.to_string(),
            secret: config.webhook.secret.as_deref().unwrap_or_default().as_bytes().to_vec(),
            retry: config.webhook.retry,
            max_attempts: config.webhook.max_attempts,
            client,
            tx,
            seq: AtomicU64::new(0),
            events: metrics.webhooks.clone(),
            attempts: metrics.webhook_attempts.clone(),
            store,
        });
        rt.spawn(resend_pending(inner.clone()));
        rt.spawn(run(inner.clone(), rx));
        Ok(Notifier { inner: Some(inner) })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queue `event` about `session` (of `user_id`) with `fields` added to the body. Never waits.
    pub fn send(&self, event: Event, session: &str, user_id: &str, at: DateTime<Utc>, fields: Value) {
        let Some(inner) = &self.inner else { return };
        let id: String = rand::rng().random::<[u8; 12]>().iter().map(|b| format!("{b:02x}")).collect();
        let mut body = Map::new();
        body.insert("id".into(), json!(id));
        body.insert("seq".into(), json!(inner.seq.fetch_add(1, Ordering::Relaxed) + 1));
        body.insert("event".into(), json!(event));
        body.insert("at".into(), json!(at.to_rfc3339_opts(SecondsFormat::Millis, true)));
        body.insert("session".into(), json!(session));
        body.insert("user_id".into(), json!(user_id));
        if let Value::Object(extra) = fields {
            body.extend(extra);
        }
        let body = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        if let Err(full) = inner.tx.try_send(Delivery { id, event, body, kept: false }) {
            let event = &full.into_inner().event;
            inner.events.with_label_values(&[event.as_str(), "dropped"]).inc();
            tracing::warn!(%event, session, "webhook queue full: event dropped");
        }
    }
}

/// Queue again the events an earlier run kept in the store and did not deliver.
async fn resend_pending(inner: Arc<Inner>) {
    let keys = match inner.store.list_blobs(PENDING).await {
        Ok(keys) => keys,
        Err(e) => return tracing::warn!(error = %e, "cannot read the webhook events an earlier run left"),
    };
    for key in keys {
        let Ok(Some(body)) = inner.store.get_blob(&key).await else { continue };
        let event = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["event"].as_str().map(Event::from));
        let (Some(id), Some(event)) = (key.strip_prefix(PENDING), event) else { continue };
        tracing::info!(%event, delivery = id, "delivering a webhook event an earlier run left");
        let delivery = Delivery { id: id.to_string(), event, body, kept: true };
        if inner.tx.send(delivery).await.is_err() {
            return;
        }
    }
}

async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Delivery>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(delivery) = rx.recv().await {
        // Kept before the first attempt: from here on a restart delivers it if this run cannot.
        let key = format!("{PENDING}{}", delivery.id);
        if !delivery.kept
            && let Err(e) = inner.store.put_blob(&key, &delivery.body).await
        {
            tracing::warn!(event = %delivery.event, delivery = %delivery.id, error = %e, "webhook event not kept in the store: lost if wakeway stops before it is delivered");
        }
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let inner = inner.clone();
        tokio::spawn(async move {
            deliver(&inner, &delivery).await;
            // Delivered or given up: nothing is left to resend.
            if let Err(e) = inner.store.take_blob(&key).await {
                tracing::warn!(delivery = %delivery.id, error = %e, "could not drop a finished webhook event from the store");
            }
            drop(permit);
        });
    }
}

async fn deliver(inner: &Inner, d: &Delivery) {
    let signature = signature(&inner.secret, &d.body);
    for attempt in 1..=inner.max_attempts {
        let result = inner
            .client
            .post(&inner.url)
            .header("content-type", "application/json")
            .header("x-wakeway-event", d.event.as_str())
            .header("x-wakeway-delivery", &d.id)
            .header("x-wakeway-signature", &signature)
            .body(d.body.clone())
            .send()
            .await;
        let (retry, why) = match result {
            Ok(r) if r.status().is_success() => {
                inner.attempts.with_label_values(&["ok"]).inc();
                inner.events.with_label_values(&[d.event.as_str(), "delivered"]).inc();
                tracing::debug!(event = %d.event, delivery = %d.id, attempt, "webhook delivered");
                return;
            }
            Ok(r) => {
                let status = r.status();
                let retry = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
                (retry, format!("answered {status}"))
            }
            Err(e) => (true, e.to_string()),
        };
        inner.attempts.with_label_values(&["failed"]).inc();
        if !retry || attempt == inner.max_attempts {
            inner.events.with_label_values(&[d.event.as_str(), "failed"]).inc();
            tracing::warn!(event = %d.event, delivery = %d.id, attempt, error = %why, "webhook delivery given up");
            return;
        }
        let backoff = inner.retry.saturating_mul(1 << (attempt - 1).min(16)).min(MAX_BACKOFF);
        tracing::debug!(event = %d.event, delivery = %d.id, attempt, error = %why, retry_in = ?backoff, "webhook delivery failed; retrying");
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
