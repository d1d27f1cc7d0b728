//! A session's actions on the admin page: sleep, wake, scale and delete (behind a confirm page
//! that names the verified backup it makes first), each a POST form with the sign-in's token,
//! done with the manager's own operations (as the API's handlers do).

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use wakeway_proxy::pages::escape;
use wakeway_proxy::{ActivitySource, SessionId};

use super::page::{self, Tab, admin_page};
use super::sessions::Filter;
use super::signin::{Why, form};
use super::{Admin, AdminState};
use crate::manager::{ScaleDirection, SessionView, SleepReason};
use crate::session::State as SessionState;

/// The fields of every action form.
#[derive(Deserialize)]
pub(super) struct ActionForm {
    csrf: Option<String>,
    /// `up` or `down` (scale).
    tier: Option<String>,
}

/// A hidden token field.
pub fn token(who: &Admin) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", escape(&who.csrf))
}

/// The buttons of one session's row.
pub fn buttons(admin: &AdminState, who: &Admin, filter: &Filter, v: &SessionView) -> String {
    let s = &v.session;
    if s.state == SessionState::Deleted {
        return "—".into();
    }
    let id = escape(&s.uuid);
    let back = escape(&filter.query());
    let post = |action: &str, inner: &str| {
        format!(
            "<form class=\"inline\" method=\"post\" action=\"/admin/session/{id}/{action}{back}\">{}{inner}</form>",
            token(who)
        )
    };
    let power = if s.state.is_awake() {
        post("sleep", "<button>Sleep</button>")
    } else {
        post("wake", "<button>Wake</button>")
    };
    let w = &admin.manager.config().workspaces;
    let option = |dir: &str, tier: &str| {
        let selected = if s.tier == tier { " selected" } else { "" };
        format!("<option value=\"{dir}\"{selected}>{}</option>", escape(tier))
    };
    let scale = post(
        "scale",
        &format!(
            "<select name=\"tier\" aria-label=\"tier\">{}{}</select><button>Scale</button>",
            option("down", &w.scale_down_tier),
            option("up", &w.scale_up_tier)
        ),
    );
    format!("{power}{scale}<a class=\"button danger\" href=\"/admin/session/{id}/delete\">Delete…</a>")
}

/// The signed-in admin and the session of a form that may be acted on, or the page saying why not.
async fn checked(
    admin: &AdminState,
    headers: &HeaderMap,
    id: &str,
    body: Result<Form<ActionForm>, FormRejection>,
) -> Result<(SessionId, ActionForm), Response> {
    let Some(who) = admin.admin(headers).await else { return Err(form(Why::Expired, admin.oidc.is_some())) };
    let body = body.map(|Form(f)| f).unwrap_or(ActionForm { csrf: None, tier: None });
    if !admin.form_allowed(&who, headers, body.csrf.as_deref()) {
        return Err(page::refused());
    }
    let id = SessionId::parse(id).ok_or_else(|| not_a_session(id))?;
    Ok((id, body))
}

fn not_a_session(id: &str) -> Response {
    page::message(
        StatusCode::NOT_FOUND,
        "No such workspace",
        &format!("{id:?} is not a workspace id."),
        ("/admin", "Sessions"),
    )
}

/// Back to the sessions with the filters kept, saying what was done.
fn done(filter: &Filter, action: &str, id: &SessionId) -> Response {
    let query = filter.query();
    let sep = if query.is_empty() { '?' } else { '&' };
    page::see_other(&format!("/admin{query}{sep}done={action}&id={}", id.as_str()), None)
}

/// `POST /admin/session/{id}/sleep`.
pub(super) async fn sleep(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(filter): Query<Filter>,
    body: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, Response> {
    let (id, _) = checked(&admin, &headers, &id, body).await?;
    admin.manager.sleep(&id, SleepReason::Api).await.map_err(|e| page::failed(e, "/admin"))?;
    Ok(done(&filter, "sleep", &id))
}

/// `POST /admin/session/{id}/wake`: started, not waited for (the table shows it come up).
pub(super) async fn wake(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(filter): Query<Filter>,
    body: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, Response> {
    let (id, _) = checked(&admin, &headers, &id, body).await?;
    // As the API's wake without `wait`: the activity counts, the wake runs in the background.
    let woken = admin.manager.wake_in_background(&id, ActivitySource::ApiWake).await;
    woken.map_err(|e| page::failed(e, "/admin"))?;
    Ok(done(&filter, "wake", &id))
}

/// `POST /admin/session/{id}/scale` with `tier=up|down`.
pub(super) async fn scale(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(filter): Query<Filter>,
    body: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, Response> {
    let (id, body) = checked(&admin, &headers, &id, body).await?;
    let Some(direction) = body.tier.as_deref().and_then(ScaleDirection::parse) else {
        let why = "Choose the tier to scale to.";
        return Err(page::message(StatusCode::BAD_REQUEST, "Pick a tier", why, ("/admin", "Sessions")));
    };
    admin.manager.scale(&id, direction).await.map_err(|e| page::failed(e, "/admin"))?;
    Ok(done(&filter, "scale", &id))
}

/// `GET /admin/session/{id}/delete`: what deleting does, and the button that does it.
pub(super) async fn confirm_delete(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(who) = admin.admin(&headers).await else { return form(Why::Expired, admin.oidc.is_some()) };
    let Some(sid) = SessionId::parse(&id) else { return not_a_session(&id) };
    let v = match admin.manager.view(&sid).await {
        Ok(v) => v,
        Err(e) => return page::failed(e, "/admin"),
    };
    let s = &v.session;
    let body = format!(
        "    <p class=\"msg\">Workspace <code>{id}</code> of <b>{user}</b> ({state}).</p>\n{}\n\
         <form method=\"post\" action=\"/admin/session/{id}/delete\">{}\
         <p><button class=\"danger primary\">Back up, verify, then delete</button> \
         <a class=\"button\" href=\"/admin\">Cancel</a></p></form>",
        backup_plan(&admin, s),
        token(&who),
        id = escape(&s.uuid),
        user = escape(&s.user_id),
        state = escape(s.state.as_str()),
    );
    admin_page("Delete this workspace?", Tab::Sessions, &who.corner(), &body)
}

/// The backup a deletion makes: where its zip goes, how long it is kept, the `keep` pin.
fn backup_plan(admin: &AdminState, s: &crate::session::Session) -> String {
    let config = admin.manager.config();
    let name = crate::backup::backup_file_name(&s.uuid, admin.manager.now());
    let place = if admin.manager.backend_kind() == "local" {
        format!("<code>{}</code>", escape(&config.backup_dir().join(&name).display().to_string()))
    } else {
        format!("the shared backup volume, as <code>{}</code>", escape(&name))
    };
    let retention = wakeway_config::format_duration(config.lifecycle.backup_retention);
    let keep = if s.policy.keep {
        "<li>This workspace is pinned (<code>keep</code>): the idle policy never deletes it, but this delete does.</li>"
    } else {
        ""
    };
    format!(
        "    <ul class=\"msg\"><li>wakeway stops the workspace and backs up its folder and home to {place} \
         (named by the time the backup starts).</li><li>The zip is read back and verified; only then are the \
         workspace's files deleted. If the backup fails, nothing is deleted and the session shows \
         <code>backup_failed</code>.</li><li>The backup is kept {retention} (mark it <code>keep</code> on the \
         Backups tab to keep it longer).</li>{keep}</ul>"
    )
}

/// `POST /admin/session/{id}/delete`: back up, verify, delete (waits for all three).
pub(super) async fn delete(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, Response> {
    let (id, _) = checked(&admin, &headers, &id, body).await?;
    admin.manager.delete(&id, true).await.map_err(|e| page::failed(e, "/admin"))?;
    Ok(done(&Filter::default(), "delete", &id))
}
