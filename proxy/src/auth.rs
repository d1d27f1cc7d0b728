//! Workspace access (`workspace_auth = "token"`): the signed, host-only session cookie a one-time
//! sign-in token is exchanged for, and the small header/query surgery around it.
//!
//! The cookie is `wakeway_session=<id>.<expiry unix s>.<hex HMAC-SHA256(secret, "<id>.<expiry>")>`:
//! verified with no store lookup (unknown hosts and forged cookies cost one HMAC), bound to one
//! session id (a cookie from workspace A is worthless on B), and never forwarded to the workspace.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::host::SessionId;

/// The cookie's name (host-only: every workspace host has its own).
pub const COOKIE_NAME: &str = "wakeway_session";

/// The query parameter that carries a one-time sign-in token.
pub const TOKEN_PARAM: &str = "wakeway_token";

/// Signs and checks session cookies.
pub struct CookieSigner {
    mac: Hmac<Sha256>,
    ttl_secs: i64,
}

impl CookieSigner {
    /// `secret`: at least 32 random bytes, the same on every replica.
    pub fn new(secret: &[u8], ttl: std::time::Duration) -> Self {
        let mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        CookieSigner { mac, ttl_secs: ttl.as_secs() as i64 }
    }

    fn signature(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        mac
    }

    /// A cookie value for `id`, valid until `now + ttl`.
    pub fn issue(&self, id: &SessionId, now_ms: i64) -> String {
        let payload = format!("{id}.{}", now_ms / 1000 + self.ttl_secs);
        let tag = self.signature(&payload).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{payload}.{hex}")
    }

    /// Whether `value` is a cookie this signer issued for `id` that has not expired.
    pub fn verify(&self, id: &SessionId, value: &str, now_ms: i64) -> bool {
        let Some((payload, hex)) = value.rsplit_once('.') else { return false };
        let Some((cookie_id, expiry)) = payload.split_once('.') else { return false };
        if cookie_id != id.as_str() || hex.len() != 64 {
            return false;
        }
        let Ok(expiry) = expiry.parse::<i64>() else { return false };
        if expiry < now_ms / 1000 {
            return false;
        }
        let mut tag = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let Ok(byte) = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("zz"), 16) else { return false };
            tag[i] = byte;
        }
        self.signature(payload).verify_slice(&tag).is_ok()
    }

    /// The `Set-Cookie` value: host-only (no Domain), HttpOnly, SameSite=Lax, Secure under TLS.
    pub fn set_cookie(&self, value: &str, secure: bool) -> String {
        let secure = if secure { "; Secure" } else { "" };
        format!("{COOKIE_NAME}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}", self.ttl_secs)
    }
}

/// Every value of our cookie in the request's `Cookie` headers.
pub fn cookie_values(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
}

/// The `Cookie` header without our cookie (None when nothing else is left).
pub fn cookie_without_ours(headers: &HeaderMap) -> Option<String> {
    let kept: Vec<&str> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(COOKIE_NAME))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Split a sign-in token out of a query string: `(token, the query without it)`.
pub fn take_token(query: &str) -> Option<(&str, String)> {
    let mut token = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix(TOKEN_PARAM).and_then(|p| p.strip_prefix('=')) {
            Some(value) if token.is_none() => token = Some(value),
            Some(_) => {}
            None if pair.is_empty() => {}
            None => rest.push(pair),
        }
    }
    token.map(|t| (t, rest.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    #[test]
    fn cookies_are_bound_to_their_session_and_expire() {
        let signer = CookieSigner::new(b"0123456789abcdef0123456789abcdef", std::time::Duration::from_secs(3600));
        let now = 1_700_000_000_000;
        let value = signer.issue(&id("abc12345"), now);
        assert!(signer.verify(&id("abc12345"), &value, now));
        assert!(signer.verify(&id("abc12345"), &value, now + 3_599_000));
        assert!(!signer.verify(&id("abc12345"), &value, now + 3_601_000), "expired");
        assert!(!signer.verify(&id("def67890"), &value, now), "replayed on another workspace");
        let other = CookieSigner::new(b"another secret, another replica", std::time::Duration::from_secs(3600));
        assert!(!other.verify(&id("abc12345"), &value, now), "signed with another secret");
        let forged = value.replacen("abc12345.", "abc12345.9", 1);
        assert!(!signer.verify(&id("abc12345"), &forged, now), "expiry tampered with");
        for junk in ["", ".", "abc12345", "abc12345..", "abc12345.1.zz", &format!("{value}0")] {
            assert!(!signer.verify(&id("abc12345"), junk, now), "{junk:?}");
        }
        let header = signer.set_cookie(&value, true);
        assert!(header.contains("HttpOnly") && header.contains("SameSite=Lax") && header.contains("Secure"));
        assert!(!header.to_ascii_lowercase().contains("domain="), "host-only");
    }

    #[test]
    fn our_cookie_is_found_and_stripped() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", "a=1; wakeway_session=v1; b=2".parse().unwrap());
        headers.append("cookie", "wakeway_session=v2".parse().unwrap());
        assert_eq!(cookie_values(&headers).collect::<Vec<_>>(), ["v1", "v2"]);
        assert_eq!(cookie_without_ours(&headers).as_deref(), Some("a=1; b=2"));
        let mut only = HeaderMap::new();
        only.append("cookie", "wakeway_session=v1".parse().unwrap());
        assert_eq!(cookie_without_ours(&only), None);
        let mut lookalike = HeaderMap::new();
        lookalike.append("cookie", "wakeway_session_x=1".parse().unwrap());
        assert_eq!(cookie_values(&lookalike).count(), 0);
    }

    #[test]
    fn the_token_is_taken_out_of_the_query() {
        assert_eq!(take_token("wakeway_token=abc"), Some(("abc", String::new())));
        assert_eq!(take_token("folder=/w&wakeway_token=abc&x=1"), Some(("abc", "folder=/w&x=1".to_string())));
        assert_eq!(take_token("folder=/w"), None);
        assert_eq!(take_token("wakeway_tokens=1"), None);
    }
}
