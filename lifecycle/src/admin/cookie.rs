//! The admin page's sign-in cookie and form tokens. `wakeway_admin=<expires_ms>.<nonce>.<tag>`,
//! the tag an HMAC (a key derived from the cookie secret, distinct from the base session's) over
//! expiry and nonce: any replica with the same secret accepts it, a forged or expired cookie costs
//! one HMAC and no store read. Host-only (`__Host-` and Secure under https), HttpOnly,
//! SameSite=Strict. A form's CSRF token is an HMAC of whoever is signed in (the cookie's value, or
//! the base session id of an OIDC admin), so a token taken from one sign-in is useless with another.

use std::time::Duration;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use rand::Rng;
use sha2::Sha256;

use crate::web::forms::same;
use crate::web::session::hex;

/// How long one sign-in with an API key lasts.
pub const ADMIN_TTL: Duration = Duration::from_secs(12 * 3600);

/// Signs and reads the admin cookie.
pub struct AdminCookies {
    mac: Hmac<Sha256>,
    secure: bool,
}

impl AdminCookies {
    /// `secret`: the cookie secret; `secure`: public_url is https.
    pub fn new(secret: &[u8], secure: bool) -> AdminCookies {
        let mut derive = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        derive.update(b"wakeway admin page");
        let key = derive.finalize().into_bytes();
        AdminCookies { mac: Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length"), secure }
    }

    /// The cookie's name: `__Host-wakeway_admin` under https.
    pub fn name(&self) -> &'static str {
        if self.secure { "__Host-wakeway_admin" } else { "wakeway_admin" }
    }

    fn tag(&self, text: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(text.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// A signed value valid until `expires_ms`.
    pub fn value(&self, expires_ms: i64) -> String {
        let nonce: [u8; 16] = rand::rng().random();
        let body = format!("{expires_ms}.{}", hex(&nonce));
        format!("{body}.{}", self.tag(&format!("admin:{body}")))
    }

    /// `Set-Cookie` signing in until `now_ms + ADMIN_TTL`.
    pub fn set(&self, now_ms: i64) -> String {
        let value = self.value(now_ms + ADMIN_TTL.as_millis() as i64);
        self.header(&value, ADMIN_TTL)
    }

    /// `Set-Cookie` signing out.
    pub fn clear(&self) -> String {
        self.header("", Duration::ZERO)
    }

    fn header(&self, value: &str, max_age: Duration) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", self.name(), max_age.as_secs())
    }

    /// `value` when its tag is right and it has not expired by `now_ms`.
    pub fn check<'a>(&self, value: &'a str, now_ms: i64) -> Option<&'a str> {
        let (body, tag) = value.rsplit_once('.')?;
        if !same(tag, &self.tag(&format!("admin:{body}"))) {
            return None;
        }
        let expires_ms: i64 = body.split_once('.')?.0.parse().ok()?;
        (expires_ms > now_ms).then_some(value)
    }

    /// The valid admin cookie in `headers`, if any.
    pub fn signed_in(&self, headers: &HeaderMap, now_ms: i64) -> Option<String> {
        wakeway_proxy::auth::cookie_values(headers, self.name()).find_map(|v| self.check(v, now_ms)).map(str::to_string)
    }

    /// The CSRF token of the forms shown to `who` (the admin cookie's value, or `oidc:<sid>`).
    pub fn csrf(&self, who: &str) -> String {
        self.tag(&format!("csrf:{who}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, cookie.parse().unwrap());
        h
    }

    #[test]
    fn a_signed_cookie_is_accepted_until_it_expires() {
        let cookies = AdminCookies::new(SECRET, false);
        let set = cookies.set(1_000);
        assert!(set.starts_with("wakeway_admin=") && set.contains("; HttpOnly; SameSite=Strict; Max-Age=43200"));
        let pair = set.split(';').next().unwrap();
        let value = pair.strip_prefix("wakeway_admin=").unwrap();
        assert_eq!(cookies.signed_in(&headers(pair), 1_000).as_deref(), Some(value));
        let expiry = 1_000 + ADMIN_TTL.as_millis() as i64;
        assert!(cookies.signed_in(&headers(pair), expiry - 1).is_some());
        assert_eq!(cookies.signed_in(&headers(pair), expiry), None, "expired");
    }

    #[test]
    fn forged_and_foreign_cookies_are_refused() {
        let cookies = AdminCookies::new(SECRET, false);
        let value = cookies.value(i64::MAX - 1);
        // A later expiry with the old tag.
        let (body, tag) = value.rsplit_once('.').unwrap();
        let (_, nonce) = body.split_once('.').unwrap();
        assert_eq!(cookies.check(&format!("{}.{nonce}.{tag}", i64::MAX), 0), None);
        assert_eq!(cookies.check("1.2", 0), None);
        assert_eq!(cookies.check("", 0), None);
        let other = AdminCookies::new(b"another secret, another replica!", false);
        assert_eq!(other.check(&value, 0), None, "signed with another secret");
        // The base session's key is not the admin page's: its cookies never sign in here.
        let user = crate::web::session::Cookies::new(SECRET, false).set_user("abc", ADMIN_TTL);
        assert_eq!(cookies.signed_in(&headers(user.split(';').next().unwrap()), 0), None);
    }

    #[test]
    fn under_https_the_cookie_is_host_only_and_secure() {
        let cookies = AdminCookies::new(SECRET, true);
        let set = cookies.set(0);
        assert!(set.starts_with("__Host-wakeway_admin=") && set.contains("; Path=/;") && set.ends_with("; Secure"));
        assert!(!set.contains("Domain="));
        let pair = set.split(';').next().unwrap();
        assert!(cookies.signed_in(&headers(pair), 0).is_some());
        let plain = pair.replacen("__Host-", "", 1);
        assert_eq!(cookies.signed_in(&headers(&plain), 0), None, "only the __Host- name counts under https");
        assert!(cookies.clear().contains("Max-Age=0"));
    }

    #[test]
    fn csrf_tokens_belong_to_one_sign_in() {
        let cookies = AdminCookies::new(SECRET, false);
        let (a, b) = (cookies.value(10), cookies.value(10));
        assert_eq!(cookies.csrf(&a), cookies.csrf(&a));
        assert_ne!(cookies.csrf(&a), cookies.csrf(&b));
        assert_ne!(cookies.csrf("oidc:x"), AdminCookies::new(b"other", false).csrf("oidc:x"));
    }
}
