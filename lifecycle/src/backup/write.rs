//! Writing the entries found into the zip: small files read whole and compressed on worker
//! threads, appended in order; large files (and files whose name is not UTF-8) streamed by the
//! writing thread; every name written as its raw bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

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
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    std::thread::scope(|scope| {
        let (jobs_tx, jobs_rx) = mpsc::channel::<usize>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (done_tx, done_rx) = mpsc::channel::<(usize, Prepared)>();
        for _ in 0..workers {
            let (jobs_rx, done_tx, options) = (jobs_rx.clone(), done_tx.clone(), &options);
            scope.spawn(move || compress(found, options, &jobs_rx, &done_tx));
        }
        drop(done_tx);
        let mut appender = Appender {
            zip,
            found,
            options: &options,
            partial,
            jobs: jobs_tx,
            done: done_rx,
            next_job: 0,
            in_flight: 0,
            ready: BTreeMap::new(),
            files: 0,
        };
        let result = appender.append_all();
        // Its end of the jobs channel closes: the workers stop.
        drop(appender);
        result
    })
}

/// A small file to read whole and compress off the writing thread.
fn small_name(f: &Found) -> Option<&str> {
    (matches!(f.kind, FoundKind::File) && f.meta.len() <= SMALL_FILE).then(|| std::str::from_utf8(&f.name).ok())?
}

/// A compression worker: prepares the small files whose indexes it receives, until the jobs end
/// (or nobody takes its results).
fn compress(
    found: &[Found],
    options: &[FullFileOptions<'static, 'static>],
    jobs: &Mutex<mpsc::Receiver<usize>>,
    done: &mpsc::Sender<(usize, Prepared)>,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(i) = job else { return };
        let name = small_name(&found[i]).expect("only small files are sent");
        if done.send((i, prepare(&found[i], name, options[i].clone()))).is_err() {
            return;
        }
    }
}

/// The writing side of [`add_all`]: appends the entries in order, keeping the compression
/// workers fed ahead of it within [`READ_AHEAD`].
struct Appender<'a> {
    zip: &'a mut Zip,
    found: &'a [Found],
    options: &'a [FullFileOptions<'static, 'static>],
    partial: &'a Path,
    jobs: mpsc::Sender<usize>,
    done: mpsc::Receiver<(usize, Prepared)>,
    /// The next entry to hand to a worker (if it is a small file).
    next_job: usize,
    /// Bytes of small files handed out and not appended yet.
    in_flight: u64,
    /// Prepared files that came back before their turn.
    ready: BTreeMap<usize, Prepared>,
    /// Files written so far.
    files: u32,
}

impl Appender<'_> {
    fn append_all(&mut self) -> Result<(Vec<Entry>, Vec<Skipped>), BackupError> {
        let found = self.found;
        let mut entries = Vec::with_capacity(found.len());
        let mut skipped = Vec::new();
        for (i, f) in found.iter().enumerate() {
            self.feed(i);
            let kind = match &f.kind {
                FoundKind::Dir => {
                    add_plain(self.zip, f, self.options[i].clone(), b"", self.partial)?;
                    Kind::Dir
                }
                FoundKind::Symlink(target) => {
                    add_plain(self.zip, f, self.options[i].clone(), target, self.partial)?;
                    Kind::Symlink { target: target.clone() }
                }
                FoundKind::File => {
                    let Some((size, crc)) = self.add_file(i)? else {
                        skipped.push(Skipped::new(&f.name, "unreadable"));
                        continue;
                    };
                    Kind::File { size, crc }
                }
            };
            entries.push(Entry { name: f.name.clone(), kind, mode: f.meta.mode() & 0o7777, mtime: mtime_of(&f.meta) });
        }
        Ok((entries, skipped))
    }

    /// Keep the workers fed, ahead of the writer (at entry `i`), within the read-ahead bound.
    fn feed(&mut self, i: usize) {
        self.next_job = self.next_job.max(i);
        while self.next_job < self.found.len() && (self.in_flight < READ_AHEAD || self.next_job == i) {
            if small_name(&self.found[self.next_job]).is_some() {
                self.in_flight += self.found[self.next_job].meta.len();
                let _ = self.jobs.send(self.next_job);
            }
            self.next_job += 1;
        }
    }

    /// Write file `i`: prepared by a worker if small, else streamed. `None`: it may not be read.
    fn add_file(&mut self, i: usize) -> Result<Option<(u64, u32)>, BackupError> {
        let f = &self.found[i];
        let written = if small_name(f).is_some() {
            self.add_prepared(i)?
        } else {
            add_streamed(self.zip, f, self.options[i].clone(), self.partial)?
        };
        if written.is_some() {
            self.files += 1;
            if self.files == 2 {
                failpoint::hit("backup.mid_zip");
            }
        }
        Ok(written)
    }

    /// Append small file `i` once its worker prepared it.
    fn add_prepared(&mut self, i: usize) -> Result<Option<(u64, u32)>, BackupError> {
        let prepared = loop {
            if let Some(p) = self.ready.remove(&i) {
                break p;
            }
            let (j, p) = self.done.recv().map_err(|_| BackupError::Verify {
                path: self.partial.to_owned(),
                why: "a compression worker stopped".into(),
            })?;
            self.ready.insert(j, p);
        };
        self.in_flight = self.in_flight.saturating_sub(self.found[i].meta.len());
        let Some((prepared, size, crc)) = prepared? else { return Ok(None) };
        self.zip
            .add_prepared_file(prepared)
            .map_err(|source| BackupError::Zip { path: self.partial.to_owned(), source })?;
        Ok(Some((size, crc)))
    }
}
