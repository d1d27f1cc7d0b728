//! The management API, compatible with the v3.1.0 handoff (same paths and field names), plus
//! the fields its users asked for. `router(state)` is separate from any socket: tests call it with
//! `oneshot`, the proxy hands it requests for non-workspace hosts.

mod answers;
pub mod auth;
mod backups;
pub mod error;
mod extract;
#[cfg(test)]
mod snapshots;
#[cfg(test)]
mod tests;
mod usage;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use wakeway_proxy::ActivitySource;

use crate::manager::{LifecycleError, Manager, RestoreRequest, ScaleDirection, SleepReason};
use crate::session::{Session, seed_timestamp};
use answers::{
    Backup, Created, Deleted, Health, Power, Resources, RestoreReport, Restored, Revoked, Scaled, SessionJson,
    Sessions, Status, StoreHealth, Time, Token,
};
pub use auth::{ApiKeys, load_or_generate_secret};
pub(crate) use backups::serve_zip;
pub use error::ApiError;
pub(crate) use extract::check_backup_id;
use extract::{BACKUP_EXAMPLE, BACKUP_ID, Body, Field, JsonBody, SessionPath, parse_id};
pub use usage::{usage_json, usage_json_parts};
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
PATCH /backups/{id}, GET /backups/{id}/download, GET /usage, GET /health, GET /metrics";

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
        .route("/usage", get(usage::usage))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(keyed)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(extract::limit(&state))
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

// ---- handlers ---------------------------------------------------------------------------------

/// `POST /session/create`. Unknown fields are accepted (no `deny_unknown_fields`): v3.1.0 never
/// refused them, and its clients may send more than `user_id`.
#[derive(Deserialize)]
struct CreateBody {
    user_id: String,
    restore_from: Option<String>,
    skip_escaping_symlinks: Option<bool>,
}

impl Body for CreateBody {
    const FIELDS: &'static [Field] = &[
        Field { name: "user_id", must_be: "a string", example: "\"user@example.com\"" },
        Field { name: "restore_from", must_be: BACKUP_ID, example: BACKUP_EXAMPLE },
        Field { name: "skip_escaping_symlinks", must_be: "true or false", example: "true" },
    ];

    fn check(&self) -> Result<(), ApiError> {
        valid_user_id(&self.user_id)?;
        self.restore_from.as_deref().map_or(Ok(()), check_backup_id)
    }
}

async fn create(State(state): State<ApiState>, JsonBody(body): JsonBody<CreateBody>) -> Result<Response, ApiError> {
    let user_id = body.user_id.as_str();
    let (s, report) = match body.restore_from {
        None => (state.manager.create(user_id).await?, None),
        Some(backup) => {
            let request =
                RestoreRequest { backup, skip_escaping_symlinks: body.skip_escaping_symlinks.unwrap_or(false) };
            let (s, result) = state.manager.create_restored(user_id, request).await?;
            match result {
                Ok(report) => (s, Some(report)),
                Err(e) => return Err(restore_after_create_failed(&s, e)),
            }
        }
    };
    let (access_url, expires) = state.manager.mint_token(&s.id()).await?;
    Ok(answer(Created {
        uuid: &s.uuid,
        user_id: &s.user_id,
        status: "created",
        created_at: seed_timestamp(s.created_at),
        workspace_url: state.manager.config().workspace_url(&s.uuid),
        state: s.state.as_str(),
        tier: &s.tier,
        access_url,
        access_url_expires_at: Time(expires),
        restored: report
            .as_ref()
            .map(|r| Restored { restored_from: s.restored_from.as_deref(), restore: RestoreReport::of(r) }),
    }))
}

/// The session exists (asleep, empty) though its restore failed: the error says so.
fn restore_after_create_failed(s: &Session, e: LifecycleError) -> ApiError {
    let mut error = ApiError::from(e);
    error.message = format!(
        "Session {} was created, asleep with an empty workspace, but the restore failed: {} \
         Retry with POST /session/{}/restore.",
        s.uuid, error.message, s.uuid
    );
    error
}

/// A JSON answer.
fn answer(body: impl serde::Serialize) -> Response {
    Json(body).into_response()
}

/// A new one-time sign-in link for the session (for the client's backend to hand to its user).
async fn token(State(state): State<ApiState>, SessionPath(id): SessionPath) -> Result<Response, ApiError> {
    let (access_url, expires) = state.manager.mint_token(&id).await?;
    Ok(answer(Token { uuid: id.as_str(), access_url, expires_at: Time(expires) }))
}

/// End every cookie issued for the session (its user signs in again with a new link).
async fn revoke(State(state): State<ApiState>, SessionPath(id): SessionPath) -> Result<Response, ApiError> {
    let s = state.manager.revoke_cookies(&id).await?;
    Ok(answer(Revoked {
        uuid: &s.uuid,
        revoked: true,
        cookie_generation: s.cookie_generation,
        message: "Every cookie and unused sign-in link issued for this workspace is refused from now on; mint a new link with POST /session/{uuid}/token.",
    }))
}

async fn status(State(state): State<ApiState>, SessionPath(id): SessionPath) -> Result<Response, ApiError> {
    let v = state.manager.view(&id).await?;
    Ok(answer(Status::of(&state.manager, &v)))
}

async fn sleep(State(state): State<ApiState>, SessionPath(id): SessionPath) -> Result<Response, ApiError> {
    let s = state.manager.sleep(&id, SleepReason::Api).await?;
    let message = "The workspace is asleep; the next request wakes it.";
    Ok(answer(Power { uuid: &s.uuid, status: s.state.as_str(), replicas: 0, message }))
}

#[derive(Deserialize)]
struct WakeQuery {
    #[serde(default)]
    wait: bool,
}

async fn wake(
    State(state): State<ApiState>,
    SessionPath(id): SessionPath,
    query: Result<Query<WakeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let wait = query.map_err(bad_query)?.wait;
    if wait {
        let s = state.manager.wake(&id, ActivitySource::ApiWake).await?;
        let message = "The workspace is awake.";
        return Ok(answer(Power { uuid: &s.uuid, status: s.state.as_str(), replicas: 1, message }));
    }
    let v = state.manager.wake_in_background(&id, ActivitySource::ApiWake).await?;
    let status = if v.replicas == 1 { "running" } else { "waking" };
    let message = "The workspace is waking; poll GET /session/{uuid}/status or pass ?wait=true.";
    Ok(answer(Power { uuid: &v.session.uuid, status, replicas: 1, message }))
}

/// `POST /session/{uuid}/scale`. Unknown fields are accepted, as v3.1.0 did.
#[derive(Deserialize)]
struct ScaleBody {
    scale: String,
}

impl Body for ScaleBody {
    const FIELDS: &'static [Field] = &[Field { name: "scale", must_be: "a string", example: "\"up\"" }];

    fn check(&self) -> Result<(), ApiError> {
        self.direction().map(drop)
    }
}

impl ScaleBody {
    fn direction(&self) -> Result<ScaleDirection, ApiError> {
        ScaleDirection::parse(&self.scale).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_scale",
                format!("scale must be \"up\" or \"down\", not {:?}.", self.scale),
            )
        })
    }
}

async fn scale(
    State(state): State<ApiState>,
    SessionPath(id): SessionPath,
    JsonBody(body): JsonBody<ScaleBody>,
) -> Result<Response, ApiError> {
    let direction = body.direction()?;
    let s = state.manager.scale(&id, direction).await?;
    Ok(answer(Scaled {
        uuid: &s.uuid,
        scale: if direction == ScaleDirection::Up { "up" } else { "down" },
        tier: &s.tier,
        resources: Resources::of(&state.manager, &s.tier),
        status: s.state.as_str(),
        replicas: u8::from(s.state.is_awake()),
    }))
}

async fn remove(State(state): State<ApiState>, SessionPath(id): SessionPath) -> Result<Response, ApiError> {
    let s = state.manager.delete(&id, true).await?;
    Ok(answer(Deleted {
        uuid: &s.uuid,
        status: s.state.as_str(),
        backup: s.backup.as_ref().map(Backup::of),
        message: "The workspace was backed up to a verified zip, then deleted.",
    }))
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
) -> Result<Response, ApiError> {
    let Query(ListQuery { include_deleted, user_id: user }) = query.map_err(bad_query)?;
    let views = state.manager.list(include_deleted).await?;
    let sessions: Vec<SessionJson> = views
        .iter()
        .filter(|v| user.as_deref().is_none_or(|u| v.session.user_id == u))
        .map(|v| SessionJson::of(&state.manager, v))
        .collect();
    Ok(answer(Sessions { count: sessions.len(), sessions }))
}

async fn health(State(state): State<ApiState>) -> Response {
    let store = state.manager.store_health().await;
    let healthy = store.is_ok();
    let body = Health {
        status: if healthy { "healthy" } else { "degraded" },
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        store: StoreHealth {
            kind: state.manager.store_kind(),
            status: if healthy { "healthy" } else { "unhealthy" },
            error: store.err().map(|e| e.to_string()),
        },
        backend: state.manager.backend_kind(),
        problems: state.manager.problems(),
        sessions: state.manager.state_counts().iter().map(|(_, n)| n).sum::<usize>(),
    };
    // Still 200 when the store is down: running workspaces keep being proxied from memory, and a
    // load balancer must not take every replica out because Redis restarts.
    answer(body)
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut response = state.manager.render_metrics().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
