//! The pingora `ProxyHttp` implementation: one listener for the API and every workspace host.
//!
//! Per request: one host parse, one map lookup, one phase read; per body chunk: atomics only.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{Method, StatusCode, header};
use pingora::http::ResponseHeader;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use wakeway_config::{Config, WorkspaceAuth};

use crate::activity::{ClientStream, SocketKind, negotiated_deflate};
use crate::auth::{CookieSigner, carries_ours, cookie_name, cookie_values, cookie_without_ours, take_token};
use crate::classify::{RequestKind, classify};
use crate::clock::Clock;
use crate::error::error_body;
use crate::handle::{ActivitySource, HeldGuard, Phase, SessionHandle, Upstream, WebSocketSlot};
use crate::host::{HostRoute, SessionId};
use crate::ratelimit::{FailureBudget, RateLimiter};
use crate::stats::ProxyStats;
use crate::tls::{ACME_CHALLENGE_PREFIX, CertStore};
use crate::{ApiBody, Lifecycle, pages};

/// The proxy's settings, taken from [`Config`] once at start.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub domain: String,
    /// Lowercase User-Agent substrings of bots and probes.
    pub bot_user_agents: Vec<String>,
    pub hold_timeout: Duration,
    pub max_held_per_session: usize,
    pub max_held_total: usize,
    pub max_api_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_websockets_per_session: usize,
    pub workspace_auth: WorkspaceAuth,
    pub cookie_ttl: Duration,
    pub unauthenticated_per_minute: u32,
    pub wake_attempts_per_minute: u32,
    /// With TLS on and `redirect_http_to_https`: the HTTPS port plain workspace requests are sent to.
    pub https_redirect_port: Option<u16>,
    /// Idle limit of a proxied WebSocket (pingora's default of 60 s would cut quiet sockets).
    pub websocket_idle_timeout: Duration,
}

impl From<&Config> for ProxySettings {
    fn from(c: &Config) -> Self {
        ProxySettings {
            domain: c.domain.clone(),
            bot_user_agents: c.bot_user_agents.iter().map(|b| b.to_ascii_lowercase()).collect(),
            hold_timeout: c.hold_timeout,
            max_held_per_session: c.max_held_per_session,
            max_held_total: c.max_held_total,
            max_api_body_bytes: c.max_api_body_bytes,
            max_header_bytes: c.max_header_bytes,
            max_websockets_per_session: c.max_websockets_per_session,
            workspace_auth: c.workspace_auth,
            cookie_ttl: c.cookie_ttl,
            unauthenticated_per_minute: c.unauthenticated_per_minute,
            wake_attempts_per_minute: c.wake_attempts_per_minute,
            https_redirect_port: c.tls_addr().filter(|_| c.redirect_http_to_https).map(|a| a.port()),
            websocket_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// The proxy. Cheap to share: everything inside is behind `Arc`.
pub struct WakewayProxy {
    settings: ProxySettings,
    lifecycle: Arc<dyn Lifecycle>,
    clock: Arc<dyn Clock>,
    stats: Arc<ProxyStats>,
    cookies: CookieSigner,
    /// Failures per client address on workspace hosts: failed sign-in checks, unknown hosts.
    unauthenticated: Arc<RateLimiter<IpAddr>>,
    /// Missing or wrong API keys per client address (the API spends it through the
    /// [`FailureBudget`] it gets with each request). A budget of its own, so browsers following
    /// stale links behind a shared address cannot lock the app's backend out of the API.
    api_failures: Arc<RateLimiter<IpAddr>>,
    /// Wakes asked for per session.
    wakes: RateLimiter<SessionId>,
    /// Certificates and pending ACME HTTP-01 answers (when TLS is on).
    certs: Option<Arc<CertStore>>,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    session: Option<Arc<SessionHandle>>,
    upstream: Option<Upstream>,
    /// Counted in the session's open connections (un-counted in `logging`).
    open: bool,
    /// The request is a WebSocket upgrade; body chunks after it are frames.
    upgrade: bool,
    /// Whether this request's traffic is user activity.
    counts: bool,
    /// The client→server side of an upgraded WebSocket, classified message by message.
    ws: Option<Box<ClientStream>>,
    /// Connection attempts to the workspace that failed (each retried once the phase settles).
    connect_failures: u8,
    /// This WebSocket's place in the session's bound (released when the request ends).
    _ws_slot: Option<WebSocketSlot>,
}

impl WakewayProxy {
    /// `cookie_secret` signs workspace cookies (the same on every replica).
    pub fn new(
        settings: ProxySettings,
        cookie_secret: &[u8],
        lifecycle: Arc<dyn Lifecycle>,
        clock: Arc<dyn Clock>,
        stats: Arc<ProxyStats>,
    ) -> Self {
        WakewayProxy {
            cookies: CookieSigner::new(cookie_secret, settings.cookie_ttl),
            unauthenticated: Arc::new(RateLimiter::new(settings.unauthenticated_per_minute, clock.clone())),
            api_failures: Arc::new(RateLimiter::new(settings.unauthenticated_per_minute, clock.clone())),
            wakes: RateLimiter::new(settings.wake_attempts_per_minute, clock.clone()),
            certs: None,
            settings,
            lifecycle,
            clock,
            stats,
        }
    }

    /// Serve ACME HTTP-01 answers from this certificate store.
    pub fn with_certs(mut self, certs: Arc<CertStore>) -> Self {
        self.certs = Some(certs);
        self
    }

    /// ACME HTTP-01 answers and the plain-HTTP → HTTPS redirect (of workspace hosts: `route` is
    /// the request's). `Some(answered)` if handled.
    async fn acme_and_redirect(&self, session: &mut Session, route: &HostRoute) -> Result<Option<bool>> {
        let req = session.req_header();
        if let Some(token) = req.uri.path().strip_prefix(ACME_CHALLENGE_PREFIX) {
            let answer = self.certs.as_ref().and_then(|c| c.challenge(token));
            return match answer {
                Some(key_authorization) => {
                    respond(session, StatusCode::OK, "text/plain", Bytes::from(key_authorization), &[]).await.map(Some)
                }
                None => {
                    let body = error_body("unknown_challenge", "No ACME challenge is pending with this token.");
                    respond(session, StatusCode::NOT_FOUND, JSON, body, &[]).await.map(Some)
                }
            };
        }
        let Some(port) = self.settings.https_redirect_port else { return Ok(None) };
        if over_tls(session) {
            return Ok(None);
        }
        // Only workspace hosts (browsers): the API host stays reachable for probes and clients.
        if *route == HostRoute::Api {
            return Ok(None);
        }
        let host = request_host(session);
        let name = match host.rfind(':') {
            Some(i) if !host.ends_with(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        };
        let port = if port == 443 { String::new() } else { format!(":{port}") };
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{name}{port}{path}");
        respond(session, StatusCode::PERMANENT_REDIRECT, HTML, Bytes::new(), &[("location", &location)]).await.map(Some)
    }

    fn client_ip(session: &Session) -> IpAddr {
        session.client_addr().and_then(|a| a.as_inet()).map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip())
    }

    /// Token mode: exchange a sign-in token for a cookie, or check the cookie. `Some(answered)`
    /// when the request was answered here (redirect, link-preview page, 401, 429).
    async fn check_access(&self, session: &mut Session, handle: &SessionHandle) -> Result<Option<bool>> {
        let id = &handle.id;
        if self.settings.workspace_auth == WorkspaceAuth::None {
            // Anyone with the URL gets in; but an address that spent its failure budget on
            // unknown hosts gets the same 429 on every host, so guessing cannot tell them apart.
            if let Err(wait) = self.unauthenticated.peek(&Self::client_ip(session)) {
                return self.too_many_failures(session, id.as_str(), wait).await.map(Some);
            }
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let req = session.req_header();
        if let Some((token, rest)) = req.uri.query().and_then(take_token) {
            if !self.is_navigation(req) {
                return self.sign_in_preview(session, id).await.map(Some);
            }
            let (token, path) = (token.to_string(), req.uri.path().to_string());
            if let Some(generation) = self.lifecycle.redeem_token(id, &token).await {
                let location = if rest.is_empty() { path } else { format!("{path}?{rest}") };
                let secure = over_tls(session);
                let generation = generation.max(handle.cookie_generation());
                let cookie = self.cookies.set_cookie(&self.cookies.issue(id, generation, now), secure);
                ProxyStats::bump(&self.stats.signed_in);
                let extra = [("location", location.as_str()), ("set-cookie", cookie.as_str())];
                return respond(session, StatusCode::FOUND, HTML, Bytes::new(), &extra).await.map(Some);
            }
            let message = "This sign-in link is invalid, expired or was already used: ask the app that created the workspace for a new one.";
            return self.refuse(session, id, message).await.map(Some);
        }
        let generation = handle.cookie_generation();
        let name = cookie_name(over_tls(session));
        if cookie_values(&req.headers, name).any(|v| self.cookies.verify(id, generation, v, now)) {
            return Ok(None);
        }
        let message =
            "Open it through the app that created it: sign-in links work once and expire after a few minutes.";
        self.refuse(session, id, message).await.map(Some)
    }

    /// Whether the request is a browser navigation a person made: a GET with
    /// `Sec-Fetch-Mode: navigate` (or, without it, an HTML `Accept`), not a HEAD, prefetch, bot or
    /// link preview. Only these redeem a sign-in link.
    fn is_navigation(&self, req: &pingora::http::RequestHeader) -> bool {
        req.method == Method::GET
            && classify(&req.method, req.uri.path(), req.uri.query(), &req.headers, &self.settings.bot_user_agents)
                == RequestKind::Navigate
    }

    /// A sign-in link opened by a link preview, HEAD or prefetch: a page asking to open it in a
    /// browser (200, so previews show it), the token left unused, nothing woken.
    async fn sign_in_preview(&self, session: &mut Session, id: &SessionId) -> Result<bool> {
        ProxyStats::bump(&self.stats.sign_in_previews);
        let message =
            "This sign-in link works once, in a browser: open it there to reach the workspace. It has not been used.";
        respond(session, StatusCode::OK, HTML, pages::open_in_browser(id.as_str(), message), &[]).await
    }

    /// 401 (or 429 when this address keeps failing). Never wakes anything.
    async fn refuse(&self, session: &mut Session, id: &SessionId, message: &str) -> Result<bool> {
        ProxyStats::bump(&self.stats.unauthorized);
        if let Err(wait) = self.unauthenticated.check(&Self::client_ip(session)) {
            return self.too_many_failures(session, id.as_str(), wait).await;
        }
        self.answer(
            session,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
            |m| pages::unauthorized(id.as_str(), m),
            &[],
        )
        .await
    }

    /// 404 for a workspace host with no session (`message` says why). Each one spends the client
    /// address's failure budget: session ids are short, so guessing them is bounded like guessing
    /// sign-in links. 429 once the budget is spent.
    async fn unknown_workspace(&self, session: &mut Session, message: &str) -> Result<bool> {
        ProxyStats::bump(&self.stats.unknown_host);
        if let Err(wait) = self.unauthenticated.check(&Self::client_ip(session)) {
            return self.too_many_failures(session, "", wait).await;
        }
        self.answer(session, StatusCode::NOT_FOUND, "unknown_workspace", message, pages::not_found, &[]).await
    }

    /// 429 with `Retry-After`: this client address spent its failure budget.
    async fn too_many_failures(&self, session: &mut Session, id: &str, wait: u64) -> Result<bool> {
        ProxyStats::bump(&self.stats.failures_limited);
        let message =
            format!("Too many failed sign-ins or unknown workspace addresses from this address; retry in {wait} s.");
        let retry = wait.to_string();
        let page = |m: &str| pages::unavailable(id, m, wait);
        self.answer(session, StatusCode::TOO_MANY_REQUESTS, "rate_limited", &message, page, &[("retry-after", &retry)])
            .await
    }

    async fn too_many_wakes(&self, session: &mut Session, id: &SessionId, wait: u64) -> Result<bool> {
        ProxyStats::bump(&self.stats.wakes_refused);
        let message = format!("This workspace was asked to wake too often; retry in {wait} s.");
        self.unavailable(session, id, StatusCode::TOO_MANY_REQUESTS, "too_many_wakes", &message, wait).await
    }

    /// Ask for a wake, within `wake_attempts_per_minute` for this session. `Err(seconds)` to wait.
    fn wake(&self, handle: &Arc<SessionHandle>, source: ActivitySource) -> std::result::Result<(), u64> {
        if matches!(handle.phase(), Phase::Asleep | Phase::Failed(_)) {
            self.wakes.check(&handle.id)?;
        }
        self.lifecycle.request_wake(handle, source);
        Ok(())
    }

    async fn serve_api(&self, session: &mut Session) -> Result<bool> {
        let max = self.settings.max_api_body_bytes;
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max) {
            return self.too_large(session, max).await;
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > max {
                return self.too_large(session, max).await;
            }
            body.extend_from_slice(&chunk);
        }
        let req = session.req_header();
        let budget = FailureBudget::new(self.api_failures.clone(), Self::client_ip(session));
        let mut builder = http::Request::builder().method(req.method.clone()).uri(req.uri.clone()).extension(budget);
        if let Some(headers) = builder.headers_mut() {
            headers.extend(req.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let Ok(request) = builder.body(body.freeze()) else {
            return respond(
                session,
                StatusCode::BAD_REQUEST,
                JSON,
                error_body("bad_request", "unreadable request"),
                &[],
            )
            .await;
        };
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let response = self.lifecycle.api(request, client).await;
        let (parts, body) = response.into_parts();
        let mut header = ResponseHeader::from(parts);
        match body {
            ApiBody::Full(body) => {
                header.insert_header(header::CONTENT_LENGTH, body.len())?;
                write_full(session, header, body).await
            }
            ApiBody::Stream(mut chunks) => {
                if session.req_header().method == Method::HEAD {
                    session.write_response_header(Box::new(header), true).await?;
                    return Ok(true);
                }
                session.write_response_header(Box::new(header), false).await?;
                while let Some(chunk) = chunks.next().await {
                    match chunk {
                        Ok(chunk) => session.write_response_body(Some(chunk), false).await?,
                        Err(e) => {
                            // The status is sent: all that is left is to cut the connection short of
                            // its Content-Length, so the client sees the failure.
                            tracing::warn!(error = %e, "API response stream failed");
                            session.set_keepalive(None);
                            return Err(pingora::Error::because(
                                pingora::ErrorType::WriteError,
                                "API response stream failed",
                                e,
                            ));
                        }
                    }
                }
                session.write_response_body(None, true).await?;
                Ok(true)
            }
        }
    }

    /// 410: the workspace was deleted (after a verified backup).
    async fn gone(&self, session: &mut Session, id: &SessionId) -> Result<bool> {
        self.answer(session, StatusCode::GONE, "session_deleted", GONE_MESSAGE, |m| pages::gone(id.as_str(), m), &[])
            .await
    }

    /// A temporary refusal (429/502/503) with `Retry-After`: a page that retries for browsers,
    /// JSON for programs.
    async fn unavailable(
        &self,
        session: &mut Session,
        id: &SessionId,
        status: StatusCode,
        code: &str,
        message: &str,
        retry_after: u64,
    ) -> Result<bool> {
        let retry = retry_after.to_string();
        let page = |m: &str| pages::unavailable(id.as_str(), m, retry_after);
        self.answer(session, status, code, message, page, &[("retry-after", &retry)]).await
    }

    async fn too_large(&self, session: &mut Session, max: usize) -> Result<bool> {
        let message = format!("request body is larger than {max} bytes");
        session.set_keepalive(None);
        respond(session, StatusCode::PAYLOAD_TOO_LARGE, JSON, error_body("body_too_large", &message), &[]).await
    }

    /// Answer with an HTML page for browsers, JSON for everything else.
    async fn answer(
        &self,
        session: &mut Session,
        status: StatusCode,
        code: &str,
        message: &str,
        html: impl FnOnce(&str) -> Bytes,
        extra: &[(&str, &str)],
    ) -> Result<bool> {
        if wants_html(session) {
            respond(session, status, HTML, html(message), extra).await
        } else {
            respond(session, status, JSON, error_body(code, message), extra).await
        }
    }

    fn hold_slot(&self, handle: &Arc<SessionHandle>) -> Option<(HeldGuard, GlobalHeld<'_>)> {
        let global = GlobalHeld::try_new(&self.stats.held_now, self.settings.max_held_total)?;
        let local = handle.try_hold(self.settings.max_held_per_session)?;
        Some((local, global))
    }
}

/// A slot in the global count of held requests; released on drop.
struct GlobalHeld<'a>(&'a AtomicUsize);

impl<'a> GlobalHeld<'a> {
    fn try_new(counter: &'a AtomicUsize, max: usize) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| GlobalHeld(counter))
    }
}

impl Drop for GlobalHeld<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// Header names parsed once, not per request.
const X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: header::HeaderName = header::HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: header::HeaderName = header::HeaderName::from_static("x-forwarded-proto");
/// Removed from every proxied request: only wakeway sets forwarding headers, and the API key
/// never reaches a workspace.
const NOT_FORWARDED: [header::HeaderName; 7] = [
    header::FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    header::HeaderName::from_static("x-forwarded-port"),
    header::HeaderName::from_static("x-real-ip"),
    header::HeaderName::from_static("x-api-key"),
];

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// Whether the client connection is TLS.
fn over_tls(session: &Session) -> bool {
    session.digest().and_then(|d| d.ssl_digest.as_ref()).is_some()
}

fn request_host(session: &Session) -> &str {
    let req = session.req_header();
    // HTTP/2 carries the host in :authority (the URI), not in a Host header.
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

fn wants_html(session: &Session) -> bool {
    let headers = &session.req_header().headers;
    let get = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    get(crate::classify::SEC_FETCH_MODE) == "navigate" || get(header::ACCEPT).contains("text/html")
}

async fn respond(
    session: &mut Session,
    status: StatusCode,
    content_type: &str,
    body: Bytes,
    extra: &[(&str, &str)],
) -> Result<bool> {
    let mut header = ResponseHeader::build(status, Some(4 + extra.len()))?;
    header.insert_header(header::CONTENT_TYPE, content_type)?;
    header.insert_header(header::CONTENT_LENGTH, body.len())?;
    header.insert_header(header::CACHE_CONTROL, "no-store")?;
    for (name, value) in extra {
        header.insert_header(name.to_string(), value.to_string())?;
    }
    write_full(session, header, body).await
}

/// Write a whole response (no body for HEAD). Returns `Ok(true)`: the request is answered.
async fn write_full(session: &mut Session, header: ResponseHeader, body: Bytes) -> Result<bool> {
    if session.req_header().method == Method::HEAD || body.is_empty() {
        session.write_response_header(Box::new(header), true).await?;
    } else {
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

fn phase_state(phase: &Phase) -> (&'static str, bool, String) {
    match phase {
        Phase::Asleep => ("sleeping", false, "The workspace is asleep.".into()),
        Phase::Starting => ("starting", false, "Starting the workspace…".into()),
        Phase::Ready(_) => ("running", true, "Ready.".into()),
        Phase::Busy => ("stopping", false, "Finishing a lifecycle step, then waking…".into()),
        Phase::Gone => ("deleted", false, "This workspace was deleted.".into()),
        Phase::Failed(why) => ("failed", false, format!("The workspace could not start: {why}")),
    }
}

const GONE_MESSAGE: &str = "This workspace was deleted after a verified backup. Ask your administrator to restore it.";

#[async_trait]
impl ProxyHttp for WakewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let header_bytes: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if header_bytes + req.uri.path_and_query().map_or(0, |p| p.as_str().len()) > self.settings.max_header_bytes {
            let message = crate::error::headers_too_large(self.settings.max_header_bytes);
            session.set_keepalive(None);
            let body = error_body("headers_too_large", &message);
            return respond(session, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, JSON, body, &[]).await;
        }
        let route = HostRoute::parse(request_host(session), &self.settings.domain);
        if let Some(answered) = self.acme_and_redirect(session, &route).await? {
            return Ok(answered);
        }
        let id = match route {
            HostRoute::Api => return self.serve_api(session).await,
            HostRoute::BadWorkspace => {
                return self.unknown_workspace(session, "This is not a valid workspace address: check the link.").await;
            }
            HostRoute::Workspace(id) => id,
        };
        let Some(handle) = self.lifecycle.session(&id) else {
            let message = format!(
                "There is no workspace vs-code-{id} on this server. Check the link, or create a session through the API."
            );
            return self.unknown_workspace(session, &message).await;
        };
        if let Some(answered) = self.check_access(session, &handle).await? {
            return Ok(answered);
        }
        let req = session.req_header();
        if req.uri.path() == pages::STATUS_PATH {
            let (state, ready, message) = phase_state(&handle.phase());
            let body = serde_json::json!({ "uuid": id.as_str(), "state": state, "ready": ready, "message": message });
            return respond(session, StatusCode::OK, JSON, Bytes::from(body.to_string()), &[]).await;
        }
        if session.is_upgrade_req() {
            // Cross-site WebSocket hijacking: a page elsewhere must not open this workspace's socket
            // with the user's cookie. Browsers always send Origin on WebSocket upgrades.
            let origin = req.headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).unwrap_or("");
            let host = request_host(session);
            let same = origin
                .split_once("://")
                .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(host));
            if !same {
                let message = "WebSocket upgrades must come from the workspace's own origin.";
                return respond(session, StatusCode::FORBIDDEN, JSON, error_body("bad_origin", message), &[]).await;
            }
            match handle.try_open_websocket(self.settings.max_websockets_per_session) {
                Some(slot) => ctx._ws_slot = Some(slot),
                None => {
                    let message = format!(
                        "This workspace already has {} WebSockets open; close some tabs.",
                        self.settings.max_websockets_per_session
                    );
                    let body = error_body("too_many_websockets", &message);
                    return respond(session, StatusCode::TOO_MANY_REQUESTS, JSON, body, &[("retry-after", "10")]).await;
                }
            }
        }
        let req = session.req_header();
        let kind = classify(&req.method, req.uri.path(), req.uri.query(), &req.headers, &self.settings.bot_user_agents);
        ctx.upgrade = session.is_upgrade_req();
        ctx.counts = !matches!(kind, RequestKind::Passive(_));
        ctx.session = Some(handle.clone());
        let source = if ctx.upgrade { ActivitySource::WebSocket } else { ActivitySource::Http };
        if ctx.counts {
            handle.activity.touch(self.clock.now_ms(), source);
        }

        let phase = handle.phase();
        let ready = match phase {
            Phase::Ready(addr) => addr,
            Phase::Gone => {
                return self.gone(session, &id).await;
            }
            _ => match kind {
                RequestKind::Passive(reason) => {
                    ProxyStats::bump(&self.stats.not_woken);
                    let (state, ..) = phase_state(&phase);
                    let message = format!("The workspace is {state}; a {} does not wake it.", reason.as_str());
                    let extra = [("retry-after", "5"), ("x-wakeway-state", state)];
                    return self
                        .answer(
                            session,
                            StatusCode::SERVICE_UNAVAILABLE,
                            "workspace_asleep",
                            &message,
                            |m| pages::unavailable(id.as_str(), m, 5),
                            &extra,
                        )
                        .await;
                }
                RequestKind::Navigate => {
                    if let Err(wait) = self.wake(&handle, source) {
                        return self.too_many_wakes(session, &id, wait).await;
                    }
                    ProxyStats::bump(&self.stats.waiting_pages);
                    return respond(
                        session,
                        StatusCode::OK,
                        HTML,
                        pages::waiting(id.as_str()),
                        &[("x-wakeway-state", "waking")],
                    )
                    .await;
                }
                RequestKind::Hold => {
                    let Some(_slot) = self.hold_slot(&handle) else {
                        ProxyStats::bump(&self.stats.held_rejected);
                        let message =
                            "Too many requests are already waiting for this workspace to wake; retry in a few seconds.";
                        return self
                            .unavailable(session, &id, StatusCode::SERVICE_UNAVAILABLE, "too_many_waiting", message, 5)
                            .await;
                    };
                    if let Err(wait) = self.wake(&handle, source) {
                        return self.too_many_wakes(session, &id, wait).await;
                    }
                    let deadline = tokio::time::Instant::now() + self.settings.hold_timeout;
                    match handle.wait_settled(deadline).await {
                        Some(Phase::Ready(addr)) => {
                            ProxyStats::bump(&self.stats.held_released);
                            addr
                        }
                        Some(Phase::Gone) => {
                            return self.gone(session, &id).await;
                        }
                        Some(Phase::Failed(why)) => {
                            let message = format!("The workspace could not start: {why}");
                            return self
                                .unavailable(
                                    session,
                                    &id,
                                    StatusCode::BAD_GATEWAY,
                                    "workspace_start_failed",
                                    &message,
                                    10,
                                )
                                .await;
                        }
                        _ => {
                            ProxyStats::bump(&self.stats.held_timed_out);
                            let secs = self.settings.hold_timeout.as_secs();
                            let message = format!(
                                "The workspace did not become ready within {secs} s; it is still starting, retry shortly."
                            );
                            return self
                                .unavailable(session, &id, StatusCode::SERVICE_UNAVAILABLE, "wake_timeout", &message, 5)
                                .await;
                        }
                    }
                }
            },
        };
        ctx.upstream = Some(ready);
        ctx.open = true;
        handle.activity.open_connections.fetch_add(1, Ordering::Relaxed);
        handle.activity.requests.fetch_add(1, Ordering::Relaxed);
        ProxyStats::bump(&self.stats.requests);
        if ctx.upgrade {
            session.set_read_timeout(Some(self.settings.websocket_idle_timeout));
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        if ctx.connect_failures > 0
            && let Some(handle) = &ctx.session
        {
            // The last attempt was refused: wait (bounded) for the lifecycle to settle where the
            // workspace is now — after a sleep elsewhere, that means after it woke again.
            let deadline = tokio::time::Instant::now() + self.settings.hold_timeout;
            match handle.wait_settled(deadline).await {
                Some(Phase::Ready(addr)) => ctx.upstream = Some(addr),
                _ => {
                    return Err(pingora::Error::explain(
                        pingora::ErrorType::HTTPStatus(503),
                        "the workspace went away and did not come back in time",
                    ));
                }
            }
        }
        let mut peer = match &ctx.upstream {
            Some(Upstream::Tcp(addr)) => HttpPeer::new(*addr, false, String::new()),
            Some(Upstream::Unix(path)) => HttpPeer::new_uds(path, false, String::new())?,
            None => return Err(pingora::Error::explain(pingora::ErrorType::InternalError, "no upstream chosen")),
        };
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        // A refused connection means the workspace is not where we thought: never sleep here (this
        // is sync); tell the lifecycle and let `upstream_peer` wait for the phase to settle.
        if let (Some(handle), Some(addr)) = (&ctx.session, &ctx.upstream)
            && ctx.connect_failures < 3
        {
            ctx.connect_failures += 1;
            self.lifecycle.upstream_failed(handle, addr);
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut pingora::http::RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Forwarding headers are ours alone: a client-set one is never passed on or trusted.
        for name in &NOT_FORWARDED {
            upstream.remove_header(name);
        }
        // The workspace never sees wakeway's own cookie (its other cookies pass untouched).
        if self.settings.workspace_auth == WorkspaceAuth::Token && carries_ours(&upstream.headers) {
            let kept = cookie_without_ours(&upstream.headers);
            upstream.remove_header(&header::COOKIE);
            if let Some(kept) = kept {
                upstream.insert_header(header::COOKIE, kept)?;
            }
        }
        let host = request_host(session).to_string();
        if upstream.headers.get(header::HOST).is_none() && !host.is_empty() {
            upstream.insert_header(header::HOST, &host)?;
        }
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()) {
            upstream.insert_header(X_FORWARDED_FOR, ip)?;
        }
        let proto = if over_tls(session) { "https" } else { "http" };
        upstream.insert_header(X_FORWARDED_PROTO, proto)?;
        upstream.insert_header(X_FORWARDED_HOST, host)?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.upgrade && ctx.counts && upstream.status == StatusCode::SWITCHING_PROTOCOLS {
            let extensions = upstream.headers.get("sec-websocket-extensions").and_then(|v| v.to_str().ok());
            let (deflate, client_no_context_takeover) = extensions.map_or((false, false), negotiated_deflate);
            ctx.ws = Some(Box::new(ClientStream::new(deflate, client_no_context_takeover)));
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(handle), Some(chunk)) = (&ctx.session, body.as_ref()) else { return Ok(()) };
        let n = chunk.len() as u64;
        handle.activity.bytes_in.fetch_add(n, Ordering::Relaxed);
        self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
        if let Some(ws) = ctx.ws.as_mut() {
            let had_error = ws.error().is_some();
            if ws.feed(chunk) > 0 {
                // A VS Code editor or terminal call is a person; other sockets use the fallback
                // rule (every data message), which max_awake_with_open_tab caps.
                let source =
                    if ws.kind() == SocketKind::VsCode { ActivitySource::Editor } else { ActivitySource::WebSocket };
                handle.activity.touch(self.clock.now_ms(), source);
            }
            if !had_error && let Some(why) = ws.error() {
                tracing::debug!(session = %handle.id, reason = why, "WebSocket classification fell back to counting every message");
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let (Some(handle), Some(chunk)) = (&ctx.session, body.as_ref()) {
            let n = chunk.len() as u64;
            handle.activity.bytes_out.fetch_add(n, Ordering::Relaxed);
            self.stats.bytes_out.fetch_add(n, Ordering::Relaxed);
        }
        Ok(None)
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&pingora::Error>, ctx: &mut RequestCtx) {
        if ctx.open
            && let Some(handle) = &ctx.session
        {
            handle.activity.open_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
