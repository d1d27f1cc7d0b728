//! The layout of a session's PVC, and the one-time, crash-safe migration to it.
//!
//! Layout 2 keeps the workspace in `workspace/` and HOME in `home/` (the workspace container
//! mounts each with a `subPath`), with the marker `.wakeway-layout` at the volume's root. Volumes
//! written before it hold the workspace at their root. `wakeway migrate-volume <dir>` moves such
//! a volume over; every pod that mounts a session's PVC (the workspace, backup and restore Jobs)
//! runs it first as an init container, so nothing ever reads the volume half-migrated.
//!
//! The steps, each resumable after a crash at any point (only renames on the volume's own
//! filesystem, nothing is copied or deleted):
//! 1. every top-level entry is moved into the staging folder `.wakeway-layout-new` (a user
//!    folder named `workspace` or `home` moves like any other), which is fsynced;
//! 2. the empty file `.wakeway-layout-staged` says "everything is staged";
//! 3. the staging folder is renamed to `workspace`, `home/` is created;
//! 4. the marker `.wakeway-layout` is written, fsynced; the staged flag is removed.
//!
//! No rename ever replaces anything (`RENAME_NOREPLACE`): a clash stops the migration with the
//! path named, and the data stays where it is. A root-owned `lost+found` folder (the
//! filesystem's own, made by `mkfs`) stays at the root: it was never the user's and the workspace
//! uid could not move it. In layout 2 nothing but wakeway writes at the volume's root (the
//! workspace sees only its two folders).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The workspace folder on a layout-2 volume (mounted at `/workspace`).
pub const WORKSPACE_DIR: &str = "workspace";
/// The HOME folder on a layout-2 volume (mounted at `kubernetes.home_path`).
pub const HOME_DIR: &str = "home";
/// Present (with `2`) once the volume has layout 2.
pub const MARKER: &str = ".wakeway-layout";
/// Present while every old entry is staged but the staging folder is not yet `workspace/`.
const STAGED: &str = ".wakeway-layout-staged";
/// Where the old top-level entries are gathered before becoming `workspace/`.
const STAGING: &str = ".wakeway-layout-new";
/// The filesystem's own folder (ext4 and others make it at the root of a new filesystem).
const LOST_FOUND: &str = "lost+found";

/// Why a volume could not be migrated. Its data stays where it is in every case.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot migrate the volume at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot move {from} to {to}: the target exists (nothing was overwritten; move one of them aside by hand)")]
    Clash { from: PathBuf, to: PathBuf },
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Migrated {
    /// The layout the volume has now.
    pub layout: u32,
    /// Top-level entries moved into `workspace/` by this run.
    pub moved: u64,
    /// The volume already had layout 2 (nothing to do).
    pub already: bool,
}

/// The points a migration passes, in order (tests stop it at each to prove it resumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    StagingCreated,
    EntryMoved,
    AllMoved,
    Staged,
    Renamed,
    HomeCreated,
    Marked,
}

/// Bring the volume mounted at `root` to layout 2 (see the module's documentation). Idempotent.
pub fn migrate(root: &Path) -> Result<Migrated, VolumeError> {
    run(root, &mut |_| Ok(()))
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io { path: path.to_owned(), source }
}

fn exists(path: &Path) -> Result<bool, VolumeError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Create folder `path` if missing. Returns whether it was created.
fn ensure_dir(path: &Path) -> Result<bool, VolumeError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::symlink_metadata(path).map_err(io_at(path))?.is_dir() {
                Ok(false)
            } else {
                Err(io_at(path)(io::Error::other("exists and is not a folder")))
            }
        }
        Err(e) => Err(io_at(path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), VolumeError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

/// `from` → `to`, never replacing `to`.
fn rename_new(from: &Path, to: &Path) -> Result<(), VolumeError> {
    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => Err(VolumeError::Clash { from: from.to_owned(), to: to.to_owned() }),
        // A filesystem without RENAME_NOREPLACE (older NFS): nothing else runs on the volume
        // while an init container migrates it, so check, then rename.
        Err(Errno::EINVAL) => {
            if exists(to)? {
                return Err(VolumeError::Clash { from: from.to_owned(), to: to.to_owned() });
            }
            fs::rename(from, to).map_err(io_at(from))
        }
        Err(e) => Err(io_at(from)(e.into())),
    }
}

/// Move one top-level entry. Linux lets a folder move to another parent only when its `..` can
/// be rewritten, i.e. when the folder is writable: a folder its owner made read-only gets `u+w`
/// for the move and its mode back after.
fn move_entry(from: &Path, to: &Path) -> Result<(), VolumeError> {
    match rename_new(from, to) {
        Err(VolumeError::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
            let meta = fs::symlink_metadata(from).map_err(io_at(from))?;
            if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
                return Err(io_at(from)(source));
            }
            let mode = meta.permissions().mode() & 0o7777;
            fs::set_permissions(from, fs::Permissions::from_mode(mode | 0o200)).map_err(io_at(from))?;
            if let Err(e) = rename_new(from, to) {
                let _ = fs::set_permissions(from, fs::Permissions::from_mode(mode));
                return Err(e);
            }
            fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io_at(to))
        }
        other => other,
    }
}

/// The filesystem's own `lost+found` (a folder owned by root), which stays at the root.
fn is_filesystem_lost_found(root: &Path, name: &OsString) -> Result<bool, VolumeError> {
    if name != LOST_FOUND {
        return Ok(false);
    }
    let path = root.join(name);
    let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
    Ok(meta.is_dir() && meta.uid() == 0)
}

fn names(dir: &Path) -> Result<Vec<OsString>, VolumeError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        names.push(entry.map_err(io_at(dir))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// [`migrate`], calling `at` after each step (a test's `Err` there stands for a crash).
pub(crate) fn run(root: &Path, at: &mut dyn FnMut(Step) -> io::Result<()>) -> Result<Migrated, VolumeError> {
    let mut at = |step: Step| at(step).map_err(io_at(root));
    let (marker, staged, staging) = (root.join(MARKER), root.join(STAGED), root.join(STAGING));
    let (workspace, home) = (root.join(WORKSPACE_DIR), root.join(HOME_DIR));
    if !fs::metadata(root).map_err(io_at(root))?.is_dir() {
        return Err(io_at(root)(io::Error::other("not a folder")));
    }
    if exists(&marker)? {
        // Layout 2 already. Its folders are made again if missing, so that the kubelet never
        // creates a `subPath` folder itself (as root, which the workspace could not write).
        let mut changed = ensure_dir(&workspace)? | ensure_dir(&home)?;
        if exists(&staged)? {
            fs::remove_file(&staged).map_err(io_at(&staged))?;
            changed = true;
        }
        if changed {
            sync_dir(root)?;
        }
        return Ok(Migrated { layout: 2, moved: 0, already: true });
    }
    let mut moved = 0;
    if !exists(&staged)? {
        if ensure_dir(&staging)? {
            sync_dir(root)?;
        }
        at(Step::StagingCreated)?;
        for name in names(root)? {
            if name == STAGING || is_filesystem_lost_found(root, &name)? {
                continue;
            }
            move_entry(&root.join(&name), &staging.join(&name))?;
            moved += 1;
            at(Step::EntryMoved)?;
        }
        sync_dir(&staging)?;
        sync_dir(root)?;
        at(Step::AllMoved)?;
        File::create(&staged).map_err(io_at(&staged))?;
        sync_dir(root)?;
        at(Step::Staged)?;
    }
    // Staged: the root holds nothing of the user's but the staging folder (or, when the rename
    // below happened before a crash, `workspace/`).
    if exists(&staging)? {
        rename_new(&staging, &workspace)?;
        sync_dir(root)?;
        at(Step::Renamed)?;
    } else {
        ensure_dir(&workspace)?;
    }
    ensure_dir(&home)?;
    sync_dir(root)?;
    at(Step::HomeCreated)?;
    let mut file = File::create(&marker).map_err(io_at(&marker))?;
    file.write_all(b"2\n").and_then(|()| file.sync_all()).map_err(io_at(&marker))?;
    sync_dir(root)?;
    at(Step::Marked)?;
    fs::remove_file(&staged).map_err(io_at(&staged))?;
    sync_dir(root)?;
    Ok(Migrated { layout: 2, moved, already: false })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    use super::*;

    /// A volume of today's layout: the workspace at the root, including a user folder named
    /// `workspace` and one named `home`, a read-only folder, a symlink and a hidden file.
    fn old_volume(root: &Path) {
        fs::create_dir_all(root.join("src")).unwrap();
        fs::write(root.join("README.md"), "# project\n").unwrap();
        fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
        fs::create_dir_all(root.join("workspace/inner")).unwrap();
        fs::write(root.join("workspace/inner/note.txt"), "a user folder named workspace\n").unwrap();
        fs::create_dir_all(root.join("home")).unwrap();
        fs::write(root.join("home/todo.txt"), "a user folder named home\n").unwrap();
        fs::write(root.join(".gitignore"), "target/\n").unwrap();
        symlink("README.md", root.join("link")).unwrap();
        fs::create_dir_all(root.join("frozen")).unwrap();
        fs::write(root.join("frozen/keep.txt"), "read-only folder\n").unwrap();
        fs::set_permissions(root.join("frozen"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    /// Every path under `dir` with its content (files), `->target` (symlinks) or `/` (folders)
    /// and its mode.
    fn tree(dir: &Path) -> BTreeMap<String, (String, u32)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                let what = if meta.is_symlink() {
                    format!("->{}", fs::read_link(&path).unwrap().display())
                } else if meta.is_dir() {
                    stack.push(path.clone());
                    "/".into()
                } else {
                    fs::read_to_string(&path).unwrap()
                };
                out.insert(rel, (what, meta.permissions().mode() & 0o7777));
            }
        }
        out
    }

    fn top(root: &Path) -> Vec<String> {
        names(root).unwrap().into_iter().map(|n| n.into_string().unwrap()).collect()
    }

    #[test]
    fn an_old_volume_moves_into_workspace_and_gets_a_home() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        old_volume(root);
        let before = tree(root);
        let done = migrate(root).unwrap();
        assert_eq!(done, Migrated { layout: 2, moved: 7, already: false });
        assert_eq!(top(root), [MARKER, HOME_DIR, WORKSPACE_DIR]);
        assert_eq!(tree(&root.join(WORKSPACE_DIR)), before, "every entry, byte and mode kept");
        assert!(tree(&root.join(HOME_DIR)).is_empty());
        assert_eq!(fs::read_to_string(root.join(MARKER)).unwrap(), "2\n");
        // Idempotent: a second run (the next pod's init container) changes nothing.
        assert_eq!(migrate(root).unwrap(), Migrated { layout: 2, moved: 0, already: true });
        assert_eq!(tree(&root.join(WORKSPACE_DIR)), before);
    }

    #[test]
    fn a_new_volume_gets_both_folders_and_a_root_owned_lost_and_found_stays() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join(LOST_FOUND)).unwrap();
        let root_owned = nix::unistd::geteuid().is_root();
        let done = migrate(root).unwrap();
        if root_owned {
            // As mkfs leaves it: owned by root, the filesystem's, not the user's.
            assert_eq!(done.moved, 0);
            assert_eq!(top(root), [MARKER, HOME_DIR, LOST_FOUND, WORKSPACE_DIR]);
        } else {
            // Made by the workspace's uid: the user's, moved like everything else.
            assert_eq!(done.moved, 1);
            assert!(root.join(WORKSPACE_DIR).join(LOST_FOUND).is_dir());
        }
        // A layout-2 volume whose folders went missing gets them back (never made by the kubelet).
        fs::remove_dir(root.join(HOME_DIR)).unwrap();
        assert!(migrate(root).unwrap().already);
        assert!(root.join(HOME_DIR).is_dir());
    }

    #[test]
    fn a_crash_at_any_step_resumes_to_the_same_result() {
        let steps = [
            (Step::StagingCreated, 1),
            (Step::EntryMoved, 1),
            (Step::EntryMoved, 4),
            (Step::EntryMoved, 7),
            (Step::AllMoved, 1),
            (Step::Staged, 1),
            (Step::Renamed, 1),
            (Step::HomeCreated, 1),
            (Step::Marked, 1),
        ];
        for (crash_at, nth) in steps {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            old_volume(root);
            let before = tree(root);
            let mut seen = 0;
            let crashed = run(root, &mut |step| {
                if step == crash_at {
                    seen += 1;
                    if seen == nth {
                        return Err(io::Error::other("crash"));
                    }
                }
                Ok(())
            });
            assert!(crashed.is_err(), "{crash_at:?} #{nth} was reached");
            // Nothing was lost in between: every entry is at the root, staged, or in workspace/.
            let mut now = tree(root);
            for prefix in [STAGING, WORKSPACE_DIR].map(|p| root.join(p)).into_iter().filter(|p| p.is_dir()) {
                now.extend(tree(&prefix));
            }
            for (path, value) in &before {
                assert_eq!(now.get(path), Some(value), "{crash_at:?} #{nth}: {path} is somewhere");
            }
            // The next run finishes the job, with the same result as an uninterrupted one.
            let resumed = migrate(root).unwrap();
            assert_eq!(resumed.layout, 2);
            assert_eq!(top(root), [MARKER, HOME_DIR, WORKSPACE_DIR], "{crash_at:?} #{nth}");
            assert_eq!(tree(&root.join(WORKSPACE_DIR)), before, "{crash_at:?} #{nth}");
            assert!(migrate(root).unwrap().already);
        }
    }

    #[test]
    fn a_clash_stops_without_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("a.txt"), "at the root\n").unwrap();
        // An interrupted migration already staged an `a.txt` (say, restored by hand since).
        fs::create_dir(root.join(STAGING)).unwrap();
        fs::write(root.join(STAGING).join("a.txt"), "staged\n").unwrap();
        let err = migrate(root).unwrap_err();
        assert!(matches!(&err, VolumeError::Clash { .. }), "{err}");
        assert!(err.to_string().contains("a.txt"), "{err}");
        assert_eq!(fs::read_to_string(root.join("a.txt")).unwrap(), "at the root\n");
        assert_eq!(fs::read_to_string(root.join(STAGING).join("a.txt")).unwrap(), "staged\n");
        assert!(!root.join(MARKER).exists());
    }
}
