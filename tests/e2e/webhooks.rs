//! Warnings and lifecycle events reach a real HTTP receiver, signed; a receiver that answers 500
//! gets the same delivery again until it accepts it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::Wakeway;

const SECRET: &str = "aac663d2b2200d9941fd139b45c4b03190b818243d8b70dd845418479b0d06f9";
const LONG: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Received {
    /// Attempts per delivery id.
    attempts: HashMap<String, u32>,
    /// Accepted deliveries: (event, body, signature header).
    accepted: Vec<(String, Value, String)>,
}

/// Refuse the first two attempts of every delivery with 500, accept the third.
async fn receive(State(log): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut log = log.lock().unwrap();
    let attempt = {
        let n = log.attempts.entry(header("x-wakeway-delivery")).or_default();
        *n += 1;
        *n
    };
    if attempt < 3 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let signature = header("x-wakeway-signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    if signature != format!("sha256={expected}") {
        return StatusCode::UNAUTHORIZED; // never accepted: the test would miss the event
    }
    log.accepted.push((header("x-wakeway-event"), value, signature));
    StatusCode::NO_CONTENT
}

fn events(log: &Arc<Mutex<Received>>, session: &str) -> Vec<String> {
    let log = log.lock().unwrap();
    log.accepted.iter().filter(|(_, v, _)| v["session"] == session).map(|(e, _, _)| e.clone()).collect()
}

async fn wait_for(log: &Arc<Mutex<Received>>, session: &str, event: &str) -> Value {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        if let Some((_, body, _)) =
            log.lock().unwrap().accepted.iter().find(|(e, v, _)| e == event && v["session"] == session)
        {
            return body.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no {event} for {session}; got {:?}", events(log, session));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_warnings_are_signed_and_retried_until_accepted() {
    let log = Arc::new(Mutex::new(Received::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/wakeway", listener.local_addr().unwrap());
    let app = Router::new().route("/hooks/wakeway", post(receive)).with_state(log.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let w = Wakeway::start(&[
        ("WAKEWAY_WEBHOOK_URL", &url),
        ("WAKEWAY_WEBHOOK_SECRET", SECRET),
        ("WAKEWAY_WEBHOOK_RETRY", "50ms"),
        ("WAKEWAY_IDLE_TIMEOUT", "3s"),
        ("WAKEWAY_SLEEP_TO_DELETE", "3s"),
        ("WAKEWAY_WARN_BEFORE_SLEEP", "2m"),
        ("WAKEWAY_WARN_BEFORE_DELETE", "1h"),
        ("WAKEWAY_SWEEP_INTERVAL", "200ms"),
        ("WAKEWAY_CHECKPOINT_INTERVAL", "200ms"),
    ])
    .await;
    let id = w.create().await;
    w.ws(Method::PUT, &id, "/files/a.txt").body("a").send().await.unwrap();

    // Left alone: warned (at most half the 3 s idle timeout before), asleep, warned again
    // (1 h before a deletion 3 s away: at once), backed up, deleted.
    let warning = wait_for(&log, &id, "sleep_warning").await;
    let slept = wait_for(&log, &id, "slept").await;
    assert!(warning["seq"].as_u64() < slept["seq"].as_u64(), "the warning came first");
    let sleeps_at = chrono::DateTime::parse_from_rfc3339(warning["sleeps_at"].as_str().unwrap()).unwrap();
    let slept_at = chrono::DateTime::parse_from_rfc3339(slept["at"].as_str().unwrap()).unwrap();
    assert!((slept_at - sleeps_at).num_milliseconds().abs() < 2000, "{warning} {slept}");
    assert!(warning["in_seconds"].as_f64().unwrap() <= 1.5, "{warning}");
    assert_eq!(slept["reason"], "idle");
    let delete_warning = wait_for(&log, &id, "delete_warning").await;
    assert!(delete_warning["deletes_at"].is_string());
    let verified = wait_for(&log, &id, "backup_verified").await;
    let deleted = wait_for(&log, &id, "deleted").await;
    assert_eq!(deleted["backup"], verified["backup"]);
    for event in ["created", "woke"] {
        wait_for(&log, &id, event).await;
    }
    let got = events(&log, &id);
    for once in ["sleep_warning", "slept", "delete_warning", "deleted"] {
        assert_eq!(got.iter().filter(|e| *e == once).count(), 1, "{once} exactly once: {got:?}");
    }

    // A restore is announced too.
    let backup = verified["backup"].as_str().unwrap();
    let body = json!({ "user_id": "user@example.com", "restore_from": backup }).to_string();
    let created: Value = w.api(Method::POST, "/session/create").body(body).send().await.unwrap().json().await.unwrap();
    let restored_id = created["uuid"].as_str().unwrap();
    let restored = wait_for(&log, restored_id, "restored").await;
    assert_eq!((restored["backup"].as_str(), restored["files"].as_u64()), (Some(backup), Some(1)));
    assert_eq!(restored["user_id"], "user@example.com");

    // Every accepted delivery was refused twice first, and kept its id across attempts.
    {
        let log = log.lock().unwrap();
        assert!(!log.accepted.is_empty());
        for (_, body, _) in &log.accepted {
            assert_eq!(log.attempts[body["id"].as_str().unwrap()], 3, "{body}");
        }
    }
    let metrics = w.metrics().await;
    assert!(metrics.contains("wakeway_webhooks_total{event=\"deleted\",result=\"delivered\"} 1"), "{metrics}");
    assert!(metrics.contains("wakeway_webhook_attempts_total{result=\"failed\"}"));
}

/// A receiver that is down never holds up the lifecycle; the events are counted as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_receiver_does_not_hold_up_the_lifecycle() {
    let port = crate::harness::free_port();
    let url = format!("http://127.0.0.1:{port}/nobody-listens");
    let w = Wakeway::start(&[
        ("WAKEWAY_WEBHOOK_URL", &url),
        ("WAKEWAY_WEBHOOK_SECRET", SECRET),
        ("WAKEWAY_WEBHOOK_RETRY", "50ms"),
        ("WAKEWAY_WEBHOOK_MAX_ATTEMPTS", "2"),
    ])
    .await;
    let started = std::time::Instant::now();
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    w.sleep(&id).await;
    let r = w.api(Method::DELETE, &format!("/session/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let metrics = w.metrics().await;
        if metrics.contains("wakeway_webhooks_total{event=\"deleted\",result=\"failed\"} 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a receiver that can be down saw: attempts (delivery id, event, session) and accepted ids.
#[derive(Default)]
struct Outage {
    down: bool,
    attempts: Vec<(String, String, String)>,
    accepted: Vec<(String, Value)>,
}

/// Answer 503 while down; accept (once signed) when up.
async fn receive_unless_down(State(log): State<Arc<Mutex<Outage>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut log = log.lock().unwrap();
    let session = value["session"].as_str().unwrap_or("").to_string();
    log.attempts.push((header("x-wakeway-delivery"), header("x-wakeway-event"), session));
    if log.down {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    log.accepted.push((header("x-wakeway-delivery"), value));
    StatusCode::NO_CONTENT
}

/// Events queued while the receiver is down and wakeway stops are delivered by the next start,
/// with the id they were first sent with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_while_the_receiver_is_down_are_delivered_after_a_restart() {
    let log = Arc::new(Mutex::new(Outage { down: true, ..Outage::default() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/wakeway", listener.local_addr().unwrap());
    let app = Router::new().route("/hooks/wakeway", post(receive_unless_down)).with_state(log.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let env = [
        ("WAKEWAY_WEBHOOK_URL", url.as_str()),
        ("WAKEWAY_WEBHOOK_SECRET", SECRET),
        // One attempt, then a retry long after this run has stopped.
        ("WAKEWAY_WEBHOOK_RETRY", "1h"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Wakeway::start_in(tmp.path(), &env).await;
    let id = w.create().await;
    let first_attempt = || {
        let log = log.lock().unwrap();
        log.attempts.iter().find(|(_, event, session)| event == "created" && *session == id).map(|(d, _, _)| d.clone())
    };
    let deadline = tokio::time::Instant::now() + LONG;
    let delivery = loop {
        if let Some(delivery) = first_attempt() {
            break delivery;
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt to deliver `created`:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    w.stop();
    log.lock().unwrap().down = false;

    let w = Wakeway::start_in(tmp.path(), &env).await;
    let deadline = tokio::time::Instant::now() + LONG;
    let body = loop {
        let found = log.lock().unwrap().accepted.iter().find(|(d, _)| *d == delivery).map(|(_, v)| v.clone());
        if let Some(body) = found {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "`created` was not delivered after the restart:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((body["event"].as_str(), body["session"].as_str()), (Some("created"), Some(id.as_str())));
    assert_eq!(body["id"], delivery.as_str(), "the id it was first sent with");
    assert!(w.log().contains("delivering a webhook event an earlier run left"));
}
