//! Verified zip backups of a workspace folder: written as `<name>.partial`, fsynced, reopened and
//! checked entry by entry against what was read from disk (names, kinds, sizes, CRC-32), then
//! renamed into place. A zip that has not passed that check is never called a backup.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Timelike, Utc};
use sha2::{Digest, Sha256};
use zip::extra_fields::ExtraField;
use zip::write::{FullFileOptions, PreparedZipFile};
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::catalog::{self, BackupRecord, FileStamp, Origin};
use crate::failpoint;
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

/// wakeway's own zip extra field: the exact modification time (`"WW"`: version 1, i64 seconds and
/// u32 nanoseconds since the Unix epoch, little-endian). The DOS time every zip has is local time
/// with 2 s resolution and no zone; the Info-ZIP extended timestamp (also written, for `unzip`) has
/// 1 s resolution.
pub const MTIME_FIELD: u16 = 0x5757;

/// An entry's modification time as (seconds, nanoseconds) since the Unix epoch.
pub type Mtime = (i64, u32);

#[derive(Debug, PartialEq)]
enum Kind {
    File { size: u64, crc: u32 },
    Dir,
    Symlink { target: String },
}

struct Entry {
    name: String,
    kind: Kind,
    mode: u32,
    mtime: Mtime,
}

/// Back up `src` into the zip `dest` (which must not exist yet): write `dest.partial`, fsync,
/// verify, write the catalog record next to it (`<name>.json`, atomically), rename, fsync the
/// folder. On any error the partial file is removed and `src` is untouched.
pub fn write_verified_zip(
    src: &Path,
    dest: &Path,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<BackupInfo, BackupError> {
    let partial = partial_path(dest);
    let result = write_and_verify(src, dest, &partial, now, origin);
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
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

fn write_and_verify(
    src: &Path,
    dest: &Path,
    partial: &Path,
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<BackupInfo, BackupError> {
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
    let mut zip = ZipWriter::new(io::BufWriter::with_capacity(256 * 1024, file));
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    add_all(&mut zip, src, &mut entries, &mut skipped, partial)?;
    let file = zip.finish().map_err(|source| BackupError::Zip { path: partial.to_owned(), source })?;
    let file = file.into_inner().map_err(|e| dest_err(e.into_error()))?;
    file.sync_all().map_err(dest_err)?;
    drop(file);

    let (sha256, size) = verify(partial, &entries)?;
    let content_bytes = entries.iter().map(|e| if let Kind::File { size, .. } = e.kind { size } else { 0 }).sum();
    let info = BackupInfo {
        file: dest.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        size,
        sha256,
        entries: entries.len() as u64,
        content_bytes,
        verified_at: now,
        skipped,
    };
    let stamp = FileStamp::of(&fs::metadata(partial).map_err(dest_err)?);
    let record = BackupRecord::verified(&info, origin, stamp);
    catalog::write_sidecar(&catalog::sidecar_path(dest), &record).map_err(dest_err)?;
    failpoint::hit("backup.before_rename");
    fs::rename(partial, dest).map_err(dest_err)?;
    if let Some(dir) = dest.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(dest_err)?;
    }
    Ok(info)
}

fn zip_name(root: &Path, path: &Path) -> Result<String, BackupError> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let text = rel.to_str().ok_or_else(|| BackupError::Unsupported {
        path: path.to_owned(),
        why: "the file name is not valid UTF-8".into(),
    })?;
    Ok(text.to_string())
}

/// The modification time of `meta`, exactly.
pub fn mtime_of(meta: &fs::Metadata) -> Mtime {
    (meta.mtime(), meta.mtime_nsec().clamp(0, 999_999_999) as u32)
}

fn options_for(meta: &fs::Metadata, partial: &Path) -> Result<FullFileOptions<'static, 'static>, BackupError> {
    let mtime = mtime_of(meta);
    // The whole st_mode (type and all 12 permission bits: setuid, setgid and sticky too;
    // `unix_permissions` would keep only 0o777).
    let mut options = FullFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .system(zip::System::Unix)
        .external_attributes((meta.mode() & 0xffff) << 16)
        .large_file(meta.len() >= u32::MAX as u64);
    if let Some(t) = DateTime::<Utc>::from_timestamp(mtime.0, 0)
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
    let zip_err = |source| BackupError::Zip { path: partial.to_owned(), source };
    let mut exact = [0u8; 13];
    exact[0] = 1;
    exact[1..9].copy_from_slice(&mtime.0.to_le_bytes());
    exact[9..13].copy_from_slice(&mtime.1.to_le_bytes());
    options.add_extra_field(MTIME_FIELD, exact, false).map_err(zip_err)?;
    if let Ok(secs) = u32::try_from(mtime.0) {
        options = options.with_extended_timestamp(Some(secs), None, None).map_err(zip_err)?;
    }
    Ok(options)
}

/// An entry's Unix mode with all 12 permission bits (the zip reader's `unix_mode` clears setuid,
/// setgid and sticky).
pub fn entry_mode<R: Read>(entry: &zip::read::ZipFile<'_, R>) -> Option<u32> {
    let attributes = entry.external_attributes();
    if entry.system() == zip::System::Unix && attributes >> 16 != 0 {
        return Some(attributes >> 16);
    }
    entry.unix_mode()
}

/// An entry's modification time: wakeway's exact field, else the extended timestamp (1 s), else
/// the DOS time (2 s, read as UTC, which is how wakeway wrote it before the exact field existed).
pub fn entry_mtime<R: Read>(entry: &zip::read::ZipFile<'_, R>) -> Option<Mtime> {
    let mut extended = None;
    for field in entry.extra_data_fields() {
        match field {
            ExtraField::Custom(c) if c.header_id == MTIME_FIELD && c.data.len() >= 13 && c.data[0] == 1 => {
                let secs = i64::from_le_bytes(c.data[1..9].try_into().ok()?);
                let nanos = u32::from_le_bytes(c.data[9..13].try_into().ok()?);
                if nanos < 1_000_000_000 {
                    return Some((secs, nanos));
                }
            }
            ExtraField::ExtendedTimestamp(t) => extended = t.mod_time().map(|s| (i64::from(s), 0)),
            _ => {}
        }
    }
    if extended.is_some() {
        return extended;
    }
    let dos = entry.last_modified()?;
    let date = chrono::NaiveDate::from_ymd_opt(dos.year().into(), dos.month().into(), dos.day().into())?;
    let time = date.and_hms_opt(dos.hour().into(), dos.minute().into(), dos.second().into())?;
    Some((time.and_utc().timestamp(), 0))
}

type Zip = ZipWriter<io::BufWriter<File>>;

/// One thing found in the workspace, in zip order.
struct Found {
    name: String,
    path: PathBuf,
    meta: fs::Metadata,
    kind: FoundKind,
}

enum FoundKind {
    Dir,
    Symlink(String),
    File,
    /// A socket, FIFO or device: not backed up, reported.
    Special,
}

/// Walk `dir` depth-first in name order (the order entries are written and verified in).
fn walk(root: &Path, dir: &Path, out: &mut Vec<Found>) -> Result<(), BackupError> {
    let src_err = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Source { path, source }
    };
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(src_err(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(src_err(dir))?;
    children.sort();
    for path in children {
        let meta = fs::symlink_metadata(&path).map_err(src_err(&path))?;
        let name = zip_name(root, &path)?;
        let file_type = meta.file_type();
        let kind = if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(src_err(&path))?;
            let target = target.to_str().ok_or_else(|| BackupError::Unsupported {
                path: path.clone(),
                why: "the symlink target is not valid UTF-8".into(),
            })?;
            FoundKind::Symlink(target.to_string())
        } else if file_type.is_dir() {
            FoundKind::Dir
        } else if file_type.is_file() {
            FoundKind::File
        } else {
            FoundKind::Special
        };
        let is_dir = matches!(kind, FoundKind::Dir);
        out.push(Found { name, path: path.clone(), meta, kind });
        if is_dir {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

/// Files up to this size are read whole and compressed on worker threads; larger ones are
/// streamed by the writing thread.
const SMALL_FILE: u64 = 4 << 20;
/// Raw bytes of small files read ahead at most (bounds memory).
const READ_AHEAD: u64 = 64 << 20;

/// Whether deflate gained too little to be worth inflating on every verify and restore.
fn not_worth_deflating(raw: u64, deflated: u64) -> bool {
    deflated.saturating_mul(100) >= raw.saturating_mul(97)
}

/// Compress one small file off the writing thread: deflated, or stored when deflate does not
/// pay (already compressed data). Returns the prepared entry, its size and CRC-32 as read.
fn prepare(
    found: &Found,
    options: FullFileOptions<'static, 'static>,
) -> Result<(PreparedZipFile, u64, u32), BackupError> {
    let data = fs::read(&found.path).map_err(|source| BackupError::Source { path: found.path.clone(), source })?;
    let zip_err = |source| BackupError::Zip { path: found.path.clone(), source };
    let crc = crc32fast::hash(&data);
    let stored = options.clone().compression_method(CompressionMethod::Stored);
    let prepared = if data.is_empty() {
        PreparedZipFile::from_data(&found.name, stored, &data).map_err(zip_err)?
    } else {
        let deflated = PreparedZipFile::from_data(&found.name, options, &data).map_err(zip_err)?;
        if not_worth_deflating(data.len() as u64, deflated.compressed_size()) {
            PreparedZipFile::from_data(&found.name, stored, &data).map_err(zip_err)?
        } else {
            deflated
        }
    };
    Ok((prepared, data.len() as u64, crc))
}

/// Stream one large file into the zip: deflated unless its first MiB does not compress.
fn add_large(
    zip: &mut Zip,
    found: &Found,
    options: FullFileOptions<'static, 'static>,
    partial: &Path,
) -> Result<(u64, u32), BackupError> {
    let src_err = |source| BackupError::Source { path: found.path.clone(), source };
    let zip_err = |source| BackupError::Zip { path: partial.to_owned(), source };
    let mut file = File::open(&found.path).map_err(src_err)?;
    let mut head = Vec::with_capacity(1 << 20);
    (&mut file).take(1 << 20).read_to_end(&mut head).map_err(src_err)?;
    let probe = PreparedZipFile::from_data("probe", options.clone(), &head).map_err(zip_err)?;
    let options = if not_worth_deflating(head.len() as u64, probe.compressed_size()) {
        options.compression_method(CompressionMethod::Stored)
    } else {
        options
    };
    zip.start_file(found.name.as_str(), options).map_err(zip_err)?;
    let dest_err = |source| BackupError::Dest { path: partial.to_owned(), source };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head);
    zip.write_all(&head).map_err(dest_err)?;
    let rest = copy_hashing(&mut file, zip, &mut hasher).map_err(dest_err)?;
    Ok((head.len() as u64 + rest, hasher.finalize()))
}

type Prepared = Result<(PreparedZipFile, u64, u32), BackupError>;

/// Write every entry found under `root` into `zip`, compressing small files on worker threads
/// and appending them in order.
fn add_all(
    zip: &mut Zip,
    root: &Path,
    entries: &mut Vec<Entry>,
    skipped: &mut Vec<String>,
    partial: &Path,
) -> Result<(), BackupError> {
    let mut found = Vec::new();
    walk(root, root, &mut found)?;
    let options: Vec<Option<FullFileOptions<'static, 'static>>> = found
        .iter()
        .map(|f| (!matches!(f.kind, FoundKind::Special)).then(|| options_for(&f.meta, partial)).transpose())
        .collect::<Result<_, _>>()?;
    let is_small = |f: &Found| matches!(f.kind, FoundKind::File) && f.meta.len() <= SMALL_FILE;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let zip_err = |source| BackupError::Zip { path: partial.to_owned(), source };
    let found = &found;
    let options = &options;
    std::thread::scope(|scope| -> Result<(), BackupError> {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<usize>();
        let jobs_rx = std::sync::Arc::new(std::sync::Mutex::new(jobs_rx));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, Prepared)>();
        for _ in 0..workers {
            let (jobs_rx, done_tx) = (jobs_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                loop {
                    let job = jobs_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(i) = job else { return };
                    let prepared = prepare(&found[i], options[i].clone().expect("files have options"));
                    if done_tx.send((i, prepared)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut next_job = 0;
        let mut in_flight = 0u64;
        let mut ready = std::collections::BTreeMap::new();
        let mut files = 0;
        let result = (|| -> Result<(), BackupError> {
            for (i, f) in found.iter().enumerate() {
                // Keep the workers fed, ahead of the writer, within the read-ahead bound.
                next_job = next_job.max(i);
                while next_job < found.len() && (in_flight < READ_AHEAD || next_job == i) {
                    if is_small(&found[next_job]) {
                        in_flight += found[next_job].meta.len();
                        let _ = jobs_tx.send(next_job);
                    }
                    next_job += 1;
                }
                let mode = f.meta.mode() & 0o7777;
                let mtime = mtime_of(&f.meta);
                match &f.kind {
                    FoundKind::Special => skipped.push(f.name.clone()),
                    FoundKind::Dir => {
                        zip.add_directory(f.name.as_str(), options[i].clone().expect("dirs have options"))
                            .map_err(zip_err)?;
                        entries.push(Entry { name: format!("{}/", f.name), kind: Kind::Dir, mode, mtime });
                    }
                    FoundKind::Symlink(target) => {
                        zip.add_symlink(f.name.as_str(), target, options[i].clone().expect("links have options"))
                            .map_err(zip_err)?;
                        entries.push(Entry {
                            name: f.name.clone(),
                            kind: Kind::Symlink { target: target.clone() },
                            mode,
                            mtime,
                        });
                    }
                    FoundKind::File => {
                        let (size, crc) = if is_small(f) {
                            let prepared = loop {
                                if let Some(p) = ready.remove(&i) {
                                    break p;
                                }
                                let (j, p) = done_rx.recv().map_err(|_| BackupError::Verify {
                                    path: partial.to_owned(),
                                    why: "a compression worker stopped".into(),
                                })?;
                                ready.insert(j, p);
                            };
                            in_flight = in_flight.saturating_sub(f.meta.len());
                            let (prepared, size, crc) = prepared?;
                            zip.add_prepared_file(prepared).map_err(zip_err)?;
                            (size, crc)
                        } else {
                            add_large(zip, f, options[i].clone().expect("files have options"), partial)?
                        };
                        entries.push(Entry { name: f.name.clone(), kind: Kind::File { size, crc }, mode, mtime });
                        files += 1;
                        if files == 2 {
                            failpoint::hit("backup.mid_zip");
                        }
                    }
                }
            }
            Ok(())
        })();
        drop(jobs_tx);
        result
    })
}

fn copy_with_crc(from: &mut impl Read, to: &mut impl Write) -> io::Result<(u64, u32)> {
    let mut hasher = crc32fast::Hasher::new();
    let total = copy_hashing(from, to, &mut hasher)?;
    Ok((total, hasher.finalize()))
}

fn copy_hashing(from: &mut impl Read, to: &mut impl Write, hasher: &mut crc32fast::Hasher) -> io::Result<u64> {
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
    Ok(total)
}

/// SHA-256 (hex) and length of a file.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("{:x}", hasher.finalize()), size))
}

/// Reopen the zip and check every entry against what was written. Returns (sha256, size).
fn verify(path: &Path, expected: &[Entry]) -> Result<(String, u64), BackupError> {
    // The SHA-256 of the whole file is computed on another core while the entries are checked.
    std::thread::scope(|scope| {
        let sha = scope.spawn(|| sha256_file(path));
        check_entries(path, expected)?;
        let fail = |why: String| BackupError::Verify { path: path.to_owned(), why };
        sha.join().map_err(|_| fail("the hashing thread failed".into()))?.map_err(|e| fail(e.to_string()))
    })
}

fn check_entries(path: &Path, expected: &[Entry]) -> Result<(), BackupError> {
    let fail = |why: String| BackupError::Verify { path: path.to_owned(), why };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut archive =
        ZipArchive::new(io::BufReader::with_capacity(256 * 1024, file)).map_err(|e| fail(e.to_string()))?;
    if archive.len() != expected.len() {
        return Err(fail(format!("{} entries in the zip, {} written", archive.len(), expected.len())));
    }
    for (index, entry) in expected.iter().enumerate() {
        // Entries are written in order: check by index (and the name), not by a lookup.
        let mut found = archive.by_index(index).map_err(|e| fail(format!("{}: {e}", entry.name)))?;
        if found.name_raw() != entry.name.as_bytes() {
            return Err(fail(format!("entry {index} is {:?}, {} was written", found.name(), entry.name)));
        }
        if entry_mode(&found).map(|m| m & 0o7777) != Some(entry.mode) || entry_mtime(&found) != Some(entry.mtime) {
            return Err(fail(format!(
                "{}: mode {:?} and time {:?} in the zip, {:o} and {:?} on disk",
                entry.name,
                entry_mode(&found).map(|m| format!("{m:o}")),
                entry_mtime(&found),
                entry.mode,
                entry.mtime
            )));
        }
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
    Ok(())
}

/// What [`reverify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverified {
    pub sha256: String,
    pub size: u64,
    pub entries: u64,
    pub content_bytes: u64,
}

/// Check an existing zip end to end (every entry's CRC) without a manifest: used to re-verify a
/// backup found on disk, or one whose file changed, before it is trusted. Refuses to expand more
/// than `max_bytes` (a zip bomb is not read to its end).
pub fn reverify(path: &Path, max_bytes: u64) -> Result<Reverified, BackupError> {
    let fail = |why: String| BackupError::Verify { path: path.to_owned(), why };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut archive =
        ZipArchive::new(io::BufReader::with_capacity(256 * 1024, file)).map_err(|e| fail(e.to_string()))?;
    let entries = archive.len() as u64;
    let mut content_bytes = 0u64;
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(|e| fail(e.to_string()))?;
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_else(|_| format!("entry {i}"));
        let is_file = entry.is_file();
        let declared = entry.size();
        let budget = max_bytes.saturating_sub(content_bytes);
        if declared > budget {
            return Err(fail(format!("{name}: the zip expands to more than {max_bytes} bytes")));
        }
        let mut limited = entry.take(budget.saturating_add(1).min(declared.saturating_add(1)));
        let n = io::copy(&mut limited, &mut io::sink()).map_err(|e| fail(format!("{name}: {e}")))?;
        if n != declared {
            return Err(fail(format!("{name}: {n} bytes read, {declared} declared")));
        }
        if is_file {
            content_bytes += n;
        }
    }
    drop(archive);
    let (sha256, size) = sha256_file(path).map_err(|e| fail(e.to_string()))?;
    Ok(Reverified { sha256, size, entries, content_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

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
        assert_eq!(info.entries, 10);
        assert_eq!(info.content_bytes, (5 + 15_000 + 70_000) + 7 + 10);
        let mut zip = ZipArchive::new(File::open(&dest).unwrap()).unwrap();
        let mut text = String::new();
        zip.by_name("project/app.js").unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "console.log(1)\n".repeat(1000));
        assert_eq!(zip.by_name("run.sh").unwrap().unix_mode().unwrap() & 0o777, 0o755);
        assert!(zip.by_name("link").unwrap().is_symlink());
        assert!(zip.by_name("empty/").unwrap().is_dir());
        let found = reverify(&dest, u64::MAX).unwrap();
        assert_eq!((found.sha256, found.size, found.entries), (info.sha256.clone(), info.size, 10));
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
        let mut bytes = fs::read(&dest).unwrap();
        bytes[70] ^= 0xff; // inside the compressed data of the only entry (after 61 header bytes)
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
        assert_eq!(entry_mtime(&zip.by_name("precise.txt").unwrap()), Some((1_700_000_001, 123_456_789)));

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
}
