//! The sessions tab: every session with state, tier, last activity and its source, when it sleeps
//! and is deleted, open connections and its last error; `backup_failed` and failing sessions on
//! top, then sorted as asked; filtered by state and user. `sessions.json` gives the same rows to
//! the page's script (a refresh every 5 s; the page works without it).

use std::cmp::Ordering;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use wakeway_proxy::auth::percent_encode;
use wakeway_proxy::pages::escape;

use super::page::{self, Tab, admin_page};
use super::signin::{Why, form};
use super::{Admin, AdminState};
use crate::manager::{LifecycleError, SessionView};
use crate::session::State as SessionState;

/// The columns a table can be sorted by.
const COLUMNS: [(&str, &str); 8] = [
    ("user", "user"),
    ("state", "state"),
    ("tier", "tier"),
    ("activity", "last activity"),
    ("sleeps", "sleeps at"),
    ("deletes", "deletes at"),
    ("open", "open"),
    ("created", "created"),
];

/// The query string: filters, sort and what was just done.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    pub state: Option<String>,
    pub user: Option<String>,
    pub sort: Option<String>,
    pub dir: Option<String>,
    /// The action just done (`sleep`, `wake`, `scale`, `delete`) and on which session.
    pub done: Option<String>,
    pub id: Option<String>,
}

impl Filter {
    fn state(&self) -> Option<&str> {
        self.state.as_deref().filter(|s| SessionState::ALL.iter().any(|k| k.as_str() == *s))
    }

    fn user(&self) -> Option<&str> {
        self.user.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }

    fn sort(&self) -> &str {
        self.sort.as_deref().filter(|s| COLUMNS.iter().any(|(k, _)| k == s)).unwrap_or("activity")
    }

    fn descending(&self) -> bool {
        match self.dir.as_deref() {
            Some("asc") => false,
            Some("desc") => true,
            _ => matches!(self.sort(), "activity" | "open" | "created"),
        }
    }

    /// The filters and sort as a query string (`?…`, empty when none), to come back to.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.state() {
            parts.push(format!("state={s}"));
        }
        if let Some(u) = self.user() {
            parts.push(format!("user={}", percent_encode(u)));
        }
        if self.sort.is_some() {
            parts.push(format!("sort={}&dir={}", self.sort(), if self.descending() { "desc" } else { "asc" }));
        }
        if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
    }

    fn keeps(&self, v: &SessionView) -> bool {
        self.state().is_none_or(|s| v.session.state.as_str() == s)
            && self.user().is_none_or(|u| v.session.user_id.to_lowercase().contains(&u.to_lowercase()))
    }
}

/// A session needing a look: its backup failed, or it keeps an error.
fn troubled(v: &SessionView) -> bool {
    v.session.state == SessionState::BackupFailed
        || v.session.state == SessionState::Failed
        || v.session.last_error.is_some()
}

fn compare(a: &SessionView, b: &SessionView, column: &str) -> Ordering {
    let (x, y) = (&a.session, &b.session);
    match column {
        "user" => x.user_id.cmp(&y.user_id),
        "state" => x.state.as_str().cmp(y.state.as_str()),
        "tier" => x.tier.cmp(&y.tier),
        "sleeps" => a.sleeps_at.cmp(&b.sleeps_at),
        "deletes" => a.deletes_at.cmp(&b.deletes_at),
        "open" => a.open_connections.cmp(&b.open_connections),
        "created" => x.created_at.cmp(&y.created_at),
        _ => a.last_activity.cmp(&b.last_activity),
    }
}

/// The sessions `filter` keeps, troubled ones first, then in its order (ties by id, so the
/// order never flickers between refreshes).
pub fn select(mut views: Vec<SessionView>, filter: &Filter) -> Vec<SessionView> {
    views.retain(|v| filter.keeps(v));
    let (column, descending) = (filter.sort(), filter.descending());
    views.sort_by(|a, b| {
        let by_column = compare(a, b, column);
        troubled(b)
            .cmp(&troubled(a))
            .then(if descending { by_column.reverse() } else { by_column })
            .then_with(|| a.session.uuid.cmp(&b.session.uuid))
    });
    views
}

/// A time as the table shows it (UTC).
pub fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "—".into(), |t| t.format("%d %b %H:%M").to_string())
}

/// The sessions the filter asks for (deleted ones only when filtering on `deleted`).
async fn load(admin: &AdminState, filter: &Filter) -> Result<Vec<SessionView>, LifecycleError> {
    let views = admin.manager.list(filter.state() == Some("deleted")).await?;
    Ok(select(views, filter))
}

/// `GET /admin`: the sign-in form, or the sessions.
pub(super) async fn page(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Response {
    let Some(who) = admin.admin(&headers).await else {
        let presented = wakeway_proxy::auth::cookie_values(&headers, admin.cookies.name()).any(|v| !v.is_empty());
        return form(if presented { Why::Expired } else { Why::Fresh }, admin.oidc.is_some());
    };
    let views = match admin.manager.list(true).await {
        Ok(all) => all,
        Err(e) => return page::failed(e, "/admin"),
    };
    let any = views.iter().any(|v| v.session.state != SessionState::Deleted);
    let total = views.iter().filter(|v| v.session.state != SessionState::Deleted).count();
    let views = select(
        views
            .into_iter()
            .filter(|v| filter.state() == Some("deleted") || v.session.state != SessionState::Deleted)
            .collect(),
        &filter,
    );
    let body = [
        flash(&filter),
        filters(&filter),
        table(&admin, &who, &filter, &views, any),
        format!("    <p class=\"meta\">{} of {total} sessions shown · refreshed every 5 s</p>", views.len()),
        format!("    <script>{}</script>", include_str!("refresh.js")),
    ]
    .join("\n");
    admin_page("Sessions", Tab::Sessions, &who.corner(), &body)
}

/// `GET /admin/sessions.json`: the table's rows for the page's script.
pub(super) async fn json(
    State(admin): State<AdminState>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Response {
    let Some(who) = admin.admin(&headers).await else {
        return (StatusCode::UNAUTHORIZED, Json(serde_json::json!({"error": "sign in at /admin"}))).into_response();
    };
    match load(&admin, &filter).await {
        Ok(views) => Json(serde_json::json!({ "count": views.len(), "rows": rows(&admin, &who, &filter, &views) }))
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": e.to_string()}))).into_response(),
    }
}

fn flash(filter: &Filter) -> String {
    let id = filter.id.as_deref().filter(|id| wakeway_proxy::SessionId::parse(id).is_some()).unwrap_or("");
    let text = match filter.done.as_deref() {
        Some("sleep") => format!("Workspace {id} is asleep; its next request wakes it."),
        Some("wake") => format!("Workspace {id} is waking."),
        Some("scale") => format!("Workspace {id} has its new tier."),
        Some("delete") => format!("Workspace {id} was backed up to a verified zip, then deleted."),
        _ => return String::new(),
    };
    format!("    <p class=\"flash\" role=\"status\">{}</p>", escape(&text))
}

fn filters(filter: &Filter) -> String {
    let mut states = String::from("<option value=\"\">any state</option>");
    for s in SessionState::ALL {
        let selected = if filter.state() == Some(s.as_str()) { " selected" } else { "" };
        states.push_str(&format!("<option{selected}>{}</option>", s.as_str()));
    }
    let keep = |name: &str, value: Option<&str>| {
        value.map_or(String::new(), |v| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", escape(v)))
    };
    format!(
        "    <form class=\"filters\" method=\"get\" action=\"/admin\">\
         <label>State<select name=\"state\">{states}</select></label>\
         <label>User contains<input name=\"user\" value=\"{}\" placeholder=\"e.g. ada\"></label>\
         {}{}<button type=\"submit\">Filter</button> <a class=\"button\" href=\"/admin\">Clear</a></form>",
        escape(filter.user().unwrap_or("")),
        keep("sort", filter.sort.as_deref().map(|_| filter.sort())),
        keep("dir", filter.dir.as_deref().map(|_| if filter.descending() { "desc" } else { "asc" })),
    )
}

/// The table (or what to do when there is nothing to show).
fn table(admin: &AdminState, who: &Admin, filter: &Filter, views: &[SessionView], any: bool) -> String {
    if !any && filter.state() != Some("deleted") {
        let curl = format!(
            "curl -X POST {}/session/create \\\n  -H 'X-API-Key: &lt;your API key&gt;' \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"user_id\": \"ada@example.com\"}}'",
            escape(&admin.public_origin())
        );
        return format!(
            "    <div class=\"empty\"><p><b>No sessions yet</b> — create one with <code>POST /session/create</code>:</p>\
             <pre>{curl}</pre><p>It shows up here within 5 seconds.</p></div>"
        );
    }
    if views.is_empty() {
        return "    <div class=\"empty\"><p>No session matches these filters.</p><a class=\"button\" href=\"/admin\">Clear the filters</a></div>".into();
    }
    let mut head = String::from("<th>workspace</th>");
    for (key, label) in COLUMNS.iter().filter(|(k, _)| *k != "created") {
        let on = filter.sort() == *key;
        let dir = if on && !filter.descending() {
            "desc"
        } else if on {
            "asc"
        } else {
            "desc"
        };
        let link = Filter { sort: Some((*key).into()), dir: Some(dir.into()), ..filter.clone() };
        let arrow = if on { if filter.descending() { " ↓" } else { " ↑" } } else { "" };
        let class = if on { " class=\"on\"" } else { "" };
        head.push_str(&format!("<th><a{class} href=\"/admin{}\">{label}{arrow}</a></th>", escape(&link.query())));
    }
    head.push_str("<th>last error</th><th>actions</th>");
    format!(
        "    <div class=\"scroll\"><table id=\"sessions\"><thead><tr>{head}</tr></thead>\n<tbody id=\"rows\">{}</tbody></table></div>",
        rows(admin, who, filter, views)
    )
}

/// The table's rows.
fn rows(admin: &AdminState, who: &Admin, filter: &Filter, views: &[SessionView]) -> String {
    views.iter().map(|v| row(admin, who, filter, v)).collect()
}

fn row(admin: &AdminState, who: &Admin, filter: &Filter, v: &SessionView) -> String {
    let s = &v.session;
    let class = if troubled(v) { " class=\"bad\"" } else { "" };
    let error = s.last_error.as_deref().map_or("—".into(), escape);
    format!(
        "<tr{class} data-id=\"{id}\"><td><code>{id}</code></td><td>{}</td><td><span class=\"pill {state}\">{state}</span></td>\
         <td>{}</td><td>{} <small>{}</small></td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"err\">{error}</td>\
         <td class=\"acts\">{}</td></tr>\n",
        escape(&s.user_id),
        escape(&s.tier),
        when(Some(v.last_activity)),
        escape(v.activity_source.as_str()),
        when(v.sleeps_at),
        when(v.deletes_at),
        v.open_connections,
        super::actions::buttons(admin, who, filter, v),
        id = escape(&s.uuid),
        state = escape(s.state.as_str()),
    )
}
