//! The sign-in's answers to people: each failure a page saying what happened and what to do
//! next, on the proxy's page shell (same look as the waiting page). Details a person cannot act
//! on (why a token failed its check) go to the log, not the page.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use wakeway_proxy::pages::{card_page, escape};

/// Why the sign-in cannot continue, as a page.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Discovery, keys or the token endpoint did not answer.
    #[error("the sign-in service at {host} is not answering")]
    ProviderDown { host: String, retry: String },
    /// The person pressed Cancel (or declined consent) at the provider.
    #[error("the sign-in was not allowed at the provider")]
    Denied { retry: String },
    /// The provider sent another `error=` back, or refused the code.
    #[error("the sign-in service refused: {code}")]
    Refused { code: String, retry: String },
    /// No login attempt for this `state`: expired, used already, or never started here.
    #[error("this sign-in expired or was already used")]
    Expired,
    /// The attempt was started in another browser (its binding cookie is missing or another).
    #[error("this sign-in was started in another browser")]
    OtherBrowser,
    /// The ID token failed a check (the reason is logged).
    #[error("the sign-in service's answer could not be verified")]
    Unverified,
    /// The token carries no usable user claim (e.g. an unverified e-mail).
    #[error("{shown} has no verified {claim}")]
    NoUser { shown: String, claim: String, switch: String },
    /// Signed in, but the workspace belongs to someone else.
    #[error("{shown} may not open workspace {id}")]
    WrongUser { shown: String, id: String, switch: String },
    /// `next` is not a workspace address.
    #[error("{0}")]
    BadTarget(String),
    /// No workspace with this id (or it was deleted).
    #[error("there is no workspace {0}")]
    NoWorkspace(String),
    /// The store failed.
    #[error("the sign-in could not be recorded: {0}")]
    Store(String),
}

fn link(href: &str, text: &str) -> String {
    format!("    <p class=\"msg\"><a href=\"{}\">{}</a></p>", escape(href), escape(text))
}

fn text(message: &str) -> String {
    format!("    <p class=\"msg\">{}</p>", escape(message))
}

/// Every result `wakeway_oidc_logins_total` counts (each shown from the start, at 0).
pub const LOGIN_RESULTS: [&str; 9] =
    ["ok", "denied", "expired", "other_browser", "unverified", "provider_down", "wrong_user", "no_user", "store_down"];

impl SignInError {
    /// This failure as a `wakeway_oidc_logins_total` result. Failures that are not the sign-in's
    /// (a `next` that is no workspace, a workspace deleted since) count the sign-in as `ok`.
    pub fn login_result(&self) -> &'static str {
        match self {
            SignInError::ProviderDown { .. } => "provider_down",
            SignInError::Refused { code, .. } if code == "invalid_grant" => "expired",
            SignInError::Denied { .. } | SignInError::Refused { .. } => "denied",
            SignInError::Expired => "expired",
            SignInError::OtherBrowser => "other_browser",
            SignInError::Unverified => "unverified",
            SignInError::NoUser { .. } => "no_user",
            SignInError::WrongUser { .. } => "wrong_user",
            SignInError::BadTarget(_) | SignInError::NoWorkspace(_) => "ok",
            SignInError::Store(_) => "store_down",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            SignInError::ProviderDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            SignInError::Denied { .. } | SignInError::NoUser { .. } | SignInError::WrongUser { .. } => {
                StatusCode::FORBIDDEN
            }
            SignInError::Refused { .. } | SignInError::Unverified => StatusCode::BAD_GATEWAY,
            SignInError::Expired | SignInError::OtherBrowser | SignInError::BadTarget(_) => StatusCode::BAD_REQUEST,
            SignInError::NoWorkspace(_) => StatusCode::NOT_FOUND,
            SignInError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Title, tone, heading and card body.
    fn page(&self) -> (&'static str, &'static str, String, String) {
        let again = || link("/oauth/login", "Sign in again");
        match self {
            SignInError::ProviderDown { host, retry } => (
                "Sign-in unavailable",
                "t-warn",
                "The sign-in service is not answering".into(),
                [text(&format!("The sign-in service at {host} did not answer. Try again in a minute.")), link(retry, "Try again")]
                    .join("\n"),
            ),
            SignInError::Denied { retry } => (
                "Sign-in not allowed",
                "t-gone",
                "You did not allow the sign-in".into(),
                [text("The sign-in was cancelled at the sign-in service, so the workspace was not opened."), link(retry, "Try again")]
                    .join("\n"),
            ),
            SignInError::Refused { code, retry } => (
                "Sign-in refused",
                "t-gone",
                "The sign-in service refused the sign-in".into(),
                [text(&format!("It answered: {code}.")), link(retry, "Try again")].join("\n"),
            ),
            SignInError::Expired => (
                "Sign-in expired",
                "t-gone",
                "This sign-in expired or was already used".into(),
                [text("Sign-ins are used once and only for a few minutes. Open your workspace link again to sign in."), again()]
                    .join("\n"),
            ),
            SignInError::OtherBrowser => (
                "Sign-in from another browser",
                "t-gone",
                "This sign-in was started in another browser".into(),
                [text("Finish the sign-in in the browser that started it, or start again here."), again()].join("\n"),
            ),
            SignInError::Unverified => (
                "Sign-in failed",
                "t-gone",
                "The sign-in service's answer could not be verified".into(),
                [text("wakeway refused the sign-in for your safety. If this keeps happening, tell your administrator."), again()]
                    .join("\n"),
            ),
            SignInError::NoUser { .. }
            | SignInError::WrongUser { .. }
            | SignInError::BadTarget(_)
            | SignInError::NoWorkspace(_)
            | SignInError::Store(_) => self.access_page(),
        }
    }

    /// [`SignInError::page`] of the failures after a sign-in: who may open what, and our store.
    fn access_page(&self) -> (&'static str, &'static str, String, String) {
        let again = || link("/oauth/login", "Sign in again");
        match self {
            SignInError::NoUser { shown, claim, switch } => (
                "Not allowed",
                "t-gone",
                format!("Signed in as {shown}, without a verified {claim}"),
                [text(&format!("The sign-in service did not vouch for your {claim}, so no workspace can be opened with this account.")), link(switch, "Sign in with another account")]
                    .join("\n"),
            ),
            SignInError::WrongUser { shown, id, switch } => (
                "Not your workspace",
                "t-gone",
                format!("Signed in as {shown}"),
                [text(&format!("Workspace {id} belongs to another user. Sign in with the account it was made for.")), link(switch, "Switch account")]
                    .join("\n"),
            ),
            SignInError::BadTarget(why) => ("Not a workspace address", "t-none", "Not a workspace address".into(), text(why)),
            SignInError::NoWorkspace(id) => (
                "No workspace here",
                "t-none",
                "No workspace here".into(),
                text(&format!("There is no workspace {id}: it may have been deleted.")),
            ),
            SignInError::Store(_) => (
                "Sign-in unavailable",
                "t-warn",
                "The sign-in could not be recorded".into(),
                [text("wakeway could not reach its store. Try again in a minute."), again()].join("\n"),
            ),
            SignInError::ProviderDown { .. }
            | SignInError::Denied { .. }
            | SignInError::Refused { .. }
            | SignInError::Expired
            | SignInError::OtherBrowser
            | SignInError::Unverified => unreachable!("SignInError::page answers the sign-in's own failures"),
        }
    }
}

/// An HTML page with `status`, never cached.
pub fn html(status: StatusCode, body: bytes::Bytes) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl IntoResponse for SignInError {
    fn into_response(self) -> Response {
        let (title, tone, heading, body) = self.page();
        let mut response = html(self.status(), card_page(title, tone, &heading, &body));
        if matches!(self, SignInError::ProviderDown { .. } | SignInError::Store(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        response
    }
}

/// "You are signed out".
pub fn signed_out() -> Response {
    let body = [text("You are signed out of wakeway."), link("/oauth/login", "Sign in")].join("\n");
    html(StatusCode::OK, card_page("Signed out", "t-info", "You are signed out", &body))
}

/// "Sign out?" with the form that signs `shown` out (`GET /oauth/logout`).
pub fn sign_out_confirm(shown: &str, csrf: &str) -> Response {
    let body = format!(
        "{}\n    <form method=\"post\" action=\"/oauth/logout?csrf={}\"><button class=\"btn\">Sign out</button></form>\n{}",
        text(&format!(
            "You are signed in as {shown}. Signing out also ends your access to the workspaces opened with this sign-in, wherever they are open."
        )),
        escape(csrf),
        link("/", "Back to your workspaces"),
    );
    html(StatusCode::OK, card_page("Sign out?", "t-info", "Sign out?", &body))
}

/// 403 for a form that did not come from our own page (no or a wrong CSRF token, another origin).
pub fn not_from_home() -> Response {
    let body = "    <p class=\"msg\">This form did not come from your home page. <a href=\"/\">Home</a></p>";
    html(StatusCode::FORBIDDEN, card_page("Not allowed", "t-gone", "Not allowed", body))
}
