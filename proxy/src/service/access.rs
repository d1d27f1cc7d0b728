//! Who may reach a workspace: the sign-in link exchanged for a cookie, the cookie checked (in
//! token mode), and WebSocket upgrades admitted only from the workspace's own origin and within
//! the session's bound.

use std::sync::Arc;

use http::{Method, StatusCode, header};
use pingora::prelude::Session;
use wakeway_config::WorkspaceAuth;

use super::reply::{Reply, Verdict};
use super::{RequestCtx, WakewayProxy, client_ip, over_tls, request_host};
use crate::auth::{cookie_name, cookie_values, percent_encode, take_token};
use crate::classify::{RequestKind, classify};
use crate::handle::SessionHandle;
use crate::refusal::Reason;
use crate::stats::ProxyStats;

impl WakewayProxy {
    /// Token mode: exchange a sign-in token for a cookie, or check the cookie. Answers with the
    /// sign-in redirect, the link-preview page, 401 or 429; never wakes anything.
    pub(super) async fn check_access(&self, session: &mut Session, handle: &SessionHandle) -> Verdict {
        if self.settings.workspace_auth == WorkspaceAuth::None {
            // Anyone with the URL gets in; but an address that spent its failure budget on
            // unknown hosts gets the same 429 on every host, so guessing cannot tell them apart.
            return match self.unauthenticated.peek(&client_ip(session)) {
                Ok(()) => Verdict::Pass,
                Err(wait) => self.too_many_failures(wait).into(),
            };
        }
        let now = self.clock.now_ms();
        let req = session.req_header();
        if let Some((token, rest)) = req.uri.query().and_then(take_token) {
            if !self.is_navigation(req) {
                ProxyStats::bump(&self.stats.sign_in_previews);
                return Verdict::Answer(Reply::OpenInBrowser);
            }
            let path = req.uri.path();
            let location = if rest.is_empty() { path.to_string() } else { format!("{path}?{rest}") };
            let token = token.to_string();
            return self.sign_in(session, handle, &token, location, now).await;
        }
        let generation = handle.cookie_generation();
        let name = cookie_name(over_tls(session));
        if cookie_values(&req.headers, name).any(|v| self.cookies.verify(&handle.id, generation, v, now)) {
            return Verdict::Pass;
        }
        if let Some(sign_in) = &self.settings.sign_in_url
            && self.is_navigation(req)
        {
            return self.send_to_sign_in(session, sign_in, name);
        }
        let reason = match &self.settings.sign_in_url {
            Some(url) => Reason::SignInAt { url: url.clone() },
            None => Reason::SignInNeeded,
        };
        self.refuse_sign_in(session, reason)
    }

    /// OIDC mode: a person opening the workspace without a valid cookie is sent to
    /// `<public_url>/oauth/login?next=<this URL>` (the login rebuilds the target from the session
    /// id, so `next` cannot send anyone elsewhere). A missing cookie costs nothing; a present but
    /// invalid one spends the address's failure budget, as in token mode.
    fn send_to_sign_in(&self, session: &Session, sign_in: &str, cookie: &str) -> Verdict {
        let req = session.req_header();
        if cookie_values(&req.headers, cookie).next().is_some()
            && let reason @ Reason::TooManyFailures { .. } = self.spend_failure(session, Reason::SignInNeeded)
        {
            return reason.into();
        }
        let scheme = if over_tls(session) { "https" } else { "http" };
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let next = format!("{scheme}://{}{path}", request_host(session));
        let location = format!("{sign_in}?next={}", percent_encode(&next));
        Verdict::Answer(Reply::Redirect { status: StatusCode::FOUND, location, cookie: None })
    }

    /// Redeem a sign-in token: a redirect to `location` that sets the cookie, or 401.
    async fn sign_in(
        &self,
        session: &mut Session,
        handle: &SessionHandle,
        token: &str,
        location: String,
        now_ms: i64,
    ) -> Verdict {
        let Some(generation) = self.lifecycle.redeem_token(&handle.id, token).await else {
            return self.refuse_sign_in(session, Reason::InvalidSignInLink);
        };
        let secure = over_tls(session);
        let generation = generation.max(handle.cookie_generation());
        let cookie = self.cookies.set_cookie(&self.cookies.issue(&handle.id, generation, now_ms), secure);
        ProxyStats::bump(&self.stats.signed_in);
        Verdict::Answer(Reply::Redirect { status: StatusCode::FOUND, location, cookie: Some(cookie) })
    }

    /// 401 (or 429 when this address keeps failing).
    fn refuse_sign_in(&self, session: &Session, reason: Reason) -> Verdict {
        ProxyStats::bump(&self.stats.unauthorized);
        self.spend_failure(session, reason).into()
    }

    /// Whether the request is a browser navigation a person made: a GET with
    /// `Sec-Fetch-Mode: navigate` (or, without it, an HTML `Accept`), not a HEAD, prefetch, bot or
    /// link preview. Only these redeem a sign-in link.
    fn is_navigation(&self, req: &pingora::http::RequestHeader) -> bool {
        req.method == Method::GET
            && classify(&req.method, req.uri.path(), req.uri.query(), &req.headers, &self.settings.bot_user_agents)
                == RequestKind::Navigate
    }

    /// WebSocket upgrades come from the workspace's own origin, at most
    /// `max_websockets_per_session` at once (the slot is held in `ctx` until the request ends).
    pub(super) fn admit_websocket(
        &self,
        session: &Session,
        handle: &Arc<SessionHandle>,
        ctx: &mut RequestCtx,
    ) -> Verdict {
        if !session.is_upgrade_req() {
            return Verdict::Pass;
        }
        // Cross-site WebSocket hijacking: a page elsewhere must not open this workspace's socket
        // with the user's cookie. Browsers always send Origin on WebSocket upgrades.
        let origin = session.req_header().headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).unwrap_or("");
        let host = request_host(session);
        let same = origin
            .split_once("://")
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(host));
        if !same {
            return Reason::BadOrigin.into();
        }
        let max = self.settings.max_websockets_per_session;
        match handle.try_open_websocket(max) {
            Some(slot) => {
                ctx._ws_slot = Some(slot);
                Verdict::Pass
            }
            None => Reason::TooManyWebSockets { max }.into(),
        }
    }
}
