//! Bringing a backup zip back into a folder, safely: every entry is checked before anything is
//! written (no absolute paths, no `..`, nothing through or inside a symlink or a file, no symlink
//! that resolves outside the folder, size, entry count and expansion-ratio limits), the zip is
//! extracted into a fresh folder next to the target, flushed to disk (`syncfs`), and only then
//! swapped in with two renames. A failure at any point leaves the target as it was.
//!
//! Files keep their content, permission bits and modification times (to the nanosecond with
//! wakeway's extra field; see [`crate::backup::entry_mtime`]); folders keep theirs (setgid and
//! sticky included); symlinks stay symlinks. Files never get setuid or setgid back, and sockets,
//! FIFOs and devices are never created: they are skipped and reported.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use serde::Serialize;
use zip::ZipArchive;

use crate::backup::{Mtime, entry_mode, entry_mtime, sha256_file};
use crate::failpoint;

/// Limits a zip must stay within (from config: `restore_max_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
    pub max_ratio: u64,
}

impl Limits {
    /// The configured limits (`restore_max_bytes`, `restore_max_entries`, `restore_max_ratio`).
    pub fn from_config(config: &wakeway_config::Config) -> Limits {
        Limits {
            max_bytes: config.restore_max_bytes,
            max_entries: config.restore_max_entries,
            max_ratio: config.restore_max_ratio,
        }
    }
}

/// The ratio limit applies once a zip expands past this: small zips cannot hurt.
const RATIO_FLOOR: u64 = 64 << 20;

/// Choices the caller makes.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Skip (and report) symlinks that resolve outside the folder instead of refusing the zip.
    pub skip_escaping_symlinks: bool,
    /// Refuse the zip unless its SHA-256 is this (the catalog's record).
    pub expected_sha256: Option<String>,
}

/// Why a restore did not happen. The target is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The zip is unsafe or over a limit: nothing was written.
    #[error("the zip is refused: {0}")]
    Rejected(String),
    /// The zip is damaged (unreadable, a CRC or size mismatch, not the SHA-256 on record).
    #[error("the zip is damaged: {0}")]
    Corrupt(String),
    /// The target filesystem lacks space for what the zip holds.
    #[error("not enough space to restore: {needed} bytes needed, {available} available at {path}")]
    NoSpace { path: PathBuf, needed: u64, available: u64 },
    #[error("cannot restore into {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn rejected(why: impl Into<String>) -> RestoreError {
    RestoreError::Rejected(why.into())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io { path: path.to_owned(), source }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File { size: u64 },
    Symlink { target: String },
}

#[derive(Debug, Clone)]
struct Planned {
    index: usize,
    /// Relative path, `/`-separated, no trailing slash.
    path: String,
    kind: Kind,
    mode: u32,
    mtime: Option<Mtime>,
}

/// A zip that passed every check, and what extracting it will create.
#[derive(Debug, Clone)]
pub struct Plan {
    entries: Vec<Planned>,
    /// Folders implied by paths but without their own entry (created 0755).
    implied_dirs: Vec<String>,
    pub bytes: u64,
    pub skipped: Vec<String>,
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Report {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries not created: special files (sockets, FIFOs, devices) and, when asked,
    /// symlinks pointing outside the folder.
    pub skipped: Vec<String>,
}

impl Plan {
    pub fn report(&self) -> Report {
        let count = |f: fn(&Kind) -> bool| self.entries.iter().filter(|e| f(&e.kind)).count() as u64;
        Report {
            files: count(|k| matches!(k, Kind::File { .. })),
            dirs: count(|k| matches!(k, Kind::Dir)) + self.implied_dirs.len() as u64,
            symlinks: count(|k| matches!(k, Kind::Symlink { .. })),
            bytes: self.bytes,
            skipped: self.skipped.clone(),
        }
    }
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Check a relative zip path: UTF-8 (already), no NUL, not absolute, no empty, `.` or `..`
/// components, within OS length limits. Returns it without a trailing slash.
fn clean_path(name: &str) -> Result<String, RestoreError> {
    let bad = |why: &str| Err(rejected(format!("entry {name:?}: {why}")));
    if name.contains('\0') {
        return bad("the name contains a NUL byte");
    }
    if name.starts_with('/') {
        return bad("absolute paths are not allowed");
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    if trimmed.is_empty() {
        return bad("empty name");
    }
    if trimmed.len() > 4000 {
        return bad("the path is too long");
    }
    for part in trimmed.split('/') {
        match part {
            "" => return bad("empty path component (\"//\")"),
            "." => return bad("\".\" path components are not allowed"),
            ".." => return bad("\"..\" path components are not allowed (path traversal)"),
            p if p.len() > 255 => return bad("a path component is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

fn parent_of(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

/// Follow `target` from the folder holding `link` the way the kernel would, through the
/// archive's own symlinks (`..` after a symlink goes to the parent of where it points). Err with
/// why when it leaves the root or loops.
fn resolve_inside(links: &HashMap<&str, &str>, link: &str, target: &str) -> Result<(), String> {
    if target.starts_with('/') {
        return Err("it points to an absolute path".into());
    }
    let mut stack: Vec<String> = parent_of(link).map(|p| p.split('/').map(String::from).collect()).unwrap_or_default();
    let mut queue: Vec<String> = target.split('/').rev().map(String::from).collect();
    let mut hops = 0;
    while let Some(part) = queue.pop() {
        match part.as_str() {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return Err("it points outside the workspace".into());
                }
            }
            name => {
                let candidate = if stack.is_empty() { name.to_string() } else { format!("{}/{name}", stack.join("/")) };
                if let Some(next) = links.get(candidate.as_str()) {
                    hops += 1;
                    if hops > 40 {
                        return Err("too many levels of symlinks".into());
                    }
                    if next.starts_with('/') {
                        return Err(format!("it goes through {candidate}, which points to an absolute path"));
                    }
                    queue.extend(next.split('/').rev().map(String::from));
                } else {
                    stack.push(name.to_string());
                }
            }
        }
    }
    Ok(())
}

/// Check every entry of `zip` and the limits; read nothing but the directory and symlink
/// targets (plus the whole file once when a SHA-256 is expected).
pub fn inspect(zip: &Path, limits: &Limits, options: &Options) -> Result<Plan, RestoreError> {
    let zip_len = fs::metadata(zip).map_err(io_err(zip))?.len();
    if let Some(expected) = &options.expected_sha256 {
        check_sha256(zip, expected)?;
    }
    let file = File::open(zip).map_err(io_err(zip))?;
    let mut archive = ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| RestoreError::Corrupt(format!("not a readable zip: {e}")))?;
    if archive.len() as u64 > limits.max_entries {
        return Err(rejected(format!(
            "it holds {} entries, more than restore_max_entries ({})",
            archive.len(),
            limits.max_entries
        )));
    }
    let mut entries = Vec::with_capacity(archive.len());
    let mut skipped = Vec::new();
    let mut bytes = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| RestoreError::Corrupt(format!("entry {index}: {e}")))?;
        let name =
            entry.name().map_err(|e| rejected(format!("entry {index}: the name is not readable: {e}")))?.into_owned();
        let path = clean_path(&name)?;
        if entry.encrypted() {
            return Err(rejected(format!("entry {name:?} is encrypted")));
        }
        let mode = entry_mode(&entry).unwrap_or(0);
        let file_type = mode & S_IFMT;
        let kind = if entry.is_dir() || file_type == S_IFDIR {
            Kind::Dir
        } else if file_type == S_IFLNK {
            if entry.size() > 4096 {
                return Err(rejected(format!("symlink {name:?}: its target is longer than 4096 bytes")));
            }
            let mut target = String::new();
            entry
                .by_ref()
                .take(4097)
                .read_to_string(&mut target)
                .map_err(|e| RestoreError::Corrupt(format!("symlink {name:?}: {e}")))?;
            if target.is_empty() || target.contains('\0') {
                return Err(rejected(format!("symlink {name:?}: empty target or a NUL byte in it")));
            }
            Kind::Symlink { target }
        } else if file_type == S_IFREG || file_type == 0 {
            let size = entry.size();
            bytes = bytes.saturating_add(size);
            if bytes > limits.max_bytes {
                return Err(rejected(format!(
                    "it expands to more than restore_max_bytes ({} bytes)",
                    limits.max_bytes
                )));
            }
            Kind::File { size }
        } else {
            skipped.push(path);
            continue;
        };
        let mtime = entry_mtime(&entry);
        // Never create a setuid or setgid file: wakeway (or a restore Job) may run as root, and
        // the restored file would be root's. Folders keep setgid (group inheritance).
        let mode = if matches!(kind, Kind::File { .. }) { mode & 0o1777 } else { mode & 0o7777 };
        entries.push(Planned { index, path, kind, mode, mtime });
    }
    if bytes > RATIO_FLOOR && bytes / zip_len.max(1) > limits.max_ratio {
        return Err(rejected(format!(
            "it expands {}-fold ({bytes} bytes from a {zip_len}-byte zip), more than restore_max_ratio ({}): a zip bomb",
            bytes / zip_len.max(1),
            limits.max_ratio
        )));
    }

    // Paths: unique, and nothing inside a file or a symlink.
    let mut kinds: HashMap<&str, &Kind> = HashMap::new();
    for e in &entries {
        if kinds.insert(e.path.as_str(), &e.kind).is_some() {
            return Err(rejected(format!("entry {:?} appears twice", e.path)));
        }
    }
    let mut implied = HashSet::new();
    for e in &entries {
        let mut parent = parent_of(&e.path);
        while let Some(p) = parent {
            match kinds.get(p) {
                Some(Kind::Symlink { .. }) => {
                    return Err(rejected(format!("entry {:?} goes through the symlink {p:?}", e.path)));
                }
                Some(Kind::File { .. }) => {
                    return Err(rejected(format!("entry {:?} is inside the file {p:?}", e.path)));
                }
                Some(Kind::Dir) => {}
                None => {
                    implied.insert(p.to_string());
                }
            }
            parent = parent_of(p);
        }
    }
    // Symlinks: every one must resolve inside the folder.
    let links: HashMap<&str, &str> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::Symlink { target } => Some((e.path.as_str(), target.as_str())),
            _ => None,
        })
        .collect();
    let mut escaping = HashSet::new();
    for (link, target) in &links {
        if let Err(why) = resolve_inside(&links, link, target) {
            if !options.skip_escaping_symlinks {
                return Err(rejected(format!("symlink {link:?} -> {target:?}: {why}")));
            }
            escaping.insert(link.to_string());
        }
    }
    let entries: Vec<Planned> = if escaping.is_empty() {
        entries
    } else {
        skipped.extend(escaping.iter().cloned());
        entries.into_iter().filter(|e| !escaping.contains(&e.path)).collect()
    };
    let mut implied_dirs: Vec<String> = implied.into_iter().collect();
    implied_dirs.sort();
    skipped.sort();
    Ok(Plan { entries, implied_dirs, bytes, skipped })
}

/// The whole zip must have the SHA-256 it was recorded with.
fn check_sha256(zip: &Path, expected: &str) -> Result<(), RestoreError> {
    let (found, _) = sha256_file(zip).map_err(io_err(zip))?;
    if found != expected {
        return Err(RestoreError::Corrupt(format!(
            "its SHA-256 is {found}, {expected} was recorded when it was verified"
        )));
    }
    Ok(())
}

fn set_mtime(path: &Path, mtime: Option<Mtime>) -> io::Result<()> {
    let Some((secs, nanos)) = mtime else { return Ok(()) };
    let when = TimeSpec::new(secs, i64::from(nanos));
    utimensat(nix::fcntl::AT_FDCWD, path, &TimeSpec::UTIME_OMIT, &when, UtimensatFlags::NoFollowSymlink)
        .map_err(io::Error::from)
}

/// Extract a checked zip into `into`, which must not exist (it is created). Folders, then files
/// (on several threads), then symlinks (so nothing is ever written through one), then folder modes
/// and times (deepest first), then one `syncfs`. On error `into` is removed.
pub fn extract(zip: &Path, plan: &Plan, into: &Path) -> Result<Report, RestoreError> {
    let result = extract_inner(zip, plan, into);
    if result.is_err() {
        let _ = fs::remove_dir_all(into);
    }
    result
}

fn open_archive(zip: &Path) -> Result<ZipArchive<io::BufReader<File>>, RestoreError> {
    let file = File::open(zip).map_err(io_err(zip))?;
    ZipArchive::new(io::BufReader::with_capacity(256 * 1024, file))
        .map_err(|e| RestoreError::Corrupt(format!("not a readable zip: {e}")))
}

/// Write one file entry, never more bytes than it declares, then its mode and time.
fn write_file(
    archive: &mut ZipArchive<io::BufReader<File>>,
    e: &Planned,
    size: u64,
    into: &Path,
    buf: &mut [u8],
) -> Result<(), RestoreError> {
    let path = into.join(&e.path);
    let mut entry = archive.by_index(e.index).map_err(|err| RestoreError::Corrupt(format!("{}: {err}", e.path)))?;
    let mut out = File::create_new(&path).map_err(io_err(&path))?;
    // Never trust the declared size: stop one byte past it.
    let mut limited = (&mut entry).take(size.saturating_add(1));
    let mut written = 0u64;
    loop {
        let n = match limited.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(RestoreError::Corrupt(format!("{}: {err}", e.path))),
        };
        written += n as u64;
        if written > size {
            return Err(RestoreError::Corrupt(format!("{}: expands beyond its declared {size} bytes", e.path)));
        }
        out.write_all(&buf[..n]).map_err(io_err(&path))?;
    }
    if written != size {
        return Err(RestoreError::Corrupt(format!("{}: {written} bytes, {size} declared", e.path)));
    }
    // On the open file (fchmod, futimens): no second path lookup.
    out.set_permissions(fs::Permissions::from_mode(if e.mode == 0 { 0o644 } else { e.mode })).map_err(io_err(&path))?;
    if let Some((secs, nanos)) = e.mtime {
        let whole = std::time::Duration::from_secs(secs.unsigned_abs());
        let base =
            if secs >= 0 { std::time::UNIX_EPOCH.checked_add(whole) } else { std::time::UNIX_EPOCH.checked_sub(whole) };
        if let Some(when) = base.and_then(|t| t.checked_add(std::time::Duration::from_nanos(nanos.into()))) {
            out.set_modified(when).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

fn extract_inner(zip: &Path, plan: &Plan, into: &Path) -> Result<Report, RestoreError> {
    fs::create_dir(into).map_err(io_err(into))?;
    fs::set_permissions(into, fs::Permissions::from_mode(0o700)).map_err(io_err(into))?;
    // Folders first (parents come before children in zip order), so files can go in parallel.
    for dir in &plan.implied_dirs {
        let path = into.join(dir);
        fs::create_dir_all(&path).map_err(io_err(&path))?;
    }
    for e in plan.entries.iter().filter(|e| e.kind == Kind::Dir) {
        let path = into.join(&e.path);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(err) => return Err(RestoreError::Io { path, source: err }),
        }
    }
    // Files: contiguous runs of entries per worker, each with its own reader of the zip.
    let files: Vec<(&Planned, u64)> = plan
        .entries
        .iter()
        .filter_map(|e| match e.kind {
            Kind::File { size } => Some((e, size)),
            _ => None,
        })
        .collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4).min(files.len() / 64 + 1);
    let per_worker = files.len().div_ceil(workers).max(1);
    let done = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per_worker)
            .map(|part| {
                let done = &done;
                scope.spawn(move || -> Result<(), RestoreError> {
                    let mut archive = open_archive(zip)?;
                    let mut buf = vec![0u8; 256 * 1024];
                    for (e, size) in part {
                        write_file(&mut archive, e, *size, into, &mut buf)?;
                        if done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == 2 {
                            failpoint::hit("restore.mid_extract");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(RestoreError::Corrupt("an extraction thread failed".into()))))
            .collect::<Result<Vec<()>, _>>()
    })?;
    for e in &plan.entries {
        if let Kind::Symlink { target } = &e.kind {
            let path = into.join(&e.path);
            symlink(target, &path).map_err(io_err(&path))?;
            set_mtime(&path, e.mtime).map_err(io_err(&path))?;
        }
    }
    let mut dirs: Vec<&Planned> = plan.entries.iter().filter(|e| e.kind == Kind::Dir).collect();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
    for e in dirs {
        let path = into.join(&e.path);
        fs::set_permissions(&path, fs::Permissions::from_mode(if e.mode == 0 { 0o755 } else { e.mode }))
            .map_err(io_err(&path))?;
        set_mtime(&path, e.mtime).map_err(io_err(&path))?;
    }
    fs::set_permissions(into, fs::Permissions::from_mode(0o755)).map_err(io_err(into))?;
    // One flush for the whole tree instead of an fsync per file.
    let root = File::open(into).map_err(io_err(into))?;
    nix::unistd::syncfs(&root).map_err(|e| RestoreError::Io { path: into.to_owned(), source: e.into() })?;
    Ok(plan.report())
}

/// Refuse early when the filesystem of `dir` cannot hold `bytes` more (plus 1% and 64 MiB).
pub fn check_space(dir: &Path, bytes: u64) -> Result<(), RestoreError> {
    let stat =
        nix::sys::statvfs::statvfs(dir).map_err(|e| RestoreError::Io { path: dir.to_owned(), source: e.into() })?;
    let available = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    let needed = bytes.saturating_add(bytes / 100).saturating_add(64 << 20);
    if available < needed {
        return Err(RestoreError::NoSpace { path: dir.to_owned(), needed, available });
    }
    Ok(())
}

/// The swap renames `target`: it cannot be a mount point (say so before extracting anything).
fn same_filesystem(parent: &Path, target: &Path) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(p), Ok(t)) = (fs::metadata(parent), fs::symlink_metadata(target)) else { return Ok(()) };
    if p.dev() != t.dev() {
        return Err(RestoreError::Io {
            path: target.to_owned(),
            source: io::Error::other(
                "it is a mount point, and a restore swaps folders with renames on one filesystem: mount the \
                 volume one level up and restore into a folder inside it",
            ),
        });
    }
    Ok(())
}

/// The folders a restore into `target` uses, all siblings of it (same filesystem, so the swap is
/// two renames).
#[derive(Debug, Clone)]
pub struct Swap {
    pub target: PathBuf,
    /// The new tree, extracted here first.
    pub staged: PathBuf,
    /// The old tree, between the two renames.
    pub replaced: PathBuf,
}

impl Swap {
    pub fn for_target(target: &Path) -> Swap {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        Swap {
            target: target.to_owned(),
            staged: target.with_file_name(format!(".restore-{name}")),
            replaced: target.with_file_name(format!(".replaced-{name}")),
        }
    }

    /// Finish or undo what an interrupted restore left. Returns true when its swap had already
    /// happened (the target holds the restored tree), false when it must be redone.
    pub fn recover(&self) -> Result<bool, RestoreError> {
        let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
        if exists(&self.replaced) {
            if !exists(&self.target) {
                // Between the two renames: the staged tree was complete before the first one.
                if exists(&self.staged) {
                    fs::rename(&self.staged, &self.target).map_err(io_err(&self.target))?;
                } else {
                    fs::rename(&self.replaced, &self.target).map_err(io_err(&self.target))?;
                    sync_parent(&self.target)?;
                    return Ok(false);
                }
                sync_parent(&self.target)?;
            }
            fs::remove_dir_all(&self.replaced).map_err(io_err(&self.replaced))?;
            return Ok(true);
        }
        if exists(&self.staged) {
            fs::remove_dir_all(&self.staged).map_err(io_err(&self.staged))?;
        }
        Ok(false)
    }

    /// Move the staged tree into place: target → replaced, staged → target, then drop the old
    /// tree. The caller has made sure the old tree is backed up (or empty).
    pub fn swap(&self) -> Result<(), RestoreError> {
        failpoint::hit("restore.before_swap");
        let had_target = fs::symlink_metadata(&self.target).is_ok();
        if had_target {
            fs::rename(&self.target, &self.replaced).map_err(io_err(&self.target))?;
            failpoint::hit("restore.mid_swap");
        }
        fs::rename(&self.staged, &self.target).map_err(io_err(&self.target))?;
        sync_parent(&self.target)?;
        if had_target {
            fs::remove_dir_all(&self.replaced).map_err(io_err(&self.replaced))?;
        }
        Ok(())
    }
}

fn sync_parent(path: &Path) -> Result<(), RestoreError> {
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A restore *inside* a folder that cannot be renamed: a volume's mount point (a Kubernetes
/// workspace's PVC is mounted at `/workspace` itself). The new tree is extracted into a hidden
/// folder inside it, then the old top-level entries are moved into another hidden folder, the new
/// ones moved up, and the old tree dropped — renames on the volume's own filesystem. Every step
/// is resumable: [`InPlace::recover`] finishes an interrupted swap (the new tree was complete
/// before the first entry moved) or drops an interrupted extraction.
#[derive(Debug, Clone)]
pub struct InPlace {
    pub target: PathBuf,
    /// The new tree, extracted here first.
    pub staged: PathBuf,
    /// The old top-level entries, moved here in the first half of the swap.
    pub replaced: PathBuf,
    /// Present from the end of the first half (every old entry moved out) to the very end.
    pub moved_out: PathBuf,
}

impl InPlace {
    pub fn for_target(target: &Path) -> InPlace {
        InPlace {
            target: target.to_owned(),
            staged: target.join(".wakeway-restore-new"),
            replaced: target.join(".wakeway-restore-old"),
            moved_out: target.join(".wakeway-restore-moved-out"),
        }
    }

    fn ours(&self, name: &std::ffi::OsStr) -> bool {
        [&self.staged, &self.replaced, &self.moved_out].iter().any(|p| p.file_name() == Some(name))
    }

    fn entries(dir: &Path) -> Result<Vec<std::ffi::OsString>, RestoreError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            names.push(entry.map_err(io_err(dir))?.file_name());
        }
        Ok(names)
    }

    /// Finish or undo what an interrupted restore left. Returns true when the restored tree is in
    /// place, false when the restore must be redone (the old tree is in place).
    pub fn recover(&self) -> Result<bool, RestoreError> {
        let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
        if exists(&self.moved_out) || exists(&self.replaced) {
            // The swap had started, so the staged tree was complete: finish it.
            self.finish_swap()?;
            return Ok(true);
        }
        if exists(&self.staged) {
            fs::remove_dir_all(&self.staged).map_err(io_err(&self.staged))?;
        }
        Ok(false)
    }

    /// Swap the staged tree in (the caller has made sure the old tree is backed up, or empty).
    pub fn swap(&self) -> Result<(), RestoreError> {
        failpoint::hit("restore.before_swap");
        fs::create_dir_all(&self.replaced).map_err(io_err(&self.replaced))?;
        sync_dir(&self.target)?;
        self.finish_swap()
    }

    fn finish_swap(&self) -> Result<(), RestoreError> {
        if fs::symlink_metadata(&self.moved_out).is_err() {
            // First half: every old top-level entry into `replaced`.
            fs::create_dir_all(&self.replaced).map_err(io_err(&self.replaced))?;
            for name in Self::entries(&self.target)?.into_iter().filter(|n| !self.ours(n)) {
                let from = self.target.join(&name);
                fs::rename(&from, self.replaced.join(&name)).map_err(io_err(&from))?;
            }
            sync_dir(&self.replaced)?;
            sync_dir(&self.target)?;
            File::create(&self.moved_out).map_err(io_err(&self.moved_out))?;
            sync_dir(&self.target)?;
            failpoint::hit("restore.mid_swap");
        }
        // Second half: every new top-level entry up into the target.
        if fs::symlink_metadata(&self.staged).is_ok() {
            for name in Self::entries(&self.staged)? {
                let from = self.staged.join(&name);
                fs::rename(&from, self.target.join(&name)).map_err(io_err(&from))?;
            }
            sync_dir(&self.target)?;
            fs::remove_dir(&self.staged).map_err(io_err(&self.staged))?;
        }
        if fs::symlink_metadata(&self.replaced).is_ok() {
            fs::remove_dir_all(&self.replaced).map_err(io_err(&self.replaced))?;
        }
        fs::remove_file(&self.moved_out).map_err(io_err(&self.moved_out))?;
        sync_dir(&self.target)
    }
}

fn sync_dir(dir: &Path) -> Result<(), RestoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Whether `target` is the root of a mounted filesystem (it cannot be renamed, so a restore into it
/// works inside it: [`InPlace`]).
pub fn is_mount_point(target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = target.parent().unwrap_or(Path::new("/"));
    match (fs::symlink_metadata(target), fs::metadata(parent)) {
        (Ok(t), Ok(p)) => t.is_dir() && (t.dev() != p.dev() || t.ino() == p.ino()),
        _ => false,
    }
}

/// The whole restore of `zip` into `target` (created if missing): check, extract next to it, swap
/// in; inside it instead when `target` is a mount point ([`restore_in_place`]). Used by
/// `wakeway restore` and the local backend.
pub fn restore_into(zip: &Path, target: &Path, limits: &Limits, options: &Options) -> Result<Report, RestoreError> {
    if is_mount_point(target) {
        return restore_in_place(zip, target, limits, options);
    }
    let swap = Swap::for_target(target);
    swap.recover()?;
    let checks = Options { expected_sha256: None, ..options.clone() };
    let plan = inspect(zip, limits, &checks)?;
    let parent = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    same_filesystem(parent, target)?;
    check_space(parent, plan.bytes)?;
    let report = extract_checked(zip, &plan, &swap.staged, options)?;
    swap.swap()?;
    Ok(report)
}

/// A restore inside `target`, an existing folder (a volume's mount point): see [`InPlace`].
pub fn restore_in_place(zip: &Path, target: &Path, limits: &Limits, options: &Options) -> Result<Report, RestoreError> {
    let swap = InPlace::for_target(target);
    swap.recover()?;
    let checks = Options { expected_sha256: None, ..options.clone() };
    let plan = inspect(zip, limits, &checks)?;
    if let Some(clash) =
        plan.entries.iter().find(|e| swap.ours(std::ffi::OsStr::new(e.path.split('/').next().unwrap_or(""))))
    {
        return Err(rejected(format!("{:?} is a name wakeway uses while restoring in place", clash.path)));
    }
    check_space(target, plan.bytes)?;
    let report = extract_checked(zip, &plan, &swap.staged, options)?;
    swap.swap()?;
    Ok(report)
}

/// `wakeway restore`: what the command (by hand, or in the Kubernetes restore Job) does and the one
/// JSON line it prints — `{"ok": true, "src", "dest", "restore": report}` or `{"ok": false, "kind":
/// "corrupt"|"refused"|"rejected"|"no_space"|"io", "error"}`. The backup's catalog record next to
/// the zip, when there, must say it was verified, and the zip must still have its SHA-256.
#[derive(Debug, Clone, Copy, Default)]
pub struct Command {
    /// Replace DEST's content when it has some (it is discarded: back it up first).
    pub replace: bool,
    pub skip_escaping_symlinks: bool,
    /// Restore inside DEST ([`restore_in_place`]); automatic when DEST is a mount point.
    pub in_place: bool,
}

impl Command {
    pub fn run(&self, src: &Path, dest: &Path, limits: &Limits) -> serde_json::Value {
        let fail = |kind: &str, error: String| serde_json::json!({ "ok": false, "kind": kind, "error": error });
        let record = crate::catalog::read_sidecar(&crate::catalog::sidecar_path(src)).ok();
        if let Some(r) = record.as_ref().filter(|r| !r.verified) {
            return fail("corrupt", format!("the backup failed verification: {}", r.error.as_deref().unwrap_or("?")));
        }
        let has_content = fs::read_dir(dest).map(|mut d| d.next().is_some()).unwrap_or(false);
        if has_content && !self.replace {
            return fail("refused", format!("{} is not empty; pass --replace to replace its content", dest.display()));
        }
        let options =
            Options { skip_escaping_symlinks: self.skip_escaping_symlinks, expected_sha256: record.map(|r| r.sha256) };
        let result = if self.in_place {
            restore_in_place(src, dest, limits, &options)
        } else {
            restore_into(src, dest, limits, &options)
        };
        match result {
            Ok(report) => serde_json::json!({ "ok": true, "src": src, "dest": dest, "restore": report }),
            Err(e) => {
                let kind = match e {
                    RestoreError::Rejected(_) => "rejected",
                    RestoreError::Corrupt(_) => "corrupt",
                    RestoreError::NoSpace { .. } => "no_space",
                    RestoreError::Io { .. } => "io",
                };
                fail(kind, e.to_string())
            }
        }
    }
}

/// Extract into `staged` while the SHA-256 of the whole zip is checked on another core; an error
/// of either removes what was extracted.
fn extract_checked(zip: &Path, plan: &Plan, staged: &Path, options: &Options) -> Result<Report, RestoreError> {
    std::thread::scope(|scope| {
        let sha = options.expected_sha256.as_deref().map(|expected| scope.spawn(move || check_sha256(zip, expected)));
        let extracted = extract(zip, plan, staged);
        let hashed = match sha {
            Some(handle) => {
                handle.join().unwrap_or_else(|_| Err(RestoreError::Corrupt("the hashing thread failed".into())))
            }
            None => Ok(()),
        };
        match (extracted, hashed) {
            (Ok(report), Ok(())) => Ok(report),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => {
                let _ = fs::remove_dir_all(staged);
                Err(e)
            }
        }
    })
}

#[cfg(test)]
mod tests;
