//! What every form on the base host checks (the admin page's, the home page's): that it was
//! sent from this site, and that its token is the one handed out, compared in constant time.

use http::{HeaderMap, header};
use subtle::ConstantTimeEq;

/// Equal strings, compared in constant time.
pub fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// No cross-site sender: `Sec-Fetch-Site` (when sent) is same-origin or none, and `Origin` (when
/// sent) is the configured base origin or the very host the request was sent to.
pub fn same_origin(headers: &HeaderMap, public: &str) -> bool {
    let text = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
    if text("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none") {
        return false;
    }
    let Some(origin) = text(header::ORIGIN.as_str()) else { return true };
    if origin.eq_ignore_ascii_case(public) {
        return true;
    }
    let authority = origin.split_once("://").map(|(_, a)| a);
    authority.is_some_and(|a| text(header::HOST.as_str()).is_some_and(|h| a.eq_ignore_ascii_case(h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forms_from_another_origin_are_refused() {
        let public = "https://wakeway.example";
        assert!(same_origin(&headers(&[]), public), "no Origin: the token decides");
        assert!(same_origin(&headers(&[("origin", "https://wakeway.example")]), public));
        let host = [("origin", "http://127.0.0.1:8080"), ("host", "127.0.0.1:8080")];
        assert!(same_origin(&headers(&host), public), "the host the browser sent it to");
        assert!(!same_origin(&headers(&[("origin", "https://evil.example"), ("host", "wakeway.example")]), public));
        assert!(!same_origin(&headers(&[("origin", "null")]), public));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")]), public));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")]), public), "a workspace host is same-site");
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")]), public));
    }
}
