//! What the sign-in keeps: login attempts (single use, any replica can finish them) and base-host
//! sessions, both in the store; the signed cookies that point at them.
//!
//! A login attempt is kept under the SHA-256 of its `state`, with the PKCE verifier, the nonce,
//! where to go afterwards and the SHA-256 of a random value held in the browser's `wakeway_login`
//! cookie (so a callback is only finished by the browser that started it: no login CSRF). It is
//! taken from the store once. A base session is `wakeway_user=<sid>.<HMAC(sid)>` (HttpOnly,
//! SameSite=Lax, host-only, `__Host-` and Secure under https): a forged cookie costs one HMAC and
//! no store read; the record under the SHA-256 of `sid` says who signed in, until when, and which
//! workspaces were opened with it (their cookies end at sign-out).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// Where login attempts are kept (under the SHA-256 of their `state`).
pub const LOGIN_PREFIX: &str = "oidclogin/";
/// Where base sessions are kept (under the SHA-256 of their id).
pub const USER_PREFIX: &str = "usersession/";

/// A started sign-in, until the provider sends the browser back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginAttempt {
    pub verifier: String,
    pub nonce: String,
    /// SHA-256 (hex) of the browser's `wakeway_login` cookie.
    pub binding: String,
    /// The workspace and path to land on afterwards.
    pub target: Option<(String, String)>,
    pub expires_ms: i64,
}

/// A person signed in on the base host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserSession {
    /// The user claim's value (None: the token had none, e.g. an unverified e-mail).
    pub user: Option<String>,
    /// How pages name the person.
    pub shown: String,
    pub admin: bool,
    /// The raw ID token, for the provider's logout.
    pub id_token: String,
    /// Workspaces opened with this sign-in.
    pub opened: Vec<String>,
    pub expires_ms: i64,
}

/// Cookie names and signing for the base host.
pub struct Cookies {
    mac: Hmac<Sha256>,
    secure: bool,
}

/// Random 32 bytes as hex.
pub fn random_hex() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex(&bytes)
}

/// `bytes` as lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `text` as hex.
pub fn digest(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

impl Cookies {
    /// `secret`: the cookie secret (a key for base sessions is derived from it); `secure`:
    /// public_url is https.
    pub fn new(secret: &[u8], secure: bool) -> Cookies {
        let mut derive = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        derive.update(b"wakeway user session");
        let key = derive.finalize().into_bytes();
        Cookies { mac: Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length"), secure }
    }

    fn name(&self, base: &str) -> String {
        if self.secure { format!("__Host-{base}") } else { base.to_string() }
    }

    fn set(&self, base: &str, value: &str, max_age: Duration) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}", self.name(base), max_age.as_secs())
    }

    /// The value of cookie `base` in `headers`, if any.
    fn get(&self, headers: &HeaderMap, base: &str) -> Option<String> {
        let name = self.name(base);
        wakeway_proxy::auth::cookie_values(headers, &name).next().map(str::to_string)
    }

    fn tag(&self, sid: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(sid.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// The token the home page's forms carry for base session `sid` (cross-site request forgery).
    pub fn csrf(&self, sid: &str) -> String {
        self.tag(&format!("csrf:{sid}"))
    }

    /// `Set-Cookie` binding a login attempt to this browser.
    pub fn set_login(&self, binding: &str, ttl: Duration) -> String {
        self.set("wakeway_login", binding, ttl)
    }

    /// The browser's login binding.
    pub fn login(&self, headers: &HeaderMap) -> Option<String> {
        self.get(headers, "wakeway_login")
    }

    /// `Set-Cookie` ending the login binding.
    pub fn clear_login(&self) -> String {
        self.set("wakeway_login", "", Duration::ZERO)
    }

    /// `Set-Cookie` for base session `sid`.
    pub fn set_user(&self, sid: &str, ttl: Duration) -> String {
        self.set("wakeway_user", &format!("{sid}.{}", self.tag(sid)), ttl)
    }

    /// `Set-Cookie` ending the base session cookie.
    pub fn clear_user(&self) -> String {
        self.set("wakeway_user", "", Duration::ZERO)
    }

    /// The base session id in `headers`, when its signature is right.
    pub fn user(&self, headers: &HeaderMap) -> Option<String> {
        let value = self.get(headers, "wakeway_user")?;
        let (sid, tag) = value.split_once('.')?;
        let good = self.tag(sid);
        super::forms::same(tag, &good).then(|| sid.to_string())
    }
}

/// Login attempts and base sessions in the store.
#[derive(Clone)]
pub struct Records(pub Arc<dyn Store>);

impl Records {
    /// Keep a login attempt under `state` for `ttl`.
    pub async fn put_login(&self, state: &str, attempt: &LoginAttempt, ttl: Duration) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(attempt).unwrap_or_default();
        self.0.put_expiring(&format!("{LOGIN_PREFIX}{}", digest(state)), &bytes, ttl).await
    }

    /// Take the login attempt of `state` (once), unless it expired by `now_ms`.
    pub async fn take_login(&self, state: &str, now_ms: i64) -> Result<Option<LoginAttempt>, StoreError> {
        let bytes = self.0.take_blob(&format!("{LOGIN_PREFIX}{}", digest(state))).await?;
        let attempt = bytes.and_then(|b| serde_json::from_slice::<LoginAttempt>(&b).ok());
        Ok(attempt.filter(|a| a.expires_ms > now_ms))
    }

    /// Keep base session `sid` until its expiry.
    pub async fn put_user(&self, sid: &str, user: &UserSession, ttl: Duration) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(user).unwrap_or_default();
        self.0.put_expiring(&format!("{USER_PREFIX}{}", digest(sid)), &bytes, ttl).await
    }

    /// Base session `sid`, unless it expired by `now_ms`.
    pub async fn user(&self, sid: &str, now_ms: i64) -> Result<Option<UserSession>, StoreError> {
        let bytes = self.0.get_blob(&format!("{USER_PREFIX}{}", digest(sid))).await?;
        let user = bytes.and_then(|b| serde_json::from_slice::<UserSession>(&b).ok());
        Ok(user.filter(|u| u.expires_ms > now_ms))
    }

    /// End base session `sid`, returning it.
    pub async fn take_user(&self, sid: &str) -> Result<Option<UserSession>, StoreError> {
        let bytes = self.0.take_blob(&format!("{USER_PREFIX}{}", digest(sid))).await?;
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, cookie.parse().unwrap());
        h
    }

    #[test]
    fn user_cookies_are_signed_and_named_for_the_scheme() {
        let cookies = Cookies::new(b"0123456789abcdef0123456789abcdef", false);
        let set = cookies.set_user("abc", Duration::from_secs(60));
        assert!(set.starts_with("wakeway_user=abc.") && set.contains("HttpOnly; SameSite=Lax"), "{set}");
        let value = set.split(';').next().unwrap();
        assert_eq!(cookies.user(&headers(value)).as_deref(), Some("abc"));
        let forged = value.replace("abc.", "abd.");
        assert_eq!(cookies.user(&headers(&forged)), None, "another sid with the same tag");
        let other = Cookies::new(b"another secret, another replica!", false);
        assert_eq!(other.user(&headers(value)), None, "signed with another secret");
        let secure = Cookies::new(b"0123456789abcdef0123456789abcdef", true);
        assert!(secure.set_login("x", Duration::from_secs(1)).starts_with("__Host-wakeway_login=x; Path=/;"));
        assert!(secure.set_login("x", Duration::from_secs(1)).ends_with("; Secure"));
    }
}
