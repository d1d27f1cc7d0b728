//! The HTML pages the proxy answers with itself: waiting, gone (410), unavailable (503), not
//! found (404), sign-in needed (401) and "open this link in your browser" (a sign-in link seen by
//! a link preview). Templates live in `proxy/assets/` and are filled with escaped values.

use bytes::Bytes;

use std::sync::LazyLock;

const BASE_CSS: &str = include_str!("../assets/base.css");

/// A page template with the shared stylesheet inlined (once, at first use).
struct Template(LazyLock<String>);

macro_rules! template {
    ($file:literal) => {
        Template(LazyLock::new(|| include_str!($file).replace("{{BASE_CSS}}", BASE_CSS)))
    };
}

static WAITING: Template = template!("../assets/waiting.html");
static GONE: Template = template!("../assets/gone.html");
static UNAVAILABLE: Template = template!("../assets/unavailable.html");
static NOT_FOUND: Template = template!("../assets/not_found.html");
static UNAUTHORIZED: Template = template!("../assets/unauthorized.html");
static OPEN_IN_BROWSER: Template = template!("../assets/open_in_browser.html");

/// The path (on every workspace host) that the waiting page polls. It never reaches the workspace.
pub const STATUS_PATH: &str = "/.wakeway/status";

/// The waiting page for session `id`.
pub fn waiting(id: &str) -> Bytes {
    render(&WAITING, id, "", 0)
}

/// The 410 page.
pub fn gone(id: &str, message: &str) -> Bytes {
    render(&GONE, id, message, 0)
}

/// The 503 page, retrying after `retry_after` seconds.
pub fn unavailable(id: &str, message: &str, retry_after: u64) -> Bytes {
    render(&UNAVAILABLE, id, message, retry_after)
}

/// The 401 page: a sign-in link is needed.
pub fn unauthorized(id: &str, message: &str) -> Bytes {
    render(&UNAUTHORIZED, id, message, 0)
}

/// The page a sign-in link shows to anything but a browser navigation (a chat or mail link
/// preview, a HEAD, a prefetch): the link is left unused.
pub fn open_in_browser(id: &str, message: &str) -> Bytes {
    render(&OPEN_IN_BROWSER, id, message, 0)
}

/// The 404 page for an unknown workspace host.
pub fn not_found(message: &str) -> Bytes {
    render(&NOT_FOUND, "", message, 0)
}

fn render(template: &Template, id: &str, message: &str, retry_after: u64) -> Bytes {
    Bytes::from(
        template
            .0
            .replace("{{SESSION_ID}}", &escape(id))
            .replace("{{STATUS_URL}}", STATUS_PATH)
            .replace("{{MESSAGE}}", &escape(message))
            .replace("{{RETRY_AFTER}}", &retry_after.to_string()),
    )
}

/// HTML-escape text for element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_filled_and_escaped() {
        let page = String::from_utf8(waiting("abc12345").to_vec()).unwrap();
        assert!(page.contains("abc12345") && page.contains(STATUS_PATH) && !page.contains("{{"));
        assert!(
            page.contains("--accent:") && page.contains("prefers-color-scheme: dark"),
            "the shared stylesheet is inlined"
        );
        let page = String::from_utf8(gone("abc12345", "<script>x</script>").to_vec()).unwrap();
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>x"));
        let page = String::from_utf8(unavailable("abc12345", "busy", 7).to_vec()).unwrap();
        assert!(page.contains("busy") && !page.contains("{{"));
        let page = String::from_utf8(unauthorized("abc12345", "sign in").to_vec()).unwrap();
        assert!(page.contains("sign-in link") && page.contains("abc12345") && !page.contains("{{"));
        let page = String::from_utf8(open_in_browser("abc12345", "still unused").to_vec()).unwrap();
        assert!(page.contains("Open this link in your browser") && page.contains("still unused"));
        assert!(page.contains("--accent:") && !page.contains("{{"));
        let page = String::from_utf8(not_found("nothing here").to_vec()).unwrap();
        assert!(page.contains("nothing here") && !page.contains("{{"));
    }
}
