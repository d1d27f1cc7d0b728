//! Only the owner gets in (`workspace_auth = "token"`): sign-in links, cookies, header hygiene,
//! WebSocket origins, and the limits at the front door — each tried as an attacker would.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{Wakeway, testspace_command};

const LONG: Duration = Duration::from_secs(30);
const TOKEN_MODE: (&str, &str) = ("WAKEWAY_WORKSPACE_AUTH", "token");

/// Create a session; returns (id, access_url path+query as seen on the workspace host).
async fn create(w: &Wakeway) -> (String, String) {
    let r = w.api(Method::POST, "/session/create").body(r#"{"user_id":"owner@example.com"}"#).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    let id = v["uuid"].as_str().unwrap().to_string();
    let access = v["access_url"].as_str().unwrap().to_string();
    let prefix = format!("http://{}", w.host(&id));
    assert!(access.starts_with(&prefix) && access.contains("wakeway_token="), "{access}");
    (id, access[prefix.len()..].to_string())
}

/// Open a sign-in link like a browser (a navigation: anything else gets a page and leaves the
/// link unused, see abuse.rs): returns the cookie pair (`name=value`) it sets.
async fn sign_in(w: &Wakeway, id: &str, path: &str) -> String {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r =
        client.get(w.url(path)).header("host", w.host(id)).header("sec-fetch-mode", "navigate").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "a valid link redirects");
    let location = r.headers()[header::LOCATION].to_str().unwrap();
    assert!(!location.contains("wakeway_token"), "the token is stripped from the URL: {location}");
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.to_ascii_lowercase().contains("domain"), "host-only cookie: {set}");
    set.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_gets_in_and_nothing_leaks_to_the_workspace() {
    let w = Wakeway::start(&[TOKEN_MODE]).await;
    let (a, link_a) = create(&w).await;
    let (b, _) = create(&w).await;
    w.wait_state(&a, "running", LONG).await;
    w.wait_state(&b, "running", LONG).await;

    // Without the cookie: 401 for programs and browsers, the status endpoint included.
    let r = w.ws(Method::GET, &a, "/headers").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    let page = w.ws(Method::GET, &a, "/").header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 401);
    assert!(page.text().await.unwrap().contains("sign-in link"));
    assert_eq!(w.ws(Method::GET, &a, "/.wakeway/status").send().await.unwrap().status(), 401);

    let cookie = sign_in(&w, &a, &link_a).await;
    // The link works once.
    let again = w
        .client
        .get(w.url(&link_a))
        .header("host", w.host(&a))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401, "a sign-in token is single-use");

    // With the cookie: in. The workspace sees neither wakeway's cookie nor the API key, but
    // keeps its own cookies and Authorization header.
    let r = w
        .ws(Method::GET, &a, "/headers")
        .header("cookie", format!("theme=dark; {cookie}"))
        .header("authorization", "Bearer workspace-own")
        .header("x-api-key", crate::harness::KEY)
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["cookie"], "theme=dark");
    assert_eq!(seen["authorization"], "Bearer workspace-own");
    assert!(seen.get("x-api-key").is_none());
    assert_eq!(seen["x-forwarded-host"], w.host(&a), "forwarding headers are ours");

    // A's cookie is worthless on B.
    let r = w.ws(Method::GET, &b, "/headers").header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 401, "cookie replayed on another workspace");
    // A tampered cookie is refused.
    let tampered = format!("{}0", cookie);
    assert_eq!(w.ws(Method::GET, &a, "/headers").header("cookie", tampered).send().await.unwrap().status(), 401);

    // Routing uses the Host alone: a spoofed X-Forwarded-Host does not reach a workspace.
    let r = w
        .client
        .get(w.url("/headers"))
        .header("x-forwarded-host", w.host(&a))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_found", "answered by the API, not A");

    // WebSockets: a cross-origin upgrade is refused even with the cookie; same-origin works.
    let upgrade = |origin: &str| {
        let mut req = format!("ws://127.0.0.1:{}/ws", w.port).into_client_request().unwrap();
        req.headers_mut().insert("host", w.host(&a).parse().unwrap());
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        if !origin.is_empty() {
            req.headers_mut().insert("origin", origin.parse().unwrap());
        }
        req
    };
    for origin in ["https://evil.example", &format!("http://{}", w.host(&b)), ""] {
        let err = tokio_tungstenite::connect_async(upgrade(origin)).await.unwrap_err();
        assert!(err.to_string().contains("403"), "origin {origin:?}: {err}");
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(upgrade(&format!("http://{}", w.host(&a)))).await.unwrap();
    socket.close(None).await.unwrap();

    // A token minted for B by the API does not open A.
    let minted: Value = w.api(Method::POST, &format!("/session/{b}/token")).send().await.unwrap().json().await.unwrap();
    let b_link = minted["access_url"].as_str().unwrap().split_once(&w.host(&b)).unwrap().1.to_string();
    let r = w
        .client
        .get(w.url(&b_link))
        .header("host", w.host(&a))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "B's token on A's host");
    let metrics = w.metrics().await;
    assert!(metrics.contains("wakeway_signed_in_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_never_wake_and_are_rate_limited() {
    let w = Wakeway::start(&[TOKEN_MODE, ("WAKEWAY_UNAUTHENTICATED_PER_MINUTE", "5")]).await;
    let (id, _) = create(&w).await;
    w.wait_state(&id, "running", LONG).await;
    w.sleep(&id).await;
    let starts = w.starts();
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = w.ws(Method::GET, &id, "/headers").header("sec-fetch-mode", "navigate").send().await.unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, [401, 401, 401, 401, 401, 429, 429, 429]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.status(&id).await["state"], "sleeping", "no unauthenticated request wakes a session");
    assert_eq!(w.starts(), starts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_at_the_front_door() {
    let tmp = tempfile::tempdir().unwrap();
    let failing = testspace_command(tmp.path(), "--fail");
    let w = Wakeway::start_in(
        tmp.path(),
        &[("WAKEWAY_MAX_WEBSOCKETS_PER_SESSION", "2"), ("WAKEWAY_WAKE_ATTEMPTS_PER_MINUTE", "2")],
    )
    .await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;

    // Headers beyond max_header_bytes: 431.
    let r = w.ws(Method::GET, &id, "/headers").header("x-big", "a".repeat(40_000)).send().await.unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "headers_too_large");

    // WebSockets per session: the third is refused while two are open.
    let connect = || {
        let mut req = format!("ws://127.0.0.1:{}/ws", w.port).into_client_request().unwrap();
        req.headers_mut().insert("host", w.host(&id).parse().unwrap());
        req.headers_mut().insert("origin", format!("http://{}", w.host(&id)).parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let (first, _) = connect().await.unwrap();
    let (_second, _) = connect().await.unwrap();
    let err = connect().await.unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok((s, _)) = connect().await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "closing a socket frees its place");
    drop(w);

    // Wakes per minute: a workspace that keeps failing cannot be restarted in a loop.
    let w = Wakeway::start_in(
        tmp.path(),
        &[("WAKEWAY_WORKSPACE_COMMAND", &failing), ("WAKEWAY_WAKE_ATTEMPTS_PER_MINUTE", "2")],
    )
    .await;
    let before = w.starts();
    let id = w.create().await;
    let began = std::time::Instant::now();
    let mut codes = Vec::new();
    for _ in 0..6 {
        let r = w.ws(Method::GET, &id, "/x").send().await.unwrap();
        codes.push(r.status().as_u16());
    }
    // The start at creation, then at most two a minute asked for through the proxy (a token comes
    // back every 30 s on a slow machine); the rest are refused with 429.
    let allowed = 3 + (began.elapsed().as_secs() / 30) as usize;
    let failed = codes.iter().filter(|c| **c == 502).count();
    assert!(codes.iter().all(|c| *c == 502 || *c == 429), "{codes:?}");
    assert!(failed <= allowed && codes.contains(&429), "{codes:?} (allowed {allowed})");
    assert!(w.starts() - before <= allowed, "no restart loop: {} starts", w.starts() - before);
}

/// A revocation (`POST /session/{id}/revoke`, which an OIDC sign-out does for each workspace it
/// opened) also ends the WebSockets its cookies opened: the next message either way closes the
/// socket, while a socket opened with a new link afterwards works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_cookies_closes_the_websockets_they_opened() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let w = Wakeway::start(&[TOKEN_MODE]).await;
    let (id, link) = create(&w).await;
    w.wait_state(&id, "running", LONG).await;
    let cookie = sign_in(&w, &id, &link).await;
    let connect = |cookie: String| {
        let mut req = format!("ws://127.0.0.1:{}/ws", w.port).into_client_request().unwrap();
        req.headers_mut().insert("host", w.host(&id).parse().unwrap());
        req.headers_mut().insert("origin", format!("http://{}", w.host(&id)).parse().unwrap());
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let (mut socket, _) = connect(cookie.clone()).await.unwrap();
    socket.send(Message::text("before")).await.unwrap();
    let echo = tokio::time::timeout(LONG, socket.next()).await.expect("an echo").unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "before");

    assert_eq!(w.api(Method::POST, &format!("/session/{id}/revoke")).send().await.unwrap().status(), 200);
    // The message may still be written into the socket; no echo comes back, the socket ends.
    let _ = socket.send(Message::text("after")).await;
    let next = tokio::time::timeout(LONG, socket.next()).await.expect("the socket ends, not hangs");
    assert!(!matches!(next, Some(Ok(Message::Text(_)))), "no echo after the revocation: {next:?}");
    assert!(w.log().contains("connection closed: the workspace's cookies were revoked"), "{}", w.log());
    assert!(connect(cookie).await.unwrap_err().to_string().contains("401"), "the revoked cookie opens no new socket");

    let minted: Value =
        w.api(Method::POST, &format!("/session/{id}/token")).send().await.unwrap().json().await.unwrap();
    let fresh_link = minted["access_url"].as_str().unwrap().split_once(&w.host(&id)).unwrap().1.to_string();
    let fresh = sign_in(&w, &id, &fresh_link).await;
    let (mut socket, _) = connect(fresh).await.unwrap();
    socket.send(Message::text("new")).await.unwrap();
    let echo = tokio::time::timeout(LONG, socket.next()).await.expect("an echo").unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "new", "a socket of a new sign-in works");
}
