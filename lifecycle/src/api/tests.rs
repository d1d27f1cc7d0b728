//! The router without a socket (`oneshot`), over a real embedded store and a real local backend
//! whose workspace is Python's `http.server`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use wakeway_config::Config;
use wakeway_proxy::{ManualClock, ProxyStats, SessionId};

use super::*;

pub(super) const KEY: &str = "test-key-0123456789abcdef";

pub(super) struct Harness {
    pub(super) router: Router,
    pub(super) manager: Manager,
    pub(super) clock: Arc<ManualClock>,
    pub(super) _dir: tempfile::TempDir,
}

pub(super) async fn harness(per_minute: u32) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_owned();
    config.access.api_keys = vec![KEY.into()];
    config.limits.rate_limit_per_minute = per_minute;
    config.workspaces.command = Some("exec python3 -m http.server --bind 127.0.0.1 {port}".into());
    config.local.isolation = wakeway_config::Isolation::Off;
    config.lifecycle.stop_grace = Duration::from_secs(2);
    let clock = Arc::new(ManualClock::new(1_760_000_000_000));
    let built = crate::build(
        Arc::new(config),
        clock.clone(),
        Arc::new(ProxyStats::default()),
        tokio::runtime::Handle::current(),
    )
    .await
    .unwrap();
    let state = ApiState {
        manager: built.wakeway.manager.clone(),
        keys: Arc::new(ApiKeys::new(&[KEY.into()])),
        limiter: Arc::new(RateLimiter::new(per_minute, clock.clone())),
    };
    Harness { router: router(state), manager: built.wakeway.manager, clock, _dir: dir }
}

pub(super) async fn call(
    router: &Router,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (StatusCode, Value, http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let response = router.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, json, headers)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {v}"))
}

#[tokio::test]
async fn bad_input_gets_a_precise_error() {
    let h = harness(100).await;
    let r = &h.router;
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16, &'a str);
    let cases: &[Case] = &[
        ("POST", "/session/create", None, r#"{"user_id":"a"}"#, 401, "missing_api_key"),
        ("POST", "/session/create", Some("wrong-key-0123456789"), r#"{"user_id":"a"}"#, 401, "invalid_api_key"),
        ("POST", "/session/create", Some(KEY), r#"{"user_id":"#, 400, "invalid_json"),
        ("POST", "/session/create", Some(KEY), "", 400, "invalid_json"),
        ("POST", "/session/create", Some(KEY), "[1,2]", 422, "invalid_body"),
        ("POST", "/session/create", Some(KEY), "{}", 422, "missing_field"),
        ("POST", "/session/create", Some(KEY), r#"{"user_id":42}"#, 422, "invalid_field"),
        ("POST", "/session/create", Some(KEY), r#"{"user_id":"  "}"#, 422, "invalid_user_id"),
        ("POST", "/session/create", Some(KEY), r#"{"user_id":"a\u0000b"}"#, 422, "invalid_user_id"),
        ("GET", "/session/nothex!!/status", Some(KEY), "", 400, "invalid_uuid"),
        ("GET", "/session/abc/status", Some(KEY), "", 400, "invalid_uuid"),
        ("GET", "/session/abc12345/status", Some(KEY), "", 404, "session_not_found"),
        ("POST", "/session/abc12345/sleep", Some(KEY), "", 404, "session_not_found"),
        ("POST", "/session/abc12345/wake", Some(KEY), "", 404, "session_not_found"),
        ("DELETE", "/session/abc12345", Some(KEY), "", 404, "session_not_found"),
        ("POST", "/session/abc12345/scale", Some(KEY), r#"{"scale":"sideways"}"#, 422, "invalid_scale"),
        ("POST", "/session/abc12345/scale", Some(KEY), r#"{}"#, 422, "missing_field"),
        ("GET", "/backups/nope", Some(KEY), "", 400, "invalid_backup_id"),
        ("GET", "/backups/workspace-abc12345-20250101-120000", Some(KEY), "", 404, "backup_not_found"),
        ("GET", "/backups/workspace-abc12345-20250101-120000/download", Some(KEY), "", 404, "backup_not_found"),
        ("PATCH", "/backups/workspace-abc12345-20250101-120000", Some(KEY), "{}", 422, "missing_field"),
        ("PATCH", "/backups/workspace-abc12345-20250101-120000", Some(KEY), r#"{"keep":1}"#, 422, "invalid_field"),
        (
            "PATCH",
            "/backups/workspace-abc12345-20250101-120000",
            Some(KEY),
            r#"{"keep":true}"#,
            404,
            "backup_not_found",
        ),
        ("GET", "/backups?uuid=zz", Some(KEY), "", 400, "invalid_uuid"),
        ("GET", "/backups", None, "", 401, "missing_api_key"),
        ("POST", "/session/create", Some(KEY), r#"{"user_id":"a","restore_from":"../x"}"#, 400, "invalid_backup_id"),
        ("POST", "/session/create", Some(KEY), r#"{"user_id":"a","restore_from":7}"#, 422, "invalid_field"),
        (
            "POST",
            "/session/create",
            Some(KEY),
            r#"{"user_id":"a","restore_from":"workspace-abc12345-20250101-120000"}"#,
            404,
            "backup_not_found",
        ),
        ("POST", "/session/abc12345/restore", Some(KEY), "{}", 422, "missing_field"),
        (
            "POST",
            "/session/abc12345/restore",
            Some(KEY),
            r#"{"backup":"workspace-abc12345-20250101-120000"}"#,
            404,
            "session_not_found",
        ),
        ("PATCH", "/session/abc12345/policy", Some(KEY), r#"{"idle_timeout":"1m"}"#, 404, "session_not_found"),
        ("PATCH", "/session/abc12345/policy", Some(KEY), r#"{"idle_timeout":"99d"}"#, 422, "policy_out_of_bounds"),
        ("GET", "/nope", Some(KEY), "", 404, "not_found"),
        ("GET", "/session/create", Some(KEY), "", 405, "method_not_allowed"),
    ];
    for (method, path, key, body, status, expected) in cases {
        let (got, json, _) = call(r, method, path, *key, body).await;
        assert_eq!(got.as_u16(), *status, "{method} {path} {body}: {json}");
        assert_eq!(code(&json), *expected, "{method} {path} {body}");
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
    }
}

/// The router holds `max_api_body_bytes` itself (the proxy does before it), in the same words.
#[tokio::test]
async fn an_oversized_body_is_refused_as_json() {
    let h = harness(100).await;
    let huge = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(70 * 1024));
    let (status, json, _) = call(&h.router, "POST", "/session/create", Some(KEY), &huge).await;
    assert_eq!((status.as_u16(), code(&json)), (413, "body_too_large"), "{json}");
    assert_eq!(json["error"]["message"], "request body is larger than 65536 bytes");
}

#[tokio::test]
async fn health_and_metrics_need_no_key() {
    let h = harness(100).await;
    let (status, json, _) = call(&h.router, "GET", "/health", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["store"]["kind"], "embedded");
    let (status, text, headers) = call(&h.router, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = text.as_str().unwrap();
    assert!(text.contains("wakeway_sessions{state=\"running\"} 0"), "{text}");
    assert!(text.contains("wakeway_store_up 1"));
}

#[tokio::test]
async fn the_rate_limit_is_per_key_and_endpoint() {
    let h = harness(3).await;
    for _ in 0..3 {
        assert_eq!(call(&h.router, "GET", "/sessions", Some(KEY), "").await.0, 200);
    }
    let (status, json, headers) = call(&h.router, "GET", "/sessions", Some(KEY), "").await;
    assert_eq!(status, 429);
    assert_eq!(code(&json), "rate_limited");
    assert_eq!(headers["retry-after"], "20");
    // Another endpoint has its own budget.
    assert_eq!(call(&h.router, "GET", "/session/abc12345/status", Some(KEY), "").await.0, 404);
    h.clock.advance(Duration::from_secs(20));
    assert_eq!(call(&h.router, "GET", "/sessions", Some(KEY), "").await.0, 200);
}

#[tokio::test]
async fn create_status_sleep_scale_delete_round_trip() {
    let h = harness(100).await;
    let (status, created, _) =
        call(&h.router, "POST", "/session/create", Some(KEY), r#"{"user_id":"user@example.com"}"#).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["status"], "created");
    assert_eq!(created["user_id"], "user@example.com");
    let id = created["uuid"].as_str().unwrap().to_string();
    assert_eq!(created["workspace_url"], format!("http://vs-code-{id}.localhost:8080"));
    assert_eq!(created["created_at"].as_str().unwrap().len(), "2025-11-15T04:21:36.058889".len());

    let sid = SessionId::parse(&id).unwrap();
    h.manager.wake(&sid, ActivitySource::ApiWake).await.unwrap();
    let (_, st, _) = call(&h.router, "GET", &format!("/session/{id}/status"), Some(KEY), "").await;
    assert_eq!(st["replicas"], 1, "{st}");
    assert_eq!(st["state"], "running");
    assert_eq!(st["queue_length"], 0);
    assert_eq!(st["session"]["uuid"], id.as_str());
    assert!(st["sleeps_at"].is_string() && st["deletes_at"].is_null());

    let (status, scaled, _) =
        call(&h.router, "POST", &format!("/session/{id}/scale"), Some(KEY), r#"{"scale":"up"}"#).await;
    assert_eq!(status, 200, "{scaled}");
    assert_eq!(scaled["tier"], "large");
    assert_eq!(scaled["resources"]["memory_mib"], 2048);

    let (status, slept, _) = call(&h.router, "POST", &format!("/session/{id}/sleep"), Some(KEY), "").await;
    assert_eq!(status, 200, "{slept}");
    let (_, st, _) = call(&h.router, "GET", &format!("/session/{id}/status"), Some(KEY), "").await;
    assert_eq!(st["replicas"], 0);
    assert_eq!(st["state"], "sleeping");
    assert!(st["deletes_at"].is_string());

    let (status, deleted, _) = call(&h.router, "DELETE", &format!("/session/{id}"), Some(KEY), "").await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["status"], "deleted");
    assert!(deleted["backup"]["file"].as_str().unwrap().starts_with(&format!("workspace-{id}-")));
    let (status, json, _) = call(&h.router, "POST", &format!("/session/{id}/wake"), Some(KEY), "").await;
    assert_eq!((status.as_u16(), code(&json)), (410, "session_deleted"));
    let (_, listed, _) = call(&h.router, "GET", "/sessions", Some(KEY), "").await;
    assert_eq!(listed["count"], 0);
    let (_, listed, _) = call(&h.router, "GET", "/sessions?include_deleted=true", Some(KEY), "").await;
    assert_eq!(listed["count"], 1);
}

/// A session's folder is backed up on delete, listed in the catalog, kept, and restored into a
/// new session: in-process, over the real store and the python workspace.
#[tokio::test]
async fn backups_are_listed_kept_and_restored() {
    let h = harness(100).await;
    let (_, created, _) = call(&h.router, "POST", "/session/create", Some(KEY), r#"{"user_id":"u@example.com"}"#).await;
    let id = created["uuid"].as_str().unwrap().to_string();
    let folder = h._dir.path().join("workspaces").join(&id);
    std::fs::write(folder.join("kept.txt"), "kept across delete and restore").unwrap();
    std::fs::write(folder.join("second.txt"), "two").unwrap();
    let (status, deleted, _) = call(&h.router, "DELETE", &format!("/session/{id}"), Some(KEY), "").await;
    assert_eq!(status, 200, "{deleted}");
    let backup = deleted["backup"]["file"].as_str().unwrap().trim_end_matches(".zip").to_string();

    let (_, listed, _) = call(&h.router, "GET", &format!("/backups?uuid={id}"), Some(KEY), "").await;
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["backups"][0]["user_id"], "u@example.com");
    assert!(listed["backups"][0]["expires_at"].is_string());
    let (status, kept, _) =
        call(&h.router, "PATCH", &format!("/backups/{backup}"), Some(KEY), r#"{"keep":true}"#).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!((kept["keep"].as_bool(), kept["expires_at"].is_null()), (Some(true), true));

    let body = format!(r#"{{"user_id":"u@example.com","restore_from":"{backup}"}}"#);
    let (status, restored, _) = call(&h.router, "POST", "/session/create", Some(KEY), &body).await;
    assert_eq!(status, 200, "{restored}");
    assert_eq!(restored["restore"]["files"], 2);
    let new_id = restored["uuid"].as_str().unwrap();
    let text = std::fs::read_to_string(h._dir.path().join("workspaces").join(new_id).join("kept.txt")).unwrap();
    assert_eq!(text, "kept across delete and restore");
    let (_, st, _) = call(&h.router, "GET", &format!("/session/{new_id}/status"), Some(KEY), "").await;
    assert_eq!(st["session"]["restored_from"], backup.as_str());
    assert_eq!(st["session"]["policy"]["idle_timeout"], "15m");
    h.manager.sleep(&SessionId::parse(new_id).unwrap(), SleepReason::Api).await.unwrap();
}

/// Any body sent to the endpoints that parse JSON gets a 2xx or a precise 4xx, never a 5xx.
#[test]
fn arbitrary_bodies_never_cause_a_server_error() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let h = rt.block_on(harness(1_000_000));
    let config = ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() };
    let bodies = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "\\{\"(user_id|scale|backup|restore_from|skip_escaping_symlinks)\": ?(\"[^\"]{0,20}\"|[0-9]{1,3}|null|true|\\[\\]|\\{\\})\\}",
        ".{0,64}",
    ];
    proptest!(config, |(body in bodies, path in prop_oneof![Just("/session/create"), Just("/session/abc12345/scale"), Just("/session/abc12345/restore")])| {
        let (status, json, _) = rt.block_on(call(&h.router, "POST", path, Some(KEY), &body));
        prop_assert!(status.is_success() || status.is_client_error(), "{} {} -> {} {}", path, body, status, json);
        if status.is_client_error() {
            prop_assert!(json["error"]["code"].is_string(), "{}", json);
        }
    });
    // Bodies that were valid created sessions: stop their workspace processes.
    rt.block_on(h.manager.stop_all());
}

/// Series of `wakeway_api_requests_total` in the exposition.
fn api_series(h: &Harness) -> usize {
    h.manager.render_metrics().lines().filter(|l| l.starts_with("wakeway_api_requests_total{")).count()
}

#[tokio::test]
async fn api_metrics_have_bounded_labels() {
    let h = harness(100).await;
    for (method, path) in [("GET", "/health"), ("GET", "/sessions"), ("GET", "/session/abc12345/status")] {
        call(&h.router, method, path, Some(KEY), "").await;
    }
    let before = api_series(&h);
    for i in 0..300 {
        let method = format!("M{i}X");
        let paths = [format!("/junk/{i}"), format!("/session/{i:08x}/status"), format!("/backups/{i}")];
        call(&h.router, &method, &paths[i % 3], None, "").await;
        call(&h.router, "GET", &format!("/nothing-here-{i}"), None, "").await;
    }
    let text = h.manager.render_metrics();
    let after = api_series(&h);
    // other × {unmatched, three templates} × a few statuses, GET unmatched 404: a handful at most.
    assert!(after <= before + 12, "series grew from {before} to {after}:\n{text}");
    assert!(!text.contains("M1X") && !text.contains("nothing-here") && !text.contains("/junk/"), "{text}");
    assert!(text.contains(r#"endpoint="GET /session/{uuid}/status""#), "route templates: {text}");
    assert!(text.contains(r#"endpoint="GET unmatched""#), "{text}");
}

#[tokio::test]
async fn wrong_keys_spend_the_client_budget() {
    let h = harness(100).await;
    let limiter = Arc::new(RateLimiter::new(3, h.clock.clone() as Arc<dyn wakeway_proxy::Clock>));
    let client = std::net::IpAddr::from([198, 51, 100, 7]);
    let send = |key: Option<&'static str>, path: &'static str| {
        let mut req = Request::builder().method("GET").uri(path);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let req = req.extension(FailureBudget::new(limiter.clone(), client)).body(Body::empty()).unwrap();
        let router = h.router.clone();
        async move {
            let response = router.oneshot(req).await.unwrap();
            (response.status().as_u16(), response.headers().get("retry-after").is_some())
        }
    };
    assert_eq!(send(Some(KEY), "/sessions").await.0, 200, "a good key spends nothing");
    assert_eq!(send(None, "/sessions").await.0, 401);
    assert_eq!(send(Some("wrong-key-0123456789"), "/sessions").await.0, 401);
    assert_eq!(send(Some("wrong-key-0123456789"), "/sessions").await.0, 401);
    assert_eq!(send(Some("wrong-key-0123456789"), "/sessions").await, (429, true));
    assert_eq!(send(Some(KEY), "/sessions").await.0, 429, "the key is not even looked at once the budget is spent");
    assert_eq!(send(None, "/health").await.0, 200, "open endpoints stay open");
    h.clock.advance(Duration::from_secs(20));
    assert_eq!(send(Some(KEY), "/sessions").await.0, 200);
}

#[tokio::test]
async fn revoking_raises_the_cookie_generation() {
    let h = harness(100).await;
    let (status, created, _) = call(&h.router, "POST", "/session/create", Some(KEY), r#"{"user_id":"u"}"#).await;
    assert_eq!(status, 200);
    let id = created["uuid"].as_str().unwrap().to_string();
    let sid = SessionId::parse(&id).unwrap();
    let handle = h.manager.handle(&sid).unwrap();
    let link = created["access_url"].as_str().unwrap();
    let token = link.rsplit_once("wakeway_token=").unwrap().1.to_string();
    let before = handle.cookie_generation();

    let (status, body, _) = call(&h.router, "POST", &format!("/session/{id}/revoke"), Some(KEY), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], true);
    assert!(handle.cookie_generation() > before);
    assert_eq!(body["cookie_generation"].as_u64(), Some(handle.cookie_generation()));
    assert_eq!(h.manager.view(&sid).await.unwrap().session.cookie_generation, handle.cookie_generation(), "persisted");
    assert_eq!(h.manager.redeem_token(&sid, &token).await, None, "a link minted before the revocation is dead");
    let (_, minted, _) = call(&h.router, "POST", &format!("/session/{id}/token"), Some(KEY), "").await;
    let token = minted["access_url"].as_str().unwrap().rsplit_once("wakeway_token=").unwrap().1.to_string();
    assert_eq!(h.manager.redeem_token(&sid, &token).await, Some(handle.cookie_generation()));

    let (status, body, _) = call(&h.router, "POST", "/session/0badc0de/revoke", Some(KEY), "").await;
    assert_eq!((status.as_u16(), code(&body)), (404, "session_not_found"));
    let (status, body, _) = call(&h.router, "POST", "/session/nope/revoke", Some(KEY), "").await;
    assert_eq!((status.as_u16(), code(&body)), (400, "invalid_uuid"));
    h.manager.stop_all().await;
}
