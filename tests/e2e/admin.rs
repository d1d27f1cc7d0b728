//! Issue 16's admin page through the real binary. Over plain HTTP: without a cookie the sign-in
//! page; a wrong key is a 401; a forged cookie is refused; a form without its token, or sent from
//! another origin, is a 403 and does nothing; a right one acts. In headless Chromium
//! (`tests/browser/admin.mjs`): sign in, filter, sleep a running session and watch its row change,
//! a change made through the API shows up by itself, a backup downloads byte for byte; screenshots
//! `docs/admin-sessions.png` and `docs/admin-usage.png`.
//!
//! The browser test needs Chromium, Node and tests/browser's packages: `scripts/install-browser-test-deps.sh`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use crate::harness::{KEY, Wakeway};

const LONG: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn create(w: &Wakeway, user: &str) -> String {
    let body = serde_json::json!({ "user_id": user }).to_string();
    let r = w.api(Method::POST, "/session/create").body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["uuid"].as_str().unwrap().to_string()
}

/// `pairs` as an HTML form's body.
fn form(pairs: &[(&str, &str)]) -> String {
    let encode = wakeway_proxy::auth::percent_encode;
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// A POST of an HTML form to `path`.
fn post_form(w: &Wakeway, path: &str, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    client().post(w.url(path)).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(form(pairs))
}

/// Sign in with `key`: the answer's status and the cookie it sets (`name=value`).
async fn sign_in(w: &Wakeway, key: &str) -> (StatusCode, Option<String>, String) {
    let r = post_form(w, "/admin/login", &[("key", key)]).send().await.unwrap();
    let status = r.status();
    let cookie = r.headers().get(header::SET_COOKIE).map(|v| v.to_str().unwrap().to_string());
    (status, cookie, r.text().await.unwrap())
}

/// The page at `path` with `cookie`.
async fn get(w: &Wakeway, path: &str, cookie: &str) -> (StatusCode, String) {
    let r = client().get(w.url(path)).header(header::COOKIE, cookie).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The first form token in `page`.
fn csrf(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a form with a token") + 19;
    page[start..start + 64].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_signs_in_with_an_api_key_and_refuses_forged_cookies_and_forms() {
    let w = Wakeway::start(&[]).await;
    let r = client().get(w.url("/admin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("action=\"/admin/login\""), "the sign-in form");

    let (status, cookie, page) = sign_in(&w, "not-the-key-0123456789").await;
    assert_eq!((status, cookie), (StatusCode::UNAUTHORIZED, None));
    assert!(page.contains("That is not a valid API key"), "{page}");

    let forged = "wakeway_admin=99999999999999.00112233445566778899aabbccddeeff.deadbeef";
    let (status, page) = get(&w, "/admin", forged).await;
    assert_eq!(status, 401, "a forged cookie signs nobody in");
    assert!(page.contains("sign in again") && !page.contains("id=\"sessions\""), "{page}");

    let (status, set, _) = sign_in(&w, KEY).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let set = set.expect("a cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Domain="), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let (status, page) = get(&w, "/admin", &cookie).await;
    assert_eq!(status, 200);
    assert!(page.contains("No sessions yet") && page.contains("POST /session/create"), "{page}");
    let (_, page) = get(&w, "/admin/backups", &cookie).await;
    assert!(page.contains("No backups yet"), "{page}");
    let (_, page) = get(&w, "/admin/usage", &cookie).await;
    assert!(page.contains("No usage yet"), "{page}");

    forms_need_their_token_and_origin(&w, &cookie, forged).await;
}

/// A session's Sleep form: refused without its token, with another's, from another origin or
/// with a forged cookie (the session keeps running); done with all of them right.
async fn forms_need_their_token_and_origin(w: &Wakeway, cookie: &str, forged: &str) {
    let id = create(w, "ada@example.com").await;
    w.wait_state(&id, "running", LONG).await;
    let (_, page) = get(w, "/admin", cookie).await;
    assert!(page.contains(&format!("data-id=\"{id}\"")) && page.contains("ada@example.com"), "{page}");
    let token = csrf(&page);
    let sleep = format!("/admin/session/{id}/sleep");
    let post = |fields: Vec<(&'static str, String)>, origin: Option<&'static str>, cookie: &str| {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut r = post_form(w, &sleep, &fields).header(header::COOKIE, cookie);
        if let Some(origin) = origin {
            r = r.header(header::ORIGIN, origin);
        }
        r.send()
    };
    let r = post(vec![], None, cookie).await.unwrap();
    assert_eq!(r.status(), 403, "no token");
    let r = post(vec![("csrf", "0".repeat(64))], None, cookie).await.unwrap();
    assert_eq!(r.status(), 403, "a wrong token");
    let r = post(vec![("csrf", token.clone())], Some("https://evil.example"), cookie).await.unwrap();
    assert_eq!(r.status(), 403, "another origin");
    let r = post(vec![("csrf", token.clone())], None, forged).await.unwrap();
    assert_eq!(r.status(), 401, "a forged cookie");
    assert_eq!(w.status(&id).await["state"], "running", "nothing refused was done");
    let r = client().get(w.url("/admin/sessions.json")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let origin = format!("http://127.0.0.1:{}", w.port);
    let r = post_form(w, &sleep, &[("csrf", &token)])
        .header(header::COOKIE, cookie)
        .header(header::ORIGIN, &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[header::LOCATION], format!("/admin?done=sleep&id={id}"));
    assert_eq!(w.status(&id).await["state"], "sleeping");
    let (_, json) = get(w, "/admin/sessions.json?state=sleeping", cookie).await;
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["count"], 1, "{json}");
    assert!(json["rows"].as_str().unwrap().contains(">sleeping</span>"), "{json}");

    let (_, page) = get(w, &format!("/admin/session/{id}/delete"), cookie).await;
    assert!(
        page.contains(&format!("workspace-{id}-")) && page.contains("verified"),
        "the confirm names the backup: {page}"
    );
}

/// Run `tests/browser/admin.mjs`; what it saw.
async fn browse(w: &Wakeway, out: &Path, args: &[(&str, &str)]) -> Value {
    std::fs::create_dir_all(out).unwrap();
    let mut command = tokio::process::Command::new("node");
    command.arg(repo().join("tests/browser/admin.mjs")).args(["--base", &w.url(""), "--key", KEY]);
    for (k, v) in args {
        command.arg(format!("--{k}")).arg(v);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        command.arg("--out").arg(out).stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("admin.mjs finishes within 5 minutes")
    .unwrap_or_else(|e| panic!("cannot run node: {e}; install with scripts/install-browser-test-deps.sh"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "admin.mjs failed: {stderr}\nwakeway log:\n{}", w.log());
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert!(v.get("error").is_none(), "admin.mjs: {}\n{stderr}\nwakeway log:\n{}", v["error"], w.log());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_chromium_signs_in_filters_sleeps_and_downloads_a_backup() {
    let playwright = repo().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(playwright.is_file(), "needs playwright-core and Chromium: run scripts/install-browser-test-deps.sh");
    let w = Wakeway::start(&[("WAKEWAY_RATE_LIMIT_PER_MINUTE", "100000")]).await;
    let ada = create(&w, "ada@example.com").await;
    let ada2 = create(&w, "ada@example.com").await;
    let grace = create(&w, "grace@example.com").await;
    let linus = create(&w, "linus@example.com").await;
    let gone = create(&w, "ken@example.com").await;
    for id in [&ada, &ada2, &grace, &linus, &gone] {
        w.wait_state(id, "running", LONG).await;
    }
    w.sleep(&ada2).await;
    w.sleep(&linus).await;
    w.write_as_workspace(&gone, "notes.txt", "kept in the backup\n");
    let r = w.api(Method::DELETE, &format!("/session/{gone}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let backup = w.backups("").await.into_iter().find(|b| b["session"] == gone.as_str()).expect("the backup");
    let backup_id = backup["id"].as_str().unwrap().to_string();
    // The sessions tab's screenshot shows grace's running and ada's asleep; ada's first is slept in the browser.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin");
    let v = browse(&w, &out, &[("sleep", &ada), ("wake", &linus), ("user", "ada"), ("backup", &backup_id)]).await;

    assert_eq!(v["signInStatus"], 200, "{v}");
    assert_eq!(v["wrongKey"]["status"], 401, "{v}");
    assert!(v["wrongKey"]["text"].as_str().unwrap().contains("That is not a valid API key"), "{v}");
    assert_eq!(v["rightKey"]["status"], 200, "{v}");
    let ids = |name: &str| -> Vec<String> {
        v[name].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids("idsAll").len(), 4, "every session but the deleted one: {v}");
    assert_eq!(ids("idsFiltered"), vec![ada.clone()], "running and user contains ada: {v}");
    assert!(v["filteredUrl"].as_str().unwrap().contains("state=running"), "{v}");
    assert_eq!(v["afterSleep"], "sleeping", "{v}");
    assert_eq!(w.status(&ada).await["state"], "sleeping");
    assert_eq!(v["apiWake"], 200, "{v}");
    assert_eq!(v["refreshedWithoutNavigation"], true, "{v}");

    let download = &v["download"];
    assert_eq!(download["magic"], "504b0304", "a zip: {v}");
    assert_eq!(download["sha256"], backup["sha256"], "the backup's bytes: {v}");
    assert_eq!(download["size"], backup["size"], "{v}");
    assert_eq!(download["name"], format!("{backup_id}.zip"), "{v}");
    assert_eq!(v["svgs"], 2, "{v}");
    let confirm = v["confirmText"].as_str().unwrap();
    assert!(confirm.contains(&format!("workspace-{linus}-")) && confirm.contains("verified"), "{confirm}");
    assert!(v["usageText"].as_str().unwrap().contains("saved by sleeping"), "{v}");
    assert_eq!(v["phone"]["pageWidth"], 390, "the page fits a phone; the table scrolls inside: {v}");
    assert_eq!(v["phone"]["tableScrolls"], true, "{v}");
    let docs = repo().join("docs");
    if docs.is_dir() {
        for name in ["admin-sessions.png", "admin-usage.png"] {
            std::fs::copy(out.join(name), docs.join(name)).unwrap();
        }
    }
}

/// With its store (Redis) gone, the admin page is a 503 saying what still works and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_says_when_the_store_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = crate::redis::Redis::start(dir.path()).await;
    let url = redis.url();
    let w = Wakeway::start(&[("WAKEWAY_REDIS_URL", url.as_str())]).await;
    let (_, set, _) = sign_in(&w, KEY).await;
    let cookie = set.expect("a cookie").split(';').next().unwrap().to_string();
    assert_eq!(get(&w, "/admin", &cookie).await.0, 200);
    redis.stop();
    let (status, page) = get(&w, "/admin", &cookie).await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("cannot read its session store") && page.contains("GET /health"), "{page}");
}

/// Wrong keys at the sign-in spend the address's failure budget, as wrong `X-API-Key`s do: then
/// 429 before any key is looked at, even the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_admin_key_is_rate_limited_with_the_api_keys() {
    let w = Wakeway::start(&[("WAKEWAY_UNAUTHENTICATED_PER_MINUTE", "3")]).await;
    let mut codes = Vec::new();
    for i in 0..3 {
        codes.push(sign_in(&w, &format!("guess-{i}-0123456789abcdef")).await.0.as_u16());
    }
    codes.push(
        w.client
            .get(w.url("/sessions"))
            .header("x-api-key", "guess-api-0123456789")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
    );
    let (status, cookie, page) = sign_in(&w, KEY).await;
    codes.push(status.as_u16());
    assert_eq!(codes, [401, 401, 401, 429, 429], "one budget for the page and the API");
    assert!(cookie.is_none() && page.contains("Too many wrong API keys"), "{page}");
}
