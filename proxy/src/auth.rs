//! Workspace access (`workspace_auth = "token"`): the signed, host-only session cookie a one-time
//! sign-in token is exchanged for, and the small header/query surgery around it.
//!
//! The cookie is `wakeway_session=<id>.<generation>.<expiry unix s>.<hex HMAC-SHA256(secret,
//! "<id>.<generation>.<expiry>")>` (named `__Host-wakeway_session` under TLS, so no other host
//! and no plain-HTTP page can set it): verified with no store lookup (unknown hosts and forged
//! cookies cost one HMAC), bound to one session id (a cookie from workspace A is worthless on B),
//! bound to the session's cookie generation (revoking or deleting the session raises it, which
//! ends every cookie issued before), and never forwarded to the workspace.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::host::SessionId;

/// The cookie's name over plain HTTP (host-only: every workspace host has its own).
pub const COOKIE_NAME: &str = "wakeway_session";

/// The cookie's name under TLS: browsers only accept a `__Host-` cookie that is `Secure`, has
/// `Path=/` and no `Domain`, so a sibling host or a plain-HTTP page cannot plant one.
pub const HOST_COOKIE_NAME: &str = "__Host-wakeway_session";

/// The cookie name for a connection (TLS or not).
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { HOST_COOKIE_NAME } else { COOKIE_NAME }
}

/// `text` as a query value: everything but unreserved characters percent-encoded.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

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

    /// A cookie value for `id` at cookie generation `generation`, valid until `now + ttl`.
    pub fn issue(&self, id: &SessionId, generation: u64, now_ms: i64) -> String {
        let payload = format!("{id}.{generation}.{}", now_ms / 1000 + self.ttl_secs);
        let tag = self.signature(&payload).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{payload}.{hex}")
    }

    /// Whether `value` is a cookie this signer issued for `id` that has not expired and is not
    /// older than the session's cookie `generation` (a newer one can come from a replica that
    /// learnt of a revocation first; the generation is signed, so it cannot be raised by hand).
    /// Cookies of the format before generations (`<id>.<expiry>.<mac>`) are refused.
    pub fn verify(&self, id: &SessionId, generation: u64, value: &str, now_ms: i64) -> bool {
        let Some((payload, hex)) = value.rsplit_once('.') else { return false };
        let mut fields = payload.split('.');
        let (Some(cookie_id), Some(cookie_generation), Some(expiry), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        if cookie_id != id.as_str() || hex.len() != 64 {
            return false;
        }
        let (Ok(cookie_generation), Ok(expiry)) = (cookie_generation.parse::<u64>(), expiry.parse::<i64>()) else {
            return false;
        };
        if expiry < now_ms / 1000 || cookie_generation < generation {
            return false;
        }
        let mut tag = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let Ok(byte) = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("zz"), 16) else { return false };
            tag[i] = byte;
        }
        self.signature(payload).verify_slice(&tag).is_ok()
    }

    /// The `Set-Cookie` value: host-only (no Domain), `Path=/`, HttpOnly, SameSite=Lax; under
    /// TLS `Secure` and the `__Host-` name.
    pub fn set_cookie(&self, value: &str, secure: bool) -> String {
        let name = cookie_name(secure);
        let secure = if secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}", self.ttl_secs)
    }
}

/// Every `name=value` pair of the request's `Cookie` headers.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
}

/// Whether a cookie pair is ours (under either name).
fn is_ours(pair: &str) -> bool {
    matches!(pair.split('=').next(), Some(COOKIE_NAME | HOST_COOKIE_NAME))
}

/// Every value of the cookie called `name` in the request's `Cookie` headers.
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    cookie_pairs(headers).filter_map(move |pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Whether the request carries our cookie under either name.
pub fn carries_ours(headers: &HeaderMap) -> bool {
    cookie_pairs(headers).any(is_ours)
}

/// The `Cookie` header without our cookie, under either name (None when nothing else is left).
pub fn cookie_without_ours(headers: &HeaderMap) -> Option<String> {
    let kept: Vec<&str> = cookie_pairs(headers).filter(|pair| !pair.is_empty() && !is_ours(pair)).collect();
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
        let value = signer.issue(&id("abc12345"), 3, now);
        assert!(signer.verify(&id("abc12345"), 3, &value, now));
        assert!(signer.verify(&id("abc12345"), 3, &value, now + 3_599_000));
        assert!(!signer.verify(&id("abc12345"), 3, &value, now + 3_601_000), "expired");
        assert!(!signer.verify(&id("def67890"), 3, &value, now), "replayed on another workspace");
        assert!(!signer.verify(&id("abc12345"), 4, &value, now), "revoked: the session's generation moved on");
        assert!(signer.verify(&id("abc12345"), 2, &value, now), "issued by a replica that heard of a revocation first");
        let other = CookieSigner::new(b"another secret, another replica", std::time::Duration::from_secs(3600));
        assert!(!other.verify(&id("abc12345"), 3, &value, now), "signed with another secret");
        let forged = value.replacen("abc12345.3.", "abc12345.3.9", 1);
        assert!(!signer.verify(&id("abc12345"), 3, &forged, now), "expiry tampered with");
        let raised = value.replacen("abc12345.3.", "abc12345.4.", 1);
        assert!(!signer.verify(&id("abc12345"), 4, &raised, now), "generation tampered with");
        for junk in ["", ".", "abc12345", "abc12345..", "abc12345.1.zz", "abc12345.1.2.3.zz", &format!("{value}0")] {
            assert!(!signer.verify(&id("abc12345"), 0, junk, now), "{junk:?}");
        }
        // The format before generations: `<id>.<expiry>.<mac>`, correctly signed, is refused.
        let expiry = now / 1000 + 3600;
        let old_payload = format!("abc12345.{expiry}");
        let tag = signer.signature(&old_payload).finalize().into_bytes();
        let old: String = format!("{old_payload}.{}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert!(!signer.verify(&id("abc12345"), 0, &old, now), "old-format cookie");
        let header = signer.set_cookie(&value, true);
        assert!(header.starts_with("__Host-wakeway_session=") && header.contains("Path=/"), "{header}");
        assert!(header.contains("HttpOnly") && header.contains("SameSite=Lax") && header.contains("Secure"));
        assert!(!header.to_ascii_lowercase().contains("domain="), "host-only");
        let plain = signer.set_cookie(&value, false);
        assert!(plain.starts_with("wakeway_session=") && !plain.contains("Secure"), "{plain}");
    }

    #[test]
    fn our_cookie_is_found_and_stripped() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", "a=1; wakeway_session=v1; b=2".parse().unwrap());
        headers.append("cookie", "wakeway_session=v2; __Host-wakeway_session=v3".parse().unwrap());
        assert_eq!(cookie_values(&headers, COOKIE_NAME).collect::<Vec<_>>(), ["v1", "v2"]);
        assert_eq!(cookie_values(&headers, HOST_COOKIE_NAME).collect::<Vec<_>>(), ["v3"]);
        assert!(carries_ours(&headers));
        assert_eq!(cookie_without_ours(&headers).as_deref(), Some("a=1; b=2"), "both names are stripped");
        let mut only = HeaderMap::new();
        only.append("cookie", "wakeway_session=v1".parse().unwrap());
        assert_eq!(cookie_without_ours(&only), None);
        let mut lookalike = HeaderMap::new();
        lookalike.append("cookie", "wakeway_session_x=1".parse().unwrap());
        assert_eq!(cookie_values(&lookalike, COOKIE_NAME).count(), 0);
        assert!(!carries_ours(&lookalike));
    }

    #[test]
    fn the_token_is_taken_out_of_the_query() {
        assert_eq!(take_token("wakeway_token=abc"), Some(("abc", String::new())));
        assert_eq!(take_token("folder=/w&wakeway_token=abc&x=1"), Some(("abc", "folder=/w&x=1".to_string())));
        assert_eq!(take_token("folder=/w"), None);
        assert_eq!(take_token("wakeway_tokens=1"), None);
    }
}
