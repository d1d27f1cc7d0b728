//! Swapping a restored tree in: beside the target with two renames ([`Swap`]), or inside a
//! folder that cannot be renamed, a volume's mount point ([`InPlace`]). Every step is resumable:
//! `recover` finishes a swap that had started (the new tree was complete before it did) or drops
//! an unfinished extraction.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{RestoreError, io_err};
use crate::failpoint;

/// Remove a tree, also when it holds folders its owner closed (mode 000): those the caller's uid
/// owns are opened (`u+rwx`) and the removal retried. Symlinks are never followed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_owned_dirs(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Rename `from` into another folder. Moving a folder to a new parent rewrites its `..`, which
/// needs write permission on it: a folder its owner closed (mode 000) is opened (`u+w`) for the
/// rename when the caller's uid owns it, and its mode put back.
fn move_to_other_folder(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let meta = fs::symlink_metadata(from)?;
            if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o200 != 0 {
                return Err(e);
            }
            let mode = meta.mode() & 0o7777;
            fs::set_permissions(from, fs::Permissions::from_mode(mode | 0o200))?;
            let moved = fs::rename(from, to);
            let at = if moved.is_ok() { to } else { from };
            fs::set_permissions(at, fs::Permissions::from_mode(mode))?;
            moved
        }
        result => result,
    }
}

fn open_owned_dirs(path: &Path) -> io::Result<()> {
    let euid = nix::unistd::geteuid().as_raw();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else { continue };
        if !meta.is_dir() {
            continue;
        }
        if meta.uid() == euid && meta.mode() & 0o700 != 0o700 {
            fs::set_permissions(&dir, fs::Permissions::from_mode((meta.mode() | 0o700) & 0o7777))?;
        }
        if let Ok(children) = fs::read_dir(&dir) {
            stack.extend(children.filter_map(|c| Some(c.ok()?.path())));
        }
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
        if !exists(&self.replaced) {
            return drop_staged(&self.staged);
        }
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
        remove_tree(&self.replaced).map_err(io_err(&self.replaced))?;
        Ok(true)
    }

    /// Move the staged tree into place: target → replaced, staged → target, then drop the old
    /// tree. The caller has made sure the old tree is backed up (or empty).
    pub fn swap(&self) -> Result<(), RestoreError> {
        failpoint::hit("restore.before_swap");
        let had_target = exists(&self.target);
        if had_target {
            fs::rename(&self.target, &self.replaced).map_err(io_err(&self.target))?;
            failpoint::hit("restore.mid_swap");
        }
        fs::rename(&self.staged, &self.target).map_err(io_err(&self.target))?;
        sync_parent(&self.target)?;
        if had_target {
            remove_tree(&self.replaced).map_err(io_err(&self.replaced))?;
        }
        Ok(())
    }
}

/// Whether anything (a symlink included) is at `path`.
fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Drop the extraction an interrupted restore left at `staged` before its swap began: the
/// restore is redone (returns false, as `recover` does then).
fn drop_staged(staged: &Path) -> Result<bool, RestoreError> {
    if exists(staged) {
        remove_tree(staged).map_err(io_err(staged))?;
    }
    Ok(false)
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

    pub(super) fn ours(&self, name: &std::ffi::OsStr) -> bool {
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
        if exists(&self.moved_out) || exists(&self.replaced) {
            // The swap had started, so the staged tree was complete: finish it.
            self.finish_swap()?;
            return Ok(true);
        }
        drop_staged(&self.staged)
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
                move_to_other_folder(&from, &self.replaced.join(&name)).map_err(io_err(&from))?;
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
                move_to_other_folder(&from, &self.target.join(&name)).map_err(io_err(&from))?;
            }
            sync_dir(&self.target)?;
            fs::remove_dir(&self.staged).map_err(io_err(&self.staged))?;
        }
        if fs::symlink_metadata(&self.replaced).is_ok() {
            remove_tree(&self.replaced).map_err(io_err(&self.replaced))?;
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
    let parent = target.parent().unwrap_or(Path::new("/"));
    match (fs::symlink_metadata(target), fs::metadata(parent)) {
        (Ok(t), Ok(p)) => t.is_dir() && (t.dev() != p.dev() || t.ino() == p.ino()),
        _ => false,
    }
}

/// The swap renames `target`: it cannot be a mount point (say so before extracting anything).
pub(super) fn same_filesystem(parent: &Path, target: &Path) -> Result<(), RestoreError> {
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

/// How one root's restored tree is swapped in: beside its folder, or inside it when the folder is
/// a mount point or the caller says so.
#[derive(Debug, Clone)]
pub enum Swapper {
    Beside(Swap),
    Inside(InPlace),
}

impl Swapper {
    pub fn for_target(target: &Path, in_place: bool) -> Swapper {
        if in_place || is_mount_point(target) {
            Swapper::Inside(InPlace::for_target(target))
        } else {
            Swapper::Beside(Swap::for_target(target))
        }
    }

    pub fn target(&self) -> &Path {
        match self {
            Swapper::Beside(s) => &s.target,
            Swapper::Inside(s) => &s.target,
        }
    }

    /// Where the new tree is extracted first.
    pub fn staged(&self) -> &Path {
        match self {
            Swapper::Beside(s) => &s.staged,
            Swapper::Inside(s) => &s.staged,
        }
    }

    /// Finish or undo what an interrupted restore left (see [`Swap::recover`], [`InPlace::recover`]).
    pub fn recover(&self) -> Result<bool, RestoreError> {
        match self {
            Swapper::Beside(s) => s.recover(),
            Swapper::Inside(s) => s.recover(),
        }
    }

    pub fn swap(&self) -> Result<(), RestoreError> {
        match self {
            Swapper::Beside(s) => s.swap(),
            Swapper::Inside(s) => s.swap(),
        }
    }

    /// Whether a top-level name of the new tree is one the swap itself uses.
    pub fn clashes(&self, top: &std::ffi::OsStr) -> bool {
        match self {
            Swapper::Beside(_) => false,
            Swapper::Inside(s) => s.ours(top),
        }
    }

    /// Where the space for the new tree is taken from.
    pub fn space_at(&self) -> &Path {
        match self {
            Swapper::Beside(s) => s.target.parent().unwrap_or(Path::new(".")),
            Swapper::Inside(s) => &s.target,
        }
    }
}
