//! Where a request goes: an ACME HTTP-01 answer, the plain-HTTP → HTTPS redirect, the management
//! API, or a workspace host with a session (an unknown one spends the client's failure budget).

use std::sync::Arc;

use http::StatusCode;
use pingora::prelude::Session;

use super::reply::Reply;
use super::{WakewayProxy, client_ip, over_tls, request_host};
use crate::handle::SessionHandle;
use crate::host::HostRoute;
use crate::refusal::Reason;
use crate::stats::ProxyStats;
use crate::tls::ACME_CHALLENGE_PREFIX;

/// Where [`WakewayProxy::route`] sends a request.
pub(super) enum Route {
    /// The management API.
    Api,
    /// A workspace with a session.
    Workspace(Arc<SessionHandle>),
    /// Answered here (ACME, redirect, unknown host).
    Answer(Reply),
}

impl WakewayProxy {
    pub(super) fn route(&self, session: &Session) -> Route {
        let route = HostRoute::parse(request_host(session), &self.settings.domain);
        if let Some(reply) = self.acme_answer(session).or_else(|| self.https_redirect(session, &route)) {
            return Route::Answer(reply);
        }
        let id = match route {
            HostRoute::Api => return Route::Api,
            HostRoute::BadWorkspace => return Route::Answer(self.unknown_host(session, Reason::BadWorkspaceAddress)),
            HostRoute::Workspace(id) => id,
        };
        match self.lifecycle.session(&id) {
            Some(handle) => Route::Workspace(handle),
            None => Route::Answer(self.unknown_host(session, Reason::UnknownWorkspace { id })),
        }
    }

    /// ACME HTTP-01 answers (on any host).
    fn acme_answer(&self, session: &Session) -> Option<Reply> {
        let token = session.req_header().uri.path().strip_prefix(ACME_CHALLENGE_PREFIX)?;
        Some(match self.certs.as_ref().and_then(|c| c.challenge(token)) {
            Some(key_authorization) => Reply::AcmeAnswer(key_authorization),
            None => Reply::Refuse(Reason::UnknownChallenge),
        })
    }

    /// With TLS on and `redirect_http_to_https`: plain-HTTP requests to workspace hosts go to HTTPS.
    fn https_redirect(&self, session: &Session, route: &HostRoute) -> Option<Reply> {
        let port = self.settings.https_redirect_port?;
        // Only workspace hosts (browsers): the API host stays reachable for probes and clients.
        if over_tls(session) || *route == HostRoute::Api {
            return None;
        }
        let host = request_host(session);
        let name = match host.rfind(':') {
            Some(i) if !host.ends_with(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        };
        let port = if port == 443 { String::new() } else { format!(":{port}") };
        let path = session.req_header().uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{name}{port}{path}");
        Some(Reply::Redirect { status: StatusCode::PERMANENT_REDIRECT, location, cookie: None })
    }

    /// 404 for a workspace host with no session (`reason` says why). Each one spends the client
    /// address's failure budget: session ids are short, so guessing them is bounded like guessing
    /// sign-in links. 429 once the budget is spent.
    fn unknown_host(&self, session: &Session, reason: Reason) -> Reply {
        ProxyStats::bump(&self.stats.unknown_host);
        Reply::Refuse(self.spend_failure(session, reason))
    }

    /// A failed sign-in or unknown host: `reason`, or 429 once the client address has spent its
    /// failure budget.
    pub(super) fn spend_failure(&self, session: &Session, reason: Reason) -> Reason {
        match self.unauthenticated.check(&client_ip(session)) {
            Ok(()) => reason,
            Err(wait) => self.too_many_failures(wait),
        }
    }

    /// 429 with `Retry-After`: this client address spent its failure budget.
    pub(super) fn too_many_failures(&self, wait: u64) -> Reason {
        ProxyStats::bump(&self.stats.failures_limited);
        Reason::TooManyFailures { wait }
    }
}
