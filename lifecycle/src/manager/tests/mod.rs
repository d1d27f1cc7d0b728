//! The manager against in-memory fakes (`fakes`) and a manual clock: conflicts, another
//! replica's wake, failed, hung and panicking starts, an interrupted restore and a store that is
//! down, each in milliseconds and without a process or a socket.

mod activity;
mod fakes;
mod usage;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use wakeway_config::Config;
use wakeway_proxy::{ActivitySource, ManualClock, Phase, ProxyStats, SessionId};

use super::{LifecycleError, Manager, SleepReason};
use crate::api::{ApiError, ApiKeys, ApiState, RateLimiter};
use crate::backend::BackendError;
use crate::session::{RestoreOp, Session, State};
use crate::store::StoreError;
use fakes::{FakeStore, ScriptedBackend, Start};

const KEY: &str = "test-key-0123456789abcdef";

struct Rig {
    manager: Manager,
    store: Arc<FakeStore>,
    backend: Arc<ScriptedBackend>,
    clock: Arc<ManualClock>,
    dir: tempfile::TempDir,
}

/// A manager over the fakes; `shared`: the store is shared with other replicas (like Redis).
fn rig(shared: bool) -> Rig {
    rig_with(shared, |_| {})
}

/// [`rig`] with `configure` applied to its configuration.
fn rig_with(shared: bool, configure: impl FnOnce(&mut Config)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_owned();
    // Bounds how long a hung start lasts (real time: the fake's start sleeps until its deadline).
    config.lifecycle.start_timeout = Duration::from_millis(200);
    configure(&mut config);
    let store = Arc::new(FakeStore::new(shared));
    let backend = Arc::new(ScriptedBackend::default());
    let clock = Arc::new(ManualClock::new(1_760_000_000_000));
    let manager = Manager::new(
        Arc::new(config),
        store.clone(),
        backend.clone(),
        clock.clone(),
        Arc::new(ProxyStats::default()),
        tokio::runtime::Handle::current(),
    );
    Rig { manager, store, backend, clock, dir }
}

impl Rig {
    /// A session recorded in `state` before this replica started, loaded as at start-up.
    async fn session(&self, state: State, restore: Option<RestoreOp>) -> SessionId {
        let id = SessionId::parse("0a1b2c3d").unwrap();
        let now = self.manager.now();
        let mut s = Session::new(&id, "ada@example.com", &self.manager.config().workspaces.default_tier, now);
        s.state = state;
        s.slept_at = Some(now);
        s.restore = restore;
        self.store.seed(s);
        self.manager.recover().await.unwrap();
        id
    }

    fn phase(&self, id: &SessionId) -> Phase {
        self.manager.handle(id).unwrap().phase()
    }

    /// The API answer to `method path` (with the API key): status and JSON body.
    async fn api(&self, method: &str, path: &str) -> (StatusCode, Value) {
        let state = ApiState {
            manager: self.manager.clone(),
            keys: Arc::new(ApiKeys::new(&[KEY.into()])),
            limiter: Arc::new(RateLimiter::new(100, self.clock.clone())),
        };
        let request = Request::builder().method(method).uri(path).header("x-api-key", KEY).body(Body::empty());
        let response = crate::api::router(state).oneshot(request.unwrap()).await.unwrap();
        let status = response.status();
        let json = response.headers().get(http::header::CONTENT_TYPE).map(|v| v.as_bytes().to_vec());
        assert_eq!(json.as_deref(), Some(&b"application/json"[..]), "a JSON answer");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).expect("a JSON body"))
    }
}

/// Wait (on progress, with a generous bound) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what} did not happen");
}

#[tokio::test]
async fn a_panicked_wake_answers_500_with_a_json_error_and_the_next_request_wakes_it() {
    let rig = rig(false);
    let id = rig.session(State::Sleeping, None).await;
    rig.backend.script(&[Start::Panics]);

    let (status, body) = rig.api("POST", &format!("/session/{id}/wake?wait=true")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "internal_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("wake task failed"), "{message}");
    assert!(!message.contains("scripted backend"), "the panic's message is logged, not sent: {message}");

    // Requests held for that wake are answered (not left on `starting`), and the next one wakes it.
    assert!(matches!(rig.phase(&id), Phase::Failed(_)), "{:?}", rig.phase(&id));
    rig.manager.request_wake(&rig.manager.handle(&id).unwrap(), ActivitySource::Http);
    eventually("the next wake", || matches!(rig.phase(&id), Phase::Ready(_))).await;
    assert_eq!(rig.store.record(id.as_str()).state, State::Running);
    assert_eq!(rig.backend.count("start"), 2);
}

#[tokio::test]
async fn a_failed_start_leaves_the_session_asleep_with_the_reason_and_the_next_request_retries() {
    let rig = rig(false);
    let id = rig.session(State::Sleeping, None).await;
    rig.backend.script(&[Start::Fails("no space left for the workspace")]);

    let e = rig.manager.wake(&id, ActivitySource::ApiWake).await.unwrap_err();
    assert!(matches!(e, LifecycleError::Backend(BackendError::Start(_))), "{e:?}");
    assert_eq!(ApiError::from(e).status, StatusCode::BAD_GATEWAY);
    let s = rig.store.record(id.as_str());
    assert_eq!((s.state, s.placement.is_none()), (State::Sleeping, true));
    assert!(s.last_error.as_deref().unwrap().contains("no space left"), "{:?}", s.last_error);
    assert!(matches!(rig.phase(&id), Phase::Failed(ref why) if why.contains("no space left")));
    assert!(rig.manager.render_metrics().contains("wakeway_wakes_total{result=\"failed\"} 1"));

    rig.manager.request_wake(&rig.manager.handle(&id).unwrap(), ActivitySource::Http);
    eventually("the retried wake", || matches!(rig.phase(&id), Phase::Ready(_))).await;
    let s = rig.store.record(id.as_str());
    assert_eq!((s.state, s.last_error), (State::Running, None));
}

#[tokio::test]
async fn a_sleep_that_loses_a_compare_and_set_changes_nothing_and_a_retry_succeeds() {
    let rig = rig(false);
    let id = rig.session(State::Sleeping, None).await;
    rig.manager.wake(&id, ActivitySource::ApiWake).await.unwrap();
    rig.store.before_next_put(|s| s.user_id = "grace@example.com".into());

    let e = rig.manager.sleep(&id, SleepReason::Api).await.unwrap_err();
    assert!(matches!(e, LifecycleError::Store(StoreError::Conflict { .. })), "{e:?}");
    let api = ApiError::from(e);
    assert_eq!((api.status, api.code, api.retry_after), (StatusCode::CONFLICT, "concurrent_update", Some(1)));
    let s = rig.store.record(id.as_str());
    assert_eq!((s.state, s.user_id.as_str()), (State::Running, "grace@example.com"), "the other write is kept");
    assert_eq!(rig.backend.count("stop"), 0, "nothing is stopped on a decision made from a stale record");

    let s = rig.manager.sleep(&id, SleepReason::Api).await.unwrap();
    assert_eq!((s.state, s.user_id.as_str()), (State::Sleeping, "grace@example.com"));
    assert_eq!(rig.backend.count("stop"), 1);
}

#[tokio::test]
async fn a_wake_another_replica_began_first_is_followed_not_repeated() {
    let rig = rig(true);
    let id = rig.session(State::Sleeping, None).await;
    // The other replica marks it `waking` just before this one would.
    rig.store.before_next_put(|s| s.state = State::Waking);

    let s = rig.manager.wake(&id, ActivitySource::Http).await.unwrap();
    assert_eq!(s.state, State::Waking, "its record is followed");
    assert_eq!(rig.backend.count("start"), 0, "one replica starts it");
    assert_eq!(rig.phase(&id), Phase::Starting, "requests here wait for that start");
}

#[tokio::test]
async fn an_interrupted_restore_is_finished_before_the_wake() {
    let rig = rig(false);
    // A verified backup of another tree in the catalog.
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("notes.txt"), "restored\n").unwrap();
    let backups = rig.dir.path().join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    let file = "workspace-0ddf1e1d-20260101-120000.zip";
    let origin = crate::catalog::Origin::new("0ddf1e1d", "grace@example.com", "delete");
    crate::backup::write_verified_zip(source.path(), &backups.join(file), rig.manager.now(), &origin).unwrap();
    // wakeway stopped after it recorded the restore, before it backed up what the folder held.
    let backup = file.trim_end_matches(".zip").to_string();
    let op = RestoreOp {
        backup: backup.clone(),
        safety_backup: None,
        fresh: false,
        skip_escaping_symlinks: false,
        started_at: rig.manager.now(),
    };
    let id = rig.session(State::Restoring, Some(op)).await;

    let s = rig.manager.wake(&id, ActivitySource::Http).await.unwrap();
    assert_eq!(s.state, State::Running);
    assert_eq!(s.restored_from.as_deref(), Some(backup.as_str()));
    let safety = s.pre_restore_backup.expect("what it replaced was backed up first");
    assert!(safety.starts_with("workspace-0a1b2c3d-"), "{safety}");
    let calls = rig.backend.calls();
    assert_eq!(
        calls,
        [
            format!("clean {id}"),
            format!("backup {id} pre_restore"),
            format!("restore {id} {file}"),
            format!("start {id}")
        ]
    );
}

#[tokio::test]
async fn a_store_that_is_down_skips_the_sweep_and_answers_503() {
    let rig = rig(false);
    let id = rig.session(State::Sleeping, None).await;
    rig.manager.wake(&id, ActivitySource::ApiWake).await.unwrap();
    rig.clock.advance(rig.manager.config().lifecycle.idle_timeout + Duration::from_secs(60));
    rig.store.down.store(true, Ordering::SeqCst);

    let e = rig.manager.sweep().await.unwrap_err();
    assert!(matches!(e, LifecycleError::Store(StoreError::Unavailable(_))), "{e:?}");
    assert_eq!(rig.backend.count("stop"), 0, "no decision on stale data");
    assert!(rig.manager.render_metrics().contains("wakeway_store_up 0"));
    let (status, body) = rig.api("POST", &format!("/session/{id}/sleep")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable")));

    rig.store.down.store(false, Ordering::SeqCst);
    rig.manager.sweep().await.unwrap();
    assert_eq!(rig.store.record(id.as_str()).state, State::Sleeping, "idle: asleep once the store answers");
    assert_eq!(rig.backend.count("stop"), 1);
}

#[tokio::test]
async fn a_hung_start_is_one_wake_however_many_ask_and_ends_at_start_timeout() {
    let rig = rig(false);
    let id = rig.session(State::Sleeping, None).await;
    rig.backend.script(&[Start::Hangs]);
    let handle = rig.manager.handle(&id).unwrap();

    for _ in 0..5 {
        rig.manager.request_wake(&handle, ActivitySource::Http);
    }
    eventually("the start", || rig.backend.count("start") == 1).await;
    assert_eq!(handle.phase(), Phase::Starting);
    rig.manager.sweep().await.unwrap();
    assert_eq!(rig.backend.count("stop"), 0, "the sweep leaves a session an operation owns alone");

    eventually("the start's deadline", || matches!(handle.phase(), Phase::Failed(_))).await;
    assert_eq!(rig.backend.count("start"), 1, "one start for five requests");
    let s = rig.store.record(id.as_str());
    assert_eq!(s.state, State::Sleeping);
    assert!(s.last_error.as_deref().unwrap().contains("start_timeout"), "{:?}", s.last_error);

    rig.manager.request_wake(&handle, ActivitySource::Http);
    eventually("the next wake", || matches!(handle.phase(), Phase::Ready(_))).await;
    assert_eq!(rig.backend.count("start"), 2);
}

#[tokio::test]
async fn a_panic_in_the_sweep_is_counted_and_the_next_sweep_still_runs() {
    let rig = rig_with(false, |c| c.lifecycle.sweep_interval = Duration::from_millis(100));
    let id = rig.session(State::Sleeping, None).await;
    rig.manager.wake(&id, ActivitySource::ApiWake).await.unwrap();
    rig.clock.advance(rig.manager.config().lifecycle.idle_timeout + Duration::from_secs(60));
    rig.store.read_panics.store(1, Ordering::SeqCst);

    let (_events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let manager = rig.manager.clone();
    let background = tokio::spawn(async move { manager.run_background(events, shutdown).await });

    eventually("the sweep after the panicked one", || rig.store.record(id.as_str()).state == State::Sleeping).await;
    assert_eq!(rig.store.read_panics.load(Ordering::SeqCst), 0, "the first sweep panicked");
    let metrics = rig.manager.render_metrics();
    assert!(metrics.contains("wakeway_background_restarts_total{task=\"sweep\"} 1"), "{metrics}");
    assert_eq!(rig.backend.count("stop"), 1);

    shutdown_tx.send(true).unwrap();
    background.await.expect("the background loop ends on shutdown, it did not die of the panic");
}

#[tokio::test]
async fn another_replicas_operation_lease_keeps_every_step_here_off_the_session_until_it_expires() {
    let rig = rig_with(true, |c| c.lifecycle.hold_timeout = Duration::from_millis(300));
    let id = rig.session(State::BackingUp, None).await;
    let lease = format!("op:{id}");
    // Replica "b" is backing it up right now (for deletion).
    rig.store.hold(&lease, "b");

    let (status, body) = rig.api("POST", &format!("/session/{id}/wake?wait=true")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("operation_in_progress"))
    );
    let (status, _) = rig.api("DELETE", &format!("/session/{id}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    rig.manager.sweep().await.unwrap();
    assert_eq!(rig.backend.calls(), Vec::<String>::new(), "nothing here touched its data");
    assert_eq!(rig.store.record(id.as_str()).state, State::BackingUp, "b's backup is not turned into a wake");

    // b dies: its lease expires, and this replica's sweep finishes the deletion.
    rig.store.expire(&lease);
    rig.manager.sweep().await.unwrap();
    assert_eq!(rig.store.record(id.as_str()).state, State::Deleted);
    assert_eq!(rig.backend.count("backup"), 1);
    assert_eq!(rig.backend.count("destroy"), 1);
    assert_eq!(rig.store.holder(&lease), None, "released when the step ended");
}

#[tokio::test]
async fn the_sweep_prunes_expired_oidc_login_attempts_and_base_sessions() {
    use crate::store::Store;
    let rig = rig(false);
    let now = rig.manager.now().timestamp_millis();
    for prefix in ["oidclogin/", "usersession/"] {
        let old = serde_json::json!({ "expires_ms": now - 1 }).to_string();
        let live = serde_json::json!({ "expires_ms": now + 60_000 }).to_string();
        rig.store.put_blob(&format!("{prefix}old"), old.as_bytes()).await.unwrap();
        rig.store.put_blob(&format!("{prefix}live"), live.as_bytes()).await.unwrap();
    }
    rig.manager.sweep().await.unwrap();
    for prefix in ["oidclogin/", "usersession/"] {
        assert_eq!(rig.store.get_blob(&format!("{prefix}old")).await.unwrap(), None, "{prefix}: expired one pruned");
        assert!(rig.store.get_blob(&format!("{prefix}live")).await.unwrap().is_some(), "{prefix}: live one kept");
    }
}

/// With a shared store, another replica's change whose notice never arrived (a lost pub/sub
/// message) is missed by the sweeps of the sessions due, and acted on by the full sweep that
/// comes at the latest [`super::FULL_SWEEP_SAFETY_NET`] after the last one.
#[tokio::test]
async fn a_change_whose_notice_was_lost_is_acted_on_by_the_next_full_sweep() {
    let rig = rig(true);
    let id = rig.session(State::Sleeping, None).await;
    rig.manager.sweep().await.unwrap();
    // Another replica records a requested deletion; this replica hears nothing of it.
    let mut s = rig.store.record(id.as_str());
    s.delete_requested = true;
    rig.store.seed(s);
    rig.clock.advance(Duration::from_secs(60));
    rig.manager.sweep().await.unwrap();
    assert_eq!(rig.store.record(id.as_str()).state, State::Sleeping, "not due as far as this replica knows");

    rig.clock.advance(super::FULL_SWEEP_SAFETY_NET);
    rig.manager.sweep().await.unwrap();
    assert_eq!(rig.store.record(id.as_str()).state, State::Deleted);
    assert_eq!(rig.backend.count("backup"), 1);
}
