//! Verified zip backups of a workspace folder: written as `<name>.partial`, fsynced, reopened and
//! checked entry by entry against what was read from disk (names, kinds, sizes, CRC-32), then
//! renamed into place. A zip that has not passed that check is never called a backup.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Timelike, Utc};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::session::BackupInfo;

/// Why a backup failed. The source folder is never touched.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read the workspace at {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    #[error("cannot write the backup {path}: {source}")]
    Dest { path: PathBuf, source: io::Error },
    #[error("cannot back up {path} losslessly: {why}")]
    Unsupported { path: PathBuf, why: String },
    #[error("zip error writing {path}: {source}")]
    Zip { path: PathBuf, source: zip::result::ZipError },
    #[error("verification of {path} failed: {why}")]
    Verify { path: PathBuf, why: String },
}

/// `workspace-<id>-YYYYMMDD-HHMMSS.zip`, the seed's naming.
pub fn backup_file_name(id: &str, at: DateTime<Utc>) -> String {
    format!("workspace-{id}-{}.zip", at.format("%Y%m%d-%H%M%S"))
}

#[derive(Debug, PartialEq)]
enum Kind {
    File { size: u64, crc: u32 },
    Dir,
    Symlink { target: String },
}

struct Entry {
    name: String,
    kind: Kind,
}

/// Back up `src` into the zip `dest` (which must not exist yet): write `dest.partial`, fsync,
/// verify, rename, fsync the folder. On any error the partial file is removed and `src` is
/// untouched.
pub fn write_verified_zip(src: &Path, dest: &Path, now: DateTime<Utc>) -> Result<BackupInfo, BackupError> {
    let partial = partial_path(dest);
    let result = write_and_verify(src, dest, &partial, now);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn write_and_verify(src: &Path, dest: &Path, partial: &Path, now: DateTime<Utc>) -> Result<BackupInfo, BackupError> {
    let dest_err = |source| BackupError::Dest { path: partial.to_owned(), source };
    let meta = fs::metadata(src).map_err(|source| BackupError::Source { path: src.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(BackupError::Source { path: src.to_owned(), source: io::Error::other("not a folder") });
    }
    if dest.exists() {
        return Err(dest_err(io::Error::new(io::ErrorKind::AlreadyExists, "a backup with this name exists")));
    }
    // A partial file is what a crash mid-backup leaves: start over.
    let _ = fs::remove_file(partial);
    let file = File::create_new(partial).map_err(dest_err)?;
    let mut zip = ZipWriter::new(file);
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    add_dir(&mut zip, src, src, &mut entries, &mut skipped, partial)?;
    let file = zip.finish().map_err(|source| BackupError::Zip { path: partial.to_owned(), source })?;
    file.sync_all().map_err(dest_err)?;
    drop(file);

    let (sha256, size) = verify(partial, &entries)?;
    fs::rename(partial, dest).map_err(dest_err)?;
    if let Some(dir) = dest.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(dest_err)?;
    }
    let content_bytes = entries.iter().map(|e| if let Kind::File { size, .. } = e.kind { size } else { 0 }).sum();
    Ok(BackupInfo {
        file: dest.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        size,
        sha256,
        entries: entries.len() as u64,
        content_bytes,
        verified_at: now,
        skipped,
    })
}

fn zip_name(root: &Path, path: &Path) -> Result<String, BackupError> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let text = rel.to_str().ok_or_else(|| BackupError::Unsupported {
        path: path.to_owned(),
        why: "the file name is not valid UTF-8".into(),
    })?;
    Ok(text.to_string())
}

fn options_for(meta: &fs::Metadata) -> SimpleFileOptions {
    let mut options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(meta.permissions().mode() & 0o7777)
        .large_file(meta.len() >= u32::MAX as u64);
    if let Some(t) = DateTime::<Utc>::from_timestamp(meta.mtime(), 0)
        && let Ok(dt) = zip::DateTime::from_date_and_time(
            t.year().clamp(1980, 2107) as u16,
            t.month() as u8,
            t.day() as u8,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
        )
    {
        options = options.last_modified_time(dt);
    }
    options
}

fn add_dir(
    zip: &mut ZipWriter<File>,
    root: &Path,
    dir: &Path,
    entries: &mut Vec<Entry>,
    skipped: &mut Vec<String>,
    partial: &Path,
) -> Result<(), BackupError> {
    let src_err = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Source { path, source }
    };
    let zip_err = |source| BackupError::Zip { path: partial.to_owned(), source };
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(src_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(src_err(dir))?;
    children.sort();
    for path in children {
        let meta = fs::symlink_metadata(&path).map_err(src_err(&path))?;
        let name = zip_name(root, &path)?;
        let options = options_for(&meta);
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(src_err(&path))?;
            let target = target.to_str().ok_or_else(|| BackupError::Unsupported {
                path: path.clone(),
                why: "the symlink target is not valid UTF-8".into(),
            })?;
            zip.add_symlink(name.as_str(), target, options).map_err(zip_err)?;
            entries.push(Entry { name, kind: Kind::Symlink { target: target.to_string() } });
        } else if kind.is_dir() {
            zip.add_directory(name.as_str(), options).map_err(zip_err)?;
            entries.push(Entry { name: format!("{name}/"), kind: Kind::Dir });
            add_dir(zip, root, &path, entries, skipped, partial)?;
        } else if kind.is_file() {
            zip.start_file(name.as_str(), options).map_err(zip_err)?;
            let mut file = File::open(&path).map_err(src_err(&path))?;
            let (size, crc) = copy_with_crc(&mut file, zip)
                .map_err(|source| BackupError::Dest { path: partial.to_owned(), source })?;
            entries.push(Entry { name, kind: Kind::File { size, crc } });
        } else {
            skipped.push(name);
        }
    }
    Ok(())
}

fn copy_with_crc(from: &mut impl Read, to: &mut impl Write) -> io::Result<(u64, u32)> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hasher.finalize()))
}

/// Reopen the zip and check every entry against what was written. Returns (sha256, size).
fn verify(path: &Path, expected: &[Entry]) -> Result<(String, u64), BackupError> {
    let fail = |why: String| BackupError::Verify { path: path.to_owned(), why };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut archive = ZipArchive::new(file).map_err(|e| fail(e.to_string()))?;
    if archive.len() != expected.len() {
        return Err(fail(format!("{} entries in the zip, {} written", archive.len(), expected.len())));
    }
    for entry in expected {
        let mut found = archive.by_name(&entry.name).map_err(|e| fail(format!("{}: {e}", entry.name)))?;
        match &entry.kind {
            Kind::Dir => {
                if !found.is_dir() {
                    return Err(fail(format!("{} is not a folder in the zip", entry.name)));
                }
            }
            Kind::Symlink { target } => {
                let mut got = String::new();
                found.read_to_string(&mut got).map_err(|e| fail(format!("{}: {e}", entry.name)))?;
                if !found.is_symlink() || &got != target {
                    return Err(fail(format!("{} is not the symlink to {target}", entry.name)));
                }
            }
            Kind::File { size, crc } => {
                if found.size() != *size {
                    return Err(fail(format!(
                        "{}: {} bytes in the zip, {size} read from disk",
                        entry.name,
                        found.size()
                    )));
                }
                // Reading to the end also makes the zip reader check the stored CRC-32.
                let (got_size, got_crc) =
                    copy_with_crc(&mut found, &mut io::sink()).map_err(|e| fail(format!("{}: {e}", entry.name)))?;
                if got_size != *size || got_crc != *crc {
                    return Err(fail(format!("{}: content differs from what was read from disk", entry.name)));
                }
            }
        }
    }
    drop(archive);
    let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher).map_err(|e| fail(e.to_string()))?;
    Ok((format!("{:x}", hasher.finalize()), size))
}

/// Check an existing zip end to end (every entry's CRC) without a manifest: used to re-verify a
/// backup found after a crash before it is trusted.
pub fn reverify(path: &Path) -> Result<(String, u64, u64), BackupError> {
    let fail = |why: String| BackupError::Verify { path: path.to_owned(), why };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut archive = ZipArchive::new(file).map_err(|e| fail(e.to_string()))?;
    let entries = archive.len() as u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| fail(e.to_string()))?;
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_else(|_| format!("entry {i}"));
        io::copy(&mut entry, &mut io::sink()).map_err(|e| fail(format!("{name}: {e}")))?;
    }
    let mut file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher).map_err(|e| fail(e.to_string()))?;
    Ok((format!("{:x}", hasher.finalize()), size, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

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
        let info = write_verified_zip(&src, &dest, Utc::now()).unwrap();
        assert!(dest.exists() && !partial_path(&dest).exists());
        assert_eq!(info.entries, 10);
        assert_eq!(info.content_bytes, (5 + 15_000 + 70_000) + 7 + 10);
        let mut zip = ZipArchive::new(File::open(&dest).unwrap()).unwrap();
        let mut text = String::new();
        zip.by_name("project/app.js").unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "console.log(1)\n".repeat(1000));
        assert_eq!(zip.by_name("run.sh").unwrap().unix_mode().unwrap() & 0o777, 0o755);
        assert!(zip.by_name("link").unwrap().is_symlink());
        assert!(zip.by_name("empty/").unwrap().is_dir());
        let (sha, size, entries) = reverify(&dest).unwrap();
        assert_eq!((sha, size, entries), (info.sha256, info.size, 10));
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("ws");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("a.txt"), "x".repeat(10_000)).unwrap();
        let dest = dir.path().join("b.zip");
        write_verified_zip(&src, &dest, Utc::now()).unwrap();
        let mut bytes = fs::read(&dest).unwrap();
        bytes[60] ^= 0xff; // inside the compressed data of the only entry
        fs::write(&dest, bytes).unwrap();
        assert!(reverify(&dest).is_err());
    }

    #[test]
    fn an_unwritable_destination_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("ws");
        tree(&src);
        let dest = dir.path().join("missing-folder/b.zip");
        assert!(matches!(write_verified_zip(&src, &dest, Utc::now()), Err(BackupError::Dest { .. })));
        assert!(src.join("data.txt").exists());
    }

    #[test]
    fn the_name_follows_the_seed() {
        let t = DateTime::parse_from_rfc3339("2025-11-15T04:14:44Z").unwrap().with_timezone(&Utc);
        assert_eq!(backup_file_name("bc7ab025", t), "workspace-bc7ab025-20251115-041444.zip");
    }
}
