//! Issue 3's proof with the real thing: wakeway in front of code-server (the default workspace
//! command), a VS Code workbench in Chromium driven by `tests/browser/vscode.mjs` (playwright-core).
//!
//! - an idle open tab: the session sleeps within idle_timeout + one sweep (+ slack) after the last
//!   activity, stays asleep for 3 more minutes with the tab still open, and reloading that tab goes
//!   through the waiting page back into the workbench;
//! - a user typing a few characters every 20 s for 4 minutes: never asleep, the file saved through the
//!   workbench is on disk (then the tab is left idle: last keystroke → sleep is reported, and the
//!   reloaded tab shows the file in the Explorer);
//! - a visit to a sleeping session: the waiting page at once (kept as `docs/waiting-page.png`), then
//!   the workbench, with the workspace's file in the Explorer.
//!
//! Needs Chromium, playwright-core and code-server: `scripts/install-browser-test-deps.sh`. Without
//! them these tests fail (never skip) and say so. They take ~8 minutes of wall time, in parallel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::harness::{KEY, Wakeway};

const IDLE_TIMEOUT_S: f64 = 60.0;
const SWEEP_S: f64 = 5.0;
/// Added to idle_timeout + one sweep: status polling granularity, a busy 2-core machine.
const SLACK_S: f64 = 15.0;
/// How long the tab stays open once the session is asleep.
const ASLEEP_FOR_S: f64 = 180.0;
const TYPE_FOR_S: f64 = 240.0;
const TYPE_EVERY_S: f64 = 20.0;
const FILE: &str = "notes.txt";
const INSTALL: &str = "scripts/install-browser-test-deps.sh";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> Option<PathBuf> {
    std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/lib/chromium/chromium"].map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Everything the browser tests need, or a failure naming the install script.
fn require_deps() {
    let mut missing = Vec::new();
    if chromium().is_none() {
        missing.push("Chromium (/usr/bin/chromium)".to_string());
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => missing.push("node (Node >= 20 on PATH)".to_string()),
    }
    let playwright = repo().join("tests/browser/node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        missing.push(format!("playwright-core ({} is missing)", playwright.display()));
    }
    if wakeway_lifecycle::find_code_server().is_none() {
        missing.push("code-server (not on PATH nor in ~/.local/share/wakeway/tools/bin)".to_string());
    }
    assert!(
        missing.is_empty(),
        "the browser tests need {}.\nInstall them with:  {INSTALL}  (as root or with sudo; idempotent)",
        missing.join(", ")
    );
}

/// wakeway with code-server as the workspace and the proof's short policy durations.
async fn start_wakeway(extra: &[(&str, &str)]) -> Wakeway {
    require_deps();
    let mut env = vec![
        // Empty: wakeway runs code-server (found like `wakeway serve` does), not the test server.
        ("WAKEWAY_WORKSPACE_COMMAND", ""),
        ("WAKEWAY_IDLE_TIMEOUT", "60s"),
        ("WAKEWAY_SWEEP_INTERVAL", "5s"),
        ("WAKEWAY_CHECKPOINT_INTERVAL", "5s"),
        ("WAKEWAY_START_TIMEOUT", "120s"),
        ("WAKEWAY_HOLD_TIMEOUT", "120s"),
        ("WAKEWAY_STOP_GRACE", "10s"),
        // The tests and the script poll status; the rate limit is not under test here.
        ("WAKEWAY_RATE_LIMIT_PER_MINUTE", "100000"),
    ];
    env.extend_from_slice(extra);
    Wakeway::start(&env).await
}

/// A session whose code-server answers, with `notes.txt` in its workspace folder.
async fn running_session(w: &Wakeway) -> String {
    let id = w.create().await;
    w.wait_state(&id, "running", Duration::from_secs(180)).await;
    // Written as the workspace's user would have (its own uid when isolated), so VS Code can save it.
    w.write_as_workspace(&id, FILE, "notes from the browser test\n");
    id
}

/// Where a scenario keeps its screenshots and logs (kept after the test, for a look).
fn out_dir(scenario: &str, id: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser").join(format!("{scenario}-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The last lines of wakeway's log and of the session's code-server log.
fn logs(w: &Wakeway, id: &str) -> String {
    let tail = |text: String, n: usize| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    };
    let workspace = std::fs::read_to_string(w.dir.join("data/logs").join(format!("{id}.log"))).unwrap_or_default();
    format!(
        "--- wakeway log (tail) ---\n{}\n--- code-server log (tail) ---\n{}",
        tail(w.log(), 40),
        tail(workspace, 20)
    )
}

/// Run `node tests/browser/vscode.mjs <scenario> …` and return its JSON line. Its stderr is shown
/// live (with --nocapture) and in the failure message when it exits non-zero. The browser opens
/// `url` (default: the workspace URL).
async fn run_scenario(w: &Wakeway, id: &str, scenario: &str, url: Option<&str>, extra: &[String]) -> Value {
    let out = out_dir(scenario, id);
    let url = url.map_or_else(|| format!("http://{}/", w.host(id)), String::from);
    let script = repo().join("tests/browser/vscode.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(scenario)
        .args(["--url", &url])
        .args(["--api", &w.url("")])
        .args(["--key", KEY, "--id", id, "--file", FILE])
        .arg("--out")
        .arg(&out)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node {}: {e}; install with {INSTALL}", script.display()));
    let mut stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let tag = format!("[{scenario} {id}]");
    let err_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{tag} {line}");
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let out_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    });
    let status = match tokio::time::timeout(Duration::from_secs(20 * 60), child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = child.kill().await;
            panic!("{scenario}: vscode.mjs still running after 20 min\n{}", logs(w, id));
        }
    };
    let stderr = err_task.await.unwrap();
    let stdout = out_task.await.unwrap();
    std::fs::write(out.join("vscode.stderr.log"), &stderr).unwrap();
    std::fs::write(out.join("result.json"), &stdout).unwrap();
    assert!(
        status.success(),
        "{scenario}: vscode.mjs exited with {status}\nstdout: {stdout}\nstderr:\n{stderr}\n{}\nartifacts: {}",
        logs(w, id),
        out.display()
    );
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_default();
    let result: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{scenario}: vscode.mjs printed no JSON line ({e}): {stdout}\nstderr:\n{stderr}"));
    eprintln!("[{scenario} {id}] result: {result}");
    result
}

fn secs(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

/// The last `n` items of a JSON array, for failure messages.
fn last(v: &Value, n: usize) -> Value {
    let a = v.as_array().cloned().unwrap_or_default();
    Value::from(a[a.len().saturating_sub(n)..].to_vec())
}

fn states(v: &Value, key: &str) -> Vec<String> {
    v[key].as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// An open VS Code tab left idle: asleep within idle_timeout + one sweep + slack after the last
/// activity, then asleep for 3 more minutes with the tab still open (its reconnects do not wake it);
/// a reload of that tab then wakes it through the waiting page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_idle_open_tab_sleeps_and_stays_asleep() {
    let w = start_wakeway(&[]).await;
    let id = running_session(&w).await;
    // Give up waiting well after the bound (the workbench's own start-up activity comes first).
    let deadline = IDLE_TIMEOUT_S + SWEEP_S + SLACK_S + 150.0;
    let extra = [
        "--sleep-deadline".to_string(),
        deadline.to_string(),
        "--asleep-for".to_string(),
        ASLEEP_FOR_S.to_string(),
        "--reload-after-sleep".to_string(),
    ];
    let r = run_scenario(&w, &id, "idle", None, &extra).await;
    eprintln!(
        "[idle {id}] FIGURES workbench_render_s={} slept_s_after_last_activity={} slept_s_after_render={} \
         reload_waiting_page_to_workbench_s={}",
        r["workbench_render_s"],
        r["slept_s_after_last_activity"],
        r["slept_s_after_render"],
        r["reload_after_sleep"]["waiting_page_to_workbench_s"]
    );
    assert_eq!(r["ok"], true, "idle scenario: {r}");
    assert!(
        r["slept"] == true,
        "an idle open VS Code tab kept session {id} awake for {deadline} s after the workbench rendered \
         (idle_timeout {IDLE_TIMEOUT_S} s): states {:?}, last activities {}\n{}",
        states(&r, "states_seen"),
        last(&r["activities"], 4),
        logs(&w, &id)
    );
    let after_activity = secs(&r, "slept_s_after_last_activity");
    let bound = IDLE_TIMEOUT_S + SWEEP_S + SLACK_S;
    assert!(
        after_activity <= bound,
        "asleep {after_activity} s after the last activity ({}), bound {bound} s: {r}",
        r["last_activity_before_sleep"]
    );
    assert!(after_activity >= IDLE_TIMEOUT_S - 1.0, "asleep only {after_activity} s after the last activity: {r}");
    assert!(
        r["stayed_asleep"] == true,
        "the open tab woke session {id} after it slept: states after the sleep {:?}, tab requests {}\n{}",
        states(&r, "states_after_sleep"),
        r["tab_requests_after_sleep"],
        logs(&w, &id)
    );
    assert!(secs(&r, "asleep_observed_s") >= ASLEEP_FOR_S, "{r}");
    assert_eq!(r["page_still_open"], true, "{r}");
    // Then the user comes back and reloads that tab: waiting page, then the workbench.
    assert_woke_into_workbench(&r["reload_after_sleep"], "reloading the idle tab");
    assert_eq!(w.status(&id).await["state"], "running");
}

/// A navigation to a sleeping session went through the waiting page into a workbench showing FILE.
fn assert_woke_into_workbench(r: &Value, what: &str) {
    assert_eq!(r["waiting_page_seen"], true, "{what}: no waiting page: {r}");
    assert_eq!(r["workbench_loaded"], true, "{what}: no workbench: {r}");
    assert_eq!(r["file_in_explorer"], true, "{what}: {FILE} not in the Explorer after the wake: {r}");
}

/// A user typing a few characters every 20 s for 4 minutes: never asleep (idle_timeout 60 s), and
/// the file saved through the workbench (Ctrl+S) is on disk. Then the tab is left idle to time
/// last keystroke → sleep (reported; the policy bound itself is the idle test's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_typing_user_never_sleeps_and_saves() {
    let w = start_wakeway(&[]).await;
    let id = running_session(&w).await;
    let then_idle = IDLE_TIMEOUT_S + SWEEP_S + SLACK_S + 30.0;
    let extra = [
        "--type-for".to_string(),
        TYPE_FOR_S.to_string(),
        "--type-every".to_string(),
        TYPE_EVERY_S.to_string(),
        "--then-idle".to_string(),
        then_idle.to_string(),
        "--reload-after-sleep".to_string(),
    ];
    let r = run_scenario(&w, &id, "typing", None, &extra).await;
    eprintln!(
        "[typing {id}] FIGURES workbench_render_s={} typing_s={} bursts={} last_keystroke_to_sleep_s={} \
         reload_waiting_page_to_workbench_s={}",
        r["workbench_render_s"],
        r["typing_s"],
        r["bursts"].as_array().map_or(0, |b| b.len()),
        r["last_keystroke_to_sleep_s"],
        r["reload_after_sleep"]["waiting_page_to_workbench_s"]
    );
    assert_eq!(r["ok"], true, "typing scenario: {r}");
    let bursts = r["bursts"].as_array().map_or(0, |b| b.len());
    assert!(bursts as f64 > TYPE_FOR_S / TYPE_EVERY_S, "only {bursts} typing bursts: {r}");
    assert!(secs(&r, "typing_s") >= TYPE_FOR_S - 1.0, "typed for only {} s: {r}", r["typing_s"]);
    let during = states(&r, "states_while_typing");
    assert!(
        during.iter().all(|s| s == "running"),
        "session {id} left `running` while the user was typing: {during:?}\n{}\n{}",
        r["transitions"],
        logs(&w, &id)
    );
    if r["slept_after_typing"] == true {
        let after = secs(&r, "last_keystroke_to_sleep_s");
        assert!(after >= IDLE_TIMEOUT_S - 1.0, "asleep only {after} s after the last keystroke: {r}");
        // Reloading the tab after that sleep: the saved file is still in the Explorer.
        assert_woke_into_workbench(&r["reload_after_sleep"], "reloading the tab after typing");
    }
    assert_eq!(r["saved_clean"], true, "Ctrl+S left the editor dirty: {r}");
    let saved = r["saved_path"].as_str().expect("saved_path");
    let typed = r["typed"].as_str().expect("typed").trim();
    let on_disk = std::fs::read_to_string(w.workspace_dir(&id).join(saved)).unwrap();
    eprintln!("[typing {id}] {saved} on disk: {on_disk:?}");
    assert!(on_disk.starts_with("notes from the browser test"), "{on_disk:?}");
    assert!(on_disk.contains(typed), "typed {typed:?}, on disk {on_disk:?}");
}

/// A visit to a sleeping session: the waiting page at once (screenshot → docs/waiting-page.png),
/// then the workbench, with the workspace's file in the Explorer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_visit_after_sleep_shows_waiting_page_then_workbench() {
    let w = start_wakeway(&[]).await;
    let id = running_session(&w).await;
    w.sleep(&id).await;
    assert_eq!(w.status(&id).await["state"], "sleeping");
    let r = run_scenario(&w, &id, "reload", None, &["--wake-timeout".to_string(), "180".to_string()]).await;
    eprintln!(
        "[reload {id}] FIGURES navigation_to_waiting_page_s={} waiting_page_to_workbench_s={} navigation_to_workbench_s={}",
        r["navigation_to_waiting_page_s"], r["waiting_page_to_workbench_s"], r["navigation_to_workbench_s"]
    );
    assert_eq!(r["ok"], true, "reload scenario: {r}\n{}", logs(&w, &id));
    assert_eq!(r["state_before_navigation"], "sleeping", "{r}");
    assert_woke_into_workbench(&r, "visiting the sleeping session");
    let shot = PathBuf::from(r["screenshot"].as_str().expect("screenshot"));
    let docs = repo().join("docs/waiting-page.png");
    std::fs::copy(&shot, &docs).unwrap_or_else(|e| panic!("copy {} to {}: {e}", shot.display(), docs.display()));
    assert_eq!(w.status(&id).await["state"], "running");
}

/// Owner-only access (`workspace_auth = "token"`, the deploy default) with the real browser: a
/// sign-in link opened on a sleeping session sets the cookie, shows the waiting page (whose status
/// polls carry the cookie), and the workbench loads; the Explorer listing comes over its WebSockets,
/// so they passed the cookie and Origin checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sign_in_link_on_a_sleeping_session_opens_the_workbench() {
    let w = start_wakeway(&[("WAKEWAY_WORKSPACE_AUTH", "token")]).await;
    let id = running_session(&w).await;
    w.sleep(&id).await;
    let r = w.api(reqwest::Method::POST, &format!("/session/{id}/token")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let link = r.json::<Value>().await.unwrap()["access_url"].as_str().expect("access_url").to_string();
    assert!(link.contains("wakeway_token="), "{link}");
    let r = run_scenario(&w, &id, "reload", Some(&link), &["--wake-timeout".to_string(), "180".to_string()]).await;
    eprintln!(
        "[sign-in {id}] FIGURES navigation_to_waiting_page_s={} waiting_page_to_workbench_s={}",
        r["navigation_to_waiting_page_s"], r["waiting_page_to_workbench_s"]
    );
    assert_eq!(r["ok"], true, "sign-in scenario: {r}\n{}", logs(&w, &id));
    assert_eq!(r["state_before_navigation"], "sleeping", "{r}");
    assert_woke_into_workbench(&r, "opening a sign-in link on the sleeping session");
    let status = w.status(&id).await;
    assert_eq!(status["state"], "running");
}
