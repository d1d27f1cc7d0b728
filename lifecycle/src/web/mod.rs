//! The base host's sign-in for `workspace_auth = "oidc"`. A person opening a workspace without a
//! cookie is sent (by the proxy) to `GET /oauth/login?next=<workspace URL>`; with a base-host
//! session they go straight on, else to the provider; `GET /oauth/callback` finishes the sign-in
//! and hands over to the workspace through a one-time sign-in token (which the proxy exchanges
//! for the workspace's host-only cookie, as in token mode). `POST /oauth/logout` (a form with the
//! session's CSRF token; `GET` shows a "Sign out?" page with that form, so old links still work)
//! ends the base session, the cookies of the workspaces it opened (the proxy then closes their
//! open connections too), and the provider's session when it offers RP-initiated logout. `GET /`
//! is the signed-in person's home page (see `home`).
//!
//! Where a person goes afterwards is always rebuilt from the session id (`config.workspace_url`)
//! and a path: `next` can name a workspace, never another site.

pub mod forms;
mod home;
pub mod oidc;
pub mod pages;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use wakeway_proxy::SessionId;
use wakeway_proxy::auth::percent_encode;

use crate::manager::{Component, LifecycleError, Manager};
use crate::store::{Store, StoreError};
use oidc::{Identity, OidcError, Provider};
use pages::SignInError;
use session::{Cookies, LoginAttempt, Records, UserSession, digest, random_hex};

/// What the sign-in handlers share.
#[derive(Clone)]
pub struct WebState {
    manager: Manager,
    provider: Arc<Provider>,
    cookies: Arc<Cookies>,
    records: Records,
    /// Held while the home page creates a workspace (the per-user limit is checked inside).
    creating: Arc<tokio::sync::Mutex<()>>,
}

/// The sign-in routes (mounted on the base host beside the API when `workspace_auth = "oidc"`).
pub fn router(manager: Manager, store: Arc<dyn Store>, cookie_secret: &[u8]) -> Router {
    let config = manager.config();
    let secure = config.server.public_url.as_ref().is_some_and(|u| u.scheme == "https");
    let state = WebState {
        provider: Arc::new(Provider::new(config)),
        cookies: Arc::new(Cookies::new(cookie_secret, secure)),
        records: Records(store),
        creating: Arc::default(),
        manager,
    };
    for result in pages::LOGIN_RESULTS {
        state.manager.metrics().oidc_logins.with_label_values(&[result]);
    }
    Router::new()
        .route("/oauth/login", get(login))
        .route("/oauth/callback", get(callback))
        .route("/oauth/logout", get(confirm_logout).post(logout))
        .route("/oauth/logged-out", get(|| async { pages::signed_out() }))
        .route("/", get(home::home))
        .route("/home/state", get(home::state))
        .route("/home/create", post(home::create))
        .route("/home/{id}/sleep", post(home::sleep))
        .with_state(state)
}

/// `GET /oauth/login`.
#[derive(Debug, Deserialize)]
struct LoginQuery {
    /// The workspace URL to land on.
    next: Option<String>,
    /// `login`: ask the provider for the account again (switch account).
    prompt: Option<String>,
}

/// `GET /oauth/callback`: the provider's answer.
#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

/// A workspace and the path (with query) to land on.
type Target = (SessionId, String);

impl From<StoreError> for SignInError {
    fn from(e: StoreError) -> Self {
        SignInError::Store(e.to_string())
    }
}

async fn login(
    State(web): State<WebState>,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    let answer = async {
        let Query(q) = query.map_err(|e| SignInError::BadTarget(e.body_text()))?;
        let (_, base, _) = web.manager.config().public_base();
        let target = q.next.as_deref().map(|n| parse_next(&base, n)).transpose()?;
        let fresh = q.prompt.as_deref() == Some("login");
        if !fresh && let Some((sid, user)) = web.current_user(&headers).await? {
            return web.hand_off(&sid, user, target).await;
        }
        web.start(target, fresh).await
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

async fn callback(
    State(web): State<WebState>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    let answer = match query {
        Ok(Query(q)) => web.finish(&headers, q).await,
        Err(_) => Err(SignInError::Expired),
    };
    answer.unwrap_or_else(|e| {
        web.count_login(e.login_result());
        e.into_response()
    })
}

/// `GET /oauth/logout`: "Sign out?" with the form that does it (a link cannot sign anyone out).
async fn confirm_logout(State(web): State<WebState>, headers: HeaderMap) -> Response {
    match web.current_user(&headers).await {
        Ok(Some((sid, user))) => pages::sign_out_confirm(&user.shown, &web.cookies.csrf(&sid)),
        Ok(None) => redirect("/oauth/logged-out", &[]),
        Err(e) => e.into_response(),
    }
}

/// `POST /oauth/logout?csrf=`: end the base session, the cookies of the workspaces opened with it,
/// and the provider's session (when it offers RP-initiated logout).
async fn logout(State(web): State<WebState>, headers: HeaderMap, Query(q): Query<home::Csrf>) -> Response {
    let Some(sid) = web.cookies.user(&headers) else { return redirect("/oauth/logged-out", &[]) };
    if !web.form_allowed(&headers, &sid, q.csrf.as_deref()) {
        return pages::not_from_home();
    }
    let user = web.records.take_user(&sid).await.ok().flatten();
    let mut location = "/oauth/logged-out".to_string();
    if let Some(user) = user {
        for id in user.opened.iter().filter_map(|id| SessionId::parse(id)) {
            if let Err(e) = web.manager.revoke_cookies(&id).await {
                tracing::warn!(session = %id, "sign-out could not end the workspace's cookies: {e}");
            }
        }
        let after = format!("{}/oauth/logged-out", web.public_url());
        if let Some(url) = web.provider.logout_url(&user.id_token, &after).await {
            location = url;
        }
        tracing::info!(user = %user.shown, "signed out");
    }
    redirect(&location, &[web.cookies.clear_user()])
}

/// `next` as a workspace and path: `<scheme>://vs-code-<id>.<base host>[:port]<path>`. Scheme
/// and port are not trusted (the target is rebuilt from the configuration), so no `next` sends
/// anyone to another site.
fn parse_next(base_host: &str, next: &str) -> Result<Target, SignInError> {
    let bad = || SignInError::BadTarget(format!("{next:?} is not the address of a workspace."));
    let rest = next.strip_prefix("https://").or_else(|| next.strip_prefix("http://")).ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(bad());
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_ascii_lowercase();
    let id = host
        .strip_suffix(&format!(".{base_host}"))
        .and_then(|label| label.strip_prefix("vs-code-"))
        .and_then(SessionId::parse)
        .ok_or_else(bad)?;
    if path.len() > 2048 || path.contains('\\') || path.contains('#') || !path.is_ascii() {
        return Err(bad());
    }
    Ok((id, path.to_string()))
}

/// 302 to `location` setting `cookies`.
fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

impl WebState {
    fn public_url(&self) -> String {
        self.manager.config().server.public_url.as_ref().map(ToString::to_string).unwrap_or_default()
    }

    /// Whether a POST is a form of our own pages: the browser's `Origin` (when it sends one) is
    /// public_url, and `csrf` is base session `sid`'s token.
    fn form_allowed(&self, headers: &HeaderMap, sid: &str, csrf: Option<&str>) -> bool {
        forms::same_origin(headers, &self.public_url()) && csrf.is_some_and(|c| forms::same(c, &self.cookies.csrf(sid)))
    }

    /// One more sign-in with the provider, by result (`wakeway_oidc_logins_total`).
    fn count_login(&self, result: &str) {
        self.manager.metrics().oidc_logins.with_label_values(&[result]).inc();
    }

    fn now_ms(&self) -> i64 {
        self.manager.now().timestamp_millis()
    }

    /// `/oauth/login` for `target` (`login`: asking for the account again).
    fn login_url(&self, target: Option<&Target>, login: bool) -> String {
        let mut url = "/oauth/login".to_string();
        if let Some((id, path)) = target {
            let next = format!("{}{path}", self.manager.config().workspace_url(id.as_str()));
            url = format!("{url}?next={}", percent_encode(&next));
        }
        if login {
            url.push(if target.is_some() { '&' } else { '?' });
            url.push_str("prompt=login");
        }
        url
    }

    /// The base session in the request's cookie, if valid.
    async fn current_user(&self, headers: &HeaderMap) -> Result<Option<(String, UserSession)>, SignInError> {
        let Some(sid) = self.cookies.user(headers) else { return Ok(None) };
        Ok(self.records.user(&sid, self.now_ms()).await?.map(|u| (sid, u)))
    }

    /// Send the browser to the provider, keeping the attempt (single use) in the store.
    async fn start(&self, target: Option<Target>, login: bool) -> Result<Response, SignInError> {
        let started = self.provider.start(login).await.map_err(|e| {
            let e = self.provider_failed(e, target.as_ref());
            self.count_login(e.login_result());
            e
        })?;
        self.manager.set_problem(Component::Oidc, None);
        let binding = random_hex();
        let ttl = self.manager.config().oidc.login_ttl;
        let attempt = LoginAttempt {
            verifier: started.verifier,
            nonce: started.nonce,
            binding: digest(&binding),
            target: target.map(|(id, path)| (id.as_str().to_string(), path)),
            expires_ms: self.now_ms() + ttl.as_millis() as i64,
        };
        self.records.put_login(&started.state, &attempt, ttl).await?;
        Ok(redirect(&started.url, &[self.cookies.set_login(&binding, ttl)]))
    }

    /// A provider failure as a page (the details in the log).
    fn provider_failed(&self, e: OidcError, target: Option<&Target>) -> SignInError {
        let retry = self.login_url(target, false);
        tracing::warn!(issuer = %self.provider.issuer(), "OIDC sign-in failed: {e}");
        match e {
            OidcError::Unreachable(why) => {
                self.manager.set_problem(Component::Oidc, Some(format!("the OIDC provider: {why}")));
                let host = self.provider.issuer().split("://").nth(1).unwrap_or_default();
                let host = host.split('/').next().unwrap_or_default().to_string();
                SignInError::ProviderDown { host, retry }
            }
            OidcError::Refused(code) => SignInError::Refused { code, retry },
            OidcError::Invalid(_) => SignInError::Unverified,
        }
    }

    /// The provider's answer: the attempt taken (once), checked, the code exchanged, the ID token
    /// verified, a base session made; then on to the workspace.
    async fn finish(&self, headers: &HeaderMap, q: CallbackQuery) -> Result<Response, SignInError> {
        let attempt = match &q.state {
            Some(state) => self.records.take_login(state, self.now_ms()).await?,
            None => None,
        };
        let target = attempt
            .as_ref()
            .and_then(|a| a.target.as_ref())
            .and_then(|(id, path)| Some((SessionId::parse(id)?, path.clone())));
        if let Some(error) = q.error {
            let retry = self.login_url(target.as_ref(), false);
            return Err(match error.as_str() {
                "access_denied" => SignInError::Denied { retry },
                _ => SignInError::Refused { code: error, retry },
            });
        }
        let attempt = attempt.ok_or(SignInError::Expired)?;
        let bound = self.cookies.login(headers).map(|b| digest(&b));
        let same: bool = bound.is_some_and(|b| forms::same(&b, &attempt.binding));
        if !same {
            return Err(SignInError::OtherBrowser);
        }
        // RFC 9207: a provider that names itself in the answer must be ours (mix-up defence).
        if q.iss.as_deref().is_some_and(|iss| iss != self.provider.issuer()) {
            tracing::warn!(iss = ?q.iss, "OIDC callback from another issuer refused");
            return Err(SignInError::Unverified);
        }
        let code = q.code.ok_or(SignInError::Expired)?;
        let now = self.manager.now();
        let identity = self
            .provider
            .finish(&code, &attempt.verifier, &attempt.nonce, now)
            .await
            .map_err(|e| self.provider_failed(e, target.as_ref()))?;
        self.manager.set_problem(Component::Oidc, None);
        self.signed_in(identity, target).await
    }

    /// A verified `identity`: its base session (and cookie), then on to `target` (counted in
    /// `wakeway_oidc_logins_total` as ok, or as why it may not go there).
    async fn signed_in(&self, identity: Identity, target: Option<Target>) -> Result<Response, SignInError> {
        let config = &self.manager.config().oidc;
        let Some(user) = identity.user.clone() else {
            return Err(SignInError::NoUser {
                shown: identity.shown,
                claim: config.user_claim.clone(),
                switch: self.login_url(target.as_ref(), true),
            });
        };
        let admin = config.admin_users.contains(&user)
            || (!config.admin_group.is_empty() && identity.groups.contains(&config.admin_group));
        let session = UserSession {
            user: Some(user),
            shown: identity.shown,
            admin,
            id_token: identity.id_token,
            opened: Vec::new(),
            expires_ms: self.now_ms() + config.session_ttl.as_millis() as i64,
        };
        let sid = random_hex();
        self.records.put_user(&sid, &session, config.session_ttl).await?;
        tracing::info!(user = %session.shown, admin, "signed in with the OIDC provider");
        let handed = self.hand_off(&sid, session, target).await;
        self.count_login(handed.as_ref().map_or_else(SignInError::login_result, |_| "ok"));
        let mut response = handed.unwrap_or_else(IntoResponse::into_response);
        for cookie in [self.cookies.set_user(&sid, config.session_ttl), self.cookies.clear_login()] {
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
        }
        Ok(response)
    }

    /// A signed-in person on to `target`: a one-time sign-in link when they may open it (the
    /// owner, or an admin), else the 403 page naming who is signed in.
    async fn hand_off(
        &self,
        sid: &str,
        mut user: UserSession,
        target: Option<Target>,
    ) -> Result<Response, SignInError> {
        let Some((id, path)) = target else { return Ok(redirect("/", &[])) };
        let owner = match self.manager.view(&id).await {
            Ok(view) => view.session.user_id,
            Err(LifecycleError::NotFound(_) | LifecycleError::Deleted(_)) => {
                return Err(SignInError::NoWorkspace(id.as_str().to_string()));
            }
            Err(e) => return Err(SignInError::Store(e.to_string())),
        };
        if !user.admin && user.user.as_deref() != Some(owner.as_str()) {
            return Err(SignInError::WrongUser {
                shown: user.shown,
                id: id.as_str().to_string(),
                switch: self.login_url(Some(&(id, path)), true),
            });
        }
        let (url, _) = self.manager.mint_token_at(&id, &path).await.map_err(|e| match e {
            LifecycleError::NotFound(_) | LifecycleError::Deleted(_) => {
                SignInError::NoWorkspace(id.as_str().to_string())
            }
            other => SignInError::Store(other.to_string()),
        })?;
        if !user.opened.iter().any(|o| o == id.as_str()) {
            user.opened.push(id.as_str().to_string());
            let left = (user.expires_ms - self.now_ms()).max(1000) as u64;
            self.records.put_user(sid, &user, std::time::Duration::from_millis(left)).await?;
        }
        Ok(redirect(&url, &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_names_a_workspace_and_a_path_never_another_site() {
        let (id, path) = parse_next("example.com", "https://vs-code-1234abcd.example.com/a/b?c=d").unwrap();
        assert_eq!((id.as_str(), path.as_str()), ("1234abcd", "/a/b?c=d"));
        let (_, path) = parse_next("example.com", "http://VS-CODE-1234abcd.example.com:8080").unwrap();
        assert_eq!(path, "/");
        for bad in [
            "https://evil.example/",
            "https://vs-code-1234abcd.example.com.evil.example/",
            "https://vs-code-1234abcd.evil.example/",
            "https://x@vs-code-1234abcd.example.com/",
            "//vs-code-1234abcd.example.com/",
            "javascript:alert(1)",
            "https://vs-code-../etc.example.com/",
            "https://vs-code-1234abcd.example.com/a\\b",
        ] {
            assert!(matches!(parse_next("example.com", bad), Err(SignInError::BadTarget(_))), "{bad}");
        }
    }
}
