//! Writing the entries found into the zip: small files read whole and compressed on worker
//! threads, appended in order; large files (and files whose name is not UTF-8) streamed by the
//! writing thread; every name written as its raw bytes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use zip::write::{FullFileOptions, PreparedZipFile};
use zip::{CompressionMethod, ZipWriter};

use super::BackupError;
use super::entry::{mtime_of, options_for};
use super::verify::{Entry, Kind, copy_hashing};
use super::walk::{Found, FoundKind, open_found};
use crate::failpoint;
use crate::session::Skipped;

pub(super) type Zip = ZipWriter<io::BufWriter<File>>;

/// Files up to this size are read whole and compressed on worker threads; larger ones are
/// streamed by the writing thread.
const SMALL_FILE: u64 = 4 << 20;
/// Raw bytes of small files read ahead at most (bounds memory).
const READ_AHEAD: u64 = 64 << 20;

/// Whether deflate gained too little to be worth inflating on every verify and restore.
fn not_worth_deflating(raw: u64, deflated: u64) -> bool {
    deflated.saturating_mul(100) >= raw.saturating_mul(97)
}

/// A small file compressed off the writing thread: the entry, its size and CRC-32 as read, or
/// `None` when it may not be read (skipped).
type Prepared = Result<Option<(PreparedZipFile, u64, u32)>, BackupError>;

/// Compress one small file off the writing thread: deflated, or stored when deflate does not
/// pay (already compressed data).
fn prepare(found: &Found, name: &str, options: FullFileOptions<'static, 'static>) -> Prepared {
    let Some(mut file) = open_found(found)? else { return Ok(None) };
    let mut data = Vec::with_capacity(found.meta.len() as usize);
    file.read_to_end(&mut data).map_err(|source| BackupError::Source { path: found.path.clone(), source })?;
    let zip_err = |source| BackupError::Zip { path: found.path.clone(), source };
    let crc = crc32fast::hash(&data);
    let stored = options.clone().compression_method(CompressionMethod::Stored);
    let prepared = if data.is_empty() {
        PreparedZipFile::from_data(name, stored, &data).map_err(zip_err)?
    } else {
        let deflated = PreparedZipFile::from_data(name, options, &data).map_err(zip_err)?;
        if not_worth_deflating(data.len() as u64, deflated.compressed_size()) {
            PreparedZipFile::from_data(name, stored, &data).map_err(zip_err)?
        } else {
            deflated
        }
    };
    Ok(Some((prepared, data.len() as u64, crc)))
}

/// Stream one file into the zip: deflated unless its first MiB does not compress. `None` when it
/// may not be read (skipped; nothing written).
fn add_streamed(
    zip: &mut Zip,
    found: &Found,
    options: FullFileOptions<'static, 'static>,
    partial: &Path,
) -> Result<Option<(u64, u32)>, BackupError> {
    let src_err = |source| BackupError::Source { path: found.path.clone(), source };
    let zip_err = |source| BackupError::Zip { path: partial.to_owned(), source };
    let Some(mut file) = open_found(found)? else { return Ok(None) };
    let mut head = Vec::with_capacity(1 << 20);
    (&mut file).take(1 << 20).read_to_end(&mut head).map_err(src_err)?;
    let probe = PreparedZipFile::from_data("probe", options.clone(), &head).map_err(zip_err)?;
    let options = if head.is_empty() || not_worth_deflating(head.len() as u64, probe.compressed_size()) {
        options.compression_method(CompressionMethod::Stored)
    } else {
        options
    };
    zip.start_file_with_options(options.name(&found.name)).map_err(zip_err)?;
    let dest_err = |source| BackupError::Dest { path: partial.to_owned(), source };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head);
    zip.write_all(&head).map_err(dest_err)?;
    let rest = copy_hashing(&mut file, zip, &mut hasher).map_err(dest_err)?;
    Ok(Some((head.len() as u64 + rest, hasher.finalize())))
}

/// A folder or symlink entry: no compression, the symlink's target (raw bytes) as content.
fn add_plain(
    zip: &mut Zip,
    found: &Found,
    options: FullFileOptions<'static, 'static>,
    content: &[u8],
    partial: &Path,
) -> Result<(), BackupError> {
    let options = options.compression_method(CompressionMethod::Stored).large_file(false);
    zip.start_file_with_options(options.name(&found.name))
        .and_then(|()| zip.write_all(content).map_err(Into::into))
        .map_err(|source| BackupError::Zip { path: partial.to_owned(), source })
}

/// Write every entry found into `zip`, compressing small files on worker threads and appending
/// them in order. Returns what was written (to verify against) and the files that may not be read.
pub(super) fn add_all(
    zip: &mut Zip,
    found: &[Found],
    partial: &Path,
) -> Result<(Vec<Entry>, Vec<Skipped>), BackupError> {
    let options: Vec<FullFileOptions<'static, 'static>> =
        found.iter().map(|f| options_for(&f.meta, partial)).collect::<Result<_, _>>()?;
    fn small_name(f: &Found) -> Option<&str> {
        (matches!(f.kind, FoundKind::File) && f.meta.len() <= SMALL_FILE).then(|| std::str::from_utf8(&f.name).ok())?
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let zip_err = |source| BackupError::Zip { path: partial.to_owned(), source };
    let options = &options;
    let mut entries = Vec::with_capacity(found.len());
    let mut skipped = Vec::new();
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
                    let name = small_name(&found[i]).expect("only small files are sent");
                    if done_tx.send((i, prepare(&found[i], name, options[i].clone()))).is_err() {
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
                    if small_name(&found[next_job]).is_some() {
                        in_flight += found[next_job].meta.len();
                        let _ = jobs_tx.send(next_job);
                    }
                    next_job += 1;
                }
                let mode = f.meta.mode() & 0o7777;
                let mtime = mtime_of(&f.meta);
                let kind = match &f.kind {
                    FoundKind::Dir => {
                        add_plain(zip, f, options[i].clone(), b"", partial)?;
                        Kind::Dir
                    }
                    FoundKind::Symlink(target) => {
                        add_plain(zip, f, options[i].clone(), target, partial)?;
                        Kind::Symlink { target: target.clone() }
                    }
                    FoundKind::File => {
                        let written = if small_name(f).is_some() {
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
                            match prepared? {
                                Some((prepared, size, crc)) => {
                                    zip.add_prepared_file(prepared).map_err(zip_err)?;
                                    Some((size, crc))
                                }
                                None => None,
                            }
                        } else {
                            add_streamed(zip, f, options[i].clone(), partial)?
                        };
                        let Some((size, crc)) = written else {
                            skipped.push(Skipped::new(&f.name, "unreadable"));
                            continue;
                        };
                        files += 1;
                        if files == 2 {
                            failpoint::hit("backup.mid_zip");
                        }
                        Kind::File { size, crc }
                    }
                };
                entries.push(Entry { name: f.name.clone(), kind, mode, mtime });
            }
            Ok(())
        })();
        drop(jobs_tx);
        result
    })?;
    Ok((entries, skipped))
}
