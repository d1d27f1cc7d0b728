//! Everything a user keeps, end to end: HOME (code-server's settings among it) survives sleep,
//! is in the zip after a delete and comes back with `restore_from`; names that are not UTF-8 and
//! files of mode 000 round-trip; a disk that fills mid-backup keeps the data and says
//! `backup_failed`, and the retry succeeds once there is space; `wakeway backup`/`restore` as the
//! workspace's own uid (the Kubernetes Jobs) read what that uid made unreadable.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Wakeway, assert_status};
use crate::tree;

const LONG: Duration = Duration::from_secs(30);
const SETTINGS: &str = "{\n  \"editor.fontSize\": 17,\n  \"workbench.colorTheme\": \"Solarized Light\"\n}\n";

/// Every entry name of a zip, raw, and its comment.
fn zip_names(zip: &Path) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut archive = zip::ZipArchive::new(fs::File::open(zip).unwrap()).unwrap();
    let names = (0..archive.len()).map(|i| archive.by_index(i).unwrap().name_raw().to_vec()).collect();
    (names, archive.comment().to_vec())
}

async fn text(r: reqwest::Response) -> String {
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_and_settings_survive_sleep_delete_and_restore() {
    let w = Wakeway::start(&[]).await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    // Written by the workspace itself (its own uid), where code-server keeps its user settings.
    for (path, body) in [("/home/code-server/User/settings.json", SETTINGS), ("/home/.bash_history", "ls -la\n")] {
        let r = w.ws(Method::PUT, &id, path).body(body).send().await.unwrap();
        assert_status(r.status(), 201, path);
    }
    w.ws(Method::PUT, &id, "/files/main.rs").body("fn main() {}\n").send().await.unwrap();
    let settings = w.home_dir(&id).join("code-server/User/settings.json");
    let uid = fs::metadata(w.workspace_dir(&id)).unwrap().uid();
    assert_eq!(fs::metadata(&settings).unwrap().uid(), uid, "HOME is the workspace's own");
    assert_ne!(uid, 0, "the tests run as root: the workspace runs under a uid of its own");

    // Sleep, then wake through a request: HOME is as it was.
    w.sleep(&id).await;
    let r = w.ws(Method::GET, &id, "/home/code-server/User/settings.json").send().await.unwrap();
    assert_status(r.status(), 200, "settings after a wake");
    assert_eq!(text(r).await, SETTINGS);

    // Delete: the zip holds both roots, marked as layout 2.
    let r = w.api(Method::DELETE, &format!("/session/{id}")).send().await.unwrap();
    assert_status(r.status(), 200, "delete");
    let deleted: Value = r.json().await.unwrap();
    let file = deleted["backup"]["file"].as_str().unwrap().to_string();
    let backup = file.trim_end_matches(".zip").to_string();
    assert!(!w.home_dir(&id).exists(), "HOME is removed with the workspace, after the backup");
    let zip = w.backup_dir().join(&file);
    let (names, comment) = zip_names(&zip);
    assert_eq!(comment, b"wakeway-backup v2");
    for name in
        ["workspace/", "home/", "workspace/main.rs", "home/.bash_history", "home/code-server/User/settings.json"]
    {
        assert!(names.contains(&name.as_bytes().to_vec()), "{name} is in the zip");
    }
    assert_eq!(tree::zip_root_files(&zip, "home")["code-server/User/settings.json"], SETTINGS.as_bytes());
    assert_eq!(tree::zip_files(&zip)["main.rs"], b"fn main() {}\n");
    let record: Value = w.api(Method::GET, &format!("/backups/{backup}")).send().await.unwrap().json().await.unwrap();
    assert_eq!((record["layout"].clone(), record["roots"].clone()), (json!(2), json!(["workspace", "home"])));

    // restore_from: both roots come back, owned by the new workspace's uid, and it serves them.
    let body = json!({ "user_id": "user@example.com", "restore_from": backup }).to_string();
    let r = w.api(Method::POST, "/session/create").body(body).send().await.unwrap();
    assert_status(r.status(), 200, "create with restore_from");
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["restore"]["roots"], json!(["workspace", "home"]), "{created}");
    let restored = created["uuid"].as_str().unwrap().to_string();
    w.wait_state(&restored, "running", LONG).await;
    let r = w.ws(Method::GET, &restored, "/home/code-server/User/settings.json").send().await.unwrap();
    assert_eq!(text(r).await, SETTINGS);
    let r = w.ws(Method::GET, &restored, "/home/.bash_history").send().await.unwrap();
    assert_eq!(text(r).await, "ls -la\n");
    let new_uid = fs::metadata(w.workspace_dir(&restored)).unwrap().uid();
    let restored_settings = w.home_dir(&restored).join("code-server/User/settings.json");
    assert_eq!(fs::metadata(&restored_settings).unwrap().uid(), new_uid, "handed to the workspace's uid");
    let r = w.ws(Method::PUT, &restored, "/home/code-server/User/settings.json").body("{}").send().await.unwrap();
    assert_status(r.status(), 201, "the restored HOME is writable by the workspace");
}

/// The names a workspace may give its files, as bytes: Latin-1, broken UTF-8, control bytes.
const RAW_NAMES: [&[u8]; 3] = [b"r\xe9sum\xe9.txt", b"\xff\xfe broken", b"tab\there"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_names_and_mode_000_files_round_trip_through_delete_and_restore() {
    let w = Wakeway::start(&[]).await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    w.sleep(&id).await;
    let ws = w.workspace_dir(&id);
    let owner = fs::metadata(&ws).unwrap().uid();
    let own = |path: &Path| std::os::unix::fs::lchown(path, Some(owner), Some(owner)).unwrap();
    for name in RAW_NAMES {
        let path = ws.join(OsStr::from_bytes(name));
        fs::write(&path, name).unwrap();
        own(&path);
    }
    for (dir, file, content) in [(&ws, "locked.txt", "mode 000"), (&w.home_dir(&id), ".netrc", "machine x")] {
        let path = dir.join(file);
        fs::write(&path, content).unwrap();
        own(&path);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    }
    let closed = ws.join("closed");
    fs::create_dir(&closed).unwrap();
    fs::write(closed.join("inside.txt"), "in a folder of mode 000").unwrap();
    own(&closed);
    own(&closed.join("inside.txt"));
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o000)).unwrap();

    let r = w.api(Method::DELETE, &format!("/session/{id}")).send().await.unwrap();
    assert_status(r.status(), 200, "delete");
    let deleted: Value = r.json().await.unwrap();
    let backup = deleted["backup"]["file"].as_str().unwrap().trim_end_matches(".zip").to_string();
    let (names, _) = zip_names(&w.backup_dir().join(format!("{backup}.zip")));
    for name in RAW_NAMES {
        assert!(names.contains(&[&b"workspace/"[..], name].concat()), "{} is in the zip", name.escape_ascii());
    }

    let body = json!({ "user_id": "user@example.com", "restore_from": backup }).to_string();
    let r = w.api(Method::POST, "/session/create").body(body).send().await.unwrap();
    assert_status(r.status(), 200, "create with restore_from");
    let restored = r.json::<Value>().await.unwrap()["uuid"].as_str().unwrap().to_string();
    let ws = w.workspace_dir(&restored);
    let uid = fs::metadata(&ws).unwrap().uid();
    for name in RAW_NAMES {
        let path = ws.join(OsStr::from_bytes(name));
        assert_eq!(fs::read(&path).unwrap(), name, "{} comes back byte for byte", name.escape_ascii());
        assert_eq!(fs::metadata(&path).unwrap().uid(), uid);
    }
    let listed: Vec<Vec<u8>> = fs::read_dir(&ws).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
    for name in RAW_NAMES {
        assert!(listed.contains(&name.to_vec()), "the exact bytes are a name in the folder");
    }
    for (path, content) in [
        (ws.join("locked.txt"), "mode 000"),
        (w.home_dir(&restored).join(".netrc"), "machine x"),
        (ws.join("closed/inside.txt"), "in a folder of mode 000"),
    ] {
        assert_eq!(fs::read_to_string(&path).unwrap(), content, "{}", path.display());
    }
    for path in [ws.join("locked.txt"), w.home_dir(&restored).join(".netrc"), ws.join("closed")] {
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0, uid), "{} keeps mode 000, the workspace's", path.display());
    }
}

/// A tmpfs of a given size mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(out.status.success(), "this test needs to mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        SmallDisk(at.to_owned())
    }

    fn grow(&self, size: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn failed_backups(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("wakeway_backups_total{result=\"failed\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_backup_keeps_the_data_and_the_retry_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    // The backup folder is a 1 MiB filesystem: a 4 MiB workspace that does not compress fills it
    // in the middle of the zip (ENOSPC from a real filesystem).
    let disk = SmallDisk::mount(&tmp.path().join("backups"), "1m");
    let env = [
        ("WAKEWAY_BACKUP_DIR", disk.0.to_str().unwrap()),
        ("WAKEWAY_BACKUP_RETRY", "1s"),
        ("WAKEWAY_SWEEP_INTERVAL", "200ms"),
    ];
    let w = Wakeway::start_in(tmp.path(), &env).await;
    let id = w.create().await;
    w.wait_state(&id, "running", LONG).await;
    // 4 MiB in all (one request body stays under the testspace's 2 MB limit).
    let data = noise(4 << 20);
    let parts: Vec<&[u8]> = data.chunks(1 << 20).collect();
    for (n, part) in parts.iter().enumerate() {
        let r = w.ws(Method::PUT, &id, &format!("/files/data-{n}.bin")).body(part.to_vec()).send().await.unwrap();
        assert_status(r.status(), 201, "written by the workspace");
    }
    let r = w.ws(Method::PUT, &id, "/home/.profile").body("export EDITOR=vi\n").send().await.unwrap();
    assert_status(r.status(), 201, "HOME written by the workspace");

    let r = w.api(Method::DELETE, &format!("/session/{id}")).send().await.unwrap();
    assert_status(r.status(), 500, "delete onto a full disk");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "backup_failed", "{body}");
    let status = w.status(&id).await;
    assert_eq!(status["state"], "backup_failed", "{status}");
    assert!(status["session"]["last_error"].as_str().unwrap().contains("No space left"), "{status}");
    assert!(failed_backups(&w.metrics().await) >= 1, "counted in wakeway_backups_total{{result=\"failed\"}}");
    for (n, part) in parts.iter().enumerate() {
        assert_eq!(fs::read(w.workspace_dir(&id).join(format!("data-{n}.bin"))).unwrap(), *part, "the data is kept");
    }
    assert_eq!(fs::read_to_string(w.home_dir(&id).join(".profile")).unwrap(), "export EDITOR=vi\n");
    let left: Vec<String> =
        fs::read_dir(&disk.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.ends_with(".partial") && !n.ends_with(".zip")), "nothing half-written: {left:?}");

    // Space is back: the next attempt (backup_retry) writes a verified backup and deletes.
    disk.grow("64m");
    let deleted = w.wait_state(&id, "deleted", LONG).await;
    let file = deleted["session"]["backup"]["file"].as_str().unwrap();
    let zip = disk.0.join(file);
    let in_zip = tree::zip_files(&zip);
    for (n, part) in parts.iter().enumerate() {
        assert_eq!(in_zip[&format!("data-{n}.bin")], *part);
    }
    assert_eq!(tree::zip_root_files(&zip, "home")[".profile"], b"export EDITOR=vi\n");
    assert!(w.metrics().await.contains("wakeway_backups_total{result=\"ok\"} 1"));
}

/// A folder the uid `uid` owns (and the folders above it that it may pass through).
fn owned_dir(path: &Path, uid: u32) -> PathBuf {
    fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    path.to_owned()
}

/// `wakeway backup`/`restore` as the Kubernetes Jobs run them: as the workspace's own uid, without
/// capabilities, restoring inside the folders (mount points there). What that uid made unreadable (a file and a folder of mode 000) is archived with
/// its mode and restored with it; its modes on disk are put back; a file of another user it may not
/// read, a socket and a FIFO are listed as skipped, and the backup succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_commands_read_what_the_workspace_uid_made_unreadable() {
    const UID: u32 = 64_123;
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o711)).unwrap();
    let ws = owned_dir(&tmp.path().join("workspace"), UID);
    let home = owned_dir(&tmp.path().join("home"), UID);
    let backups = owned_dir(&tmp.path().join("backups"), UID);
    let as_uid = |path: &Path| std::os::unix::fs::lchown(path, Some(UID), Some(UID)).unwrap();
    fs::write(ws.join("locked"), "mode 000").unwrap();
    as_uid(&ws.join("locked"));
    fs::set_permissions(ws.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    owned_dir(&ws.join("closed"), UID);
    fs::write(ws.join("closed/inside"), "inside").unwrap();
    as_uid(&ws.join("closed/inside"));
    fs::set_permissions(ws.join("closed"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::write(ws.join(OsStr::from_bytes(b"\xe9t\xe9")), "latin-1").unwrap();
    as_uid(&ws.join(OsStr::from_bytes(b"\xe9t\xe9")));
    fs::write(home.join("roots-secret"), "not the workspace's").unwrap();
    fs::set_permissions(home.join("roots-secret"), fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::mkfifo(&home.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let run = |args: &[&OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wakeway"))
            .args(args)
            .uid(UID)
            .gid(UID)
            .env_remove("WAKEWAY_CONFIG")
            .env("WAKEWAY_DATA_DIR", tmp.path().join("data"))
            .output()
            .unwrap();
        let line: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), line)
    };
    use std::os::unix::process::CommandExt;
    let zip = backups.join("workspace-abc12345-20250101-120000.zip");
    let os = |p: &Path| p.as_os_str().to_owned();
    let (ok, line) = run(&[
        OsStr::new("backup"),
        OsStr::new("--src"),
        &os(&ws),
        OsStr::new("--home"),
        &os(&home),
        OsStr::new("--dest"),
        &os(&zip),
    ]);
    assert!(ok, "{line}");
    assert_eq!(line["roots"], json!(["workspace", "home"]));
    assert_eq!(
        line["skipped"],
        json!([{ "path": "home/pipe", "kind": "fifo" }, { "path": "home/roots-secret", "kind": "unreadable" }])
    );
    for path in ["locked", "closed"] {
        assert_eq!(fs::symlink_metadata(ws.join(path)).unwrap().mode() & 0o7777, 0, "{path}: its mode is put back");
    }
    let mut archive = zip::ZipArchive::new(fs::File::open(&zip).unwrap()).unwrap();
    let mut content = String::new();
    archive.by_name("workspace/closed/inside").unwrap().read_to_string(&mut content).unwrap();
    assert_eq!(content, "inside");
    assert_eq!(archive.by_name("workspace/locked").unwrap().unix_mode().unwrap() & 0o7777, 0);
    drop(archive);

    let (dest, home_dest) = (owned_dir(&tmp.path().join("dest"), UID), owned_dir(&tmp.path().join("home-dest"), UID));
    let (ok, line) = run(&[
        OsStr::new("restore"),
        OsStr::new("--src"),
        &os(&zip),
        OsStr::new("--dest"),
        &os(&dest),
        OsStr::new("--home-dest"),
        &os(&home_dest),
        OsStr::new("--in-place"),
    ]);
    assert!(ok, "{line}");
    assert_eq!(line["restore"]["roots"], json!(["workspace", "home"]), "{line}");
    for path in ["locked", "closed"] {
        let meta = fs::symlink_metadata(dest.join(path)).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0, UID), "{path}");
    }
    assert_eq!(fs::read_to_string(dest.join("closed/inside")).unwrap(), "inside");
    assert_eq!(fs::read(dest.join(OsStr::from_bytes(b"\xe9t\xe9"))).unwrap(), b"latin-1");
    // Without --home-dest the home root is left out, and the result says so.
    let elsewhere = owned_dir(&tmp.path().join("elsewhere"), UID);
    let args = [OsStr::new("restore"), OsStr::new("--src"), &os(&zip), OsStr::new("--dest"), &os(&elsewhere)];
    let (ok, line) = run(&[&args[..], &[OsStr::new("--in-place")]].concat());
    assert!(ok, "{line}");
    assert_eq!(line["restore"]["left_out"], json!(["home"]), "{line}");
    assert!(line["note"].as_str().unwrap().contains("--home-dest"), "{line}");
    for dir in [&ws, &dest, &elsewhere] {
        fs::set_permissions(dir.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    }
}
