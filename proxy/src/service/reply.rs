//! What the proxy answers itself instead of forwarding, and how it writes it: refusals from the
//! table in [`crate::refusal`] (a page for browsers, JSON for programs), redirects, the waiting
//! page and the status it polls.

use bytes::Bytes;
use http::{Method, StatusCode, header};
use pingora::http::ResponseHeader;
use pingora::prelude::{Result, Session};

use crate::error::error_body;
use crate::handle::Phase;
use crate::pages;
use crate::refusal::{Reason, Refusal};

/// An answer the proxy sends itself.
pub(super) enum Reply {
    /// A refusal from the table.
    Refuse(Reason),
    /// 200 `text/plain`: the key authorization of a pending ACME HTTP-01 challenge.
    AcmeAnswer(String),
    /// A redirect (308 to HTTPS; 302 after a sign-in, with its cookie). No body.
    Redirect { status: StatusCode, location: String, cookie: Option<String> },
    /// 200: a sign-in link seen by a link preview, HEAD or prefetch (so previews show it): the
    /// page asks to open it in a browser; the token is left unused.
    OpenInBrowser,
    /// 200: the waiting page, for a navigation while the workspace wakes.
    Waiting,
    /// 200 JSON: the workspace's state, polled by the waiting page.
    Status(Phase),
}

impl From<Reason> for Reply {
    fn from(reason: Reason) -> Self {
        Reply::Refuse(reason)
    }
}

/// What one phase of `request_filter` decided.
pub(super) enum Verdict {
    /// On to the next phase.
    Pass,
    /// Answer with this; the request goes no further.
    Answer(Reply),
}

impl From<Reason> for Verdict {
    fn from(reason: Reason) -> Self {
        Verdict::Answer(Reply::Refuse(reason))
    }
}

pub(super) const JSON: &str = "application/json";
pub(super) const HTML: &str = "text/html; charset=utf-8";

const SIGN_IN_PREVIEW: &str =
    "This sign-in link works once, in a browser: open it there to reach the workspace. It has not been used.";

/// Write `reply` for session `id` (empty when the request named none). `Ok(true)`: answered.
pub(super) async fn send(session: &mut Session, id: &str, reply: Reply) -> Result<bool> {
    match reply {
        Reply::Refuse(reason) => refuse(session, id, reason.refusal()).await,
        Reply::AcmeAnswer(key_authorization) => {
            respond(session, StatusCode::OK, "text/plain", Bytes::from(key_authorization), &[]).await
        }
        Reply::Redirect { status, location, cookie } => {
            let mut extra = vec![("location", location.as_str())];
            extra.extend(cookie.as_deref().map(|c| ("set-cookie", c)));
            respond(session, status, HTML, Bytes::new(), &extra).await
        }
        Reply::OpenInBrowser => {
            respond(session, StatusCode::OK, HTML, pages::open_in_browser(id, SIGN_IN_PREVIEW), &[]).await
        }
        Reply::Waiting => {
            respond(session, StatusCode::OK, HTML, pages::waiting(id), &[("x-wakeway-state", "waking")]).await
        }
        Reply::Status(phase) => {
            let (state, ready, message) = phase_state(&phase);
            let body = serde_json::json!({ "uuid": id, "state": state, "ready": ready, "message": message });
            respond(session, StatusCode::OK, JSON, Bytes::from(body.to_string()), &[]).await
        }
    }
}

/// A refusal: its page for browsers when it has one, its JSON body for everything else.
async fn refuse(session: &mut Session, id: &str, refusal: Refusal) -> Result<bool> {
    if refusal.closes {
        session.set_keepalive(None);
    }
    let retry = refusal.retry_after.map(|s| s.to_string());
    let mut extra = Vec::with_capacity(2);
    extra.extend(retry.as_deref().map(|r| ("retry-after", r)));
    extra.extend(refusal.state.map(|s| ("x-wakeway-state", s)));
    let (content_type, body) = match refusal.page {
        Some(page) if wants_html(session) => {
            (HTML, page.render(id, &refusal.message, refusal.retry_after.unwrap_or_default()))
        }
        _ => (JSON, error_body(refusal.code, &refusal.message)),
    };
    respond(session, refusal.status, content_type, body, &extra).await
}

/// The state the waiting page shows (and `x-wakeway-state`), whether it is ready, and a message.
pub(super) fn phase_state(phase: &Phase) -> (&'static str, bool, String) {
    match phase {
        Phase::Asleep => ("sleeping", false, "The workspace is asleep.".into()),
        Phase::Starting => ("starting", false, "Starting the workspace…".into()),
        Phase::Ready(_) => ("running", true, "Ready.".into()),
        Phase::Busy => ("stopping", false, "Finishing a lifecycle step, then waking…".into()),
        Phase::Gone => ("deleted", false, "This workspace was deleted.".into()),
        Phase::Failed(why) => ("failed", false, format!("The workspace could not start: {why}")),
    }
}

fn wants_html(session: &Session) -> bool {
    let headers = &session.req_header().headers;
    let get = |n: header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    get(crate::classify::SEC_FETCH_MODE) == "navigate" || get(header::ACCEPT).contains("text/html")
}

pub(super) async fn respond(
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
pub(super) async fn write_full(session: &mut Session, header: ResponseHeader, body: Bytes) -> Result<bool> {
    if session.req_header().method == Method::HEAD || body.is_empty() {
        session.write_response_header(Box::new(header), true).await?;
    } else {
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}
