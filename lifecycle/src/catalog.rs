//! The backup catalog: every `workspace-<id>-YYYYMMDD-HHMMSS.zip` in the backup folder, each with
//! a JSON record next to it (`workspace-<id>-YYYYMMDD-HHMMSS.json`: size, sha256, entries, session,
//! user, verification, `keep`).
//!
//! The record is a sidecar file rather than a table in the session store because it must travel
//! with the zip: the zip may be written by `wakeway backup` in a Kubernetes Job that has no access
//! to the store, the backup folder may be copied elsewhere, and a store reset must not make
//! backups unknown. A sidecar is written atomically (temporary file, fsync, rename, fsync of the
//! folder) after the zip was verified and *before* the zip is renamed into place, so a zip never
//! appears without its record. A zip found without one (copied in, or written by an older
//! wakeway) is re-verified once end to end, then recorded. A record is trusted only while the
//! zip's size, modification time and inode are what they were when it was verified; otherwise the
//! zip is verified again, and if its SHA-256 is not the recorded one it is marked failed.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup;
use crate::session::{BackupInfo, SessionId, Skipped};

crate::names::named! {
    /// Why a backup was written: recorded with it, sent in `backup_verified` events, and passed to
    /// a backup Job (`wakeway backup --reason`).
    pub enum BackupReason {
        /// Before a deletion: nothing is deleted without it.
        Delete => "delete",
        /// What the folder held before a restore replaced it.
        PreRestore => "pre_restore",
        /// `wakeway backup` run by hand.
        Command => "command",
        /// A zip found in the backup folder without a record.
        Found => "found",
    }
}

/// Where a backup came from (recorded with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub session: Option<String>,
    pub user_id: Option<String>,
    pub reason: BackupReason,
    /// The replica writing the backup (its `.partial` is named after it, so only that replica's
    /// start, or age, removes it). `None`: a backup Job or the `backup` command.
    pub writer: Option<String>,
}

impl Origin {
    pub fn new(session: &str, user_id: &str, reason: impl Into<BackupReason>) -> Self {
        Origin { session: Some(session.into()), user_id: Some(user_id.into()), reason: reason.into(), writer: None }
    }

    /// This origin, written by replica `writer`.
    pub fn by(mut self, writer: &str) -> Self {
        self.writer = Some(writer.into());
        self
    }

    #[cfg(test)]
    pub fn test() -> Self {
        Origin::new("abc12345", "u@example.com", "delete")
    }
}

/// What identifies the exact file a record was verified against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub len: u64,
    pub mtime_ns: i64,
    pub ino: u64,
}

impl FileStamp {
    pub fn of(meta: &fs::Metadata) -> Self {
        FileStamp {
            len: meta.len(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
            ino: meta.ino(),
        }
    }
}

/// One backup as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The file name without `.zip`: `workspace-<session>-YYYYMMDD-HHMMSS`.
    pub id: String,
    pub file: String,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub size: u64,
    pub sha256: String,
    pub entries: u64,
    #[serde(default)]
    pub content_bytes: u64,
    /// What could not be archived (sockets, FIFOs, devices, files that may not be read).
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// The zip's layout: 1 (the workspace folder alone, no prefix; records written before HOME
    /// was backed up have no such field) or 2 (`workspace/…` and `home/…`).
    #[serde(default = "layout_1")]
    pub layout: u32,
    /// The roots the zip holds (`workspace`, `home`).
    #[serde(default = "workspace_root")]
    pub roots: Vec<String>,
    /// Whether the zip passed verification (every entry read back, CRC-32 checked).
    pub verified: bool,
    pub verified_at: DateTime<Utc>,
    /// Why verification failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Exempt from `backup_retention`.
    #[serde(default)]
    pub keep: bool,
    pub reason: BackupReason,
    pub stamp: FileStamp,
}

impl BackupRecord {
    /// The record of a zip that was just written and verified.
    pub fn verified(info: &BackupInfo, origin: &Origin, stamp: FileStamp) -> Self {
        let id = info.file.strip_suffix(".zip").unwrap_or(&info.file).to_string();
        BackupRecord {
            created_at: backup_time(&id).unwrap_or(info.verified_at),
            session: origin.session.clone().or_else(|| session_of(&id).map(String::from)),
            id,
            file: info.file.clone(),
            user_id: origin.user_id.clone(),
            size: info.size,
            sha256: info.sha256.clone(),
            entries: info.entries,
            content_bytes: info.content_bytes,
            skipped: info.skipped.clone(),
            layout: backup::Layout::V2.version(),
            roots: workspace_root(),
            verified: true,
            verified_at: info.verified_at,
            error: None,
            keep: false,
            reason: origin.reason.clone(),
            stamp,
        }
    }
}

fn layout_1() -> u32 {
    1
}

fn workspace_root() -> Vec<String> {
    vec![backup::Root::Workspace.name().to_string()]
}

/// Which leftovers of interrupted backups a start may remove (see [`Catalog::clean_leftovers`]).
#[derive(Debug, Clone)]
pub struct Leftovers {
    /// Nothing but this process writes into the backup folder (one wakeway on its own store with
    /// the local backend): every leftover is its own.
    pub sole_writer: bool,
    /// This replica's name: its `.partial` files carry it (see [`Origin::writer`]).
    pub writer: String,
    /// A leftover not written to since then is a dead writer's: a live one keeps writing, and a
    /// backup Job is stopped at `job_timeout`.
    pub stale_before: SystemTime,
}

/// `writer` as it appears in a `.partial` name: letters, digits, `-` and `_` (others become `_`,
/// so the name has no extra dot).
pub fn writer_tag(writer: &str) -> String {
    writer.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no backup {0}")]
    NotFound(String),
    #[error("backup catalog: {0}")]
    Io(String),
}

/// `x.zip` → `x.json` (any other name gets `.json` appended).
pub fn sidecar_path(zip: &Path) -> PathBuf {
    let name = zip.file_name().unwrap_or_default().to_string_lossy();
    match name.strip_suffix(".zip") {
        Some(stem) => zip.with_file_name(format!("{stem}.json")),
        None => zip.with_file_name(format!("{name}.json")),
    }
}

/// Write `record` to `path` atomically: a temporary file, fsynced, renamed over, folder fsynced.
pub fn write_sidecar(path: &Path, record: &BackupRecord) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(record).map_err(io::Error::other)?)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn read_sidecar(path: &Path) -> io::Result<BackupRecord> {
    serde_json::from_slice(&fs::read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The time in a backup id or file name (`workspace-<id>-YYYYMMDD-HHMMSS[.zip]`).
pub fn backup_time(name: &str) -> Option<DateTime<Utc>> {
    let stem = name.strip_suffix(".zip").unwrap_or(name);
    let stamp = stem.strip_prefix("workspace-")?.get(9..)?;
    if stamp.len() != 15 {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d-%H%M%S").ok().map(|t| t.and_utc())
}

/// The session id in a backup id.
pub fn session_of(id: &str) -> Option<&str> {
    let session = id.strip_prefix("workspace-")?.get(..8)?;
    SessionId::parse(session).map(|_| session)
}

/// Whether `id` is a backup id: `workspace-<8 hex>-YYYYMMDD-HHMMSS`, nothing else (it becomes a
/// file name, so this is also the path check).
pub fn valid_id(id: &str) -> bool {
    id.len() == "workspace-abc12345-20250101-120000".len()
        && id.as_bytes()[18] == b'-'
        && session_of(id).is_some()
        && backup_time(id).is_some()
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The metadata of backup `id`'s zip, which must be a file.
fn zip_file(zip: &Path, id: &str) -> Result<fs::Metadata, CatalogError> {
    match fs::metadata(zip) {
        Ok(meta) if meta.is_file() => Ok(meta),
        Ok(_) => Err(CatalogError::NotFound(id.into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CatalogError::NotFound(id.into())),
        Err(e) => Err(CatalogError::Io(format!("{}: {e}", zip.display()))),
    }
}

/// `known`, if it was verified against the zip as it is now (and no new verification is forced).
fn up_to_date(known: Option<&BackupRecord>, meta: &fs::Metadata, force: bool) -> Option<BackupRecord> {
    known.filter(|record| !force && record.stamp == FileStamp::of(meta)).cloned()
}

/// The record of a zip found without one (not verified yet).
fn found_record(
    id: &str,
    meta: &fs::Metadata,
    now: DateTime<Utc>,
    user_of: &dyn Fn(&str) -> Option<String>,
) -> BackupRecord {
    BackupRecord {
        id: id.to_string(),
        file: format!("{id}.zip"),
        session: session_of(id).map(String::from),
        user_id: session_of(id).and_then(user_of),
        created_at: backup_time(id).unwrap_or(now),
        size: meta.len(),
        sha256: String::new(),
        entries: 0,
        content_bytes: 0,
        skipped: Vec::new(),
        layout: 1,
        roots: workspace_root(),
        verified: false,
        verified_at: now,
        error: None,
        keep: false,
        reason: BackupReason::Found,
        stamp: FileStamp::of(meta),
    }
}

/// Record what a re-verification found: the zip's facts if it reads back whole and is the one
/// `known` recorded (same SHA-256), or why it does not count as a backup.
fn take_verdict(
    record: &mut BackupRecord,
    known: Option<&BackupRecord>,
    verdict: Result<backup::Reverified, backup::BackupError>,
    meta: &fs::Metadata,
) {
    match verdict {
        Ok(found) if known.is_some_and(|k| !k.sha256.is_empty() && k.sha256 != found.sha256) => {
            record.verified = false;
            record.error = Some(format!(
                "the zip changed since it was verified: its SHA-256 is {}, {} was recorded",
                found.sha256, record.sha256
            ));
        }
        Ok(found) => {
            record.verified = true;
            record.error = None;
            record.sha256 = found.sha256;
            record.size = found.size;
            record.entries = found.entries;
            record.content_bytes = found.content_bytes;
            record.layout = found.layout;
            record.roots = found.roots;
        }
        Err(e) => {
            record.verified = false;
            record.error = Some(e.to_string());
            if record.sha256.is_empty() {
                record.size = meta.len();
            }
        }
    }
}

/// The catalog over one backup folder. Methods block (file I/O, re-verification): call them from
/// `spawn_blocking`.
pub struct Catalog {
    dir: PathBuf,
    /// Re-verification refuses zips that expand beyond this (`restore_max_bytes`).
    max_bytes: u64,
    /// Serializes record writes and re-verification.
    lock: Mutex<()>,
}

impl Catalog {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Catalog { dir, max_bytes, lock: Mutex::new(()) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The zip of backup `id` (which must be valid).
    pub fn zip_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.zip"))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every backup in the folder, oldest first. `user_of` names the user of a session, for zips
    /// found without a record.
    pub fn list(&self, now: DateTime<Utc>, user_of: &dyn Fn(&str) -> Option<String>) -> Vec<BackupRecord> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".zip").map(String::from))
            .filter(|id| valid_id(id))
            .collect();
        ids.sort_by(|a, b| backup_time(a).cmp(&backup_time(b)).then_with(|| a.cmp(b)));
        ids.iter().filter_map(|id| self.get(id, now, user_of, false).ok()).collect()
    }

    /// One backup. Re-verified first if its file changed since it was verified, if it has no
    /// record, or if `force`.
    pub fn get(
        &self,
        id: &str,
        now: DateTime<Utc>,
        user_of: &dyn Fn(&str) -> Option<String>,
        force: bool,
    ) -> Result<BackupRecord, CatalogError> {
        if !valid_id(id) {
            return Err(CatalogError::NotFound(id.into()));
        }
        let zip = self.zip_path(id);
        let sidecar = sidecar_path(&zip);
        let known = read_sidecar(&sidecar).ok().filter(|r| r.id == id);
        if let Some(record) = up_to_date(known.as_ref(), &zip_file(&zip, id)?, force) {
            return Ok(record);
        }
        let _guard = self.guard();
        // Someone may have re-verified it while this thread waited for the lock.
        let meta = zip_file(&zip, id)?;
        let known = read_sidecar(&sidecar).ok().filter(|r| r.id == id).or(known);
        if let Some(record) = up_to_date(known.as_ref(), &meta, force) {
            return Ok(record);
        }
        let mut record = known.clone().unwrap_or_else(|| found_record(id, &meta, now, user_of));
        record.verified_at = now;
        record.stamp = FileStamp::of(&meta);
        take_verdict(&mut record, known.as_ref(), backup::reverify(&zip, self.max_bytes), &meta);
        if record.verified {
            tracing::info!(backup = %id, sha256 = %record.sha256, "backup re-verified");
        } else {
            tracing::error!(backup = %id, error = ?record.error, "backup failed verification: it does not count as a backup");
        }
        if let Err(e) = write_sidecar(&sidecar, &record) {
            tracing::warn!(backup = %id, error = %e, "cannot write the backup record; it is re-verified next time");
        }
        Ok(record)
    }

    /// Mark backup `id` as failed (e.g. its SHA-256 did not match at restore time).
    pub fn mark_failed(&self, id: &str, why: &str) -> Result<BackupRecord, CatalogError> {
        let _guard = self.guard();
        let sidecar = sidecar_path(&self.zip_path(id));
        let mut record = read_sidecar(&sidecar).map_err(|_| CatalogError::NotFound(id.into()))?;
        record.verified = false;
        record.error = Some(why.to_string());
        write_sidecar(&sidecar, &record).map_err(|e| CatalogError::Io(e.to_string()))?;
        tracing::error!(backup = %id, error = why, "backup failed verification: it does not count as a backup");
        Ok(record)
    }

    /// Set or clear `keep` (exempt from retention).
    pub fn set_keep(
        &self,
        id: &str,
        keep: bool,
        now: DateTime<Utc>,
        user_of: &dyn Fn(&str) -> Option<String>,
    ) -> Result<BackupRecord, CatalogError> {
        let record = self.get(id, now, user_of, false)?;
        let _guard = self.guard();
        let sidecar = sidecar_path(&self.zip_path(id));
        let mut record = read_sidecar(&sidecar).unwrap_or(record);
        record.keep = keep;
        write_sidecar(&sidecar, &record).map_err(|e| CatalogError::Io(e.to_string()))?;
        Ok(record)
    }

    /// Delete backups taken before `cutoff`, except kept ones and those in `protected`. Returns
    /// each pruned id with the result.
    pub fn prune(&self, cutoff: DateTime<Utc>, protected: &HashSet<String>) -> Vec<(String, io::Result<()>)> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".zip") else { continue };
            if !valid_id(id) || protected.contains(id) || backup_time(id).is_none_or(|t| t >= cutoff) {
                continue;
            }
            let _guard = self.guard();
            let sidecar = sidecar_path(&entry.path());
            match read_sidecar(&sidecar) {
                Ok(record) if record.keep => continue,
                Ok(_) => {}
                // Never recorded: `keep` is set through the record, so this zip was never kept.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // It may say `keep`: a zip is never pruned on a record wakeway cannot read.
                Err(e) => {
                    let why = format!("kept: its record {} cannot be read ({e})", sidecar.display());
                    out.push((id.to_string(), Err(io::Error::other(why))));
                    continue;
                }
            }
            let result = fs::remove_file(entry.path()).and_then(|()| match fs::remove_file(&sidecar) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            });
            out.push((id.to_string(), result));
        }
        out
    }

    /// Remove what interrupted backups left (`.partial` zips, temporary records, records whose
    /// zip never got its final name) — only those `rule` says no live writer is still writing:
    /// the backup folder may be shared with other replicas and backup Jobs.
    pub fn clean_leftovers(&self, rule: &Leftovers) -> Vec<String> {
        let names = |dir: &Path| -> Vec<String> {
            fs::read_dir(dir)
                .map(|entries| entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
                .unwrap_or_default()
        };
        let own_suffix = format!(".{}.partial", writer_tag(&rule.writer));
        let stale = |name: &str| {
            fs::metadata(self.dir.join(name)).and_then(|m| m.modified()).is_ok_and(|t| t < rule.stale_before)
        };
        let mut removed = Vec::new();
        // Zips whose interrupted backup was this replica's: their records are this replica's too.
        let mut own_zips = HashSet::new();
        // Partial zips and temporary records first: then a record whose zip never got its name
        // is recognisable by the missing zip alone.
        for name in names(&self.dir) {
            if !(name.ends_with(".partial") || name.ends_with(".json.tmp")) {
                continue;
            }
            let own = name.ends_with(&own_suffix);
            if (rule.sole_writer || own || stale(&name)) && fs::remove_file(self.dir.join(&name)).is_ok() {
                if own && let Some((zip, _)) = name.split_once(".zip.") {
                    own_zips.insert(zip.to_string());
                }
                removed.push(name);
            }
        }
        for name in names(&self.dir) {
            if let Some(id) = name.strip_suffix(".json")
                && valid_id(id)
                && !self.zip_path(id).exists()
                && (rule.sole_writer || own_zips.contains(id) || stale(&name))
                && fs::remove_file(self.dir.join(&name)).is_ok()
            {
                removed.push(name);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests;
