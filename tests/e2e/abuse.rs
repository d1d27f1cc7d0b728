//! Abuse at the front door, tried as an attacker would against the real binary: link previews
//! that would burn sign-in links, cookies that outlive a revocation or deletion, guessing
//! workspace ids and API keys, slow request heads, connection floods, request smuggling, and
//! metrics fed with random methods.

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode, header};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Wakeway, free_port, testspace_command};

const LONG: Duration = Duration::from_secs(30);
const TOKEN_MODE: (&str, &str) = ("WAKEWAY_WORKSPACE_AUTH", "token");

/// A small xorshift generator: random enough for guesses and junk, no dependency.
struct Junk(u64);

impl Junk {
    fn new() -> Junk {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        Junk(u64::from(nanos) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Create a session; returns (id, its sign-in link as path+query on the workspace host).
async fn create_with_link(w: &Wakeway) -> (String, String) {
    let r = w.api(Method::POST, "/session/create").body(r#"{"user_id":"owner@example.com"}"#).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    let id = v["uuid"].as_str().unwrap().to_string();
    (id, link_path(v["access_url"].as_str().unwrap()))
}

/// `/?wakeway_token=…` out of an `access_url`.
fn link_path(access_url: &str) -> String {
    let path = &access_url[access_url.find("/?").expect("a link with a query")..];
    assert!(path.contains("wakeway_token="), "{access_url}");
    path.to_string()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Open a sign-in link as a browser navigation: the `name=value` cookie pair it sets.
async fn navigate(w: &Wakeway, id: &str, link: &str) -> String {
    let r = no_redirects()
        .get(w.url(link))
        .header("host", w.host(id))
        .header("sec-fetch-mode", "navigate")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "a navigation redeems the link");
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("wakeway_session="), "plain HTTP keeps the plain name: {set}");
    set.split(';').next().unwrap().to_string()
}

async fn with_cookie(w: &Wakeway, id: &str, cookie: &str) -> StatusCode {
    w.ws(Method::GET, id, "/headers").header("cookie", cookie).send().await.unwrap().status()
}

/// Write `request` on a fresh connection and read until the server closes it (bounded).
async fn raw(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(LONG, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not closed; got so far: {}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON error code of a raw HTTP/1 response.
fn raw_code(response: &str) -> String {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"));
    v["error"]["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_previews_leave_sign_in_links_unused_and_revoke_and_delete_end_cookies() {
    let w = Wakeway::start(&[TOKEN_MODE]).await;
    let (id, link) = create_with_link(&w).await;
    w.wait_state(&id, "running", LONG).await;
    w.sleep(&id).await;
    let starts = w.starts();

    // A HEAD, chat/mail link previews, a prefetch and a program: a page, no cookie, the token unused.
    let previews: [(Method, &[(&str, &str)]); 5] = [
        (Method::HEAD, &[("accept", "text/html"), ("sec-fetch-mode", "navigate")]),
        (
            Method::GET,
            &[("user-agent", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"), ("accept", "text/html")],
        ),
        (Method::GET, &[("user-agent", "Mozilla/5.0 (compatible; Discordbot/2.0)"), ("sec-fetch-mode", "navigate")]),
        (Method::GET, &[("sec-purpose", "prefetch"), ("sec-fetch-mode", "navigate"), ("accept", "text/html")]),
        (Method::GET, &[("accept", "*/*")]),
    ];
    for (method, headers) in previews {
        let mut req = no_redirects().request(method.clone(), w.url(&link)).header("host", w.host(&id));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{method} {headers:?}");
        assert!(r.headers().get(header::SET_COOKIE).is_none(), "{method} {headers:?}");
        assert!(r.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        let page = r.text().await.unwrap();
        if method == Method::GET {
            assert!(page.contains("Open this link in your browser") && page.contains("--accent:"), "{page}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.status(&id).await["state"], "sleeping", "a preview never wakes the workspace");
    assert_eq!(w.starts(), starts);

    // The navigation still redeems it; the cookie opens the workspace.
    let cookie = navigate(&w, &id, &link).await;
    assert_eq!(with_cookie(&w, &id, &cookie).await, 200);
    let metrics = w.metrics().await;
    assert!(metrics.contains("wakeway_sign_in_previews_total 5"), "{metrics}");

    // Revoke: that cookie, and a link minted before, are refused at once; a new link works.
    let minted: Value =
        w.api(Method::POST, &format!("/session/{id}/token")).send().await.unwrap().json().await.unwrap();
    let early_link = link_path(minted["access_url"].as_str().unwrap());
    let r = w.api(Method::POST, &format!("/session/{id}/revoke")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["uuid"].as_str(), body["revoked"].as_bool()), (Some(id.as_str()), Some(true)));
    assert_eq!(with_cookie(&w, &id, &cookie).await, 401, "a revoked cookie");
    let r = no_redirects()
        .get(w.url(&early_link))
        .header("host", w.host(&id))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a link minted before the revocation");
    let r = w.api(Method::POST, "/session/0badc0de/revoke").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "session_not_found");

    let minted: Value =
        w.api(Method::POST, &format!("/session/{id}/token")).send().await.unwrap().json().await.unwrap();
    let cookie = navigate(&w, &id, &link_path(minted["access_url"].as_str().unwrap())).await;
    assert_eq!(with_cookie(&w, &id, &cookie).await, 200);

    drop(w);

    // Delete: the cookie is refused (401, not the 410 page a signed-in user would get).
    let w2 = Wakeway::start(&[TOKEN_MODE]).await;
    let (id, link) = create_with_link(&w2).await;
    w2.wait_state(&id, "running", LONG).await;
    let cookie = navigate(&w2, &id, &link).await;
    assert_eq!(with_cookie(&w2, &id, &cookie).await, 200);
    let r = w2.api(Method::DELETE, &format!("/session/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(with_cookie(&w2, &id, &cookie).await, 401, "a deleted session's cookie");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let w = Wakeway::start_in(tmp.path(), &[TOKEN_MODE]).await;
    let (id, link) = create_with_link(&w).await;
    w.wait_state(&id, "running", LONG).await;
    let revoked = navigate(&w, &id, &link).await;
    assert_eq!(w.api(Method::POST, &format!("/session/{id}/revoke")).send().await.unwrap().status(), 200);
    let minted: Value =
        w.api(Method::POST, &format!("/session/{id}/token")).send().await.unwrap().json().await.unwrap();
    let kept = navigate(&w, &id, &link_path(minted["access_url"].as_str().unwrap())).await;
    drop(w);
    let w = Wakeway::start_in(tmp.path(), &[TOKEN_MODE]).await;
    assert_eq!(with_cookie(&w, &id, &revoked).await, 401, "revoked before the restart");
    assert_eq!(with_cookie(&w, &id, &kept).await, 200, "issued after the revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_host_prefixed_under_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["*.example.test".to_string()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(tmp.path().join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(tmp.path().join("cert.pem"), cert.pem()).unwrap();
    let tls = free_port();
    let env = [
        ("WAKEWAY_TLS_LISTEN", format!("127.0.0.1:{tls}")),
        ("WAKEWAY_DOMAIN", "example.test".to_string()),
        ("WAKEWAY_TLS_CERT_FILE", tmp.path().join("cert.pem").display().to_string()),
        ("WAKEWAY_TLS_KEY_FILE", tmp.path().join("key.pem").display().to_string()),
        ("WAKEWAY_WORKSPACE_AUTH", "token".to_string()),
    ];
    let w = Wakeway::start_in(tmp.path(), &env.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let r = w.api(Method::POST, "/session/create").body(r#"{"user_id":"owner@example.com"}"#).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    let id = v["uuid"].as_str().unwrap().to_string();
    let link = link_path(v["access_url"].as_str().unwrap());
    w.wait_state(&id, "running", LONG).await;
    let host = format!("vs-code-{id}.example.test");
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(crate::tls::client_config(cert.pem().as_bytes()))
        .resolve(&host, format!("127.0.0.1:{tls}").parse().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("https://{host}:{tls}{path}");

    let r = client.get(url(&link)).header("sec-fetch-mode", "navigate").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
    assert!(set.starts_with("__Host-wakeway_session="), "{set}");
    for attribute in ["; Secure", "; Path=/", "; HttpOnly"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let r = client.get(url("/headers")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap().get("cookie").is_none(), "the workspace never sees it");
    // The same value under the plain name (which any plain-HTTP page could plant) is refused.
    let planted = cookie.replacen("__Host-", "", 1);
    assert_eq!(client.get(url("/headers")).header("cookie", planted).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_workspace_ids_and_api_keys_is_rate_limited() {
    let w = Wakeway::start(&[("WAKEWAY_UNAUTHENTICATED_PER_MINUTE", "5")]).await;
    let known = w.create().await;
    w.wait_state(&known, "running", LONG).await;
    let mut junk = Junk::new();
    let mut codes = Vec::new();
    for _ in 0..8 {
        let guess = format!("{:08x}", junk.next() as u32);
        codes.push(w.ws(Method::GET, &guess, "/").send().await.unwrap().status().as_u16());
    }
    assert_eq!(codes, [404, 404, 404, 404, 404, 429, 429, 429], "unknown workspace hosts");
    let r = w.ws(Method::GET, "0badc0de", "/").send().await.unwrap();
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "rate_limited");
    let r = w.ws(Method::GET, "0badc0de", "/").header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("Too many"), "browsers get a page");
    let r = w.ws(Method::GET, &known, "/headers").send().await.unwrap();
    assert_eq!(r.status(), 429, "while limited, a known host answers like an unknown one");
    let metrics = w.metrics().await;
    assert!(metrics.contains("wakeway_failures_limited_total 6"), "{metrics}");

    // API keys: a budget of their own (the backend is not locked out by browsers' 404s).
    assert_eq!(w.api(Method::GET, "/sessions").send().await.unwrap().status(), 200);
    let mut codes = Vec::new();
    for i in 0..8 {
        let mut req = w.client.get(w.url("/sessions"));
        if i % 2 == 0 {
            req = req.header("x-api-key", format!("guess-{i}-0123456789abcdef"));
        }
        codes.push(req.send().await.unwrap().status().as_u16());
    }
    assert_eq!(codes, [401, 401, 401, 401, 401, 429, 429, 429], "missing and wrong API keys");
    let r = w.api(Method::GET, "/sessions").send().await.unwrap();
    assert_eq!(r.status(), 429, "once spent, even the right key waits: no oracle for guesses");
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "rate_limited");
    assert_eq!(w.client.get(w.url("/health")).send().await.unwrap().status(), 200, "open endpoints stay open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_answered_408() {
    let w = Wakeway::start(&[("WAKEWAY_HEADER_TIMEOUT", "1s")]).await;
    let mut stream = TcpStream::connect(("127.0.0.1", w.port)).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One more header byte every 200 ms, for far longer than header_timeout.
    let drip = tokio::spawn(async move {
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"X").await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(LONG, reader.read_to_end(&mut out)).await;
    drip.abort();
    let response = String::from_utf8_lossy(&out);
    assert!(read.is_ok(), "the slow connection was never closed: {response}");
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert_eq!(raw_code(&response), "header_timeout");

    // A head sent at once is served; a complete keep-alive request after an idle pause too.
    let r = raw(w.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let mut stream = TcpStream::connect(("127.0.0.1", w.port)).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let metrics = w.metrics().await;
    assert!(metrics.contains("wakeway_header_timeouts_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    const CAP: usize = 4;
    let w = Wakeway::start(&[("WAKEWAY_MAX_CONNECTIONS_PER_ADDRESS", "4"), ("WAKEWAY_HEADER_TIMEOUT", "60s")]).await;
    // Each connection starts a request and stalls: it holds its place until it closes.
    let mut held = Vec::new();
    for _ in 0..CAP + 2 {
        let mut stream = TcpStream::connect(("127.0.0.1", w.port)).await.unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
        held.push(stream);
    }
    let answers = futures::future::join_all(held.iter_mut().map(|s| async move {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }))
    .await;
    let refused: Vec<&String> = answers.iter().filter(|a| !a.is_empty()).collect();
    // The harness's own pooled connection may hold a place too: at least two are refused.
    assert!(refused.len() >= 2 && answers.len() - refused.len() <= CAP, "{answers:?}");
    for answer in refused {
        assert!(answer.starts_with("HTTP/1.1 429") && answer.contains("retry-after: 10"), "{answer}");
        assert_eq!(raw_code(answer), "too_many_connections");
    }
    // Closing connections frees their places.
    drop(held);
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let r = raw(w.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "places were not freed: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = w.metrics().await;
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wakeway_connections_over_limit_total "))
        .and_then(|n| n.parse::<usize>().ok());
    assert!(counted.is_some_and(|n| n >= 2), "refusals are counted: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_metrics_stay_bounded_under_random_methods_and_paths() {
    let w = Wakeway::start(&[]).await;
    let series = |text: &str| text.lines().filter(|l| l.starts_with("wakeway_api_requests_total{")).count();
    // Touch the usual endpoints first, so the baseline holds their series.
    w.api(Method::GET, "/sessions").send().await.unwrap();
    w.api(Method::GET, "/session/abc12345/status").send().await.unwrap();
    let before = series(&w.metrics().await);
    let requests: Vec<(Method, String)> = {
        let mut junk = Junk::new();
        let templates = ["/junk", "/session/{}/status", "/session/{}", "/backups/{}", "/sessions/{}", "/{}"];
        (0..10_000)
            .map(|_| {
                let method: String = (0..3 + junk.below(9)).map(|_| (b'A' + junk.below(26) as u8) as char).collect();
                let path = templates[junk.below(templates.len() as u64) as usize]
                    .replace("{}", &format!("{:08x}", junk.next() as u32));
                (Method::from_bytes(method.as_bytes()).unwrap(), path)
            })
            .collect()
    };
    let client = w.client.clone();
    futures::stream::iter(requests)
        .for_each_concurrent(16, |(method, path)| {
            let client = client.clone();
            let url = w.url(&path);
            async move {
                let r = client.request(method, url).send().await.unwrap();
                assert!(r.status().is_client_error(), "{}", r.status());
            }
        })
        .await;
    let text = w.metrics().await;
    let after = series(&text);
    // `other` × (unmatched + a few templates) × (404, 405): a constant, whatever was sent.
    assert!(after <= before + 16, "API series grew from {before} to {after}:\n{text}");
    assert!(!text.contains("/junk") && !text.contains("sessions/0"), "no raw path in a label");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_never_reaches_a_workspace() {
    // The workspace logs every request it receives.
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("requests.log");
    crate::harness::writable_by_workspaces(&log);
    let command = testspace_command(tmp.path(), &format!("--requests {}", log.display()));
    let w = Wakeway::start_in(tmp.path(), &[("WAKEWAY_WORKSPACE_COMMAND", &command)]).await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    let host = w.host(&id);
    let control = format!("GET /control-before HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    assert!(raw(w.port, control.as_bytes()).await.starts_with("HTTP/1.1 404"), "the testspace answers");
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let attacks: Vec<(&str, String, &str)> = vec![
        (
            "CL.TE",
            format!(
                "POST /attack HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "ambiguous_length",
        ),
        (
            "TE.CL",
            format!(
                "POST /attack HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "ambiguous_length",
        ),
        (
            "two Content-Lengths",
            format!(
                "POST /attack HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n{smuggled}"
            ),
            "conflicting_content_length",
        ),
        (
            "obs-fold",
            format!(
                "POST /attack HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: identity\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "obsolete_line_folding",
        ),
        (
            "bare LF",
            format!("POST /attack HTTP/1.1\nHost: {host}\nContent-Length: 0\n\n{smuggled}"),
            "bare_line_ending",
        ),
        (
            "invalid Transfer-Encoding",
            format!("POST /attack HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
            "invalid_transfer_encoding",
        ),
        (
            "space before the colon",
            format!("POST /attack HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            "invalid_header",
        ),
        (
            "HTTP/1.0 chunked",
            format!("POST /attack HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            "invalid_transfer_encoding",
        ),
    ];
    for (name, request, code) in &attacks {
        let response = raw(w.port, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{name}: {response}");
        assert!(response.to_ascii_lowercase().contains("connection: close"), "{name}: {response}");
        assert_eq!(raw_code(&response), *code, "{name}");
    }
    let control = format!("GET /control-after HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    assert!(raw(w.port, control.as_bytes()).await.starts_with("HTTP/1.1 404"));
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(seen.contains("GET /control-before") && seen.contains("GET /control-after"), "{seen}");
    assert!(!seen.contains("attack") && !seen.contains("smuggled"), "the workspace saw:\n{seen}");
    let metrics = w.metrics().await;
    assert!(metrics.contains(&format!("wakeway_bad_framing_total {}", attacks.len())), "{metrics}");
}
