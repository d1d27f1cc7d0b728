//! The admin page's shell (the waiting page's card, widened, with the tabs) and the pages that
//! say something went wrong: sign-in needed, a refused form, the store unavailable, a failed action.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use wakeway_proxy::pages::{card_page, escape};

use crate::api::ApiError;
use crate::manager::LifecycleError;
use crate::store::StoreError;
use crate::web::pages::html;

const CSS: &str = include_str!("admin.css");

/// The tabs of the admin page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Sessions,
    Backups,
    Usage,
}

/// Who is signed in, for the tabs' corner: their name and the sign-out form's token.
pub struct Corner<'a> {
    pub name: &'a str,
    pub csrf: &'a str,
}

/// `<style>` widening the card for tables.
pub fn style() -> String {
    format!("    <style>{CSS}</style>")
}

/// The admin styles on a card of the waiting page's width (sign-in, messages).
pub fn narrow() -> String {
    format!("    <style>{CSS}main{{max-width:520px}}</style>")
}

fn tabs(on: Tab, corner: &Corner) -> String {
    let tab = |tab: Tab, href: &str, text: &str| {
        let class = if tab == on { " class=\"on\"" } else { "" };
        format!("<a href=\"{href}\"{class}>{text}</a>")
    };
    format!(
        "    <nav class=\"tabs\">{}{}{}<span class=\"who\">{}<form class=\"inline\" method=\"post\" \
         action=\"/admin/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Sign out</button>\
         </form></span></nav>",
        tab(Tab::Sessions, "/admin", "Sessions"),
        tab(Tab::Backups, "/admin/backups", "Backups"),
        tab(Tab::Usage, "/admin/usage", "Usage"),
        escape(corner.name),
        escape(corner.csrf),
    )
}

/// A signed-in admin page: the tabs, then `body` (HTML the caller escaped).
pub fn admin_page(title: &str, on: Tab, corner: &Corner, body: &str) -> Response {
    let body = format!("{}\n{}\n{body}", style(), tabs(on, corner));
    html(StatusCode::OK, card_page(title, "t-info", title, &body))
}

/// A one-message page with `status`, a text and a link back.
pub fn message(status: StatusCode, title: &str, text: &str, back: (&str, &str)) -> Response {
    let body = format!(
        "{}\n    <p class=\"msg\">{}</p>\n    <p class=\"msg\"><a class=\"button\" href=\"{}\">{}</a></p>",
        narrow(),
        escape(text),
        escape(back.0),
        escape(back.1)
    );
    let tone = if status.is_server_error() { "t-warn" } else { "t-gone" };
    html(status, card_page(title, tone, title, &body))
}

/// 403: a form that did not come from this admin page (no or a wrong token, another origin).
pub fn refused() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Not allowed",
        "This form did not come from your admin page (its token is missing or wrong, or it was sent from another \
         site). Open the admin page and try again.",
        ("/admin", "Admin page"),
    )
}

/// 503 when the store cannot be read: what still works and what to do.
pub fn store_unavailable(e: &impl std::fmt::Display) -> Response {
    let mut response = message(
        StatusCode::SERVICE_UNAVAILABLE,
        "Store unavailable",
        &format!(
            "wakeway cannot read its session store ({e}). Running workspaces are still served; nothing can be \
             listed or changed until the store answers. Check the store (GET /health names it), then reload \
             this page."
        ),
        ("/admin", "Reload"),
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    response
}

/// The page for a failed lifecycle operation: the API's status and words.
pub fn failed(e: LifecycleError, back: &str) -> Response {
    if let LifecycleError::Store(StoreError::Unavailable(_)) = &e {
        return store_unavailable(&e);
    }
    let e = ApiError::from(e);
    message(e.status, "That did not work", &e.message, (back, "Back"))
}

/// A page for an [`ApiError`] (a download that cannot be served).
pub fn api_error(e: ApiError, back: &str) -> Response {
    message(e.status, "That did not work", &e.message, (back, "Back"))
}

/// 303 to `location` setting `cookie`.
pub fn see_other(location: &str, cookie: Option<String>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SET_COOKIE, value);
    }
    response
}
