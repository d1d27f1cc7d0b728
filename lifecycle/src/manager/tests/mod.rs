//! The manager against in-memory fakes (`fakes`) and a manual clock, in milliseconds and without
//! a process or a socket.

mod fakes;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use wakeway_config::Config;
use wakeway_proxy::{ActivitySource, ManualClock, Phase, ProxyStats, SessionId};

use super::Manager;
use crate::api::{ApiKeys, ApiState, RateLimiter};
use crate::session::{RestoreOp, Session, State};
use fakes::{FakeStore, ScriptedBackend, Start};

const KEY: &str = "test-key-0123456789abcdef";

struct Rig {
    manager: Manager,
    store: Arc<FakeStore>,
    backend: Arc<ScriptedBackend>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

/// A manager over the fakes; `shared`: the store is shared with other replicas (like Redis).
fn rig(shared: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.data_dir = dir.path().to_owned();
    // Bounds how long a hung start lasts (real time: the fake's start sleeps until its deadline).
    config.start_timeout = Duration::from_millis(200);
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
    Rig { manager, store, backend, clock, _dir: dir }
}

impl Rig {
    /// A session recorded in `state` before this replica started, loaded as at start-up.
    async fn session(&self, state: State, restore: Option<RestoreOp>) -> SessionId {
        let id = SessionId::parse("0a1b2c3d").unwrap();
        let now = self.manager.now();
        let mut s = Session::new(&id, "ada@example.com", &self.manager.config().default_tier, now);
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
