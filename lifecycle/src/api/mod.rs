//! The management API, compatible with the v3.1.0 handoff (same paths and field names), plus
//! the fields its users asked for. `router(state)` is separate from any socket: tests call it with
//! `oneshot`, the proxy hands it requests for non-workspace hosts.

pub mod auth;
mod backups;
pub mod error;
#[cfg(test)]
mod snapshots;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use wakeway_proxy::{ActivitySource, SessionId};

use crate::manager::{LifecycleError, Manager, ScaleDirection, SessionView, SleepReason};
use crate::session::{BackupInfo, seed_timestamp};
pub use auth::{ApiKeys, load_or_generate_secret};
pub use error::ApiError;
pub use wakeway_proxy::ratelimit::{FailureBudget, RateLimiter};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub manager: Manager,
    pub keys: Arc<ApiKeys>,
    /// Per (API key index, endpoint).
    pub limiter: Arc<RateLimiter<(usize, String)>>,
}

const ENDPOINTS: &str = "POST /session/create, GET /session/{uuid}/status, POST /session/{uuid}/sleep, \
POST /session/{uuid}/wake, POST /session/{uuid}/scale, POST /session/{uuid}/token, POST /session/{uuid}/revoke, \
POST /session/{uuid}/restore, \
PATCH /session/{uuid}/policy, DELETE /session/{uuid}, GET /sessions, GET /backups, GET /backups/{id}, \
PATCH /backups/{id}, GET /backups/{id}/download, GET /health, GET /metrics";

/// The API router.
pub fn router(state: ApiState) -> Router {
    let keyed = Router::new()
        .route("/session/create", post(create))
        .route("/session/{uuid}/status", get(status))
        .route("/session/{uuid}/sleep", post(sleep))
        .route("/session/{uuid}/wake", post(wake))
        .route("/session/{uuid}/scale", post(scale))
        .route("/session/{uuid}/token", post(token))
        .route("/session/{uuid}/revoke", post(revoke))
        .route("/session/{uuid}/restore", post(backups::restore))
        .route("/session/{uuid}/policy", patch(backups::set_policy))
        .route("/session/{uuid}", delete(remove))
        .route("/sessions", get(list))
        .route("/backups", get(backups::list))
        .route("/backups/{id}", get(backups::detail).patch(backups::patch))
        .route("/backups/{id}/download", get(backups::download))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(keyed)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("No endpoint {} {}. The endpoints are: {ENDPOINTS}.", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}. The endpoints are: {ENDPOINTS}.", req.method(), req.uri().path()),
    )
}

/// The endpoint as a metric label and rate-limit key: the route template (`/session/{uuid}/status`,
/// `unmatched` for any other path) and one of a fixed set of methods (`other` for the rest), so
/// no client input can add label values.
fn endpoint_of(req: &Request) -> String {
    let path = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
    format!("{} {path}", method_label(req.method()))
}

fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Count every API request by endpoint and status.
async fn count(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_of(&req);
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    state.manager.metrics().api_requests.with_label_values(&[&endpoint, &status]).inc();
    response
}

/// `X-API-Key` on every keyed endpoint, then the rate limit per key and endpoint. A missing or
/// wrong key spends the client address's failure budget (the [`FailureBudget`] the proxy hands
/// over); once it is spent, every keyed request from that address is answered 429 before its key
/// is looked at (else a 200 among the 429s would still tell a right guess).
async fn require_key(State(state): State<ApiState>, req: Request, next: Next) -> Result<Response, ApiError> {
    let budget = req.extensions().get::<FailureBudget>();
    if let Some(Err(wait)) = budget.map(FailureBudget::exhausted) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many requests with a missing or wrong API key from this address; retry in {wait} s."),
        )
        .retry_after(wait));
    }
    let spend = || {
        if let Some(budget) = budget {
            let _ = budget.spend();
        }
    };
    let presented = req.headers().get("x-api-key").map(|v| v.to_str().unwrap_or(""));
    let Some(presented) = presented else {
        spend();
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "Send your API key in the X-API-Key header.",
        ));
    };
    let Some(key) = state.keys.check(presented) else {
        spend();
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "The X-API-Key header does not hold a valid API key.",
        ));
    };
    let endpoint = endpoint_of(&req);
    if let Err(wait) = state.limiter.check(&(key, endpoint.clone())) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many requests to {endpoint} with this key; retry in {wait} s."),
        )
        .retry_after(wait));
    }
    Ok(next.run(req).await)
}

// ---- request parsing -----------------------------------------------------------------------

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        format!("The query string is not valid: {}.", e.body_text()),
    )
}

fn parse_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_uuid",
            format!("{text:?} is not a session id (8 hex digits, e.g. \"abc12345\")."),
        )
    })
}

/// Parse a JSON object body with precise errors: 400 for broken JSON, 422 for a wrong shape.
fn json_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "The request needs a JSON body."));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("The body is not valid JSON: {e}."))
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", "The body must be a JSON object.")),
    }
}

fn string_field<'a>(map: &'a serde_json::Map<String, Value>, name: &str, example: &str) -> Result<&'a str, ApiError> {
    match map.get(name) {
        None | Some(Value::Null) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            format!("The field {name:?} is required, e.g. {{\"{name}\": \"{example}\"}}."),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("The field {name:?} must be a string."),
        )),
    }
}

fn valid_user_id(user_id: &str) -> Result<(), ApiError> {
    let bad =
        |why: &str| Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_user_id", format!("user_id {why}.")));
    if user_id.trim().is_empty() {
        return bad("must not be empty");
    }
    if user_id.len() > 256 {
        return bad("must be at most 256 bytes");
    }
    if user_id.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    Ok(())
}

// ---- responses ------------------------------------------------------------------------------

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn backup_json(b: &BackupInfo) -> Value {
    json!({
        "file": b.file,
        "size": b.size,
        "sha256": b.sha256,
        "entries": b.entries,
        "content_bytes": b.content_bytes,
        "verified_at": rfc3339(b.verified_at),
        "skipped": b.skipped,
    })
}

/// The `session` object: the seed's fields first, then ours.
fn session_json(manager: &Manager, v: &SessionView) -> Value {
    let s = &v.session;
    let tier = manager.config().tiers.get(&s.tier);
    json!({
        "uuid": s.uuid,
        "user_id": s.user_id,
        "status": s.state.as_str(),
        "created_at": seed_timestamp(s.created_at),
        "workspace_url": manager.config().workspace_url(&s.uuid),
        "state": s.state.as_str(),
        "tier": s.tier,
        "resources": tier.map(|t| json!({ "cpu": t.cpu, "memory_mib": t.memory_mib })),
        "replicas": v.replicas,
        "last_activity": rfc3339(v.last_activity),
        "activity_source": v.activity_source,
        "last_interaction": s.last_interaction.map(rfc3339),
        "sleeps_at": v.sleeps_at.map(rfc3339),
        "deletes_at": v.deletes_at.map(rfc3339),
        "awake_since": s.awake_since.map(rfc3339),
        "slept_at": s.slept_at.map(rfc3339),
        "deleted_at": s.deleted_at.map(rfc3339),
        "open_connections": v.open_connections,
        "queue_length": v.queue_length,
        "delete_requested": s.delete_requested,
        "backup": s.backup.as_ref().map(backup_json),
        "backup_failures": s.backup_failures,
        "next_backup_attempt": s.next_backup_attempt.map(rfc3339),
        "last_error": s.last_error,
        "policy": backups::policy_json(manager, s),
        "restored_from": s.restored_from,
        "restored_at": s.restored_at.map(rfc3339),
        "pre_restore_backup": s.pre_restore_backup,
        "restoring": s.restore.as_ref().map(|op| op.backup.clone()),
    })
}

// ---- handlers ---------------------------------------------------------------------------------

async fn create(State(state): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let map = json_object(&body)?;
    let user_id = string_field(&map, "user_id", "user@example.com")?;
    valid_user_id(user_id)?;
    let (s, restored) = match backups::restore_request(&map, "restore_from")? {
        None => (state.manager.create(user_id).await?, None),
        Some(request) => {
            let (s, result) = state.manager.create_restored(user_id, request).await?;
            match result {
                Ok(report) => (s, Some(report)),
                Err(e) => {
                    let mut error = ApiError::from(e);
                    error.message = format!(
                        "Session {} was created, asleep with an empty workspace, but the restore failed: {} \
                         Retry with POST /session/{}/restore.",
                        s.uuid, error.message, s.uuid
                    );
                    return Err(error);
                }
            }
        }
    };
    let (access_url, expires) = state.manager.mint_token(&s.id()).await?;
    let config = state.manager.config();
    let mut body = json!({
        "uuid": s.uuid,
        "user_id": s.user_id,
        "status": "created",
        "created_at": seed_timestamp(s.created_at),
        "workspace_url": config.workspace_url(&s.uuid),
        "state": s.state.as_str(),
        "tier": s.tier,
        "access_url": access_url,
        "access_url_expires_at": rfc3339(expires),
    });
    if let Some(report) = restored {
        body["restored_from"] = json!(s.restored_from);
        body["restore"] = backups::report_json(&report);
    }
    Ok(Json(body))
}

/// A new one-time sign-in link for the session (for the client's backend to hand to its user).
async fn token(State(state): State<ApiState>, Path(uuid): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let (access_url, expires) = state.manager.mint_token(&id).await?;
    Ok(Json(json!({ "uuid": id.as_str(), "access_url": access_url, "expires_at": rfc3339(expires) })))
}

/// End every cookie issued for the session (its user signs in again with a new link).
async fn revoke(State(state): State<ApiState>, Path(uuid): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let s = state.manager.revoke_cookies(&id).await?;
    Ok(Json(json!({
        "uuid": s.uuid,
        "revoked": true,
        "cookie_generation": s.cookie_generation,
        "message": "Every cookie and unused sign-in link issued for this workspace is refused from now on; mint a new link with POST /session/{uuid}/token.",
    })))
}

async fn status(State(state): State<ApiState>, Path(uuid): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let v = state.manager.view(&id).await?;
    let session = session_json(&state.manager, &v);
    Ok(Json(json!({
        "uuid": v.session.uuid,
        "replicas": v.replicas,
        "queue_length": v.queue_length,
        "session": session,
        "state": v.session.state.as_str(),
        "tier": v.session.tier,
        "last_activity": rfc3339(v.last_activity),
        "activity_source": v.activity_source,
        "sleeps_at": v.sleeps_at.map(rfc3339),
        "deletes_at": v.deletes_at.map(rfc3339),
        "open_connections": v.open_connections,
    })))
}

async fn sleep(State(state): State<ApiState>, Path(uuid): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let s = state.manager.sleep(&id, SleepReason::Api).await?;
    Ok(Json(
        json!({ "uuid": s.uuid, "status": s.state.as_str(), "replicas": 0, "message": "The workspace is asleep; the next request wakes it." }),
    ))
}

#[derive(Deserialize)]
struct WakeQuery {
    #[serde(default)]
    wait: bool,
}

async fn wake(
    State(state): State<ApiState>,
    Path(uuid): Path<String>,
    query: Result<Query<WakeQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let wait = query.map_err(bad_query)?.wait;
    if wait {
        let s = state.manager.wake(&id, ActivitySource::ApiWake).await?;
        return Ok(Json(
            json!({ "uuid": s.uuid, "status": s.state.as_str(), "replicas": 1, "message": "The workspace is awake." }),
        ));
    }
    let handle = state.manager.handle(&id).ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
    let v = state.manager.view(&id).await?;
    if v.session.state == crate::session::State::Deleted {
        return Err(LifecycleError::Deleted(id.to_string()).into());
    }
    handle.activity.touch(state.manager.now().timestamp_millis(), ActivitySource::ApiWake);
    state.manager.request_wake(&handle, ActivitySource::ApiWake);
    let status = if v.replicas == 1 { "running" } else { "waking" };
    Ok(Json(
        json!({ "uuid": v.session.uuid, "status": status, "replicas": 1, "message": "The workspace is waking; poll GET /session/{uuid}/status or pass ?wait=true." }),
    ))
}

async fn scale(State(state): State<ApiState>, Path(uuid): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let map = json_object(&body)?;
    let direction = match string_field(&map, "scale", "up")? {
        "up" => ScaleDirection::Up,
        "down" => ScaleDirection::Down,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_scale",
                format!("scale must be \"up\" or \"down\", not {other:?}."),
            ));
        }
    };
    let s = state.manager.scale(&id, direction).await?;
    let tier = state.manager.config().tiers.get(&s.tier);
    Ok(Json(json!({
        "uuid": s.uuid,
        "scale": if direction == ScaleDirection::Up { "up" } else { "down" },
        "tier": s.tier,
        "resources": tier.map(|t| json!({ "cpu": t.cpu, "memory_mib": t.memory_mib })),
        "status": s.state.as_str(),
        "replicas": u8::from(s.state.is_awake()),
    })))
}

async fn remove(State(state): State<ApiState>, Path(uuid): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&uuid)?;
    let s = state.manager.delete(&id, true).await?;
    Ok(Json(json!({
        "uuid": s.uuid,
        "status": s.state.as_str(),
        "backup": s.backup.as_ref().map(backup_json),
        "message": "The workspace was backed up to a verified zip, then deleted.",
    })))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    include_deleted: bool,
    user_id: Option<String>,
}

async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(ListQuery { include_deleted, user_id: user }) = query.map_err(bad_query)?;
    let views = state.manager.list(include_deleted).await?;
    let sessions: Vec<Value> = views
        .iter()
        .filter(|v| user.as_deref().is_none_or(|u| v.session.user_id == u))
        .map(|v| session_json(&state.manager, v))
        .collect();
    Ok(Json(json!({ "count": sessions.len(), "sessions": sessions })))
}

async fn health(State(state): State<ApiState>) -> Response {
    let store = state.manager.store_health().await;
    let healthy = store.is_ok();
    let body = json!({
        "status": if healthy { "healthy" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "store": {
            "kind": state.manager.store_kind(),
            "status": if healthy { "healthy" } else { "unhealthy" },
            "error": store.err().map(|e| e.to_string()),
        },
        "backend": state.manager.backend_kind(),
        "problems": state.manager.problems().into_iter().map(|(k, v)| (k.to_string(), Value::String(v))).collect::<serde_json::Map<_, _>>(),
        "sessions": state.manager.state_counts().iter().map(|(_, n)| n).sum::<usize>(),
    });
    // Still 200 when the store is down: running workspaces keep being proxied from memory, and a
    // load balancer must not take every replica out because Redis restarts.
    (StatusCode::OK, Json(body)).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut response = state.manager.render_metrics().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
