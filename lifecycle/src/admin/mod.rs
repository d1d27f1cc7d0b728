//! The admin page at `<public_url>/admin`: every session with its state, activity and problems
//! (filters and sort in the query string, refreshed every 5 s by a small script, working without
//! it), the actions sleep, wake, scale and delete (after a confirm that names the backup it makes),
//! the backups with verify and download, and what sleeping saved (an SVG chart drawn here from
//! `/usage`'s report). Plain HTML forms served by the binary: no build step, no CDN.
//!
//! Signed in with an API key once (`POST /admin/login`, then a signed host-only cookie, see
//! `cookie`), or, with `workspace_auth = "oidc"`, by a base-host session of an admin. Every form
//! carries a token bound to the sign-in and is refused from another origin.

mod actions;
mod backups;
mod chart;
mod cookie;
mod page;
mod sessions;
mod signin;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use http::HeaderMap;

use crate::api::ApiKeys;
use crate::manager::Manager;
use crate::store::Store;
use crate::web::forms;
use crate::web::session::{Cookies, Records};
use cookie::AdminCookies;
use page::Corner;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    manager: Manager,
    keys: Arc<ApiKeys>,
    cookies: Arc<AdminCookies>,
    /// The base host's sign-in (oidc mode): its admins need no API key.
    oidc: Option<(Arc<Cookies>, Records)>,
}

/// Whoever is signed in to the admin page.
pub struct Admin {
    /// How the page names them.
    name: String,
    /// The token of the forms shown to them.
    csrf: String,
}

impl Admin {
    fn corner(&self) -> Corner<'_> {
        Corner { name: &self.name, csrf: &self.csrf }
    }
}

/// The admin routes, mounted on the base host beside the API in every `workspace_auth` mode.
pub fn router(manager: Manager, keys: Arc<ApiKeys>, store: Arc<dyn Store>, cookie_secret: &[u8]) -> Router {
    let config = manager.config();
    let secure = config.server.public_url.as_ref().is_some_and(|u| u.scheme == "https");
    let oidc = (config.access.workspace_auth == wakeway_config::WorkspaceAuth::Oidc)
        .then(|| (Arc::new(Cookies::new(cookie_secret, secure)), Records(store)));
    let state = AdminState { manager, keys, cookies: Arc::new(AdminCookies::new(cookie_secret, secure)), oidc };
    Router::new()
        .route("/admin", get(sessions::page))
        .route("/admin/", get(|| async { page::see_other("/admin", None) }))
        .route("/admin/sessions.json", get(sessions::json))
        .route("/admin/login", post(signin::login))
        .route("/admin/logout", post(signin::logout))
        .route("/admin/session/{id}/sleep", post(actions::sleep))
        .route("/admin/session/{id}/wake", post(actions::wake))
        .route("/admin/session/{id}/scale", post(actions::scale))
        .route("/admin/session/{id}/delete", get(actions::confirm_delete).post(actions::delete))
        .route("/admin/backups", get(backups::page))
        .route("/admin/backups/{id}/verify", post(backups::verify))
        .route("/admin/backups/{id}/download", get(backups::download))
        .route("/admin/usage", get(chart::page))
        .with_state(state)
}

impl AdminState {
    fn now_ms(&self) -> i64 {
        self.manager.now().timestamp_millis()
    }

    /// The admin signed in by `headers`: a valid admin cookie, else (oidc mode) a base session
    /// whose person is an admin. A store failure reading the base session counts as not signed in.
    async fn admin(&self, headers: &HeaderMap) -> Option<Admin> {
        if let Some(value) = self.cookies.signed_in(headers, self.now_ms()) {
            return Some(Admin { name: "API key".into(), csrf: self.cookies.csrf(&value) });
        }
        let (cookies, records) = self.oidc.as_ref()?;
        let sid = cookies.user(headers)?;
        let user = records.user(&sid, self.now_ms()).await.ok().flatten().filter(|u| u.admin)?;
        Some(Admin { name: user.shown, csrf: self.cookies.csrf(&format!("oidc:{sid}")) })
    }

    /// A form of this page: sent from this origin (when the browser says where from) with the
    /// sign-in's token.
    fn form_allowed(&self, admin: &Admin, headers: &HeaderMap, csrf: Option<&str>) -> bool {
        forms::same_origin(headers, &self.public_origin()) && csrf.is_some_and(|t| forms::same(t, &admin.csrf))
    }

    /// `scheme://host[:port]` of the base host as configured.
    fn public_origin(&self) -> String {
        let (scheme, host, port) = self.manager.config().public_base();
        port.map_or_else(|| format!("{scheme}://{host}"), |p| format!("{scheme}://{host}:{p}"))
    }
}

#[cfg(test)]
mod oidc_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use http::header;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use wakeway_config::Config;
    use wakeway_proxy::{ManualClock, ProxyStats};

    use crate::web::session::{Cookies, Records, UserSession};

    /// In oidc mode a base session of an admin opens the admin page without a key; anyone else
    /// signed in there gets the key's sign-in form.
    #[tokio::test]
    async fn an_oidc_admin_needs_no_key_and_others_get_the_sign_in_form() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_owned();
        config.access.api_keys = vec!["test-key-0123456789abcdef".into()];
        config.access.workspace_auth = wakeway_config::WorkspaceAuth::Oidc;
        config.oidc.issuer = "http://127.0.0.1:9/".into();
        config.workspaces.command = Some("exec sleep 1000 {port}".into());
        config.local.isolation = wakeway_config::Isolation::Off;
        let now = 1_760_000_000_000;
        let clock = Arc::new(ManualClock::new(now));
        let stats = Arc::new(ProxyStats::default());
        let built = crate::build(Arc::new(config), clock, stats, tokio::runtime::Handle::current()).await.unwrap();
        let (records, cookies) = (Records(built.store.clone()), Cookies::new(&built.cookie_secret, false));
        let mut pages = Vec::new();
        for (sid, admin) in [("admin-sid", true), ("user-sid", false)] {
            let user = UserSession {
                user: Some(format!("{sid}@example.com")),
                shown: format!("{sid}@example.com"),
                admin,
                id_token: String::new(),
                opened: Vec::new(),
                expires_ms: now + 3_600_000,
            };
            records.put_user(sid, &user, Duration::from_secs(3600)).await.unwrap();
            let cookie = cookies.set_user(sid, Duration::from_secs(3600));
            let req = http::Request::get("/admin")
                .header(header::COOKIE, cookie.split(';').next().unwrap())
                .body(Body::empty())
                .unwrap();
            let response = built.wakeway.router.clone().oneshot(req).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            pages.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        assert!(pages[0].contains("admin-sid@example.com") && pages[0].contains("No sessions yet"), "{}", pages[0]);
        assert!(pages[1].contains("action=\"/admin/login\"") && !pages[1].contains("No sessions yet"), "{}", pages[1]);
    }
}
