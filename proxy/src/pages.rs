//! The HTML pages the proxy answers with itself: waiting, gone (410), unavailable (503), not
//! found (404), sign-in needed (401) and "open this link in your browser" (a sign-in link seen by
//! a link preview). One shell (`proxy/assets/page.html`: head, shared stylesheet, brand, card)
//! holds each page's own parts (its card, styles and script, files in `proxy/assets/`), filled
//! with escaped values per request.

use bytes::Bytes;

use std::sync::LazyLock;

/// Head, stylesheet, brand and card frame of every page; each page fills its slots.
const SHELL: &str = include_str!("../assets/page.html");
const BASE_CSS: &str = include_str!("../assets/base.css");

/// What one page puts into the shell. Its card, styles and script are files in `proxy/assets/`.
struct Layout<'a> {
    /// The `<title>`, before ` · wakeway`.
    title: &'a str,
    /// Seconds (or a placeholder) after which the page reloads without JavaScript.
    refresh: Option<&'a str>,
    /// Attributes of `<body>` (the tone) and of `<main>` (what the page's script reads).
    body: &'a str,
    main: &'a str,
    /// The card's content (badge, heading, text), what follows the card, the page's own styles
    /// and script.
    card: &'a str,
    after_card: &'a str,
    css: &'a str,
    script: &'a str,
}

impl Layout<'_> {
    /// The page with the shell's slots filled; the request's values are filled by [`render`].
    fn compose(&self) -> String {
        let head =
            self.refresh.map(|s| format!("<noscript><meta http-equiv=\"refresh\" content=\"{s}\"></noscript>\n"));
        let script =
            if self.script.is_empty() { String::new() } else { format!("<script>\n{}</script>\n", self.script) };
        SHELL
            .replace("{{HEAD}}", &head.unwrap_or_default())
            .replace("{{TITLE}}", self.title)
            .replace("{{BASE_CSS}}", BASE_CSS)
            .replace("{{CSS}}", self.css)
            .replace("{{BODY}}", self.body)
            .replace("{{MAIN}}", self.main)
            .replace("{{CARD}}", self.card)
            .replace("{{AFTER_CARD}}", self.after_card)
            .replace("{{SCRIPT}}", &script)
    }

    /// No refresh, no attributes, nothing beyond the card.
    const PLAIN: Layout<'static> =
        Layout { title: "", refresh: None, body: "", main: "", card: "", after_card: "", css: "", script: "" };
}

/// A composed page (once, at first use).
struct Template(LazyLock<String>);

macro_rules! page {
    ($($field:ident: $value:expr),* $(,)?) => {
        Template(LazyLock::new(|| {
            Layout { $($field: $value,)* ..Layout::PLAIN }.compose()
        }))
    };
}

static GONE: Template =
    page!(title: "Workspace deleted", body: r#" class="t-gone""#, card: include_str!("../assets/gone.html"));
static NOT_FOUND: Template =
    page!(title: "No workspace here", body: r#" class="t-none""#, card: include_str!("../assets/not_found.html"));
static UNAUTHORIZED: Template =
    page!(title: "Sign-in needed", body: r#" class="t-gone""#, card: include_str!("../assets/unauthorized.html"));
static OPEN_IN_BROWSER: Template = page!(
    title: "Open this link in your browser",
    body: r#" class="t-info""#,
    card: include_str!("../assets/open_in_browser.html"),
);
static UNAVAILABLE: Template = page!(
    title: "Workspace unavailable",
    refresh: Some("{{RETRY_AFTER}}"),
    body: r#" class="t-warn""#,
    main: r#" id="app" data-retry="{{RETRY_AFTER}}""#,
    card: include_str!("../assets/unavailable.html"),
    css: include_str!("../assets/unavailable.css"),
    script: include_str!("../assets/unavailable.js"),
);
static WAITING: Template = page!(
    title: "Waking your workspace",
    refresh: Some("3"),
    main: r#" id="app" data-status-url="{{STATUS_URL}}""#,
    card: include_str!("../assets/waiting.html"),
    after_card: include_str!("../assets/waiting_foot.html"),
    css: include_str!("../assets/waiting.css"),
    script: include_str!("../assets/waiting.js"),
);

/// The path (on every workspace host) that the waiting page polls. It never reaches the workspace.
pub const STATUS_PATH: &str = "/.wakeway/status";

/// The page a refusal shows browsers (programs get its JSON body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// 404: no workspace at this address.
    NotFound,
    /// 401: a sign-in link is needed.
    Unauthorized,
    /// 429/502/503: retried after the refusal's `Retry-After`.
    Unavailable,
    /// 410: deleted.
    Gone,
}

impl Page {
    /// The page for session `id` (empty when the request named none) saying `message`.
    pub fn render(self, id: &str, message: &str, retry_after: u64) -> Bytes {
        match self {
            Page::NotFound => not_found(message),
            Page::Unauthorized => unauthorized(id, message),
            Page::Unavailable => unavailable(id, message, retry_after),
            Page::Gone => gone(id, message),
        }
    }
}

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

/// A page of the base host (the sign-in's answers): the shell with `heading` and `body_html`
/// (HTML the caller built, every value in it escaped) in the card, in tone `tone` (`t-gone`,
/// `t-warn`, `t-info` or `t-none`).
pub fn card_page(title: &str, tone: &str, heading: &str, body_html: &str) -> Bytes {
    let (title, body) = (escape(title), format!(" class=\"{tone}\""));
    let card = format!("    <h1 id=\"h\">{}</h1>\n{body_html}\n", escape(heading));
    Bytes::from(Layout { title: &title, body: &body, card: &card, ..Layout::PLAIN }.compose())
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
