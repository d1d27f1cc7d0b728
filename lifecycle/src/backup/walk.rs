//! Finding what a backup holds: each root walked depth-first in name order (the order entries are
//! written and verified in), names as raw bytes (a Linux file name need not be UTF-8), symlinks
//! never followed. What cannot be archived is listed, never a reason to fail: sockets, FIFOs and
//! devices, and what belongs to someone else and may not be read.
//!
//! A backup reads what the user could write. A backup that runs as the workspace's own uid (the
//! Kubernetes Job, without capabilities) may not read a file its owner made unreadable (mode 000),
//! but as its owner it may change the mode: such a file is opened after adding `u+r` and its mode
//! is put back on the open file at once; such a folder gets `u+rx` for the walk and its mode back
//! when the backup ends (on error too). Only what the backup's own uid owns is touched, and the
//! zip records the modes as they were.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::BackupError;
use super::layout::{Root, Sources};
use crate::session::Skipped;

/// One thing found, in zip order.
pub(super) struct Found {
    /// The entry's name: the root's prefix, the path inside it, a `/` after a folder.
    pub name: Vec<u8>,
    pub path: PathBuf,
    /// As found, before any mode was loosened for reading.
    pub meta: fs::Metadata,
    pub kind: FoundKind,
}

pub(super) enum FoundKind {
    Dir,
    Symlink(Vec<u8>),
    File,
}

/// Folders whose mode a backup loosened to walk them, put back (deepest first) when dropped.
#[derive(Default)]
pub(super) struct Loosened {
    dirs: Vec<(PathBuf, u32)>,
}

impl Loosened {
    fn add(&mut self, path: &Path, mode: u32, bits: u32) -> io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode((mode | bits) & 0o7777))?;
        self.dirs.push((path.to_owned(), mode & 0o7777));
        Ok(())
    }
}

impl Drop for Loosened {
    fn drop(&mut self) {
        for (path, mode) in self.dirs.drain(..).rev() {
            if let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(mode)) {
                tracing::error!(path = %path.display(), mode = format!("{mode:o}"), error = %e, "cannot put a folder's mode back after the backup");
            }
        }
    }
}

/// Everything found under the roots.
pub(super) struct Walk {
    pub found: Vec<Found>,
    pub skipped: Vec<Skipped>,
    pub loosened: Loosened,
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether the backup's own uid owns it (and so may change its mode).
fn ours(meta: &fs::Metadata) -> bool {
    meta.uid() == euid()
}

fn denied(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::PermissionDenied) || e.raw_os_error() == Some(nix::libc::EPERM)
}

/// Walk every root of `sources`.
pub(super) fn walk(sources: &Sources<'_>) -> Result<Walk, BackupError> {
    let mut out = Walk { found: Vec::new(), skipped: Vec::new(), loosened: Loosened::default() };
    for (root, dir) in sources.roots() {
        let src_err = |source| BackupError::Source { path: dir.to_owned(), source };
        let meta = fs::metadata(dir).map_err(src_err)?;
        if !meta.is_dir() {
            return Err(src_err(io::Error::other("not a folder")));
        }
        visit_dir(dir, root.prefix().to_vec(), meta, &mut out, root)?;
    }
    Ok(out)
}

fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut children: Vec<PathBuf> = fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    children.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    Ok(children)
}

/// List a folder, loosening its mode first when the backup owns it but may not list or enter it.
fn children_of(dir: &Path, meta: &fs::Metadata, loosened: &mut Loosened) -> io::Result<Vec<PathBuf>> {
    let mode = meta.mode();
    let mut done = false;
    if ours(meta) && euid() != 0 && mode & 0o500 != 0o500 {
        loosened.add(dir, mode, 0o500)?;
        done = true;
    }
    match list(dir) {
        // Root without CAP_DAC_READ_SEARCH is refused like anyone else.
        Err(e) if denied(&e) && ours(meta) && !done => {
            loosened.add(dir, mode, 0o500)?;
            list(dir)
        }
        result => result,
    }
}

fn visit_dir(dir: &Path, name: Vec<u8>, meta: fs::Metadata, out: &mut Walk, root: Root) -> Result<(), BackupError> {
    let src_err = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Source { path, source }
    };
    let children = match children_of(dir, &meta, &mut out.loosened) {
        Ok(children) => children,
        Err(e) if denied(&e) && name.as_slice() != root.prefix() => {
            out.skipped.push(Skipped::new(&name, "unreadable"));
            return Ok(());
        }
        Err(e) => return Err(src_err(dir)(e)),
    };
    let prefix = name.clone();
    out.found.push(Found { name, path: dir.to_owned(), meta, kind: FoundKind::Dir });
    for path in children {
        let meta = fs::symlink_metadata(&path).map_err(src_err(&path))?;
        let mut name = prefix.clone();
        name.extend_from_slice(path.file_name().unwrap_or_default().as_bytes());
        let file_type = meta.file_type();
        if file_type.is_dir() {
            name.push(b'/');
            visit_dir(&path, name, meta, out, root)?;
        } else if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(src_err(&path))?;
            let kind = FoundKind::Symlink(target.into_os_string().into_vec());
            out.found.push(Found { name, path, meta, kind });
        } else if file_type.is_file() {
            out.found.push(Found { name, path, meta, kind: FoundKind::File });
        } else {
            let kind = if file_type.is_socket() {
                "socket"
            } else if file_type.is_fifo() {
                "fifo"
            } else if file_type.is_block_device() {
                "block_device"
            } else if file_type.is_char_device() {
                "char_device"
            } else {
                "special"
            };
            out.skipped.push(Skipped::new(&name, kind));
        }
    }
    Ok(())
}

/// Open a file found by the walk for reading, without following a symlink put in its place.
/// `None` when it may not be read and is not the backup's own (it is then listed as skipped). A
/// file of its own that its mode keeps from being read is opened after adding `u+r`, and its mode
/// is put back on the open file before anything is read.
pub(super) fn open_found(found: &Found) -> Result<Option<File>, BackupError> {
    let src_err = |source| BackupError::Source { path: found.path.clone(), source };
    let open = || File::options().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(&found.path);
    match open() {
        Ok(file) => Ok(Some(file)),
        Err(e) if denied(&e) && ours(&found.meta) => {
            let mode = found.meta.mode() & 0o7777;
            fs::set_permissions(&found.path, fs::Permissions::from_mode(mode | 0o400)).map_err(src_err)?;
            let opened = open();
            let back = match &opened {
                Ok(file) => file.set_permissions(fs::Permissions::from_mode(mode)),
                Err(_) => fs::set_permissions(&found.path, fs::Permissions::from_mode(mode)),
            };
            let file = opened.map_err(src_err)?;
            back.map_err(src_err)?;
            Ok(Some(file))
        }
        Err(e) if denied(&e) => Ok(None),
        Err(e) => Err(src_err(e)),
    }
}
