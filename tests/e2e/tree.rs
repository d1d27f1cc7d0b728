//! Workspace trees for the backup tests: one with every kind of thing a workspace holds, a
//! snapshot that compares them exactly (kind, content hash, mode, mtime to the nanosecond, link
//! target), and "is every file still somewhere" checks against the folder and verified backups.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};

/// path → (kind, mode, mtime seconds, mtime nanoseconds, content hash or link target).
pub type Snapshot = BTreeMap<String, (String, u32, i64, i64, String)>;

pub fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

pub fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (kind, what) = if meta.file_type().is_symlink() {
                ("symlink", fs::read_link(&path).unwrap().to_string_lossy().into_owned())
            } else if meta.is_dir() {
                ("dir", String::new())
            } else if meta.is_file() {
                ("file", sha256(&fs::read(&path).unwrap()))
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

/// Nested folders, binary, empty and executable files, empty folders, symlinks, names with spaces
/// and unicode, a FIFO (skipped by backups), and nanosecond modification times on everything.
pub fn make(root: &Path) {
    fs::create_dir_all(root.join("project/src/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty folder/also empty")).unwrap();
    let binary: Vec<u8> = (0..400_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    fs::write(root.join("project/src/nested/deeper/blob.bin"), binary).unwrap();
    fs::write(root.join("project/src/main.rs"), "fn main() { println!(\"hi\"); }\n".repeat(300)).unwrap();
    fs::write(root.join("empty.txt"), "").unwrap();
    fs::write(root.join("name with spaces.md"), "spaces").unwrap();
    fs::write(root.join("ünïcödé — 日本語 ☕.txt"), "unicode").unwrap();
    let script = root.join("project/build.sh");
    fs::write(&script, "#!/bin/sh\necho build\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let private = root.join("project/.env");
    fs::write(&private, "TOKEN=1\n").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    symlink("project/src/main.rs", root.join("main-link.rs")).unwrap();
    symlink("nested", root.join("project/src/nested-link")).unwrap();
    nix::unistd::mkfifo(&root.join("a fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    for (n, path) in snapshot(root).keys().enumerate() {
        let t = TimeSpec::new(1_700_000_000 + n as i64 * 3_601, 987_654_321 - n as i64 * 7);
        utimensat(nix::fcntl::AT_FDCWD, &root.join(path), &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
    }
}

/// The snapshot of a tree made by [`make`] as a restore gives it back (the FIFO is not backed up).
pub fn without_specials(mut snap: Snapshot) -> Snapshot {
    snap.retain(|_, v| v.0 != "special");
    snap
}

/// Regular files in a folder: path → content.
pub fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot(root)
        .into_iter()
        .filter(|(_, v)| v.0 == "file")
        .map(|(path, _)| {
            let content = fs::read(root.join(&path)).unwrap();
            (path, content)
        })
        .collect()
}

/// Regular files of a zip's workspace root: path → content (layout 2: `workspace/…`; a zip without
/// the layout comment holds the workspace alone, unprefixed).
pub fn zip_files(zip: &Path) -> BTreeMap<String, Vec<u8>> {
    zip_root_files(zip, "workspace")
}

/// Regular files of one root (`workspace` or `home`) of a zip: path inside it → content.
pub fn zip_root_files(zip: &Path, root: &str) -> BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(fs::File::open(zip).unwrap()).unwrap();
    let v2 = archive.comment() == b"wakeway-backup v2";
    let prefix = if v2 { format!("{root}/") } else { String::new() };
    let mut out = BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        let Some(path) = name.strip_prefix(&prefix) else { continue };
        if entry.is_file() {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            out.insert(path.to_string(), content);
        }
    }
    out
}
