//! Checking a zip: right after it was written, entry by entry against what was read from disk
//! (names as raw bytes, kinds, modes, times, sizes, CRC-32); and later, without that list, end to
//! end ([`reverify`]) before a zip found on disk is trusted.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use zip::ZipArchive;

use super::BackupError;
use super::entry::{Mtime, entry_mode, entry_mtime};
use super::layout::{COMMENT, Layout};

/// One entry as written.
pub(super) struct Entry {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub mtime: Mtime,
}

#[derive(Debug, PartialEq)]
pub(super) enum Kind {
    File { size: u64, crc: u32 },
    Dir,
    Symlink { target: Vec<u8> },
}

fn copy_with_crc(from: &mut impl Read, to: &mut impl Write) -> io::Result<(u64, u32)> {
    let mut hasher = crc32fast::Hasher::new();
    let total = copy_hashing(from, to, &mut hasher)?;
    Ok((total, hasher.finalize()))
}

pub(super) fn copy_hashing(
    from: &mut impl Read,
    to: &mut impl Write,
    hasher: &mut crc32fast::Hasher,
) -> io::Result<u64> {
    each_chunk(from, |chunk| {
        hasher.update(chunk);
        to.write_all(chunk)
    })
}

/// SHA-256 (hex) and length of a file.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let size = each_chunk(&mut File::open(path)?, |chunk| {
        hasher.update(chunk);
        Ok(())
    })?;
    Ok((format!("{:x}", hasher.finalize()), size))
}

/// Read `from` to its end in 256 KiB chunks, handing each to `take`; returns the bytes read.
fn each_chunk(from: &mut impl Read, mut take: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        take(&buf[..n])?;
        total += n as u64;
    }
}

/// Reopen the zip and check every entry against what was written. Returns (sha256, size).
pub(super) fn verify(path: &Path, expected: &[Entry]) -> Result<(String, u64), BackupError> {
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
    if archive.comment() != COMMENT.as_bytes() {
        return Err(fail("the layout comment is missing".into()));
    }
    if archive.len() != expected.len() {
        return Err(fail(format!("{} entries in the zip, {} written", archive.len(), expected.len())));
    }
    for (index, entry) in expected.iter().enumerate() {
        let shown = entry.name.escape_ascii().to_string();
        // Entries are written in order: check by index (and the name), not by a lookup.
        let mut found = archive.by_index(index).map_err(|e| fail(format!("{shown}: {e}")))?;
        if found.name_raw() != entry.name {
            return Err(fail(format!("entry {index} is {}, {shown} was written", found.name_raw().escape_ascii())));
        }
        if entry_mode(&found).map(|m| m & 0o7777) != Some(entry.mode) || entry_mtime(&found) != Some(entry.mtime) {
            return Err(fail(format!(
                "{shown}: mode {:?} and time {:?} in the zip, {:o} and {:?} on disk",
                entry_mode(&found).map(|m| format!("{m:o}")),
                entry_mtime(&found),
                entry.mode,
                entry.mtime
            )));
        }
        match &entry.kind {
            Kind::Dir => {
                if !found.is_dir() {
                    return Err(fail(format!("{shown} is not a folder in the zip")));
                }
            }
            Kind::Symlink { target } => {
                let mut got = Vec::new();
                found.read_to_end(&mut got).map_err(|e| fail(format!("{shown}: {e}")))?;
                if !found.is_symlink() || &got != target {
                    return Err(fail(format!("{shown} is not the symlink to {}", target.escape_ascii())));
                }
            }
            Kind::File { size, crc } => {
                if found.size() != *size {
                    return Err(fail(format!("{shown}: {} bytes in the zip, {size} read from disk", found.size())));
                }
                // Reading to the end also makes the zip reader check the stored CRC-32.
                let (got_size, got_crc) =
                    copy_with_crc(&mut found, &mut io::sink()).map_err(|e| fail(format!("{shown}: {e}")))?;
                if got_size != *size || got_crc != *crc {
                    return Err(fail(format!("{shown}: content differs from what was read from disk")));
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
    /// Files, folders and symlinks (the roots' own entries not counted).
    pub entries: u64,
    pub content_bytes: u64,
    /// The zip's layout (1: the workspace alone, no prefix; 2: roots).
    pub layout: u32,
    /// The roots it holds (`workspace`, `home`).
    pub roots: Vec<String>,
}

/// Check an existing zip end to end (every entry's CRC) without a manifest: used to re-verify a
/// backup found on disk, or one whose file changed, before it is trusted. Refuses to expand more
/// than `max_bytes` (a zip bomb is not read to its end).
pub fn reverify(path: &Path, max_bytes: u64) -> Result<Reverified, BackupError> {
    let fail = |why: String| BackupError::Verify { path: path.to_owned(), why };
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut archive =
        ZipArchive::new(io::BufReader::with_capacity(256 * 1024, file)).map_err(|e| fail(e.to_string()))?;
    let layout = Layout::of_comment(archive.comment()).map_err(fail)?;
    let mut entries = 0u64;
    let mut content_bytes = 0u64;
    let mut roots = BTreeSet::new();
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(|e| fail(e.to_string()))?;
        let name = entry.name_raw().escape_ascii().to_string();
        let (root, inside) = layout.split(entry.name_raw()).ok_or_else(|| fail(format!("{name} is in no root")))?;
        roots.insert(root);
        // Counted like the writer counts: the roots' own entries are not things in them.
        entries += u64::from(!inside.is_empty());
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
    let roots = roots.into_iter().map(|r| r.name().to_string()).collect();
    Ok(Reverified { sha256, size, entries, content_bytes, layout: layout.version(), roots })
}
