//! Backups users can trust, end to end: the round trip through delete, catalog, download and
//! restore; a corrupted zip; restores into a sleeping workspace; zips built to attack the restore;
//! retention with `keep`; per-session policy overrides.

use std::fs;
use std::io::Write;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Wakeway, assert_status};
use crate::tree;

const LONG: Duration = Duration::from_secs(30);

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

/// Create a session, put `make`'s tree in its folder while it sleeps, delete it (backup →
/// verify → delete). Returns (session, backup id, snapshot of what was backed up).
async fn backed_up_session(w: &Wakeway) -> (String, String, tree::Snapshot) {
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    w.sleep(&id).await;
    tree::make(&w.workspace_dir(&id));
    let before = tree::snapshot(&w.workspace_dir(&id));
    let r = w.api(Method::DELETE, &format!("/session/{id}")).send().await.unwrap();
    assert_status(r.status(), 200, "delete");
    let deleted = json_of(r).await;
    let backup = deleted["backup"]["file"].as_str().unwrap().trim_end_matches(".zip").to_string();
    assert_eq!(
        deleted["backup"]["skipped"],
        json!([{ "path": "workspace/a fifo", "kind": "fifo" }]),
        "special files are skipped and reported"
    );
    (id, backup, before)
}

/// The proof the issue asks for: nested folders, binary, empty and executable files, empty
/// folders, symlinks, unusual names → delete → backup → restore into a new session → the same
/// tree (content hashes, modes, modification times to the nanosecond, symlink targets). The
/// download is streamed with its size and SHA-256, and `wakeway restore` gives the same tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_workspace_comes_back_identical() {
    let w = Wakeway::start(&[]).await;
    let (id, backup, before) = backed_up_session(&w).await;
    let want = tree::without_specials(before);

    let listed = w.backups(&format!("?uuid={id}")).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], backup.as_str());
    assert_eq!(w.backups("?user_id=user@example.com").await.len(), 1);
    assert_eq!(w.backups("?user_id=someone-else").await.len(), 0);
    let r = w.api(Method::GET, &format!("/backups/{backup}")).send().await.unwrap();
    assert_status(r.status(), 200, "backup details");
    let record = json_of(r).await;
    for field in ["size", "sha256", "entries", "created_at", "session", "user_id", "keep", "verified"] {
        assert!(!record[field].is_null(), "{field} in {record}");
    }
    assert_eq!((record["session"].as_str(), record["user_id"].as_str()), (Some(id.as_str()), Some("user@example.com")));
    assert_eq!((record["verified"].as_bool(), record["keep"].as_bool()), (Some(true), Some(false)));
    assert_eq!(record["reason"], "delete");
    assert_eq!(record["entries"].as_u64().unwrap() as usize, want.len());

    let r = w.api(Method::GET, &format!("/backups/{backup}/download")).send().await.unwrap();
    assert_status(r.status(), 200, "download");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", record["sha256"].as_str().unwrap()));
    assert_eq!(r.headers()["content-length"].to_str().unwrap(), record["size"].to_string());
    assert_eq!(r.headers()["content-type"], "application/zip");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, record["size"].as_u64().unwrap());
    assert_eq!(tree::sha256(&bytes), record["sha256"].as_str().unwrap());
    let r =
        w.api(Method::GET, &format!("/backups/{backup}/download")).header("if-none-match", &etag).send().await.unwrap();
    assert_status(r.status(), 304, "conditional download");
    // A download that broke off resumes where it stopped (Range), for this very zip only (If-Range).
    let download = format!("/backups/{backup}/download");
    let size = bytes.len();
    let r = w.api(Method::GET, &download).header("range", "bytes=100-").header("if-range", &etag).send().await.unwrap();
    assert_status(r.status(), 206, "the rest of the zip");
    assert_eq!(r.headers()["content-range"].to_str().unwrap(), format!("bytes 100-{}/{size}", size - 1));
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap(), bytes.slice(100..));
    let r = w.api(Method::GET, &download).header("range", "bytes=0-9").send().await.unwrap();
    assert_status(r.status(), 206, "the first ten bytes");
    assert_eq!(r.bytes().await.unwrap(), bytes.slice(..10));
    let r = w
        .api(Method::GET, &download)
        .header("range", "bytes=100-")
        .header("if-range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_status(r.status(), 200, "another zip's tag: the whole file");
    assert_eq!(r.bytes().await.unwrap().len(), size);
    let r = w.api(Method::GET, &download).header("range", format!("bytes={size}-")).send().await.unwrap();
    assert_status(r.status(), 416, "past the end");
    assert_eq!(r.headers()["content-range"].to_str().unwrap(), format!("bytes */{size}"));
    assert_eq!(json_of(r).await["error"]["code"], "range_not_satisfiable");

    let body = json!({ "user_id": "user@example.com", "restore_from": backup }).to_string();
    let r = w.api(Method::POST, "/session/create").body(body).send().await.unwrap();
    assert_status(r.status(), 200, "create with restore_from");
    let created = json_of(r).await;
    assert_eq!(created["restored_from"], backup.as_str());
    assert_eq!(created["restore"]["files"], 7, "{created}");
    assert_eq!(created["restore"]["symlinks"], 2);
    let restored = created["uuid"].as_str().unwrap().to_string();
    assert_eq!(tree::snapshot(&w.workspace_dir(&restored)), want, "the restored tree is identical");
    // It starts like any new session, and serves the restored files.
    w.wait_state(&restored, "running", LONG).await;
    let r = w.ws(Method::GET, &restored, "/files/name with spaces.md").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "spaces");
    let status = w.status(&restored).await;
    assert_eq!(status["session"]["restored_from"], backup.as_str());

    // The downloaded zip restores to the same tree with the command a restore Job runs.
    let zip = w.dir.join("downloaded.zip");
    fs::write(&zip, &bytes).unwrap();
    let dest = w.dir.join("restored-by-command");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wakeway"))
        .args(["restore", "--src", zip.to_str().unwrap(), "--dest", dest.to_str().unwrap()])
        .env_remove("WAKEWAY_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((printed["ok"].as_bool(), printed["restore"]["files"].as_u64()), (Some(true), Some(7)));
    assert_eq!(tree::snapshot(&dest), want);
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_wakeway"))
        .args(["restore", "--src", zip.to_str().unwrap(), "--dest", dest.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success(), "a folder with content is replaced only with --replace");
    assert!(String::from_utf8_lossy(&again.stdout).contains("--replace"));

    // As the Kubernetes restore Job runs it: inside the folder (a volume's mount point cannot be
    // renamed), replacing its content, the folder itself kept.
    let volume = w.dir.join("volume");
    fs::create_dir_all(volume.join("old/deep")).unwrap();
    fs::write(volume.join("old/deep/file"), "replaced").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wakeway"))
        .args([
            "restore",
            "--src",
            zip.to_str().unwrap(),
            "--dest",
            volume.to_str().unwrap(),
            "--replace",
            "--in-place",
        ])
        .env_remove("WAKEWAY_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree::snapshot(&volume), want, "the restored tree, nothing of the old one, nothing of the swap");
}

/// A download is streamed: wakeway's memory does not grow by the size of the zip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_is_streamed_not_buffered() {
    fn peak_rss_kib(pid: u32) -> u64 {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
    let w = Wakeway::start(&[]).await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    w.sleep(&id).await;
    // 64 MiB that does not compress: the zip is about as large.
    let mut file = fs::File::create(w.workspace_dir(&id).join("noise.bin")).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..64 {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        file.write_all(&block).unwrap();
    }
    drop(file);
    let r = w.api(Method::DELETE, &format!("/session/{id}")).send().await.unwrap();
    let backup = json_of(r).await["backup"]["file"].as_str().unwrap().trim_end_matches(".zip").to_string();
    let pid = w.pid();
    let before = peak_rss_kib(pid);
    let mut r = w.api(Method::GET, &format!("/backups/{backup}/download")).send().await.unwrap();
    assert_status(r.status(), 200, "download");
    let mut got = 0usize;
    while let Some(chunk) = r.chunk().await.unwrap() {
        got += chunk.len();
    }
    assert!(got > 64 << 20, "{got} bytes");
    let grew = peak_rss_kib(pid).saturating_sub(before);
    assert!(grew < 32 << 10, "peak memory grew by {grew} KiB while sending a {} MiB zip", got >> 20);
}

/// A flipped byte is caught: the catalog says the backup failed verification, downloads and
/// restores refuse it. A flip that even keeps the file's time is caught by the SHA-256 check of
/// the restore, which then marks the backup failed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_backup_never_counts() {
    let w = Wakeway::start(&[]).await;
    let mut backups = Vec::new();
    for _ in 0..2 {
        let id = w.create().await;
        w.wait_state(&id, "running", LONG).await;
        let text = "important work\n".repeat(2000);
        w.ws(Method::PUT, &id, "/files/work.txt").body(text).send().await.unwrap();
        w.ws(Method::PUT, &id, "/files/more.txt").body("more").send().await.unwrap();
        let r = w.api(Method::DELETE, &format!("/session/{id}")).send().await.unwrap();
        backups.push(json_of(r).await["backup"]["file"].as_str().unwrap().trim_end_matches(".zip").to_string());
    }
    let flip = |id: &str| {
        let path = w.backup_dir().join(format!("{id}.zip"));
        let start = zip::ZipArchive::new(fs::File::open(&path).unwrap())
            .unwrap()
            .by_name("workspace/work.txt")
            .unwrap()
            .data_start();
        let meta = fs::metadata(&path).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[start.unwrap() as usize + 10] ^= 0x40;
        fs::write(&path, bytes).unwrap();
        meta
    };

    // A flip that changes the file's time: the next look re-verifies it.
    flip(&backups[0]);
    let r = w.api(Method::GET, &format!("/backups/{}", backups[0])).send().await.unwrap();
    let record = json_of(r).await;
    assert_eq!(
        (record["verified"].as_bool(), record["verification"].as_str()),
        (Some(false), Some("failed")),
        "{record}"
    );
    assert!(!record["error"].as_str().unwrap().is_empty());
    let r = w.api(Method::GET, &format!("/backups/{}/download", backups[0])).send().await.unwrap();
    assert_status(r.status(), 409, "download of a failed backup");
    let body = json!({ "user_id": "u", "restore_from": backups[0] }).to_string();
    let r = w.api(Method::POST, "/session/create").body(body).send().await.unwrap();
    assert_status(r.status(), 409, "restore of a failed backup");
    assert_eq!(json_of(r).await["error"]["code"], "backup_unverified");

    // Bit rot that keeps size, time and inode: the record still looks fine, the restore's SHA-256
    // check is not fooled.
    let meta = flip(&backups[1]);
    let t = nix::sys::time::TimeSpec::new(
        std::os::unix::fs::MetadataExt::mtime(&meta),
        std::os::unix::fs::MetadataExt::mtime_nsec(&meta),
    );
    let path = w.backup_dir().join(format!("{}.zip", backups[1]));
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &path, &t, &t, nix::sys::stat::UtimensatFlags::FollowSymlink)
        .unwrap();
    let listed: Value = w.api(Method::GET, "/sessions").send().await.unwrap().json().await.unwrap();
    let sessions_before = listed["count"].clone();
    let body = json!({ "user_id": "u", "restore_from": backups[1] }).to_string();
    let r = w.api(Method::POST, "/session/create").body(body).send().await.unwrap();
    assert_status(r.status(), 409, "restore of a rotten backup");
    let error = json_of(r).await;
    assert!(error["error"]["message"].as_str().unwrap().contains("SHA-256"), "{error}");
    let r = w.api(Method::GET, &format!("/backups/{}", backups[1])).send().await.unwrap();
    assert_eq!(json_of(r).await["verified"], false, "now marked failed");
    let r = w.api(Method::GET, &format!("/backups/{}?verify=true", backups[0])).send().await.unwrap();
    assert_eq!(json_of(r).await["verified"], false, "a forced check agrees");
    let listed: Value = w.api(Method::GET, "/sessions").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["count"], sessions_before, "no session is created for a damaged backup");
    let metrics = w.metrics().await;
    assert!(metrics.contains("wakeway_restores_total{result=\"rejected\"} 2"), "{metrics}");
}

/// A restore into an existing session needs it asleep (409 otherwise), backs up what it
/// replaces first, and shows in status; the workspace then serves the restored files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_workspace_can_be_restored_and_the_old_content_is_kept() {
    let w = Wakeway::start(&[]).await;
    let (_, backup, before) = backed_up_session(&w).await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    w.ws(Method::PUT, &id, "/files/old.txt").body("the content a restore replaces").send().await.unwrap();

    let body = json!({ "backup": backup }).to_string();
    let r = w.api(Method::POST, &format!("/session/{id}/restore")).body(body.clone()).send().await.unwrap();
    assert_status(r.status(), 409, "restore while running");
    assert_eq!(json_of(r).await["error"]["code"], "invalid_state");
    for (bad, status, code) in [
        (json!({}), 422, "missing_field"),
        (json!({ "backup": "../../etc/passwd" }), 400, "invalid_backup_id"),
        (json!({ "backup": "workspace-0badc0de-20200101-000000" }), 404, "backup_not_found"),
        (json!({ "backup": backup, "extra": 1 }), 422, "invalid_field"),
    ] {
        w.sleep(&id).await;
        let r = w.api(Method::POST, &format!("/session/{id}/restore")).body(bad.to_string()).send().await.unwrap();
        assert_status(r.status(), status, code);
        assert_eq!(json_of(r).await["error"]["code"], code);
    }

    let r = w.api(Method::POST, &format!("/session/{id}/restore")).body(body).send().await.unwrap();
    assert_status(r.status(), 200, "restore while asleep");
    let done = json_of(r).await;
    assert_eq!(done["status"], "sleeping");
    assert_eq!(tree::snapshot(&w.workspace_dir(&id)), tree::without_specials(before));
    let safety = done["pre_restore_backup"].as_str().unwrap().to_string();
    let r = w.api(Method::GET, &format!("/backups/{safety}")).send().await.unwrap();
    let record = json_of(r).await;
    assert_eq!((record["reason"].as_str(), record["verified"].as_bool()), (Some("pre_restore"), Some(true)));
    let kept = tree::zip_files(&w.backup_dir().join(format!("{safety}.zip")));
    assert_eq!(kept["old.txt"], b"the content a restore replaces", "what was replaced is in a verified backup");
    let status = w.status(&id).await;
    assert_eq!(status["session"]["restored_from"], backup.as_str());
    assert_eq!(status["session"]["pre_restore_backup"], safety.as_str());
    let r = w.ws(Method::GET, &id, "/files/project/src/main.rs").send().await.unwrap();
    assert_status(r.status(), 200, "woken after the restore");
    assert!(r.text().await.unwrap().starts_with("fn main()"));
}

/// (name, "file" or "symlink", content or target).
type Entry<'a> = (&'a str, &'a str, &'a [u8]);

fn crafted(path: &std::path::Path, entries: &[Entry]) {
    use zip::write::SimpleFileOptions;
    let mut zip = zip::ZipWriter::new(fs::File::create(path).unwrap());
    for (name, kind, content) in entries {
        let options = SimpleFileOptions::default();
        if *kind == "symlink" {
            zip.add_symlink(*name, std::str::from_utf8(content).unwrap(), options).unwrap();
        } else {
            zip.start_file(*name, options).unwrap();
            zip.write_all(content).unwrap();
        }
    }
    zip.finish().unwrap();
}

/// Zips built to attack the restore (found in the backup folder, so they pass the catalog's CRC
/// check: they are valid zips) are refused with 422 before anything is written or created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_zips_are_refused() {
    let w = Wakeway::start(&[]).await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    w.ws(Method::PUT, &id, "/files/mine.txt").body("mine").send().await.unwrap();
    w.sleep(&id).await;
    let before = tree::snapshot(&w.workspace_dir(&id));
    let zeros = vec![0u8; 100 << 20];
    let dir = w.backup_dir();
    let cases: [(&str, Vec<Entry>, &str); 5] = [
        ("traversal", vec![("ok.txt", "file", b"ok"), ("../../evil.txt", "file", b"x")], "traversal"),
        ("absolute", vec![("/tmp/wakeway-evil.txt", "file", b"x")], "absolute"),
        ("symlink escape", vec![("link", "symlink", b"../../../etc"), ("ok.txt", "file", b"ok")], "outside"),
        ("through a symlink", vec![("l", "symlink", b"."), ("l/x.txt", "file", b"x")], "through the symlink"),
        ("zip bomb", vec![("zeros.bin", "file", &zeros)], "zip bomb"),
    ];
    for (n, (what, entries, why)) in cases.iter().enumerate() {
        let backup = format!("workspace-0badc0de-20250101-00000{n}");
        crafted(&dir.join(format!("{backup}.zip")), entries);
        let body = json!({ "user_id": "attacker", "restore_from": backup }).to_string();
        let r = w.api(Method::POST, "/session/create").body(body).send().await.unwrap();
        assert_status(r.status(), 422, what);
        let error = json_of(r).await;
        assert_eq!(error["error"]["code"], "restore_rejected", "{what}");
        assert!(error["error"]["message"].as_str().unwrap().contains(why), "{what}: {error}");
        let body = json!({ "backup": backup }).to_string();
        let r = w.api(Method::POST, &format!("/session/{id}/restore")).body(body).send().await.unwrap();
        assert_status(r.status(), 422, what);
    }
    let listed: Value = w.api(Method::GET, "/sessions").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["count"], 1, "no session was created for a refused zip");
    assert_eq!(tree::snapshot(&w.workspace_dir(&id)), before, "the workspace is untouched");
    assert!(!std::path::Path::new("/tmp/wakeway-evil.txt").exists() && !w.dir.join("evil.txt").exists());
    assert_eq!(w.status(&id).await["state"], "sleeping");
    assert_eq!(w.backups(&format!("?uuid={id}")).await.len(), 0, "refused before any backup of the old content");
}

/// Backups older than `backup_retention` are pruned by the sweep, except one marked `keep`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_backups_but_not_kept_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let quiet = [("WAKEWAY_SWEEP_INTERVAL", "1h"), ("WAKEWAY_BACKUP_RETENTION", "1d")];
    let mut w = Wakeway::start_in(tmp.path(), &quiet).await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    w.ws(Method::PUT, &id, "/files/a.txt").body("a").send().await.unwrap();
    let r = w.api(Method::DELETE, &format!("/session/{id}")).send().await.unwrap();
    let fresh = json_of(r).await["backup"]["file"].as_str().unwrap().trim_end_matches(".zip").to_string();
    // Two copies of it dated 2020 (found without a record: verified once, then listed).
    let old = ["workspace-0000beef-20200101-000000", "workspace-0000beef-20200102-000000"];
    for name in old {
        fs::copy(w.backup_dir().join(format!("{fresh}.zip")), w.backup_dir().join(format!("{name}.zip"))).unwrap();
    }
    assert_eq!(w.backups("").await.len(), 3);
    for (body, status) in [(json!({ "keep": "yes" }), 422), (json!({}), 422), (json!({ "keep": true }), 200)] {
        let r = w.api(Method::PATCH, &format!("/backups/{}", old[0])).body(body.to_string()).send().await.unwrap();
        assert_status(r.status(), status, &body.to_string());
    }
    assert_eq!(w.backups("").await.iter().filter(|b| b["keep"] == true).count(), 1);
    w.stop();

    let w =
        Wakeway::start_in(tmp.path(), &[("WAKEWAY_SWEEP_INTERVAL", "200ms"), ("WAKEWAY_BACKUP_RETENTION", "1d")]).await;
    let mut left = Vec::new();
    for _ in 0..100 {
        left = w.backups("").await.iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
        if left.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, [old[0].to_string(), fresh], "the kept 2020 backup and today's remain");
    assert!(!w.backup_dir().join(format!("{}.json", old[1])).exists(), "its record went with it");
    assert!(w.metrics().await.contains("wakeway_backups_pruned_total{result=\"ok\"} 1"));
    assert!(w.log().contains("backup pruned after backup_retention"));
}

/// Per-session overrides within the admin's bounds: validated, shown in status, and used by the
/// policy (a shorter idle timeout sleeps sooner; `keep` prevents deletion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_policy_overrides() {
    let w = Wakeway::start(&[
        ("WAKEWAY_IDLE_TIMEOUT", "1h"),
        ("WAKEWAY_SLEEP_TO_DELETE", "1h"),
        ("WAKEWAY_MAX_IDLE_TIMEOUT", "2h"),
        ("WAKEWAY_MAX_SLEEP_TO_DELETE", "7d"),
        ("WAKEWAY_SWEEP_INTERVAL", "200ms"),
        ("WAKEWAY_CHECKPOINT_INTERVAL", "200ms"),
    ])
    .await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    let path = format!("/session/{id}/policy");
    for (body, status, code) in [
        (json!({ "idle_timeout": "3h" }), 422, "policy_out_of_bounds"),
        (json!({ "sleep_to_delete": "8d" }), 422, "policy_out_of_bounds"),
        (json!({ "idle_timeout": "soon" }), 422, "invalid_duration"),
        (json!({ "idle_timeout": 30 }), 422, "invalid_field"),
        (json!({ "keep": "yes" }), 422, "invalid_field"),
        (json!({ "color": "red" }), 422, "invalid_field"),
        (json!({}), 422, "missing_field"),
    ] {
        let r = w.api(Method::PATCH, &path).body(body.to_string()).send().await.unwrap();
        assert_status(r.status(), status, &body.to_string());
        assert_eq!(json_of(r).await["error"]["code"], code, "{body}");
    }
    let r = w
        .api(Method::PATCH, &path)
        .body(json!({ "idle_timeout": "30m", "keep": true }).to_string())
        .send()
        .await
        .unwrap();
    assert_status(r.status(), 200, "valid overrides");
    let answer = json_of(r).await;
    assert_eq!(answer["policy"]["idle_timeout"], "30m");
    assert_eq!(answer["policy"]["overrides"]["idle_timeout"], "30m");
    assert_eq!(answer["policy"]["sleep_to_delete"], "1h", "not overridden: the configured value");
    let status = w.status(&id).await;
    assert_eq!(status["session"]["policy"]["keep"], true);
    assert_eq!(status["session"]["policy"]["bounds"]["max_idle_timeout"], "2h");

    // The policy follows them: 1 s idle sleeps at once, 1 s asleep would delete, but keep holds.
    let body = json!({ "idle_timeout": "1s", "sleep_to_delete": "1s" }).to_string();
    assert_eq!(w.api(Method::PATCH, &path).body(body).send().await.unwrap().status(), 200);
    w.wait_state(&id, "sleeping", LONG).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = w.status(&id).await;
    assert_eq!(status["state"], "sleeping", "kept: never deleted by the policy");
    assert!(status["deletes_at"].is_null());
    let r = w.api(Method::PATCH, &path).body(json!({ "keep": false }).to_string()).send().await.unwrap();
    assert!(json_of(r).await["deletes_at"].is_string());
    let deleted = w.wait_state(&id, "deleted", LONG).await;
    assert!(deleted["session"]["backup"]["file"].is_string(), "deleted after a verified backup");
    let r = w.api(Method::PATCH, &path).body(json!({ "keep": true }).to_string()).send().await.unwrap();
    assert_status(r.status(), 410, "policy of a deleted session");
}
