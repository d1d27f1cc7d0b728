//! Writing one root of a checked zip into a fresh folder: folders, then files (on several
//! threads), then symlinks (so nothing is ever written through one), then folder modes and times
//! (deepest first, so a folder of mode 000 is closed after its content is in), then one `syncfs`.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use zip::ZipArchive;

use super::plan::{Kind, Plan, Planned, shown};
use super::{Report, RestoreError, io_err, swap::remove_tree};
use crate::backup::{Mtime, Root};
use crate::failpoint;

fn set_mtime(path: &Path, mtime: Option<Mtime>) -> io::Result<()> {
    let Some((secs, nanos)) = mtime else { return Ok(()) };
    let when = TimeSpec::new(secs, i64::from(nanos));
    utimensat(nix::fcntl::AT_FDCWD, path, &TimeSpec::UTIME_OMIT, &when, UtimensatFlags::NoFollowSymlink)
        .map_err(io::Error::from)
}

fn under(into: &Path, path: &[u8]) -> PathBuf {
    into.join(OsStr::from_bytes(path))
}

fn open_archive(zip: &Path) -> Result<ZipArchive<io::BufReader<File>>, RestoreError> {
    let file = File::open(zip).map_err(io_err(zip))?;
    ZipArchive::new(io::BufReader::with_capacity(256 * 1024, file))
        .map_err(|e| RestoreError::Corrupt(format!("not a readable zip: {e}")))
}

/// Extract the entries of `root` into `into`, which must not exist (it is created). On error
/// `into` is removed.
pub fn extract(zip: &Path, plan: &Plan, root: Root, into: &Path) -> Result<Report, RestoreError> {
    let result = extract_inner(zip, plan, root, into);
    if result.is_err() {
        let _ = remove_tree(into);
    }
    result
}

/// Write one file entry, never more bytes than it declares, then its mode and time.
fn write_file(
    archive: &mut ZipArchive<io::BufReader<File>>,
    e: &Planned,
    size: u64,
    into: &Path,
    buf: &mut [u8],
) -> Result<(), RestoreError> {
    let path = under(into, &e.path);
    let name = shown(&e.path);
    let mut entry = archive.by_index(e.index).map_err(|err| RestoreError::Corrupt(format!("{name}: {err}")))?;
    let mut out = File::create_new(&path).map_err(io_err(&path))?;
    // Never trust the declared size: stop one byte past it.
    let mut limited = (&mut entry).take(size.saturating_add(1));
    let mut written = 0u64;
    loop {
        let n = match limited.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(RestoreError::Corrupt(format!("{name}: {err}"))),
        };
        written += n as u64;
        if written > size {
            return Err(RestoreError::Corrupt(format!("{name}: expands beyond its declared {size} bytes")));
        }
        out.write_all(&buf[..n]).map_err(io_err(&path))?;
    }
    if written != size {
        return Err(RestoreError::Corrupt(format!("{name}: {written} bytes, {size} declared")));
    }
    // On the open file (fchmod, futimens): no second path lookup, and a mode of 000 does not keep
    // the owner from finishing.
    let mode = e.mode.unwrap_or(0o644);
    out.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
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

fn extract_inner(zip: &Path, plan: &Plan, root: Root, into: &Path) -> Result<Report, RestoreError> {
    fs::create_dir(into).map_err(io_err(into))?;
    fs::set_permissions(into, fs::Permissions::from_mode(0o700)).map_err(io_err(into))?;
    // Folders first (parents come before children in zip order), so files can go in parallel.
    create_dirs(plan, root, into)?;
    extract_files(zip, plan, root, into)?;
    for e in plan.of(root) {
        if let Kind::Symlink { target } = &e.kind {
            let path = under(into, &e.path);
            symlink(OsStr::from_bytes(target), &path).map_err(io_err(&path))?;
            set_mtime(&path, e.mtime).map_err(io_err(&path))?;
        }
    }
    let mut dirs: Vec<&Planned> = plan.of(root).filter(|e| e.kind == Kind::Dir && !e.path.is_empty()).collect();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.iter().filter(|b| **b == b'/').count()));
    for e in dirs {
        let path = under(into, &e.path);
        let mode = e.mode.unwrap_or(0o755);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
        set_mtime(&path, e.mtime).map_err(io_err(&path))?;
    }
    // The root keeps its time; its mode is the target's to decide (0755, or the workspace's own).
    fs::set_permissions(into, fs::Permissions::from_mode(0o755)).map_err(io_err(into))?;
    if let Some(own) = plan.of(root).find(|e| e.path.is_empty()) {
        set_mtime(into, own.mtime).map_err(io_err(into))?;
    }
    // One flush for the whole tree instead of an fsync per file.
    let flush = File::open(into).map_err(io_err(into))?;
    nix::unistd::syncfs(&flush).map_err(|e| RestoreError::Io { path: into.to_owned(), source: e.into() })?;
    Ok(plan.report_for(&[root]))
}

/// Every folder of `root` in `into`: the ones paths imply, then the ones the zip holds.
fn create_dirs(plan: &Plan, root: Root, into: &Path) -> Result<(), RestoreError> {
    for (_, dir) in plan.implied_dirs.iter().filter(|(r, _)| *r == root) {
        let path = under(into, dir);
        fs::create_dir_all(&path).map_err(io_err(&path))?;
    }
    for e in plan.of(root).filter(|e| e.kind == Kind::Dir && !e.path.is_empty()) {
        let path = under(into, &e.path);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(err) => return Err(RestoreError::Io { path, source: err }),
        }
    }
    Ok(())
}

/// Every file of `root` into `into`: contiguous runs of entries per worker thread, each with its
/// own reader of the zip.
fn extract_files(zip: &Path, plan: &Plan, root: Root, into: &Path) -> Result<(), RestoreError> {
    let files: Vec<(&Planned, u64)> = plan
        .of(root)
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
    Ok(())
}
