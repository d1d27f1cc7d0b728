//! The pingora `ProxyHttp` implementation: one listener for the API and every workspace host.
//!
//! Per request: one host parse, one map lookup, one phase read; per body chunk: atomics only.
//! [`WakewayProxy::request_filter`] runs the request's phases, each in its own module: route,
//! access, WebSocket admission, until ready; what the proxy answers itself is in `reply` and
//! every refusal in [`crate::refusal`].

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{StatusCode, header};
use pingora::http::ResponseHeader;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use wakeway_config::{Config, WorkspaceAuth};

use crate::activity::{ClientStream, SocketKind, negotiated_deflate};
use crate::auth::{CookieSigner, carries_ours, cookie_without_ours};
use crate::clock::Clock;
use crate::handle::{ActivitySource, OpenConnection, Phase, SessionHandle, Upstream, WebSocketSlot};
use crate::host::SessionId;
use crate::ratelimit::RateLimiter;
use crate::refusal::Reason;
use crate::stats::ProxyStats;
use crate::tls::CertStore;
use crate::tunnel::WebSocketTunnel;
use crate::{Lifecycle, pages};

mod access;
mod api;
mod reply;
mod route;
mod wake;

use reply::{Reply, Verdict, send};
use route::Route;
use wake::Readiness;

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
    /// Idle limit of a proxied WebSocket: nothing sent either way for this long closes it
    /// (pingora's default read timeout of 60 s would cut quiet sockets).
    pub websocket_idle_timeout: Duration,
    /// With `workspace_auth = "oidc"`: `<public_url>/oauth/login`, where a navigation without a
    /// cookie is sent to sign in.
    pub sign_in_url: Option<String>,
}

impl From<&Config> for ProxySettings {
    fn from(c: &Config) -> Self {
        ProxySettings {
            domain: c.server.domain.clone(),
            bot_user_agents: c.limits.bot_user_agents.iter().map(|b| b.to_ascii_lowercase()).collect(),
            hold_timeout: c.lifecycle.hold_timeout,
            max_held_per_session: c.limits.max_held_per_session,
            max_held_total: c.limits.max_held_total,
            max_api_body_bytes: c.limits.max_api_body_bytes,
            max_header_bytes: c.limits.max_header_bytes,
            max_websockets_per_session: c.limits.max_websockets_per_session,
            workspace_auth: c.access.workspace_auth,
            cookie_ttl: c.access.cookie_ttl,
            unauthenticated_per_minute: c.limits.unauthenticated_per_minute,
            wake_attempts_per_minute: c.limits.wake_attempts_per_minute,
            https_redirect_port: c.tls.listen.filter(|_| c.tls.redirect_http_to_https).map(|a| a.port()),
            websocket_idle_timeout: Duration::from_secs(3600),
            sign_in_url: (c.access.workspace_auth == WorkspaceAuth::Oidc)
                .then(|| c.server.public_url.as_ref().map(|u| format!("{u}/oauth/login")))
                .flatten(),
        }
    }
}

/// The proxy. Cheap to share: everything inside is behind `Arc`.
pub struct WakewayProxy {
    settings: ProxySettings,
    lifecycle: Arc<dyn Lifecycle>,
    clock: Arc<dyn Clock>,
    stats: Arc<ProxyStats>,
    /// What every proxied byte is counted and classified by (body filters and WebSocket tunnels).
    meter: Meter,
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
    /// This request in the session's open connections (taken over by a WebSocket's tunnel).
    _open: Option<OpenConnection>,
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
    /// The session's cookie generation when its cookie let this request in (token and oidc
    /// modes): once the generation rises (revocation, sign-out), the connection closes.
    admitted_generation: Option<u64>,
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
            meter: Meter { lifecycle: lifecycle.clone(), clock: clock.clone(), stats: stats.clone() },
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

    /// The exact size of the request head, checked again (the front door bounds the bytes it reads).
    fn check_size(&self, session: &Session) -> Verdict {
        let req = session.req_header();
        let max = self.settings.max_header_bytes;
        let header_bytes: usize = req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if header_bytes + req.uri.path_and_query().map_or(0, |p| p.as_str().len()) > max {
            return Reason::HeadersTooLarge { max }.into();
        }
        Verdict::Pass
    }

    /// The request goes on to the workspace at `upstream`, counted in the session's open
    /// connections (for as long as the request context holds the guard) and requests.
    fn forward(&self, session: &mut Session, handle: &Arc<SessionHandle>, ctx: &mut RequestCtx, upstream: Upstream) {
        ctx.upstream = Some(upstream);
        ctx._open = Some(handle.open_connection());
        handle.activity.requests.fetch_add(1, Ordering::Relaxed);
        ProxyStats::bump(&self.stats.requests);
        if ctx.upgrade {
            session.set_read_timeout(Some(self.settings.websocket_idle_timeout));
        }
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

/// An error that ends the connection when the cookie that let it in was revoked since (the
/// session's generation rose): an open WebSocket or download of a signed-out person stops at its
/// next chunk either way. One atomic load per chunk; an idle connection ends at its next message
/// (VS Code's sockets send keep-alives every few seconds) or at `websocket_idle_timeout`.
fn revoked(ctx: &RequestCtx) -> Result<()> {
    match &ctx.session {
        Some(handle) if was_revoked(handle, ctx.admitted_generation) => Err(pingora::Error::explain(
            pingora::ErrorType::Custom("cookies revoked"),
            "the workspace's cookies were revoked",
        )),
        _ => Ok(()),
    }
}

/// Whether the cookie generation that admitted a connection (`None`: no cookie needed) was
/// revoked since; logged when it was.
pub(crate) fn was_revoked(handle: &SessionHandle, admitted: Option<u64>) -> bool {
    let revoked = admitted.is_some_and(|admitted| handle.cookie_generation() > admitted);
    if revoked {
        tracing::info!(session = %handle.id, "connection closed: the workspace's cookies were revoked");
    }
    revoked
}

/// Counts and classifies proxied bytes: shared by the body filters and the WebSocket tunnels,
/// which outlive the request pingora saw.
#[derive(Clone)]
pub(crate) struct Meter {
    lifecycle: Arc<dyn Lifecycle>,
    clock: Arc<dyn Clock>,
    stats: Arc<ProxyStats>,
}

impl Meter {
    /// Bytes from the client to the workspace; on a WebSocket, each message classified.
    pub(crate) fn client_chunk(&self, handle: &Arc<SessionHandle>, ws: Option<&mut ClientStream>, chunk: &[u8]) {
        let n = chunk.len() as u64;
        handle.activity.bytes_in.fetch_add(n, Ordering::Relaxed);
        self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
        let Some(ws) = ws else { return };
        let had_error = ws.error().is_some();
        if ws.feed(chunk) > 0 {
            // A VS Code editor or terminal call is a person; other sockets use the fallback rule
            // (every data message), which max_awake_with_open_tab caps.
            let source =
                if ws.kind() == SocketKind::VsCode { ActivitySource::Editor } else { ActivitySource::WebSocket };
            self.touch(handle, source);
        }
        if !had_error && let Some(why) = ws.error() {
            tracing::debug!(session = %handle.id, reason = why, "WebSocket classification fell back to counting every message");
        }
    }

    /// User activity now; the lifecycle hears at once when it ends a quiet spell.
    pub(crate) fn touch(&self, handle: &Arc<SessionHandle>, source: ActivitySource) {
        if handle.activity.touch(self.clock.now_ms(), source) {
            self.lifecycle.active_again(handle);
        }
    }

    /// Bytes from the workspace to the client.
    pub(crate) fn workspace_chunk(&self, handle: &SessionHandle, chunk: &[u8]) {
        let n = chunk.len() as u64;
        handle.activity.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.stats.bytes_out.fetch_add(n, Ordering::Relaxed);
    }
}

/// Whether the client connection is TLS.
fn over_tls(session: &Session) -> bool {
    session.digest().and_then(|d| d.ssl_digest.as_ref()).is_some()
}

/// The request's host: `:authority` for HTTP/2, the Host header for HTTP/1.
fn request_host(session: &Session) -> &str {
    let req = session.req_header();
    // HTTP/2 carries the host in :authority (the URI), not in a Host header.
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

fn client_ip(session: &Session) -> IpAddr {
    session.client_addr().and_then(|a| a.as_inet()).map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip())
}

#[async_trait]
impl ProxyHttp for WakewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// The request's phases, in order; each either passes it on or answers it here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // Size: the exact header size.
        if let Verdict::Answer(reply) = self.check_size(session) {
            return send(session, "", reply).await;
        }
        // Route: ACME answers, the HTTPS redirect, the API, a workspace host with a session.
        let handle = match self.route(session) {
            Route::Workspace(handle) => handle,
            Route::Api => return self.serve_api(session).await,
            Route::Answer(reply) => return send(session, "", reply).await,
        };
        let id = handle.id.as_str();
        // Access: sign-in link or cookie. The generation is read first: a revocation racing
        // the check closes the connection at its first chunk rather than being missed.
        let generation = handle.cookie_generation();
        if let Verdict::Answer(reply) = self.check_access(session, &handle).await {
            return send(session, id, reply).await;
        }
        if self.settings.workspace_auth != WorkspaceAuth::None {
            ctx.admitted_generation = Some(generation);
        }
        // Status: what the waiting page polls (never reaches the workspace).
        if session.req_header().uri.path() == pages::STATUS_PATH {
            return send(session, id, Reply::Status(handle.phase())).await;
        }
        // WebSocket admission: same origin, within the session's bound.
        if let Verdict::Answer(reply) = self.admit_websocket(session, &handle, ctx) {
            return send(session, id, reply).await;
        }
        // Until ready: the waiting page, a held request, or a refusal while the workspace wakes.
        let (kind, source) = self.note_activity(session, &handle, ctx);
        match self.until_ready(&handle, kind, source).await {
            Readiness::Ready(upstream) => {
                self.forward(session, &handle, ctx, upstream);
                Ok(false)
            }
            Readiness::Answer(reply) => send(session, id, reply).await,
        }
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
        if self.settings.workspace_auth.signs_cookies() && carries_ours(&upstream.headers) {
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
        revoked(ctx)?;
        if let (Some(handle), Some(chunk)) = (&ctx.session, body.as_ref()) {
            self.meter.client_chunk(handle, ctx.ws.as_deref_mut(), chunk);
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
        revoked(ctx)?;
        if let (Some(handle), Some(chunk)) = (&ctx.session, body.as_ref()) {
            self.meter.workspace_chunk(handle, chunk);
        }
        Ok(None)
    }

    /// A WebSocket to a workspace is relayed by a [`Tunnel`](pingora::proxy::Tunnel) of ours once
    /// the workspace answers `101`, so an open editor tab holds none of pingora's per-request state.
    fn tunnel_upgrade(&self, _session: &Session, ctx: &RequestCtx) -> bool {
        ctx.upgrade
    }

    fn upgraded_tunnel(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Option<Box<dyn pingora::proxy::Tunnel>> {
        let handle = ctx.session.clone()?;
        Some(Box::new(WebSocketTunnel {
            handle,
            ws: ctx.ws.take(),
            admitted_generation: ctx.admitted_generation,
            meter: self.meter.clone(),
            idle_timeout: self.settings.websocket_idle_timeout,
            _slot: ctx._ws_slot.take(),
            _open: ctx._open.take(),
        }))
    }
}
