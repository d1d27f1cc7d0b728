//! Every refusal the proxy sends, in one table: status, stable error code, message, Retry-After
//! and the page browsers get instead of the JSON body (what `api/error.rs` is for the API).

use std::time::Duration;

use http::StatusCode;

use crate::host::SessionId;
use crate::pages::Page;

/// Why the proxy refuses a request. [`Reason::refusal`] is the table of what each one sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The request head is over `max_header_bytes` (front door or proxy).
    HeadersTooLarge { max: usize },
    /// An API request body over `max_api_body_bytes`.
    BodyTooLarge { max: usize },
    /// An API request pingora parsed but `http` cannot rebuild.
    UnreadableRequest,
    /// An ACME HTTP-01 request for a token nobody is waiting on.
    UnknownChallenge,
    /// A workspace host whose id is not a valid session id.
    BadWorkspaceAddress,
    /// A workspace host with no session.
    UnknownWorkspace { id: SessionId },
    /// This client address spent its budget of failed sign-ins and unknown hosts.
    TooManyFailures { wait: u64 },
    /// A sign-in link that is invalid, expired or used.
    InvalidSignInLink,
    /// No valid cookie and no sign-in link.
    SignInNeeded,
    /// No valid cookie, in oidc mode: where people sign in (`<public_url>/oauth/login`).
    SignInAt { url: String },
    /// A WebSocket upgrade from another origin (cross-site WebSocket hijacking).
    BadOrigin,
    /// The session already has `max_websockets_per_session` open.
    TooManyWebSockets { max: usize },
    /// The workspace is not running and this request (`request` says which kind) does not wake it.
    Asleep { state: &'static str, request: &'static str },
    /// The session was asked to wake more than `wake_attempts_per_minute`.
    TooManyWakes { wait: u64 },
    /// The session (or the proxy) already holds as many requests as it may.
    TooManyWaiting,
    /// The workspace could not start.
    StartFailed { why: String },
    /// The workspace did not become ready within `hold_timeout` (`secs`).
    WakeTimeout { secs: u64 },
    /// The workspace was deleted after a verified backup.
    Gone,
    /// Front door: this client address has `max` connections open.
    TooManyConnections { max: usize },
    /// Front door: the request head did not arrive within `header_timeout`.
    HeaderTimeout { limit: Duration },
    /// Front door: a request head two parsers could read apart (request smuggling): 400.
    BadFraming(Framing),
}

/// What is wrong with the framing of a request head (the front door's checks; each a 400 with
/// its own code, after which the connection closes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// A bare CR or LF.
    BareLineEnding,
    /// Not `METHOD TARGET HTTP/1.x`.
    InvalidRequestLine,
    /// A folded header line.
    ObsoleteLineFolding,
    /// A header line without a colon.
    HeaderWithoutColon,
    /// A header name that is not a token (as received, lossily decoded).
    HeaderNameNotToken { name: String },
    /// A header value with control characters.
    HeaderControlCharacters { name: String },
    /// A Content-Length that is not a number.
    InvalidContentLength { value: String },
    /// Several different Content-Length values.
    ConflictingContentLength,
    /// Content-Length together with Transfer-Encoding.
    AmbiguousLength,
    /// Transfer-Encoding on an HTTP/1.0 request.
    ChunkedOverHttp10,
    /// A Transfer-Encoding other than exactly `chunked` (the codings, joined).
    InvalidTransferEncoding { codings: String },
}

/// A refusal as sent: the parts [`Reason::refusal`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// Stable snake_case `error.code` of the JSON body.
    pub code: &'static str,
    /// What to do about it: the JSON body's `error.message` and the page's text.
    pub message: String,
    /// Seconds sent as `Retry-After` (and after which the unavailable page retries).
    pub retry_after: Option<u64>,
    /// The workspace state sent as `x-wakeway-state`.
    pub state: Option<&'static str>,
    /// The page browsers get instead of JSON (None: JSON for everyone).
    pub page: Option<Page>,
    /// The connection is closed after the answer (the client may still be sending).
    pub closes: bool,
}

impl Reason {
    /// What this refusal sends: the table.
    pub fn refusal(self) -> Refusal {
        use Reason::*;
        use StatusCode as S;
        let message = self.message();
        match self {
            HeadersTooLarge { .. } => json(S::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", message).closing(),
            BodyTooLarge { .. } => json(S::PAYLOAD_TOO_LARGE, "body_too_large", message).closing(),
            UnreadableRequest => json(S::BAD_REQUEST, "bad_request", message),
            UnknownChallenge => json(S::NOT_FOUND, "unknown_challenge", message),
            BadWorkspaceAddress | UnknownWorkspace { .. } => {
                json(S::NOT_FOUND, "unknown_workspace", message).page(Page::NotFound)
            }
            TooManyFailures { wait } => json(S::TOO_MANY_REQUESTS, "rate_limited", message).temporary(wait),
            InvalidSignInLink | SignInNeeded | SignInAt { .. } => {
                json(S::UNAUTHORIZED, "unauthorized", message).page(Page::Unauthorized)
            }
            BadOrigin => json(S::FORBIDDEN, "bad_origin", message),
            TooManyWebSockets { .. } => json(S::TOO_MANY_REQUESTS, "too_many_websockets", message).retry_after(10),
            Asleep { state, .. } => {
                Refusal { state: Some(state), ..json(S::SERVICE_UNAVAILABLE, "workspace_asleep", message).temporary(5) }
            }
            TooManyWakes { wait } => json(S::TOO_MANY_REQUESTS, "too_many_wakes", message).temporary(wait),
            TooManyWaiting => json(S::SERVICE_UNAVAILABLE, "too_many_waiting", message).temporary(5),
            StartFailed { .. } => json(S::BAD_GATEWAY, "workspace_start_failed", message).temporary(10),
            WakeTimeout { .. } => json(S::SERVICE_UNAVAILABLE, "wake_timeout", message).temporary(5),
            Gone => json(S::GONE, "session_deleted", message).page(Page::Gone),
            TooManyConnections { .. } => {
                json(S::TOO_MANY_REQUESTS, "too_many_connections", message).retry_after(10).closing()
            }
            HeaderTimeout { .. } => json(S::REQUEST_TIMEOUT, "header_timeout", message).closing(),
            BadFraming(framing) => json(S::BAD_REQUEST, framing.code(), message).closing(),
        }
    }

    /// What to do about it: the JSON body's `error.message` and the page's text.
    fn message(&self) -> String {
        use Reason::*;
        match self {
            HeadersTooLarge { max } => format!("The request headers are larger than {max} bytes."),
            BodyTooLarge { max } => format!("request body is larger than {max} bytes"),
            UnreadableRequest => "unreadable request".into(),
            UnknownChallenge => "No ACME challenge is pending with this token.".into(),
            BadWorkspaceAddress => "This is not a valid workspace address: check the link.".into(),
            UnknownWorkspace { id } => format!(
                "There is no workspace vs-code-{id} on this server. Check the link, or create a session through the API."
            ),
            TooManyFailures { wait } => format!(
                "Too many failed sign-ins or unknown workspace addresses from this address; retry in {wait} s."
            ),
            InvalidSignInLink => "This sign-in link is invalid, expired or was already used: ask the app that created the workspace for a new one.".into(),
            SignInNeeded => {
                "Open it through the app that created it: sign-in links work once and expire after a few minutes.".into()
            }
            SignInAt { url } => format!("Sign in at {url}, then open the workspace again."),
            BadOrigin => "WebSocket upgrades must come from the workspace's own origin.".into(),
            TooManyWebSockets { max } => format!("This workspace already has {max} WebSockets open; close some tabs."),
            Asleep { state, request } => format!("The workspace is {state}; a {request} does not wake it."),
            TooManyWakes { wait } => format!("This workspace was asked to wake too often; retry in {wait} s."),
            TooManyWaiting => {
                "Too many requests are already waiting for this workspace to wake; retry in a few seconds.".into()
            }
            StartFailed { why } => format!("The workspace could not start: {why}"),
            WakeTimeout { secs } => {
                format!("The workspace did not become ready within {secs} s; it is still starting, retry shortly.")
            }
            Gone => "This workspace was deleted after a verified backup. Ask your administrator to restore it.".into(),
            TooManyConnections { max } => {
                format!("This address already has {max} connections open; close some and retry.")
            }
            HeaderTimeout { limit } => format!("The request head did not arrive within {} s.", limit.as_secs_f64()),
            BadFraming(framing) => framing.message(),
        }
    }
}

impl Framing {
    fn code(&self) -> &'static str {
        use Framing::*;
        match self {
            BareLineEnding => "bare_line_ending",
            InvalidRequestLine => "invalid_request_line",
            ObsoleteLineFolding => "obsolete_line_folding",
            HeaderWithoutColon | HeaderNameNotToken { .. } | HeaderControlCharacters { .. } => "invalid_header",
            InvalidContentLength { .. } => "invalid_content_length",
            ConflictingContentLength => "conflicting_content_length",
            AmbiguousLength => "ambiguous_length",
            ChunkedOverHttp10 | InvalidTransferEncoding { .. } => "invalid_transfer_encoding",
        }
    }

    fn message(&self) -> String {
        use Framing::*;
        match self {
            BareLineEnding => "Lines of a request head must end with CRLF: a bare LF or CR is refused, because servers disagree on it (request smuggling).".into(),
            InvalidRequestLine => "The request line must read `METHOD TARGET HTTP/1.1`.".into(),
            ObsoleteLineFolding => {
                "A header line starts with whitespace (obs-fold): folded headers are refused (RFC 9112 5.2).".into()
            }
            HeaderWithoutColon => "A header line has no colon.".into(),
            HeaderNameNotToken { name } => {
                format!("Header name {name:?} is not a token (no spaces before the colon).")
            }
            HeaderControlCharacters { name } => format!("Header {name} holds control characters."),
            InvalidContentLength { value } => format!("Content-Length {value:?} is not a number."),
            ConflictingContentLength => {
                "The request has several different Content-Length values (request smuggling).".into()
            }
            AmbiguousLength => "The request has both Content-Length and Transfer-Encoding (request smuggling).".into(),
            ChunkedOverHttp10 => "HTTP/1.0 requests cannot use Transfer-Encoding (RFC 9112 6.1).".into(),
            InvalidTransferEncoding { codings } => {
                format!("Transfer-Encoding must be exactly `chunked`, not {codings:?}.")
            }
        }
    }
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        reason.refusal()
    }
}

impl Refusal {
    fn page(self, page: Page) -> Self {
        Refusal { page: Some(page), ..self }
    }

    fn closing(self) -> Self {
        Refusal { closes: true, ..self }
    }

    fn retry_after(self, seconds: u64) -> Self {
        Refusal { retry_after: Some(seconds), ..self }
    }

    /// A temporary refusal: `Retry-After`, and for browsers a page that retries after it.
    fn temporary(self, seconds: u64) -> Self {
        self.retry_after(seconds).page(Page::Unavailable)
    }
}

/// A JSON refusal with nothing else.
fn json(status: StatusCode, code: &'static str, message: String) -> Refusal {
    Refusal { status, code, message, retry_after: None, state: None, page: None, closes: false }
}

impl From<Framing> for Refusal {
    fn from(framing: Framing) -> Self {
        Reason::BadFraming(framing).refusal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_its_wire_shapes() {
        let asleep = Reason::Asleep { state: "sleeping", request: "HEAD request" }.refusal();
        assert_eq!(
            (asleep.status, asleep.code, asleep.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, "workspace_asleep", Some(5))
        );
        assert_eq!((asleep.state, asleep.page), (Some("sleeping"), Some(Page::Unavailable)));
        assert_eq!(asleep.message, "The workspace is sleeping; a HEAD request does not wake it.");
        let wakes = Reason::TooManyWakes { wait: 42 }.refusal();
        assert_eq!((wakes.status, wakes.retry_after, wakes.closes), (StatusCode::TOO_MANY_REQUESTS, Some(42), false));
        let large = Reason::HeadersTooLarge { max: 100 }.refusal();
        assert!(large.closes && large.page.is_none(), "431 is JSON for everyone and closes the connection");
        let framing: Refusal = Framing::InvalidContentLength { value: "+4".into() }.into();
        assert_eq!((framing.status, framing.code), (StatusCode::BAD_REQUEST, "invalid_content_length"));
        assert_eq!(framing.message, "Content-Length \"+4\" is not a number.");
        let oidc = Reason::SignInAt { url: "https://preview.example.com/oauth/login".into() }.refusal();
        assert_eq!(
            (oidc.status, oidc.code, oidc.page),
            (StatusCode::UNAUTHORIZED, "unauthorized", Some(Page::Unauthorized))
        );
        assert_eq!(oidc.message, "Sign in at https://preview.example.com/oauth/login, then open the workspace again.");
        let gone = Reason::Gone.refusal();
        assert_eq!(
            (gone.status, gone.code, gone.page, gone.retry_after),
            (StatusCode::GONE, "session_deleted", Some(Page::Gone), None)
        );
    }
}
