//! Signing in to the admin page with an API key (the API's own keys, compared in constant time;
//! wrong keys spend the client address's failure budget, as the API's do) and signing out.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use wakeway_proxy::pages::{card_page, escape};

use super::AdminState;
use super::page::{self, narrow};
use crate::api::FailureBudget;
use crate::web::forms::same_origin;
use crate::web::pages::html;

/// Why the sign-in form is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Not signed in (200).
    Fresh,
    /// A cookie was sent but is forged, from another secret or expired (401).
    Expired,
    /// The key typed is not an API key (401).
    WrongKey,
}

/// The sign-in page.
pub fn form(why: Why, oidc: bool) -> Response {
    let (status, note) = match why {
        Why::Fresh => (StatusCode::OK, None),
        Why::Expired => {
            (StatusCode::UNAUTHORIZED, Some("Your admin sign-in has expired or is not valid: sign in again."))
        }
        Why::WrongKey => (StatusCode::UNAUTHORIZED, Some("That is not a valid API key. Nothing was signed in.")),
    };
    let note = note.map_or(String::new(), |n| format!("    <p class=\"flash bad\" role=\"alert\">{}</p>\n", escape(n)));
    let single_sign_on = if oidc {
        "    <p class=\"meta\">Administrators of the sign-in service can <a href=\"/oauth/login\">sign in there</a> \
         and come back here.</p>\n"
    } else {
        ""
    };
    let body = format!(
        "{}\n    <p class=\"msg\">Sign in with one of wakeway's API keys (the <code>X-API-Key</code> of the \
         management API). You stay signed in for 12 hours in this browser.</p>\n{note}\
         <form class=\"signin\" method=\"post\" action=\"/admin/login\">\n\
         <label for=\"key\" class=\"sr\">API key</label>\
         <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" placeholder=\"API key\" \
         required autofocus>\n<button class=\"primary\" type=\"submit\">Sign in</button>\n</form>\n{single_sign_on}",
        narrow()
    );
    html(status, card_page("wakeway admin", "t-info", "wakeway admin", &body))
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    key: String,
}

/// `POST /admin/login`: the right key sets the cookie and goes on to the sessions; a wrong one is
/// a 401 page and one failure of this address's budget (429 once spent, before any key is looked at).
pub(super) async fn login(State(admin): State<AdminState>, req: Request) -> Response {
    let budget = req.extensions().get::<FailureBudget>().cloned();
    if let Some(Err(wait)) = budget.as_ref().map(FailureBudget::exhausted) {
        return too_many(wait);
    }
    if !same_origin(req.headers(), &admin.public_origin()) {
        return page::refused();
    }
    let body = Form::<LoginForm>::from_request(req, &admin).await;
    let key = body.map(|Form(f)| f.key).unwrap_or_default();
    if admin.keys.check(key.trim()).is_none() {
        if let Some(Err(wait)) = budget.as_ref().map(FailureBudget::spend) {
            return too_many(wait);
        }
        tracing::info!("admin page: sign-in with a wrong API key refused");
        return form(Why::WrongKey, admin.oidc.is_some());
    }
    tracing::info!("admin page: signed in with an API key");
    page::see_other("/admin", Some(admin.cookies.set(admin.now_ms())))
}

fn too_many(wait: u64) -> Response {
    let mut response = page::message(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        &format!("Too many wrong API keys from this address. Try again in {wait} seconds."),
        ("/admin", "Sign in"),
    );
    if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /admin/logout`: the cookie is cleared (the base session of an OIDC admin is ended at
/// `/oauth/logout`).
pub(super) async fn logout(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let Some(who) = admin.admin(&headers).await else { return page::see_other("/admin", None) };
    let csrf = form.ok().and_then(|Form(f)| f.csrf);
    if !admin.form_allowed(&who, &headers, csrf.as_deref()) {
        return page::refused();
    }
    let next = if admin.oidc.is_some() && admin.cookies.signed_in(&headers, admin.now_ms()).is_none() {
        "/oauth/logout"
    } else {
        "/admin"
    };
    page::see_other(next, Some(admin.cookies.clear())).into_response()
}
