//! The home page (`<public_url>/`) of a signed-in person: their workspaces (everyone's for an
//! admin) with state, tier, last activity and when each sleeps or is deleted; Open (the sign-in
//! hand-off, which wakes it through the waiting page), Sleep, and "New workspace" when
//! `users_can_create` is on (up to `max_workspaces_per_user`). Plain HTML forms that work without
//! JavaScript; a small script only refreshes the state and time cells from `GET /home/state`.
//! Not signed in: on to the provider.

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use wakeway_proxy::SessionId;
use wakeway_proxy::auth::percent_encode;
use wakeway_proxy::pages::{card_page, escape};

use super::pages::{SignInError, html, not_from_home};
use super::session::UserSession;
use super::{WebState, redirect};
use crate::manager::{SessionView, SleepReason};

/// The page's own styles: the shell's card is sized for one message, a table needs the room.
const CSS: &str = "    <style>main{max-width:1180px}table{margin:0 auto;border-collapse:collapse}\
td,th{padding:6px 10px;white-space:nowrap}th{font-size:13px;color:var(--muted);font-weight:600}\
tr+tr td{border-top:1px solid var(--line)}.act form{display:inline}\
.act .btn,.new .btn{margin:0 0 0 6px;padding:5px 12px;font-size:13px}\
.new{margin:18px 0 0}.new select{font:inherit;font-size:14px;padding:4px 8px;border-radius:8px;\
border:1px solid var(--line);background:var(--card);color:var(--text)}\
.notice{margin:0 0 14px;color:var(--tone);font-weight:600}.out{margin:18px 0 0}</style>";

/// Every 5 s, the state and time cells from `GET /home/state` (the page works without it).
const SCRIPT: &str = "    <script>setInterval(async()=>{try{const r=await fetch('/home/state');if(!r.ok)return;\
for(const w of (await r.json()).workspaces){const row=document.querySelector('tr[data-id=\"'+w.id+'\"]');\
if(!row)continue;for(const k of ['state','activity','sleeps','deletes']){const c=row.querySelector('.'+k);\
if(c)c.textContent=w[k];}}}catch(e){}},5000);</script>";

/// `GET /`.
pub(super) async fn home(State(web): State<WebState>, headers: HeaderMap) -> Response {
    let answer = async {
        let Some((sid, user)) = web.current_user(&headers).await? else {
            return Ok(redirect("/oauth/login", &[]));
        };
        web.home_page(&sid, &user, None).await
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /home/state`: the live cells of the home page's rows, as JSON (401 when not signed in).
pub(super) async fn state(State(web): State<WebState>, headers: HeaderMap) -> Response {
    let user = match web.current_user(&headers).await {
        Ok(Some((_, user))) => user,
        Ok(None) => {
            return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": "not signed in" }))).into_response();
        }
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": e.to_string() })))
                .into_response();
        }
    };
    let views = match web.visible(&user).await {
        Ok(views) => views,
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": e.to_string() })))
                .into_response();
        }
    };
    let workspaces: Vec<_> = views
        .iter()
        .map(|v| {
            serde_json::json!({
                "id": v.session.uuid,
                "state": v.session.state.as_str(),
                "activity": when(Some(v.last_activity)),
                "sleeps": when(v.sleeps_at),
                "deletes": when(v.deletes_at),
            })
        })
        .collect();
    let mut response = Json(serde_json::json!({ "workspaces": workspaces })).into_response();
    response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "—".into(), |t| t.format("%d %b %H:%M").to_string())
}

/// `?csrf=` of the home page's forms.
#[derive(Debug, Deserialize)]
pub(super) struct Csrf {
    pub(super) csrf: Option<String>,
}

/// The "New workspace" form.
#[derive(Debug, Deserialize)]
pub(super) struct NewWorkspace {
    tier: Option<String>,
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
        if !web.form_allowed(&headers, &sid, q.csrf.as_deref()) {
            return Ok(not_from_home());
        }
        let Some(id) = SessionId::parse(&id) else { return Err(SignInError::NoWorkspace(id)) };
        let owner = web.manager.view(&id).await.map_err(|_| SignInError::NoWorkspace(id.as_str().into()))?;
        if !may_open(&user, &owner) {
            return Ok(not_from_home());
        }
        if let Err(e) = web.manager.sleep(&id, SleepReason::Api).await {
            tracing::info!(session = %id, "home page sleep: {e}");
        }
        Ok::<_, SignInError>(redirect("/", &[]))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /home/create`: a workspace of the signed-in user in the chosen tier (default
/// `default_tier`), made by the manager as `POST /session/create` makes one; then on into it.
/// Refused with the home page saying why when `users_can_create` is off, the tier is unknown or
/// the user has `max_workspaces_per_user` already.
pub(super) async fn create(
    State(web): State<WebState>,
    headers: HeaderMap,
    Query(q): Query<Csrf>,
    form: Result<Form<NewWorkspace>, FormRejection>,
) -> Response {
    let answer = async {
        let Some((sid, user)) = web.current_user(&headers).await? else {
            return Ok(redirect("/oauth/login", &[]));
        };
        let Some(owner) = user.user.clone().filter(|_| web.form_allowed(&headers, &sid, q.csrf.as_deref())) else {
            return Ok(not_from_home());
        };
        let config = web.manager.config();
        let tier = form.ok().and_then(|Form(f)| f.tier).unwrap_or_else(|| config.workspaces.default_tier.clone());
        let refuse = |status, text: String| web.home_page(&sid, &user, Some((status, text)));
        if !config.oidc.users_can_create {
            return refuse(StatusCode::FORBIDDEN, "Creating workspaces here is turned off.".into()).await;
        }
        if !config.workspaces.tiers.contains_key(&tier) {
            return refuse(StatusCode::BAD_REQUEST, format!("There is no tier {tier:?}: choose one of the list."))
                .await;
        }
        // One creation at a time on this replica, so two quick clicks cannot both pass the limit.
        let _one = web.creating.lock().await;
        let max = config.oidc.max_workspaces_per_user;
        let own = owned(&web.visible(&user).await?, &owner);
        if own >= max {
            return refuse(StatusCode::CONFLICT, limit_text(max)).await;
        }
        match web.manager.create_in_tier(&owner, &tier).await {
            Ok(s) => {
                tracing::info!(session = %s.uuid, user = %owner, tier = %tier, "workspace created from the home page");
                Ok(redirect(&web.login_url(Some(&(s.id(), "/".into())), false), &[]))
            }
            Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, format!("The workspace could not be created: {e}")).await,
        }
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

fn limit_text(max: usize) -> String {
    format!(
        "You have {max} workspaces, the most one person may have here (max_workspaces_per_user). \
         Ask your administrator to delete one you no longer need."
    )
}

/// Workspaces of `user_id` among `views`.
fn owned(views: &[SessionView], user_id: &str) -> usize {
    views.iter().filter(|v| v.session.user_id == user_id).count()
}

/// Whether `user` may open (and put to sleep) the workspace of `view`.
fn may_open(user: &UserSession, view: &SessionView) -> bool {
    user.admin || user.user.as_deref() == Some(view.session.user_id.as_str())
}

/// One row of the table.
fn row(web: &WebState, user: &UserSession, csrf: &str, v: &SessionView) -> String {
    let id = escape(v.session.uuid.as_str());
    let next = percent_encode(&format!("{}/", web.manager.config().workspace_url(&v.session.uuid)));
    let owner = if user.admin { format!("<td>{}</td>", escape(&v.session.user_id)) } else { String::new() };
    format!(
        "<tr data-id=\"{id}\"><td><code>{id}</code></td>{owner}<td class=\"state\">{}</td><td>{}</td>\
         <td class=\"activity\">{}</td><td class=\"sleeps\">{}</td><td class=\"deletes\">{}</td>\
         <td class=\"act\"><a class=\"btn\" href=\"/oauth/login?next={next}\">Open</a>\
         <form method=\"post\" action=\"/home/{id}/sleep?csrf={csrf}\"><button class=\"btn ghost\">Sleep</button></form>\
         </td></tr>\n",
        escape(v.session.state.as_str()),
        escape(&v.session.tier),
        when(Some(v.last_activity)),
        when(v.sleeps_at),
        when(v.deletes_at),
    )
}

/// "New workspace" with a tier choice, or why there is none.
fn create_form(web: &WebState, csrf: &str, own: usize) -> String {
    let config = web.manager.config();
    if !config.oidc.users_can_create {
        return String::new();
    }
    let max = config.oidc.max_workspaces_per_user;
    if own >= max {
        return format!("    <p class=\"msg new\">{}</p>", escape(&limit_text(max)));
    }
    let options: String = config
        .workspaces
        .tiers
        .iter()
        .map(|(name, t)| {
            let selected = if *name == config.workspaces.default_tier { " selected" } else { "" };
            let name = escape(name);
            format!("<option value=\"{name}\"{selected}>{name} ({} CPU, {} MiB)</option>", t.cpu, t.memory_mib)
        })
        .collect();
    format!(
        "    <form class=\"new\" method=\"post\" action=\"/home/create?csrf={csrf}\">\
         <label>Tier <select name=\"tier\">{options}</select></label>\
         <button class=\"btn\">New workspace</button> <span class=\"msg\">({own} of {max})</span></form>"
    )
}

impl WebState {
    /// The workspaces `user` sees: their own, or everyone's for an admin.
    async fn visible(&self, user: &UserSession) -> Result<Vec<SessionView>, SignInError> {
        let views = self.manager.list(false).await.map_err(|e| SignInError::Store(e.to_string()))?;
        Ok(views.into_iter().filter(|v| may_open(user, v)).collect())
    }

    /// The home page of `user` (base session `sid`), with `notice` above the table (and its status).
    async fn home_page(
        &self,
        sid: &str,
        user: &UserSession,
        notice: Option<(StatusCode, String)>,
    ) -> Result<Response, SignInError> {
        let views = self.visible(user).await?;
        let csrf = self.cookies.csrf(sid);
        let rows: String = views.iter().map(|v| row(self, user, &csrf, v)).collect();
        let owner_head = if user.admin { "<th>owner</th>" } else { "" };
        let table = if views.is_empty() {
            "    <p class=\"msg\">You have no workspaces.</p>".to_string()
        } else {
            format!(
                "    <div style=\"overflow-x:auto\"><table><tr><th>workspace</th>{owner_head}<th>state</th><th>tier</th>\
                 <th>last activity (UTC)</th><th>sleeps</th><th>deleted</th><th></th></tr>\n{rows}</table></div>"
            )
        };
        let own = user.user.as_deref().map_or(0, |u| owned(&views, u));
        let (status, notice) = match notice {
            Some((status, text)) => (status, format!("    <p class=\"notice\" role=\"alert\">{}</p>\n", escape(&text))),
            None => (StatusCode::OK, String::new()),
        };
        let sign_out = format!(
            "    <form class=\"out\" method=\"post\" action=\"/oauth/logout?csrf={csrf}\">\
             <button class=\"btn ghost\">Sign out</button></form>"
        );
        let body = format!("{CSS}\n{notice}{table}\n{}\n{sign_out}\n{SCRIPT}", create_form(self, &csrf, own));
        let heading = format!("Signed in as {}", user.shown);
        let tone = if notice.is_empty() { "t-info" } else { "t-warn" };
        Ok(html(status, card_page("Your workspaces", tone, &heading, &body)))
    }
}
