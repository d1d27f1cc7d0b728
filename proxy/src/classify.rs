//! Per-request decisions: does this request count as user activity, and if the workspace is
//! asleep, do we answer with a waiting page, hold it, or answer without waking?

use http::{HeaderMap, HeaderName, Method, header};

/// How a request is treated when its workspace is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A browser navigation: answered at once with the waiting page (and wakes).
    Navigate,
    /// Fetch/XHR/WebSocket/API client: held (body unread) until ready (and wakes).
    Hold,
    /// Never wakes and is never activity.
    Passive(PassiveReason),
}

/// Why a request does not wake a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassiveReason {
    Head,
    Options,
    Prefetch,
    Bot,
    HealthCheck,
    /// A WebSocket reconnect an open tab makes on its own (`reconnection=true`).
    Reconnect,
}

impl PassiveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PassiveReason::Head => "HEAD request",
            PassiveReason::Options => "OPTIONS request",
            PassiveReason::Prefetch => "prefetch",
            PassiveReason::Bot => "bot or probe user agent",
            PassiveReason::HealthCheck => "health check path",
            PassiveReason::Reconnect => "automatic WebSocket reconnect",
        }
    }
}

/// Paths that health checkers poll; they never wake a workspace or count as activity.
const HEALTH_PATHS: &[&str] = &["/healthz", "/health", "/readyz", "/livez", "/ping"];

// Header names parsed once, not per request (this runs on every request).
const SEC_PURPOSE: HeaderName = HeaderName::from_static("sec-purpose");
const PURPOSE: HeaderName = HeaderName::from_static("purpose");
const X_MOZ: HeaderName = HeaderName::from_static("x-moz");
const X_PURPOSE: HeaderName = HeaderName::from_static("x-purpose");
pub(crate) const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// Classify one request. `bots` are lowercase User-Agent substrings.
pub fn classify(method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap, bots: &[String]) -> RequestKind {
    if method == Method::HEAD {
        return RequestKind::Passive(PassiveReason::Head);
    }
    if method == Method::OPTIONS {
        return RequestKind::Passive(PassiveReason::Options);
    }
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let purpose = |name: &HeaderName| contains_ignore_case(header(name), "prefetch");
    if purpose(&SEC_PURPOSE)
        || purpose(&PURPOSE)
        || purpose(&X_MOZ)
        || header(&X_PURPOSE).eq_ignore_ascii_case("preview")
    {
        return RequestKind::Passive(PassiveReason::Prefetch);
    }
    if HEALTH_PATHS.contains(&path) {
        return RequestKind::Passive(PassiveReason::HealthCheck);
    }
    let agent = header(&header::USER_AGENT);
    if !agent.is_empty() && bots.iter().any(|b| contains_ignore_case(agent, b)) {
        return RequestKind::Passive(PassiveReason::Bot);
    }
    let upgrade = header(&header::UPGRADE).eq_ignore_ascii_case("websocket");
    if upgrade && query.is_some_and(|q| q.split('&').any(|kv| kv == "reconnection=true")) {
        return RequestKind::Passive(PassiveReason::Reconnect);
    }
    let mode = header(&SEC_FETCH_MODE);
    let navigate = if mode.is_empty() {
        method == Method::GET && !upgrade && header(&header::ACCEPT).contains("text/html")
    } else {
        mode.eq_ignore_ascii_case("navigate")
    };
    if navigate { RequestKind::Navigate } else { RequestKind::Hold }
}

/// Whether `haystack` contains `needle` (lowercase), ignoring ASCII case, without allocating: this
/// runs on every request.
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: Method, path: &str, query: Option<&str>, headers: &[(&str, &str)]) -> RequestKind {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        classify(&method, path, query, &map, &["bot".to_string(), "kube-probe".to_string()])
    }

    #[test]
    fn browsers_navigating_get_the_waiting_page() {
        assert_eq!(kind(Method::GET, "/", None, &[("sec-fetch-mode", "navigate")]), RequestKind::Navigate);
        assert_eq!(
            kind(Method::GET, "/", None, &[("accept", "text/html,application/xhtml+xml")]),
            RequestKind::Navigate
        );
    }

    #[test]
    fn programs_are_held() {
        assert_eq!(
            kind(Method::GET, "/api", None, &[("sec-fetch-mode", "cors"), ("accept", "text/html")]),
            RequestKind::Hold
        );
        assert_eq!(kind(Method::GET, "/", None, &[("accept", "*/*")]), RequestKind::Hold);
        assert_eq!(kind(Method::POST, "/files/a", None, &[]), RequestKind::Hold);
        assert_eq!(
            kind(Method::GET, "/stable-x", Some("reconnectionToken=a&reconnection=false"), &[("upgrade", "websocket")]),
            RequestKind::Hold
        );
    }

    #[test]
    fn passive_requests_never_wake() {
        use PassiveReason::*;
        assert_eq!(kind(Method::HEAD, "/", None, &[]), RequestKind::Passive(Head));
        assert_eq!(kind(Method::OPTIONS, "/", None, &[]), RequestKind::Passive(Options));
        assert_eq!(
            kind(Method::GET, "/", None, &[("sec-purpose", "prefetch;prerender")]),
            RequestKind::Passive(Prefetch)
        );
        assert_eq!(kind(Method::GET, "/", None, &[("purpose", "prefetch")]), RequestKind::Passive(Prefetch));
        assert_eq!(kind(Method::GET, "/healthz", None, &[]), RequestKind::Passive(HealthCheck));
        assert_eq!(kind(Method::GET, "/", None, &[("user-agent", "Googlebot/2.1")]), RequestKind::Passive(Bot));
        assert_eq!(kind(Method::GET, "/", None, &[("user-agent", "Mozilla/5.0 Chrome/156")]), RequestKind::Hold);
        assert_eq!(kind(Method::GET, "/", None, &[("user-agent", "kube-probe/1.30")]), RequestKind::Passive(Bot));
        assert_eq!(
            kind(Method::GET, "/stable-x", Some("reconnectionToken=a&reconnection=true"), &[("upgrade", "websocket")]),
            RequestKind::Passive(Reconnect)
        );
    }
}
