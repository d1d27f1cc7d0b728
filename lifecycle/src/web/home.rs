//! The home page (`<public_url>/`) of a signed-in person: their workspaces (everyone's for an
//! admin) with state, tier, last activity and when each sleeps or is deleted; Open (the sign-in
//! hand-off, which wakes it through the waiting page) and Sleep. Plain HTML forms, no script.
//! Not signed in: on to the provider.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use wakeway_proxy::SessionId;
use wakeway_proxy::auth::percent_encode;
use wakeway_proxy::pages::{card_page, escape};

use super::pages::{SignInError, html};
use super::{WebState, redirect};
use crate::manager::SleepReason;

/// `GET /`.
pub(super) async fn home(State(web): State<WebState>, headers: HeaderMap) -> Response {
    let answer = async {
        let Some((sid, user)) = web.current_user(&headers).await? else {
            return Ok(redirect("/oauth/login", &[]));
        };
        let views = web.manager.list(false).await.map_err(|e| SignInError::Store(e.to_string()))?;
        let mine: Vec<_> =
            views.into_iter().filter(|v| user.admin || user.user.as_deref() == Some(&v.session.user_id)).collect();
        let csrf = web.cookies.csrf(&sid);
        let mut rows = String::new();
        for v in &mine {
            let id = v.session.uuid.as_str();
            let next = percent_encode(&format!("{}/", web.manager.config().workspace_url(id)));
            let owner = if user.admin { format!("<td>{}</td>", escape(&v.session.user_id)) } else { String::new() };
            rows.push_str(&format!(
                "<tr><td><code>{id}</code></td>{owner}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td><a href=\"/oauth/login?next={next}\">Open</a> \
                 <form method=\"post\" action=\"/home/{id}/sleep?csrf={csrf}\" style=\"display:inline\">\
                 <button>Sleep</button></form></td></tr>\n",
                escape(v.session.state.as_str()),
                escape(&v.session.tier),
                when(Some(v.last_activity)),
                when(v.sleeps_at),
                when(v.deletes_at),
                id = escape(id),
            ));
        }
        let owner_head = if user.admin { "<th>owner</th>" } else { "" };
        let table = if mine.is_empty() {
            "    <p class=\"msg\">You have no workspaces.</p>".to_string()
        } else {
            format!(
                "    <div style=\"overflow-x:auto\"><table><tr><th>workspace</th>{owner_head}<th>state</th><th>tier</th><th>last activity (UTC)</th>\
                 <th>sleeps</th><th>deleted</th><th></th></tr>\n{rows}</table></div>"
            )
        };
        // The shell's card is sized for one message; a table needs the room.
        let wide = "    <style>main{max-width:1180px}td,th{padding:4px 8px;white-space:nowrap}</style>";
        let body = format!("{wide}\n{table}\n    <p class=\"msg\"><a href=\"/oauth/logout\">Sign out</a></p>");
        let heading = format!("Signed in as {}", user.shown);
        Ok::<_, SignInError>(html(StatusCode::OK, card_page("Your workspaces", "t-info", &heading, &body)))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "—".into(), |t| t.format("%d %b %H:%M").to_string())
}

/// `?csrf=` of the home page's forms.
#[derive(Debug, Deserialize)]
pub(super) struct Csrf {
    csrf: Option<String>,
}

/// `POST /home/{id}/sleep`: put a workspace the person may open to sleep, back to the home page.
pub(super) async fn sleep(
    State(web): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<Csrf>,
) -> Response {
    let answer = async {
        let Some((sid, user)) = web.current_user(&headers).await? else {
            return Ok(redirect("/oauth/login", &[]));
        };
        // A form of this page: its own origin (when the browser says) and the session's token.
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let public = web.public_url();
        if origin.is_some_and(|o| o != public) || q.csrf.as_deref() != Some(web.cookies.csrf(&sid).as_str()) {
            return Ok(forbidden());
        }
        let Some(id) = SessionId::parse(&id) else { return Err(SignInError::NoWorkspace(id)) };
        let owner = web.manager.view(&id).await.map_err(|_| SignInError::NoWorkspace(id.as_str().into()))?;
        if !user.admin && user.user.as_deref() != Some(owner.session.user_id.as_str()) {
            return Ok(forbidden());
        }
        if let Err(e) = web.manager.sleep(&id, SleepReason::Api).await {
            tracing::info!(session = %id, "home page sleep: {e}");
        }
        Ok::<_, SignInError>(redirect("/", &[]))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

fn forbidden() -> Response {
    let body = "    <p class=\"msg\">This form did not come from your home page. <a href=\"/\">Home</a></p>";
    html(StatusCode::FORBIDDEN, card_page("Not allowed", "t-gone", "Not allowed", body))
}
