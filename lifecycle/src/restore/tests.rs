//! Restores against real folders and zips: the round trip, and zips built to attack it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use chrono::Utc;
use zip::ZipWriter;
use zip::write::SimpleFileOptions;

use super::*;
use crate::backup::write_verified_zip;
use crate::catalog::Origin;

const LIMITS: Limits = Limits { max_bytes: 1 << 30, max_entries: 10_000, max_ratio: 200 };

/// What a tree holds, path by path: kind, mode, mtime (ns), content hash or link target.
fn snapshot(root: &Path) -> BTreeMap<String, (String, u32, i64, i64, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, u32, i64, i64, String)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (kind, what) = if meta.file_type().is_symlink() {
                ("symlink", fs::read_link(&path).unwrap().to_string_lossy().into_owned())
            } else if meta.is_dir() {
                ("dir", String::new())
            } else if meta.is_file() {
                ("file", sha256_file(&path).unwrap().0)
            } else {
                ("special", String::new())
            };
            let mode = if kind == "symlink" { 0 } else { meta.mode() & 0o7777 };
            out.insert(rel, (kind.into(), mode, meta.mtime(), meta.mtime_nsec(), what));
            if kind == "dir" {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn touch(path: &Path, secs: i64, nanos: i64) {
    let t = TimeSpec::new(secs, nanos);
    utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

/// Nested folders, binary, empty and executable files, an empty folder, a setgid folder, a
/// symlink to a file and one to a folder, names with spaces and unicode, a FIFO, exact times.
fn tree(root: &Path) {
    fs::create_dir_all(root.join("project/src/deep/er")).unwrap();
    fs::create_dir_all(root.join("empty folder")).unwrap();
    fs::create_dir_all(root.join("shared")).unwrap();
    fs::set_permissions(root.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(root.join("project/src/deep/er/bin.dat"), (0..=255u8).cycle().take(300_000).collect::<Vec<_>>()).unwrap();
    fs::write(root.join("project/README.md"), "# hello\n".repeat(500)).unwrap();
    fs::write(root.join("empty.txt"), "").unwrap();
    fs::write(root.join("naïve café — ☕ file.txt"), "unicode name").unwrap();
    fs::write(root.join("name with spaces.txt"), "spaces").unwrap();
    let script = root.join("project/run.sh");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let private = root.join("project/secret.key");
    fs::write(&private, "k").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    symlink("project/README.md", root.join("readme-link")).unwrap();
    symlink("src/deep", root.join("project/deep-link")).unwrap();
    nix::unistd::mkfifo(&root.join("a fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let mut n = 0;
    for (path, _) in snapshot(root) {
        n += 1;
        touch(&root.join(&path), 1_600_000_000 + n * 1000, 123_456_789 - n);
    }
    touch(root, 1_650_000_000, 5);
}

fn round_trip_zip(dir: &Path) -> (PathBuf, PathBuf) {
    let src = dir.join("ws");
    tree(&src);
    let zip = dir.join("workspace-abc12345-20250101-120000.zip");
    let info = write_verified_zip(&src, &zip, Utc::now(), &Origin::test()).unwrap();
    let skipped: Vec<_> = info.skipped.iter().map(|s| (s.path.as_str(), s.kind.as_str())).collect();
    assert_eq!(skipped, [("workspace/a fifo", "fifo")], "the FIFO is skipped and reported");
    (src, zip)
}

#[test]
fn a_round_trip_restores_an_identical_tree() {
    let dir = tempfile::tempdir().unwrap();
    let (src, zip) = round_trip_zip(dir.path());
    let target = dir.path().join("restored");
    let options = Options { expected_sha256: Some(sha256_file(&zip).unwrap().0), ..Options::default() };
    let report = restore_into(&zip, &target, &LIMITS, &options).unwrap();
    assert_eq!((report.files, report.symlinks), (7, 2), "{report:?}");
    let mut want = snapshot(&src);
    want.remove("a fifo");
    assert_eq!(snapshot(&target), want);
    assert!(!Swap::for_target(&target).staged.exists());

    // Into a folder that has content: replaced as a whole.
    fs::write(target.join("stray.txt"), "gone after the restore").unwrap();
    restore_into(&zip, &target, &LIMITS, &options).unwrap();
    assert_eq!(snapshot(&target), want);
    assert!(!Swap::for_target(&target).replaced.exists());
}

#[test]
fn a_damaged_zip_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, zip) = round_trip_zip(dir.path());
    let target = dir.path().join("restored");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("mine.txt"), "mine").unwrap();
    let before = snapshot(&target);

    let wrong_sha = Options { expected_sha256: Some("0".repeat(64)), ..Options::default() };
    assert!(matches!(restore_into(&zip, &target, &LIMITS, &wrong_sha), Err(RestoreError::Corrupt(_))));

    // Flip a byte inside the compressed content of the big binary file: its CRC fails mid-way.
    let mut bytes = fs::read(&zip).unwrap();
    let at = bytes.windows(7).position(|w| w == b"bin.dat").unwrap() + 200;
    bytes[at] ^= 0x55;
    let broken = dir.path().join("broken.zip");
    fs::write(&broken, bytes).unwrap();
    let err = restore_into(&broken, &target, &LIMITS, &Options::default()).unwrap_err();
    assert!(matches!(err, RestoreError::Corrupt(_)), "{err}");
    assert_eq!(snapshot(&target), before, "nothing half-written");
    assert!(!Swap::for_target(&target).staged.exists());
}

/// Build a zip by hand: (name, kind, content) with kind "file", "dir", "symlink" or "fifo".
fn crafted(dir: &Path, name: &str, entries: &[(&str, &str, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    let mut zip = ZipWriter::new(File::create(&path).unwrap());
    for (entry, kind, content) in entries {
        let options = SimpleFileOptions::default();
        match *kind {
            "dir" => zip.add_directory(*entry, options).unwrap(),
            "symlink" => zip.add_symlink(*entry, std::str::from_utf8(content).unwrap(), options).unwrap(),
            "fifo" => {
                zip.start_file(*entry, options.system(zip::System::Unix).external_attributes(0o010644 << 16)).unwrap();
            }
            _ => {
                zip.start_file(*entry, options).unwrap();
                zip.write_all(content).unwrap();
            }
        }
    }
    zip.finish().unwrap();
    path
}

#[test]
fn malicious_zips_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("traversal", crafted(d, "t1.zip", &[("ok.txt", "file", b"1"), ("../evil.txt", "file", b"x")]), "traversal"),
        ("nested traversal", crafted(d, "t2.zip", &[("a/../../evil.txt", "file", b"x")]), "traversal"),
        ("absolute path", crafted(d, "t3.zip", &[("/tmp/evil.txt", "file", b"x")]), "absolute"),
        ("symlink out", crafted(d, "t4.zip", &[("a/link", "symlink", b"../../etc")]), "outside"),
        ("absolute symlink", crafted(d, "t5.zip", &[("passwd", "symlink", b"/etc/passwd")]), "absolute"),
        (
            "symlink chain out",
            // sub/up -> .. is the root; sub/t -> up/.. then leaves it (physically, not lexically).
            crafted(d, "t6.zip", &[("sub/", "dir", b""), ("sub/up", "symlink", b".."), ("sub/t", "symlink", b"up/..")]),
            "outside",
        ),
        (
            "write through a symlink",
            crafted(d, "t7.zip", &[("sub/", "dir", b""), ("l", "symlink", b"sub"), ("l/f.txt", "file", b"x")]),
            "goes through the symlink",
        ),
        ("inside a file", crafted(d, "t8.zip", &[("f", "file", b"x"), ("f/g", "file", b"y")]), "inside the file"),
        ("symlink loop", crafted(d, "t10.zip", &[("a", "symlink", b"b/x"), ("b", "symlink", b"a/y")]), "levels"),
    ];
    for (what, zip, why) in cases {
        let target = d.join(format!("target-{what}"));
        let err = restore_into(&zip, &target, &LIMITS, &Options::default()).unwrap_err();
        assert!(matches!(err, RestoreError::Rejected(_)), "{what}: {err}");
        assert!(err.to_string().contains(why), "{what}: {err}");
        assert!(!target.exists() && !Swap::for_target(&target).staged.exists(), "{what}: nothing written");
    }
    assert!(!d.join("evil.txt").exists() && !Path::new("/tmp/evil.txt").exists());

    // The same name twice (the zip writer refuses it, so patch the second name in): the zip
    // reader keeps one entry per name, so at most one file is ever written for it.
    let zip = crafted(d, "dup.zip", &[("dupA", "file", b"first"), ("dupB", "file", b"second")]);
    let mut bytes = fs::read(&zip).unwrap();
    while let Some(at) = bytes.windows(4).position(|w| w == b"dupB") {
        bytes[at + 3] = b'A';
    }
    fs::write(&zip, bytes).unwrap();
    match restore_into(&zip, &d.join("dup"), &LIMITS, &Options::default()) {
        Ok(report) => assert_eq!(report.files, 1),
        Err(err) => assert!(matches!(err, RestoreError::Rejected(_) | RestoreError::Corrupt(_)), "{err}"),
    }

    // A setuid file comes back without setuid.
    let src = d.join("suid-src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("tool"), "#!/bin/sh\n").unwrap();
    fs::write(src.join("other"), "x").unwrap();
    fs::set_permissions(src.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    let zip = d.join("suid.zip");
    write_verified_zip(&src, &zip, Utc::now(), &Origin::test()).unwrap();
    restore_into(&zip, &d.join("suid"), &LIMITS, &Options::default()).unwrap();
    assert_eq!(fs::metadata(d.join("suid/tool")).unwrap().mode() & 0o7777, 0o755);

    // Inside-pointing symlinks, including through other symlinks, are fine.
    let fine = crafted(
        d,
        "fine.zip",
        &[("sub/", "dir", b""), ("sub/f.txt", "file", b"x"), ("l", "symlink", b"sub"), ("m", "symlink", b"l/f.txt")],
    );
    restore_into(&fine, &d.join("fine"), &LIMITS, &Options::default()).unwrap();
    assert_eq!(fs::read_to_string(d.join("fine/m")).unwrap(), "x");

    // Asked for: escaping symlinks are skipped and reported instead.
    let zip = crafted(d, "skip.zip", &[("ok.txt", "file", b"1"), ("passwd", "symlink", b"/etc/passwd")]);
    let options = Options { skip_escaping_symlinks: true, ..Options::default() };
    let report = restore_into(&zip, &d.join("skipped"), &LIMITS, &options).unwrap();
    assert_eq!(report.skipped, ["passwd"]);
    assert!(fs::symlink_metadata(d.join("skipped/passwd")).is_err());

    // Special files in a zip are never created.
    let zip = crafted(d, "fifo.zip", &[("ok.txt", "file", b"1"), ("pipe", "fifo", b"")]);
    let report = restore_into(&zip, &d.join("fifo"), &LIMITS, &Options::default()).unwrap();
    assert_eq!(report.skipped, ["pipe"]);
    assert!(!d.join("fifo/pipe").exists());
}

#[test]
fn zip_bombs_and_oversized_zips_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let zeros = vec![0u8; 100 << 20];
    let bomb = crafted(d, "bomb.zip", &[("zeros.bin", "file", &zeros)]);
    assert!(fs::metadata(&bomb).unwrap().len() < 1 << 20, "100 MiB of zeros deflate to a few hundred KiB");
    let err = restore_into(&bomb, &d.join("t"), &LIMITS, &Options::default()).unwrap_err();
    assert!(err.to_string().contains("zip bomb"), "{err}");
    let small = Limits { max_bytes: 1 << 20, ..LIMITS };
    let err = restore_into(&bomb, &d.join("t"), &small, &Options::default()).unwrap_err();
    assert!(err.to_string().contains("restore_max_bytes"), "{err}");
    let many = crafted(d, "many.zip", &[("a", "file", b"1"), ("b", "file", b"2"), ("c", "file", b"3")]);
    let few = Limits { max_entries: 2, ..LIMITS };
    let err = restore_into(&many, &d.join("t"), &few, &Options::default()).unwrap_err();
    assert!(err.to_string().contains("restore_max_entries"), "{err}");
    assert!(!d.join("t").exists());
}

#[test]
fn an_interrupted_swap_is_finished_or_undone() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ws");
    let swap = Swap::for_target(&target);
    // Between the two renames: the staged tree goes into place.
    fs::create_dir_all(&swap.replaced).unwrap();
    fs::create_dir_all(&swap.staged).unwrap();
    fs::write(swap.staged.join("new.txt"), "new").unwrap();
    assert!(swap.recover().unwrap());
    assert_eq!(fs::read_to_string(target.join("new.txt")).unwrap(), "new");
    assert!(!swap.replaced.exists() && !swap.staged.exists());
    // A half-extracted staged tree is dropped; the target stays.
    fs::create_dir_all(&swap.staged).unwrap();
    assert!(!swap.recover().unwrap());
    assert!(!swap.staged.exists() && target.join("new.txt").exists());
    // After both renames: only the old tree is left to drop.
    fs::create_dir_all(&swap.replaced).unwrap();
    assert!(swap.recover().unwrap());
    assert!(!swap.replaced.exists() && target.join("new.txt").exists());
}

#[test]
fn a_mount_point_is_restored_inside_not_swapped() {
    // /proc is always its own filesystem: renames could never move it, so a restore works inside
    // it (and fails cleanly here: nothing can be written in /proc).
    assert!(is_mount_point(Path::new("/proc")) && is_mount_point(Path::new("/")));
    let dir = tempfile::tempdir().unwrap();
    assert!(!is_mount_point(dir.path()));
    let zip = crafted(dir.path(), "small.zip", &[("a.txt", "file", b"a")]);
    let err = restore_into(&zip, Path::new("/proc"), &LIMITS, &Options::default()).unwrap_err();
    assert!(matches!(err, RestoreError::NoSpace { .. } | RestoreError::Io { .. }), "{err}");
    assert!(!Path::new("/.restore-proc").exists());
}

#[test]
fn a_restore_in_place_replaces_the_content_of_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (src, zip) = round_trip_zip(dir.path());
    let volume = dir.path().join("volume");
    fs::create_dir_all(volume.join("old/deep")).unwrap();
    fs::write(volume.join("stray.txt"), "gone after the restore").unwrap();
    fs::write(volume.join("old/deep/x"), "gone too").unwrap();
    let options = Options { expected_sha256: Some(sha256_file(&zip).unwrap().0), ..Options::default() };
    let report = restore_in_place(&zip, &volume, &LIMITS, &options).unwrap();
    assert_eq!((report.files, report.symlinks), (7, 2), "{report:?}");
    let mut want = snapshot(&src);
    want.remove("a fifo");
    assert_eq!(snapshot(&volume), want, "entries, contents, modes and times; nothing of the old tree left");
    // A wrong SHA-256 changes nothing and leaves nothing behind.
    let wrong = Options { expected_sha256: Some("0".repeat(64)), ..Options::default() };
    assert!(matches!(restore_in_place(&zip, &volume, &LIMITS, &wrong), Err(RestoreError::Corrupt(_))));
    assert_eq!(snapshot(&volume), want);
    // A zip using one of the names of the swap is refused.
    let clash = crafted(dir.path(), "clash.zip", &[(".wakeway-restore-old/a", "file", b"a")]);
    assert!(matches!(restore_in_place(&clash, &volume, &LIMITS, &Options::default()), Err(RestoreError::Rejected(_))));
}

#[test]
fn an_interrupted_restore_in_place_is_finished_or_undone() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    let swap = InPlace::for_target(&volume);
    let names = |d: &Path| {
        let mut v: Vec<String> =
            fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    let old_tree = || {
        fs::create_dir_all(volume.join("src")).unwrap();
        fs::write(volume.join("src/old.rs"), "old").unwrap();
        fs::write(volume.join("README"), "old").unwrap();
    };
    let staged_tree = || {
        fs::create_dir_all(swap.staged.join("lib")).unwrap();
        fs::write(swap.staged.join("lib/new.rs"), "new").unwrap();
        fs::write(swap.staged.join("NEW"), "new").unwrap();
    };
    // Interrupted extraction: the staged tree is dropped, the old tree stays.
    old_tree();
    staged_tree();
    assert!(!swap.recover().unwrap());
    assert_eq!(names(&volume), ["README", "src"]);
    // Interrupted first half (one old entry moved out, no marker): finished forward.
    staged_tree();
    fs::create_dir_all(&swap.replaced).unwrap();
    fs::rename(volume.join("src"), swap.replaced.join("src")).unwrap();
    assert!(swap.recover().unwrap());
    assert_eq!(names(&volume), ["NEW", "lib"]);
    assert_eq!(fs::read_to_string(volume.join("lib/new.rs")).unwrap(), "new");
    // Interrupted second half (every old entry out, one new entry up): finished.
    for n in ["NEW", "lib"] {
        fs::remove_dir_all(volume.join(n)).or_else(|_| fs::remove_file(volume.join(n))).unwrap();
    }
    old_tree();
    staged_tree();
    fs::create_dir_all(&swap.replaced).unwrap();
    for n in ["README", "src"] {
        fs::rename(volume.join(n), swap.replaced.join(n)).unwrap();
    }
    fs::write(&swap.moved_out, "").unwrap();
    fs::rename(swap.staged.join("NEW"), volume.join("NEW")).unwrap();
    assert!(swap.recover().unwrap());
    assert_eq!(names(&volume), ["NEW", "lib"]);
    // Nothing to do: nothing changes.
    assert!(!swap.recover().unwrap());
    assert_eq!(names(&volume), ["NEW", "lib"]);
}

/// A zip built by hand with raw names and an optional layout comment: (name, "file" | "dir" |
/// "symlink", content or target).
fn crafted_raw(dir: &Path, name: &str, comment: Option<&str>, entries: &[(&[u8], &str, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    let mut zip = ZipWriter::new(File::create(&path).unwrap());
    if let Some(comment) = comment {
        zip.set_comment(comment).unwrap();
    }
    for (entry, kind, content) in entries {
        let mode = match *kind {
            "dir" => 0o040755,
            "symlink" => 0o120777,
            _ => 0o100644,
        };
        let options = SimpleFileOptions::default().system(zip::System::Unix).external_attributes(mode << 16);
        zip.start_file_with_options(options.name(entry)).unwrap();
        zip.write_all(content).unwrap();
    }
    zip.finish().unwrap();
    path
}

/// Names in a folder, as raw bytes, with their mode and content (recursively).
fn raw_tree(root: &Path) -> BTreeMap<Vec<u8>, (u32, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
            let content = if meta.is_file() {
                fs::read(&path).unwrap()
            } else if meta.file_type().is_symlink() {
                fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec()
            } else {
                stack.push(path);
                Vec::new()
            };
            out.insert(rel, (meta.mode() & 0o7777, content));
        }
    }
    out
}

#[test]
fn a_layout_1_zip_restores_into_the_workspace_and_leaves_home_alone() {
    let dir = tempfile::tempdir().unwrap();
    // Written before HOME was backed up: no comment, no prefix (a folder named `home` is just a
    // folder of the workspace).
    let zip = crafted(dir.path(), "old.zip", &[("notes.txt", "file", b"old notes"), ("home/x", "file", b"x")]);
    let targets = Targets { workspace: dir.path().join("ws"), home: Some(dir.path().join("home")), in_place: false };
    fs::create_dir_all(dir.path().join("home")).unwrap();
    fs::write(dir.path().join("home/.bashrc"), "mine").unwrap();
    let report = restore(&zip, &targets, &LIMITS, &Options::default()).unwrap();
    assert_eq!((report.files, report.roots.clone(), report.left_out.len()), (2, vec!["workspace".into()], 0));
    assert_eq!(fs::read_to_string(targets.workspace.join("notes.txt")).unwrap(), "old notes");
    assert_eq!(fs::read_to_string(targets.workspace.join("home/x")).unwrap(), "x");
    assert_eq!(fs::read_to_string(dir.path().join("home/.bashrc")).unwrap(), "mine", "HOME untouched");
}

#[test]
fn both_roots_come_back_and_a_missing_home_target_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (ws, home) = (dir.path().join("ws"), dir.path().join("home"));
    tree(&ws);
    fs::create_dir_all(home.join("code-server/User")).unwrap();
    fs::write(home.join("code-server/User/settings.json"), r#"{"workbench.colorTheme": "Solarized"}"#).unwrap();
    fs::write(home.join(".gitconfig"), "[user]\n\tname = me\n").unwrap();
    touch(&home.join(".gitconfig"), 1_600_000_000, 5);
    let zip = dir.path().join("workspace-abc12345-20250101-120000.zip");
    let sources = crate::backup::Sources { workspace: &ws, home: Some(&home) };
    crate::backup::write_verified_backup(&sources, &zip, Utc::now(), &Origin::test()).unwrap();

    let targets =
        Targets { workspace: dir.path().join("new-ws"), home: Some(dir.path().join("new-home")), in_place: false };
    fs::create_dir_all(dir.path().join("new-home/stale")).unwrap();
    let report = restore(&zip, &targets, &LIMITS, &Options::default()).unwrap();
    assert_eq!(report.roots, ["workspace", "home"]);
    let mut want = snapshot(&ws);
    want.remove("a fifo");
    assert_eq!(snapshot(&targets.workspace), want);
    assert_eq!(snapshot(targets.home.as_ref().unwrap()), snapshot(&home), "HOME replaced as a whole");

    // Without a place for HOME (`wakeway restore` without --home-dest): left out, and said so.
    let only = dir.path().join("only-ws");
    let report = restore_into(&zip, &only, &LIMITS, &Options::default()).unwrap();
    assert_eq!((report.roots, report.left_out), (vec!["workspace".to_string()], vec!["home".to_string()]));
    assert_eq!(snapshot(&only), want);
    let line = Command::default().run(&zip, &dir.path().join("by-command"), &LIMITS);
    assert_eq!(line["ok"], true, "{line}");
    assert!(line["note"].as_str().unwrap().contains("home"), "{line}");
}

#[test]
fn raw_names_and_mode_000_round_trip_exactly() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let (ws, home) = (dir.path().join("ws"), dir.path().join("home"));
    fs::create_dir_all(ws.join(std::ffi::OsStr::from_bytes(b"\xff\xfe dir"))).unwrap();
    fs::create_dir_all(&home).unwrap();
    fs::write(ws.join(std::ffi::OsStr::from_bytes(b"\xff\xfe dir/r\xe9sum\xe9.txt")), "latin-1 name").unwrap();
    symlink(std::ffi::OsStr::from_bytes(b"\xff\xfe dir"), ws.join("link")).unwrap();
    fs::write(home.join("private"), "nobody may read this, not even me").unwrap();
    fs::set_permissions(home.join("private"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::create_dir_all(ws.join("closed")).unwrap();
    fs::write(ws.join("closed/in"), "in a closed folder").unwrap();
    fs::set_permissions(ws.join("closed"), fs::Permissions::from_mode(0o000)).unwrap();
    let zip = dir.path().join("workspace-abc12345-20250101-120000.zip");
    let sources = crate::backup::Sources { workspace: &ws, home: Some(&home) };
    crate::backup::write_verified_backup(&sources, &zip, Utc::now(), &Origin::test()).unwrap();
    let targets =
        Targets { workspace: dir.path().join("new-ws"), home: Some(dir.path().join("new-home")), in_place: false };
    restore(&zip, &targets, &LIMITS, &Options::default()).unwrap();
    assert_eq!(raw_tree(&targets.workspace), raw_tree(&ws), "names byte for byte, modes, content");
    assert_eq!(raw_tree(targets.home.as_ref().unwrap()), raw_tree(&home));
    assert_eq!(fs::metadata(targets.home.as_ref().unwrap().join("private")).unwrap().mode() & 0o7777, 0);
    // A tree with a closed folder is removed as a whole by the next restore.
    restore(&zip, &targets, &LIMITS, &Options::default()).unwrap();
    assert!(!Swap::for_target(&targets.workspace).replaced.exists());
    fs::set_permissions(ws.join("closed"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn raw_names_and_roots_are_checked_like_any_other() {
    use crate::backup::layout::COMMENT;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("ws");
    type RawEntry<'a> = (&'a [u8], &'a str, &'a [u8]);
    let cases: [(&str, Option<&str>, Vec<RawEntry>, &str); 6] = [
        ("traversal", None, vec![(b"\xff/../../evil", "file", b"x")], "traversal"),
        ("absolute", None, vec![(b"/tmp/\xff", "file", b"x")], "absolute"),
        (
            "outside the roots",
            Some(COMMENT),
            vec![(b"workspace/", "dir", b""), (b"etc/passwd", "file", b"x")],
            "neither",
        ),
        ("escape across roots", Some(COMMENT), vec![(b"home/l", "symlink", b"../workspace")], "outside"),
        ("absolute in a root", Some(COMMENT), vec![(b"home//etc", "file", b"x")], "absolute"),
        ("a later layout", Some("wakeway-backup v3"), vec![(b"workspace/a", "file", b"x")], "layout"),
    ];
    for (what, comment, entries, why) in cases {
        let zip = crafted_raw(dir.path(), "evil.zip", comment, &entries);
        let err = restore_into(&zip, &target, &LIMITS, &Options::default()).unwrap_err();
        assert!(matches!(&err, RestoreError::Rejected(m) if m.contains(why)), "{what}: {err}");
        assert!(!target.exists(), "{what}: nothing written");
    }
}

#[test]
fn a_crash_between_the_two_swaps_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let zip = crafted_raw(
        dir.path(),
        "v2.zip",
        Some(crate::backup::layout::COMMENT),
        &[
            (b"workspace/", "dir", b""),
            (b"workspace/w.txt", "file", b"w"),
            (b"home/", "dir", b""),
            (b"home/h.txt", "file", b"h"),
        ],
    );
    let targets = Targets { workspace: dir.path().join("ws"), home: Some(dir.path().join("home")), in_place: false };
    fs::create_dir_all(&targets.workspace).unwrap();
    fs::create_dir_all(targets.home.as_ref().unwrap()).unwrap();
    fs::write(targets.home.as_ref().unwrap().join("old.txt"), "old").unwrap();
    // The workspace was swapped; HOME's staged tree was complete but not yet swapped in.
    fs::write(targets.workspace.join("w.txt"), "w").unwrap();
    let home_swap = Swap::for_target(targets.home.as_ref().unwrap());
    fs::create_dir_all(&home_swap.staged).unwrap();
    fs::write(home_swap.staged.join("h.txt"), "h").unwrap();
    // Resuming: the leftovers are cleared and the whole restore redone.
    targets.recover().unwrap();
    assert!(!home_swap.staged.exists());
    restore(&zip, &targets, &LIMITS, &Options::default()).unwrap();
    assert_eq!(fs::read_to_string(targets.workspace.join("w.txt")).unwrap(), "w");
    let home = targets.home.as_ref().unwrap();
    assert_eq!((fs::read_to_string(home.join("h.txt")).unwrap(), home.join("old.txt").exists()), ("h".into(), false));
}
