//! Bringing a backup zip back, safely: every entry is checked before anything is written
//! ([`plan`]: no absolute paths, no `..`, nothing through or inside a symlink or a file, no symlink
//! that resolves outside its root, size, entry count and expansion-ratio limits), each root is
//! extracted into a fresh folder next to its target ([`extract`]), flushed to disk (`syncfs`), and
//! only then swapped in ([`swap`]). A failure before the swaps leaves every target as it was.
//!
//! A zip of layout 2 holds the workspace folder and HOME (`workspace/…`, `home/…`); one of layout
//! 1 holds the workspace folder alone, and restoring it leaves HOME as it is. Both roots are
//! extracted before either is swapped in; the workspace is swapped first, then HOME. A crash
//! between the two swaps leaves the workspace restored and HOME not: the restore is redone from the
//! start (each root's `recover` finishes or drops its own swap first), which puts the same tree in
//! the workspace again and HOME's in place.
//!
//! Files keep their content, permission bits (mode 000 included) and modification times (to the
//! nanosecond with wakeway's extra field; see [`crate::backup::entry_mtime`]); folders keep theirs
//! (setgid and sticky included); symlinks stay symlinks; names are restored byte for byte, UTF-8 or
//! not. Files never get setuid or setgid back, and sockets, FIFOs and devices are never created:
//! they are skipped and reported.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backup::{Root, sha256_file};

mod extract;
mod plan;
mod swap;

pub use extract::extract;
pub use plan::{Plan, inspect};
pub use swap::{InPlace, Swap, Swapper, is_mount_point, remove_tree};

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
            max_bytes: config.restore.max_bytes,
            max_entries: config.restore.max_entries,
            max_ratio: config.restore.max_ratio,
        }
    }
}

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
    /// The roots restored (`workspace`, `home`).
    #[serde(default)]
    pub roots: Vec<String>,
    /// Roots the zip holds that were not restored: no place was given for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
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

/// Where each root of a backup goes.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The workspace folder (created if missing).
    pub workspace: PathBuf,
    /// HOME (`None`: a zip's `home` root is left out, and reported so).
    pub home: Option<PathBuf>,
    /// Restore inside each folder ([`InPlace`]); automatic for a mount point.
    pub in_place: bool,
}

impl Targets {
    /// The workspace folder alone.
    pub fn workspace(target: &Path) -> Targets {
        Targets { workspace: target.to_owned(), home: None, in_place: false }
    }

    fn swappers(&self) -> Vec<(Root, Swapper)> {
        let mut out = vec![(Root::Workspace, Swapper::for_target(&self.workspace, self.in_place))];
        out.extend(self.home.as_deref().map(|home| (Root::Home, Swapper::for_target(home, self.in_place))));
        out
    }

    /// Finish or undo what an interrupted restore left in every target.
    pub fn recover(&self) -> Result<(), RestoreError> {
        for (_, swapper) in self.swappers() {
            swapper.recover()?;
        }
        Ok(())
    }
}

/// The whole restore of `zip` into `target` (created if missing): check, extract next to it, swap
/// in; inside it instead when `target` is a mount point. The workspace root alone.
pub fn restore_into(zip: &Path, target: &Path, limits: &Limits, options: &Options) -> Result<Report, RestoreError> {
    restore(zip, &Targets::workspace(target), limits, options)
}

/// A restore inside `target`, an existing folder (a volume's mount point): see [`InPlace`].
pub fn restore_in_place(zip: &Path, target: &Path, limits: &Limits, options: &Options) -> Result<Report, RestoreError> {
    restore(zip, &Targets { in_place: true, ..Targets::workspace(target) }, limits, options)
}

/// The whole restore of `zip` into `targets`: every root checked, extracted beside (or inside)
/// its target, then swapped in, the workspace first. Used by `wakeway restore` and the local
/// backend. The workspace is always restored (an empty zip empties it); HOME only when the zip
/// holds a `home` root and `targets.home` says where.
pub fn restore(zip: &Path, targets: &Targets, limits: &Limits, options: &Options) -> Result<Report, RestoreError> {
    let swappers = targets.swappers();
    for (_, swapper) in &swappers {
        swapper.recover()?;
    }
    let checks = Options { expected_sha256: None, ..options.clone() };
    let plan = inspect(zip, limits, &checks)?;
    let chosen: Vec<(Root, &Swapper)> = swappers
        .iter()
        .filter(|(root, _)| *root == Root::Workspace || plan.roots.contains(root))
        .map(|(root, swapper)| (*root, swapper))
        .collect();
    for (root, swapper) in &chosen {
        if let Some(clash) = plan.of(*root).map(|e| e.path.as_slice()).find(|path| {
            let top = path.split(|b| *b == b'/').next().unwrap_or_default();
            swapper.clashes(std::ffi::OsStr::from_bytes(top))
        }) {
            return Err(rejected(format!(
                "\"{}\" is a name wakeway uses while restoring in place",
                String::from_utf8_lossy(clash)
            )));
        }
        if let Swapper::Beside(swap) = swapper {
            let parent = swap.target.parent().unwrap_or(Path::new("."));
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            swap::same_filesystem(parent, &swap.target)?;
        }
    }
    // Roots on one filesystem share its free space.
    let mut per_device: BTreeMap<u64, (&Path, u64)> = BTreeMap::new();
    for (root, swapper) in &chosen {
        let at = swapper.space_at();
        let dev = fs::metadata(at).map_err(io_err(at))?.dev();
        per_device.entry(dev).or_insert((at, 0)).1 += plan.bytes_of(*root);
    }
    for (at, bytes) in per_device.values() {
        check_space(at, *bytes)?;
    }
    extract_checked(zip, &plan, &chosen, options)?;
    for (_, swapper) in &chosen {
        swapper.swap()?;
    }
    let restored: Vec<Root> = chosen.iter().map(|(root, _)| *root).collect();
    let mut report = plan.report_for(&restored);
    report.left_out = plan.roots.iter().filter(|r| !restored.contains(r)).map(|r| r.name().to_string()).collect();
    Ok(report)
}

/// Extract every chosen root into its staged folder while the SHA-256 of the whole zip is checked
/// on another core; an error of either removes what was extracted.
fn extract_checked(
    zip: &Path,
    plan: &Plan,
    chosen: &[(Root, &Swapper)],
    options: &Options,
) -> Result<(), RestoreError> {
    std::thread::scope(|scope| {
        let sha = options.expected_sha256.as_deref().map(|expected| scope.spawn(move || check_sha256(zip, expected)));
        let extracted =
            chosen.iter().try_for_each(|(root, swapper)| extract(zip, plan, *root, swapper.staged()).map(drop));
        let hashed = match sha {
            Some(handle) => {
                handle.join().unwrap_or_else(|_| Err(RestoreError::Corrupt("the hashing thread failed".into())))
            }
            None => Ok(()),
        };
        let result = extracted.and(hashed);
        if result.is_err() {
            for (_, swapper) in chosen {
                let _ = remove_tree(swapper.staged());
            }
        }
        result
    })
}

/// `wakeway restore`: what the command (by hand, or in the Kubernetes restore Job) does and the one
/// JSON line it prints — `{"ok": true, "src", "dest", "home_dest", "restore": report}` (with a
/// `note` when the zip's `home` root was left out) or `{"ok": false, "kind":
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
    /// Restore the workspace root into `dest` (a `home` root is left out).
    pub fn run(&self, src: &Path, dest: &Path, limits: &Limits) -> serde_json::Value {
        self.run_roots(src, dest, None, limits)
    }

    /// Restore the workspace root into `dest` and, when given, the `home` root into `home_dest`.
    pub fn run_roots(&self, src: &Path, dest: &Path, home_dest: Option<&Path>, limits: &Limits) -> serde_json::Value {
        let fail = |kind: &str, error: String| serde_json::json!({ "ok": false, "kind": kind, "error": error });
        let record = crate::catalog::read_sidecar(&crate::catalog::sidecar_path(src)).ok();
        if let Some(r) = record.as_ref().filter(|r| !r.verified) {
            return fail("corrupt", format!("the backup failed verification: {}", r.error.as_deref().unwrap_or("?")));
        }
        for target in std::iter::once(dest).chain(home_dest) {
            let has_content = fs::read_dir(target).map(|mut d| d.next().is_some()).unwrap_or(false);
            if has_content && !self.replace {
                return fail(
                    "refused",
                    format!("{} is not empty; pass --replace to replace its content", target.display()),
                );
            }
        }
        let options =
            Options { skip_escaping_symlinks: self.skip_escaping_symlinks, expected_sha256: record.map(|r| r.sha256) };
        let targets =
            Targets { workspace: dest.to_owned(), home: home_dest.map(Path::to_owned), in_place: self.in_place };
        match restore(src, &targets, limits, &options) {
            Ok(report) => {
                let mut line = serde_json::json!({ "ok": true, "src": src, "dest": dest, "restore": report });
                if let Some(home) = home_dest {
                    line["home_dest"] = serde_json::json!(home);
                }
                if !report.left_out.is_empty() {
                    line["note"] = serde_json::json!(format!(
                        "the zip's {} root was not restored: no --home-dest was given",
                        report.left_out.join(", ")
                    ));
                }
                line
            }
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

#[cfg(test)]
mod tests;
