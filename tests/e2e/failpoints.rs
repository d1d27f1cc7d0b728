//! Crash at every step: wakeway is built for tests with `WAKEWAY_FAILPOINT`, which aborts the
//! process (no cleanup, like SIGKILL) at a named point inside sleep, wake, scale, backup, delete
//! and restore. Each case sets a session up, restarts wakeway armed at one point, triggers the
//! step, waits for the abort, restarts it on the same data folder, and checks that the session
//! converges to a consistent state with every file still in its folder or in a verified backup,
//! no workspace process left behind, and no `.partial` zip kept or trusted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Wakeway, processes_in};
use crate::tree;

const LONG: Duration = Duration::from_secs(30);
const FAST: [(&str, &str); 2] = [("WAKEWAY_SWEEP_INTERVAL", "200ms"), ("WAKEWAY_CHECKPOINT_INTERVAL", "200ms")];

/// Files written into a session (at least two, so the mid-zip and mid-extract points are reached).
fn work(tag: &str) -> BTreeMap<String, Vec<u8>> {
    [
        ("notes.md".to_string(), format!("notes of {tag}\n").repeat(200).into_bytes()),
        ("src/main.rs".to_string(), format!("fn main() {{ /* {tag} */ }}\n").into_bytes()),
        ("data/blob.bin".to_string(), (0..100_000u32).map(|i| (i * 7 + tag.len() as u32) as u8).collect()),
    ]
    .into_iter()
    .collect()
}

async fn put_work(w: &Wakeway, id: &str, files: &BTreeMap<String, Vec<u8>>) {
    for (path, content) in files {
        let r = w.ws(Method::PUT, id, &format!("/files/{path}")).body(content.clone()).send().await.unwrap();
        assert_eq!(r.status(), 201, "{path}");
    }
}

/// Wait until the session settles in one of `states` (the sweep resumes interrupted steps).
async fn settled(w: &Wakeway, id: &str, states: &[&str]) -> Value {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let s = w.status(id).await;
        if states.contains(&s["state"].as_str().unwrap_or("")) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{id} did not settle in {states:?}: {s}\nlog:\n{}", w.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every file is in the session's folder or, byte for byte, in a backup the catalog calls verified.
async fn nothing_lost(w: &Wakeway, id: &str, files: &BTreeMap<String, Vec<u8>>, point: &str) {
    let on_disk = if w.workspace_dir(id).exists() { tree::files(&w.workspace_dir(id)) } else { BTreeMap::new() };
    let mut in_backups: Vec<BTreeMap<String, Vec<u8>>> = Vec::new();
    for b in w.backups("").await {
        if b["verified"] == true {
            in_backups.push(tree::zip_files(&w.backup_dir().join(b["file"].as_str().unwrap())));
        }
    }
    for (path, content) in files {
        let kept = on_disk.get(path) == Some(content) || in_backups.iter().any(|z| z.get(path) == Some(content));
        assert!(kept, "{point}: {path} is neither in the folder nor in a verified backup\nlog:\n{}", w.log());
    }
    for entry in std::fs::read_dir(w.backup_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".partial"), "{point}: {name} was left behind");
    }
}

fn no_stray_process(dir: &Path, expected: usize, point: &str) {
    let found = processes_in(dir);
    assert!(found.len() <= expected, "{point}: workspace processes left running in {}: {found:?}", dir.display());
}

/// A new running session on `w` holding `work(label)`: its id and files.
async fn session_with_work(w: &Wakeway, label: &str) -> (String, BTreeMap<String, Vec<u8>>) {
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    let files = work(label);
    put_work(w, &id, &files).await;
    (id, files)
}

/// Set up, crash at `point` during `step`, restart, and hand back the restarted wakeway.
async fn crash_during(tmp: &Path, point: &str, step: impl AsyncFnOnce(&Wakeway) -> ()) -> Wakeway {
    let mut armed = Wakeway::start_armed(tmp, &[("WAKEWAY_SWEEP_INTERVAL", "1h")], point).await;
    step(&armed).await;
    armed.wait_abort(LONG);
    assert!(armed.log().contains(&format!("failpoint {point} reached")), "{point}");
    Wakeway::start_in(tmp, &FAST).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_during_sleep_wake_and_scale_lose_nothing() {
    for point in ["sleep.after_stopping_saved", "sleep.after_stop", "wake.after_waking_saved", "wake.after_start"]
        .into_iter()
        .chain(["scale.after_stop", "scale.after_start"])
    {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Wakeway::start_in(tmp.path(), &[]).await;
        let (id, files) = session_with_work(&w, point).await;
        w.stop(); // asleep, cleanly
        let step = async |w: &Wakeway| {
            let path = match point.split('.').next().unwrap() {
                "sleep" => format!("/session/{id}/sleep"),
                "wake" => format!("/session/{id}/wake?wait=true"),
                _ => format!("/session/{id}/scale"),
            };
            if !point.starts_with("wake") {
                let r = w.api(Method::POST, &format!("/session/{id}/wake?wait=true")).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
            let _ = w.api(Method::POST, &path).body(json!({ "scale": "up" }).to_string()).send().await;
        };
        let w = crash_during(tmp.path(), point, step).await;
        let s = settled(&w, &id, &["sleeping", "running"]).await;
        assert_eq!(s["state"], "sleeping", "{point}: an interrupted step ends asleep: {s}");
        assert_eq!(tree::files(&w.workspace_dir(&id)), files, "{point}: the folder is intact");
        no_stray_process(&w.workspace_dir(&id), 0, point);
        // And it still works: the next request wakes it and reads the files.
        let r = w.ws(Method::GET, &id, "/files/notes.md").send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), files["notes.md"].as_slice(), "{point}");
        no_stray_process(&w.workspace_dir(&id), 1, point);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_during_backup_and_delete_lose_nothing() {
    for point in [
        "backup.mid_zip",
        "backup.before_rename",
        "backup.after_rename",
        "delete.before_destroy",
        "delete.after_destroy",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Wakeway::start_in(tmp.path(), &[]).await;
        let (id, files) = session_with_work(&w, point).await;
        w.stop();
        let step = async |w: &Wakeway| {
            let _ = w.api(Method::DELETE, &format!("/session/{id}")).send().await;
        };
        let w = crash_during(tmp.path(), point, step).await;
        // The deletion was asked for: it resumes, with a fresh verified backup where needed.
        let s = settled(&w, &id, &["deleted"]).await;
        let file = s["session"]["backup"]["file"].as_str().unwrap().to_string();
        let record: Value = w
            .api(Method::GET, &format!("/backups/{}", file.trim_end_matches(".zip")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(record["verified"], true, "{point}: {record}");
        assert_eq!(tree::zip_files(&w.backup_dir().join(&file)), files, "{point}: the backup holds every file");
        nothing_lost(&w, &id, &files, point).await;
        no_stray_process(&w.workspace_dir(&id), 0, point);
        assert!(w.log().contains("removed what an interrupted backup left") || !point.starts_with("backup.m"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_during_restore_lose_nothing() {
    for point in [
        "restore.after_safety_backup",
        "restore.mid_extract",
        "restore.before_swap",
        "restore.mid_swap",
        "restore.after_swap",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Wakeway::start_in(tmp.path(), &[]).await;
        // A backup of session A, to restore into session B.
        let (a, restored) = session_with_work(&w, "a").await;
        let r = w.api(Method::DELETE, &format!("/session/{a}")).send().await.unwrap();
        let deleted: Value = r.json().await.unwrap();
        let backup = deleted["backup"]["file"].as_str().unwrap().trim_end_matches(".zip").to_string();
        let (b, replaced) = session_with_work(&w, point).await;
        w.stop();
        let step = async |w: &Wakeway| {
            let body = json!({ "backup": backup }).to_string();
            let _ = w.api(Method::POST, &format!("/session/{b}/restore")).body(body).send().await;
        };
        let w = crash_during(tmp.path(), point, step).await;
        let s = settled(&w, &b, &["sleeping"]).await;
        assert_eq!(s["session"]["restored_from"], backup.as_str(), "{point}: the restore was finished: {s}");
        assert_eq!(tree::files(&w.workspace_dir(&b)), restored, "{point}: the folder holds the backup");
        let safety = s["session"]["pre_restore_backup"].as_str().unwrap();
        assert_eq!(
            tree::zip_files(&w.backup_dir().join(format!("{safety}.zip"))),
            replaced,
            "{point}: what was replaced is in the pre-restore backup"
        );
        nothing_lost(&w, &b, &replaced, point).await;
        let leftovers: Vec<String> = std::fs::read_dir(w.dir.join("data/workspaces"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
        no_stray_process(&w.workspace_dir(&b), 0, point);
    }
}

/// The binary these tests run has failpoints compiled in (its abort message is in it); a
/// `cargo build` has not (see the README: the same check on target/release/wakeway finds nothing).
#[test]
fn the_test_binary_has_failpoints_compiled_in() {
    let bytes = std::fs::read(env!("CARGO_BIN_EXE_wakeway")).unwrap();
    let marker = b" reached: aborting";
    assert!(bytes.windows(marker.len()).any(|w| w == marker), "built without the failpoints feature");
}
