//! Verified zip backups of a workspace folder and its HOME: written as `<name>.partial`, fsynced,
//! reopened and checked entry by entry against what was read from disk (names, kinds, modes,
//! times, sizes, CRC-32), then renamed into place. A zip that has not passed that check is never
//! called a backup. The zip's layout (two roots, `workspace/` and `home/`) is in [`layout`]; what
//! is read and what is skipped in [`walk`].

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use zip::ZipWriter;

use crate::catalog::{self, BackupRecord, FileStamp, Origin};
use crate::failpoint;
use crate::session::BackupInfo;

mod entry;
pub mod layout;
mod verify;
mod walk;
mod write;

pub use entry::{MTIME_FIELD, Mtime, entry_mode, entry_mtime, mtime_of};
pub use layout::{Layout, Root, Sources};
pub use verify::{Reverified, reverify, sha256_file};

/// Why a backup failed. The source folders are never changed (a mode loosened to read them is put
/// back).
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

/// Back up the folder `src` alone (the zip's `workspace` root; see [`write_verified_backup`]).
pub fn write_verified_zip(
    src: &Path,
    dest: &Path,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<BackupInfo, BackupError> {
    write_verified_backup(&Sources { workspace: src, home: None }, dest, now, origin)
}

/// Back up `sources` into the zip `dest` (which must not exist yet): write `dest.partial`, fsync,
/// verify, write the catalog record next to it (`<name>.json`, atomically), rename, fsync the
/// folder. On any error the partial file is removed and the sources are as they were.
pub fn write_verified_backup(
    sources: &Sources<'_>,
    dest: &Path,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<BackupInfo, BackupError> {
    let partial = partial_path_of(dest, origin.writer.as_deref());
    let result = write_and_verify(sources, dest, &partial, now, origin);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
        if !dest.exists() {
            let _ = fs::remove_file(catalog::sidecar_path(dest));
        }
    }
    result
}

/// `<dest>.partial`: what a backup is written as until it is verified. Never trusted.
pub fn partial_path(dest: &Path) -> PathBuf {
    partial_path_of(dest, None)
}

/// `<dest>.<writer>.partial` (a replica's; see [`catalog::writer_tag`]) or `<dest>.partial`.
pub fn partial_path_of(dest: &Path, writer: Option<&str>) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    if let Some(writer) = writer {
        name.push(format!(".{}", catalog::writer_tag(writer)));
    }
    name.push(".partial");
    dest.with_file_name(name)
}

fn write_and_verify(
    sources: &Sources<'_>,
    dest: &Path,
    partial: &Path,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<BackupInfo, BackupError> {
    let dest_err = |source| BackupError::Dest { path: partial.to_owned(), source };
    if dest.exists() {
        return Err(dest_err(io::Error::new(io::ErrorKind::AlreadyExists, "a backup with this name exists")));
    }
    let found = walk::walk(sources)?;
    // A partial file is what a crash mid-backup leaves: start over.
    let _ = fs::remove_file(partial);
    let file = File::create_new(partial).map_err(dest_err)?;
    let mut zip = ZipWriter::new(io::BufWriter::with_capacity(256 * 1024, file));
    zip.set_comment(layout::COMMENT).map_err(|source| BackupError::Zip { path: partial.to_owned(), source })?;
    let (entries, unreadable) = write::add_all(&mut zip, &found.found, partial)?;
    // Every mode loosened to read the sources is put back before the zip is even verified.
    let mut skipped = found.skipped;
    drop(found.loosened);
    skipped.extend(unreadable);
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    let file = zip.finish().map_err(|source| BackupError::Zip { path: partial.to_owned(), source })?;
    let file = file.into_inner().map_err(|e| dest_err(e.into_error()))?;
    file.sync_all().map_err(dest_err)?;
    drop(file);

    let (sha256, size) = verify::verify(partial, &entries)?;
    let content_bytes =
        entries.iter().map(|e| if let verify::Kind::File { size, .. } = e.kind { size } else { 0 }).sum();
    let info = BackupInfo {
        file: dest.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        size,
        sha256,
        // Things in the folders: the roots' own entries (`workspace/`, `home/`) are not counted.
        entries: entries.iter().filter(|e| !Root::ALL.iter().any(|r| e.name == r.prefix())).count() as u64,
        content_bytes,
        verified_at: now,
        skipped,
    };
    let stamp = FileStamp::of(&fs::metadata(partial).map_err(dest_err)?);
    let mut record = BackupRecord::verified(&info, origin, stamp);
    record.layout = Layout::V2.version();
    record.roots = sources.roots().iter().map(|(root, _)| root.name().to_string()).collect();
    catalog::write_sidecar(&catalog::sidecar_path(dest), &record).map_err(dest_err)?;
    failpoint::hit("backup.before_rename");
    fs::rename(partial, dest).map_err(dest_err)?;
    if let Some(dir) = dest.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(dest_err)?;
    }
    Ok(info)
}

#[cfg(test)]
mod tests;
