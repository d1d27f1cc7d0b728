//! The backup writer's tests: every kind of entry, both roots, raw names, unreadable files.

use super::*;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use zip::ZipArchive;

fn tree(root: &Path) {
    fs::create_dir_all(root.join("project/src")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("data.txt"), "hello").unwrap();
    fs::write(root.join("project/app.js"), "console.log(1)\n".repeat(1000)).unwrap();
    fs::write(root.join("project/src/bin.dat"), (0..=255u8).cycle().take(70_000).collect::<Vec<_>>()).unwrap();
    fs::write(root.join("empty.txt"), "").unwrap();
    fs::write(root.join("name with spaces ü.txt"), "unicode").unwrap();
    symlink("data.txt", root.join("link")).unwrap();
    let script = root.join("run.sh");
    fs::write(&script, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_backup_holds_every_file_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ws");
    tree(&src);
    let dest = dir.path().join(backup_file_name("abc12345", Utc::now()));
    let info = write_verified_zip(&src, &dest, Utc::now(), &Origin::test()).unwrap();
    assert!(dest.exists() && !partial_path(&dest).exists());
    assert_eq!(info.entries, 10, "ten things (the root folder's own entry is not counted)");
    assert_eq!(info.content_bytes, (5 + 15_000 + 70_000) + 7 + 10);
    let mut zip = ZipArchive::new(File::open(&dest).unwrap()).unwrap();
    assert_eq!(zip.comment(), layout::COMMENT.as_bytes(), "the layout is marked");
    let mut text = String::new();
    zip.by_name("workspace/project/app.js").unwrap().read_to_string(&mut text).unwrap();
    assert_eq!(text, "console.log(1)\n".repeat(1000));
    assert_eq!(zip.by_name("workspace/run.sh").unwrap().unix_mode().unwrap() & 0o777, 0o755);
    assert!(zip.by_name("workspace/link").unwrap().is_symlink());
    assert!(zip.by_name("workspace/empty/").unwrap().is_dir());
    assert!(zip.by_name("workspace/").unwrap().is_dir());
    let found = reverify(&dest, u64::MAX).unwrap();
    assert_eq!((found.sha256, found.size, found.entries), (info.sha256.clone(), info.size, 10));
    assert_eq!((found.layout, found.roots), (2, vec!["workspace".to_string()]));
    assert_eq!(found.content_bytes, info.content_bytes);
    // The catalog record was written next to it, atomically, before the rename.
    let record = catalog::read_sidecar(&catalog::sidecar_path(&dest)).unwrap();
    assert!(record.verified && record.sha256 == info.sha256 && record.size == info.size);
    assert!(reverify(&dest, 1000).is_err(), "the expansion limit holds");
}

#[test]
fn a_flipped_byte_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ws");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "x".repeat(10_000)).unwrap();
    let dest = dir.path().join("b.zip");
    write_verified_zip(&src, &dest, Utc::now(), &Origin::test()).unwrap();
    let start = ZipArchive::new(File::open(&dest).unwrap()).unwrap().by_name("workspace/a.txt").unwrap().data_start();
    let mut bytes = fs::read(&dest).unwrap();
    bytes[start.unwrap() as usize + 5] ^= 0xff; // inside the compressed data of the file
    fs::write(&dest, bytes).unwrap();
    assert!(reverify(&dest, u64::MAX).is_err());
}

#[test]
fn an_unwritable_destination_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ws");
    tree(&src);
    let dest = dir.path().join("missing-folder/b.zip");
    assert!(matches!(write_verified_zip(&src, &dest, Utc::now(), &Origin::test()), Err(BackupError::Dest { .. })));
    assert!(src.join("data.txt").exists());
}

#[test]
fn modification_times_are_kept_to_the_nanosecond_and_old_zips_still_read() {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ws");
    fs::create_dir_all(&src).unwrap();
    let file = src.join("precise.txt");
    fs::write(&file, "t").unwrap();
    let when = TimeSpec::new(1_700_000_001, 123_456_789);
    utimensat(nix::fcntl::AT_FDCWD, &file, &when, &when, UtimensatFlags::NoFollowSymlink).unwrap();
    let dest = dir.path().join("b.zip");
    write_verified_zip(&src, &dest, Utc::now(), &Origin::test()).unwrap();
    let mut zip = ZipArchive::new(File::open(&dest).unwrap()).unwrap();
    assert_eq!(entry_mtime(&zip.by_name("workspace/precise.txt").unwrap()), Some((1_700_000_001, 123_456_789)));

    // A zip written before the exact field (DOS time only, UTC) still gives a time.
    let old = dir.path().join("old.zip");
    let mut writer = ZipWriter::new(File::create(&old).unwrap());
    let dos = zip::DateTime::from_date_and_time(2023, 11, 14, 22, 13, 20).unwrap();
    writer.start_file("a.txt", zip::write::SimpleFileOptions::default().last_modified_time(dos)).unwrap();
    writer.write_all(b"old").unwrap();
    writer.finish().unwrap();
    let mut zip = ZipArchive::new(File::open(&old).unwrap()).unwrap();
    assert_eq!(entry_mtime(&zip.by_name("a.txt").unwrap()), Some((1_700_000_000, 0)));
}

#[test]
fn the_name_follows_the_seed() {
    let t = DateTime::parse_from_rfc3339("2025-11-15T04:14:44Z").unwrap().with_timezone(&Utc);
    assert_eq!(backup_file_name("bc7ab025", t), "workspace-bc7ab025-20251115-041444.zip");
}

/// Every entry of a zip: raw name → (mode bits, content).
fn entries(zip: &Path) -> std::collections::BTreeMap<Vec<u8>, (u32, Vec<u8>)> {
    let mut archive = ZipArchive::new(File::open(zip).unwrap()).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).unwrap();
            let mode = entry_mode(&entry).unwrap() & 0o7777;
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            (entry.name_raw().to_vec(), (mode, content))
        })
        .collect()
}

#[test]
fn home_is_a_second_root_and_the_record_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, home) = (dir.path().join("ws"), dir.path().join("home"));
    fs::create_dir_all(&ws).unwrap();
    fs::create_dir_all(home.join("code-server/User")).unwrap();
    fs::write(ws.join("main.rs"), "fn main() {}").unwrap();
    fs::write(home.join("code-server/User/settings.json"), r#"{"editor.fontSize": 17}"#).unwrap();
    fs::write(home.join(".bashrc"), "alias ll='ls -l'").unwrap();
    let dest = dir.path().join("workspace-abc12345-20250101-120000.zip");
    let sources = Sources { workspace: &ws, home: Some(&home) };
    let info = write_verified_backup(&sources, &dest, Utc::now(), &Origin::test()).unwrap();
    let names: Vec<String> = entries(&dest).into_keys().map(|n| String::from_utf8(n).unwrap()).collect();
    assert_eq!(
        names,
        [
            "home/",
            "home/.bashrc",
            "home/code-server/",
            "home/code-server/User/",
            "home/code-server/User/settings.json",
            "workspace/",
            "workspace/main.rs"
        ]
    );
    assert_eq!(info.entries, 5, "the roots' own entries are not counted");
    let record = catalog::read_sidecar(&catalog::sidecar_path(&dest)).unwrap();
    assert_eq!((record.layout, record.roots.clone()), (2, vec!["workspace".to_string(), "home".to_string()]));
    let found = reverify(&dest, u64::MAX).unwrap();
    assert_eq!(found.roots, record.roots);
}

#[test]
fn names_and_targets_that_are_not_utf8_are_stored_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    fs::create_dir_all(ws.join(OsStr::from_bytes(b"dir \xff"))).unwrap();
    fs::write(ws.join(OsStr::from_bytes(b"caf\xe9.txt")), "latin-1").unwrap();
    fs::write(ws.join(OsStr::from_bytes(b"dir \xff/\x80\x81")), "inside").unwrap();
    symlink(OsStr::from_bytes(b"caf\xe9.txt"), ws.join("link")).unwrap();
    let dest = dir.path().join("b.zip");
    let info = write_verified_zip(&ws, &dest, Utc::now(), &Origin::test()).unwrap();
    assert!(info.skipped.is_empty());
    let found = entries(&dest);
    assert_eq!(found[&b"workspace/caf\xe9.txt"[..]].1, b"latin-1");
    assert_eq!(found[&b"workspace/dir \xff/\x80\x81"[..]].1, b"inside");
    assert!(found.contains_key(&b"workspace/dir \xff/"[..]));
    assert_eq!(found[&b"workspace/link"[..]].1, b"caf\xe9.txt", "the symlink's target, raw");
    // No UTF-8 flag on a name that is not UTF-8: a reader that decodes names (CP437) still sees
    // some name, and wakeway reads the raw bytes.
    let mut archive = ZipArchive::new(File::open(&dest).unwrap()).unwrap();
    assert!(archive.by_name_raw(b"workspace/caf\xe9.txt").is_ok());
}

#[test]
fn unreadable_files_are_archived_with_their_mode() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    fs::create_dir_all(ws.join("closed/deeper")).unwrap();
    fs::write(ws.join("secret"), "mode 000").unwrap();
    fs::write(ws.join("closed/deeper/inside"), "behind a closed folder").unwrap();
    fs::set_permissions(ws.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(ws.join("closed/deeper"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(ws.join("closed"), fs::Permissions::from_mode(0o000)).unwrap();
    let dest = dir.path().join("b.zip");
    write_verified_zip(&ws, &dest, Utc::now(), &Origin::test()).unwrap();
    let found = entries(&dest);
    assert_eq!(found[&b"workspace/secret"[..]], (0, b"mode 000".to_vec()));
    assert_eq!(found[&b"workspace/closed/"[..]].0, 0);
    assert_eq!(found[&b"workspace/closed/deeper/inside"[..]].1, b"behind a closed folder");
    for path in ["secret", "closed"] {
        assert_eq!(fs::symlink_metadata(ws.join(path)).unwrap().mode() & 0o7777, 0, "{path} is as it was");
    }
    fs::set_permissions(ws.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(ws.join("closed/deeper"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn sockets_and_fifos_are_skipped_and_listed_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, home) = (dir.path().join("ws"), dir.path().join("home"));
    fs::create_dir_all(&ws).unwrap();
    fs::create_dir_all(&home).unwrap();
    fs::write(ws.join("kept.txt"), "kept").unwrap();
    nix::unistd::mkfifo(&ws.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(home.join("ipc.sock")).unwrap();
    let dest = dir.path().join("workspace-abc12345-20250101-120000.zip");
    let sources = Sources { workspace: &ws, home: Some(&home) };
    let info = write_verified_backup(&sources, &dest, Utc::now(), &Origin::test()).unwrap();
    let skipped: Vec<(&str, &str)> = info.skipped.iter().map(|s| (s.path.as_str(), s.kind.as_str())).collect();
    assert_eq!(skipped, [("home/ipc.sock", "socket"), ("workspace/pipe", "fifo")]);
    let record = catalog::read_sidecar(&catalog::sidecar_path(&dest)).unwrap();
    assert_eq!(record.skipped, info.skipped, "listed in the catalog record");
    assert!(entries(&dest).contains_key(&b"workspace/kept.txt"[..]));
    // Records of earlier versions listed plain names.
    let old: crate::session::Skipped = serde_json::from_str(r#""a fifo""#).unwrap();
    assert_eq!((old.path.as_str(), old.kind.as_str()), ("a fifo", "special"));
}
