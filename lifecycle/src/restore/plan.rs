//! Checking a zip before anything is written: every entry's name (raw bytes: no NUL, not
//! absolute, no empty, `.` or `..` components, within OS limits), its root (layout 2: under
//! `workspace/` or `home/`), kinds, nothing inside a file or through a symlink, every symlink
//! resolving inside its own root, and the size, entry count and expansion-ratio limits.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use zip::ZipArchive;

use super::{Limits, Options, Report, RestoreError, check_sha256, io_err, rejected};
use crate::backup::{Layout, Mtime, Root, entry_mode, entry_mtime};

/// The ratio limit applies once a zip expands past this: small zips cannot hurt.
const RATIO_FLOOR: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File { size: u64 },
    Symlink { target: Vec<u8> },
}

#[derive(Debug, Clone)]
pub(super) struct Planned {
    pub index: usize,
    pub root: Root,
    /// Path inside the root, `/`-separated raw bytes, no trailing slash; empty for the root's
    /// own entry (its mode and time).
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits (`None`: the zip has no Unix mode for it; a default is used).
    pub mode: Option<u32>,
    pub mtime: Option<Mtime>,
}

/// A zip that passed every check, and what extracting it will create.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(super) entries: Vec<Planned>,
    /// Folders implied by paths but without their own entry (created 0755).
    pub(super) implied_dirs: Vec<(Root, Vec<u8>)>,
    /// The roots the zip holds, in order.
    pub roots: Vec<Root>,
    pub layout: Layout,
    pub bytes: u64,
    pub skipped: Vec<String>,
}

impl Plan {
    /// What restoring `roots` of this plan creates.
    pub fn report_for(&self, roots: &[Root]) -> Report {
        let of = |e: &&Planned| roots.contains(&e.root) && !e.path.is_empty();
        let count = |f: fn(&Kind) -> bool| self.entries.iter().filter(of).filter(|e| f(&e.kind)).count() as u64;
        Report {
            files: count(|k| matches!(k, Kind::File { .. })),
            dirs: count(|k| matches!(k, Kind::Dir))
                + self.implied_dirs.iter().filter(|(root, _)| roots.contains(root)).count() as u64,
            symlinks: count(|k| matches!(k, Kind::Symlink { .. })),
            bytes: roots.iter().map(|r| self.bytes_of(*r)).sum(),
            skipped: self.skipped.clone(),
            roots: roots.iter().map(|r| r.name().to_string()).collect(),
            left_out: Vec::new(),
        }
    }

    /// What restoring the whole zip creates.
    pub fn report(&self) -> Report {
        self.report_for(&self.roots)
    }

    /// Bytes of file content in `root`.
    pub fn bytes_of(&self, root: Root) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.root == root)
            .map(|e| if let Kind::File { size } = e.kind { size } else { 0 })
            .sum()
    }

    /// The entries of `root`.
    pub(super) fn of(&self, root: Root) -> impl Iterator<Item = &Planned> {
        self.entries.iter().filter(move |e| e.root == root)
    }
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// How a name is shown in messages: printable ASCII as is, other bytes escaped.
pub(super) fn shown(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

/// Check a relative path inside a root: no NUL, not absolute, no empty, `.` or `..` components,
/// within OS length limits. Returns it without a trailing slash (empty for the root itself).
fn clean_path(name: &[u8], path: &[u8], is_root_entry: bool) -> Result<Vec<u8>, RestoreError> {
    let bad = |why: &str| Err(rejected(format!("entry \"{}\": {why}", shown(name))));
    if name.contains(&0) {
        return bad("the name contains a NUL byte");
    }
    if path.starts_with(b"/") {
        return bad("absolute paths are not allowed");
    }
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    if trimmed.is_empty() {
        return if is_root_entry { Ok(Vec::new()) } else { bad("empty name") };
    }
    if trimmed.len() > 4000 {
        return bad("the path is too long");
    }
    for part in trimmed.split(|b| *b == b'/') {
        match part {
            b"" => return bad("empty path component (\"//\")"),
            b"." => return bad("\".\" path components are not allowed"),
            b".." => return bad("\"..\" path components are not allowed (path traversal)"),
            p if p.len() > 255 => return bad("a path component is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(trimmed.to_vec())
}

fn parent_of(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|b| *b == b'/').map(|i| &path[..i])
}

fn join(stack: &[Vec<u8>], name: &[u8]) -> Vec<u8> {
    let mut out = stack.join(&b'/');
    if !out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// Follow `target` from the folder holding `link` the way the kernel would, through the
/// archive's own symlinks (`..` after a symlink goes to the parent of where it points). Err with
/// why when it leaves the root or loops.
fn resolve_inside(links: &HashMap<&[u8], &[u8]>, link: &[u8], target: &[u8]) -> Result<(), String> {
    if target.starts_with(b"/") {
        return Err("it points to an absolute path".into());
    }
    let split = |p: &[u8]| p.split(|b| *b == b'/').map(<[u8]>::to_vec).collect::<Vec<_>>();
    let mut stack: Vec<Vec<u8>> = parent_of(link).map(split).unwrap_or_default();
    let mut queue: Vec<Vec<u8>> = split(target).into_iter().rev().collect();
    let mut hops = 0;
    while let Some(part) = queue.pop() {
        match part.as_slice() {
            b"" | b"." => {}
            b".." => {
                if stack.pop().is_none() {
                    return Err("it points outside the workspace".into());
                }
            }
            name => {
                let candidate = join(&stack, name);
                if let Some(next) = links.get(candidate.as_slice()) {
                    hops += 1;
                    if hops > 40 {
                        return Err("too many levels of symlinks".into());
                    }
                    if next.starts_with(b"/") {
                        return Err(format!("it goes through {}, which points to an absolute path", shown(&candidate)));
                    }
                    queue.extend(split(next).into_iter().rev());
                } else {
                    stack.push(name.to_vec());
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
    let (mut archive, layout) = open_archive(zip, limits)?;
    let mut plan = Plan {
        entries: Vec::with_capacity(archive.len()),
        implied_dirs: Vec::new(),
        roots: Vec::new(),
        layout,
        bytes: 0,
        skipped: Vec::new(),
    };
    let mut roots = BTreeSet::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| RestoreError::Corrupt(format!("entry {index}: {e}")))?;
        // The name as stored, byte for byte: a name that is not UTF-8 comes back identical.
        let name = entry.name_raw().to_vec();
        let Some((root, inside)) = layout.split(&name) else {
            return Err(rejected(format!(
                "entry \"{}\" is under neither workspace/ nor home/ in a layout-2 zip",
                shown(&name)
            )));
        };
        roots.insert(root);
        let is_root_entry = layout == Layout::V2 && inside.is_empty();
        let path = clean_path(&name, inside, is_root_entry)?;
        if entry.encrypted() {
            return Err(rejected(format!("entry \"{}\" is encrypted", shown(&name))));
        }
        let raw_mode = entry_mode(&entry).filter(|m| *m != 0);
        let Some(kind) = entry_kind(&mut entry, &name, raw_mode.unwrap_or(0), limits, &mut plan.bytes)? else {
            plan.skipped.push(String::from_utf8_lossy(&name).into_owned());
            continue;
        };
        if is_root_entry && kind != Kind::Dir {
            return Err(rejected(format!("entry \"{}\" must be a folder", shown(&name))));
        }
        let mtime = entry_mtime(&entry);
        // Never create a setuid or setgid file: wakeway (or a restore Job) may run as root, and
        // the restored file would be root's. Folders keep setgid (group inheritance).
        let mode = raw_mode.map(|m| if matches!(kind, Kind::File { .. }) { m & 0o1777 } else { m & 0o7777 });
        plan.entries.push(Planned { index, root, path, kind, mode, mtime });
    }
    check_ratio(plan.bytes, zip_len, limits)?;
    plan.roots = roots.into_iter().collect();
    check_roots(&mut plan, options)?;
    Ok(plan)
}

/// Open `zip` as a zip archive, read its layout, and check its entry count.
fn open_archive(zip: &Path, limits: &Limits) -> Result<(ZipArchive<io::BufReader<File>>, Layout), RestoreError> {
    let file = File::open(zip).map_err(io_err(zip))?;
    let archive = ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| RestoreError::Corrupt(format!("not a readable zip: {e}")))?;
    let layout = Layout::of_comment(archive.comment()).map_err(rejected)?;
    if archive.len() as u64 > limits.max_entries {
        return Err(rejected(format!(
            "it holds {} entries, more than restore_max_entries ({})",
            archive.len(),
            limits.max_entries
        )));
    }
    Ok((archive, layout))
}

/// What entry `name` (of Unix `mode`) is: a folder, a symlink (its target read and checked) or
/// a file (its size added to `bytes`, within `restore_max_bytes`). `None`: something a restore
/// does not create (a device, a FIFO, a socket), skipped.
fn entry_kind(
    entry: &mut zip::read::ZipFile<'_, io::BufReader<File>>,
    name: &[u8],
    mode: u32,
    limits: &Limits,
    bytes: &mut u64,
) -> Result<Option<Kind>, RestoreError> {
    let file_type = mode & S_IFMT;
    if entry.is_dir() || file_type == S_IFDIR {
        return Ok(Some(Kind::Dir));
    }
    if file_type == S_IFLNK {
        if entry.size() > 4096 {
            return Err(rejected(format!("symlink \"{}\": its target is longer than 4096 bytes", shown(name))));
        }
        let mut target = Vec::new();
        entry
            .by_ref()
            .take(4097)
            .read_to_end(&mut target)
            .map_err(|e| RestoreError::Corrupt(format!("symlink \"{}\": {e}", shown(name))))?;
        if target.is_empty() || target.contains(&0) {
            return Err(rejected(format!("symlink \"{}\": empty target or a NUL byte in it", shown(name))));
        }
        return Ok(Some(Kind::Symlink { target }));
    }
    if file_type != S_IFREG && file_type != 0 {
        return Ok(None);
    }
    let size = entry.size();
    *bytes = bytes.saturating_add(size);
    if *bytes > limits.max_bytes {
        return Err(rejected(format!("it expands to more than restore_max_bytes ({} bytes)", limits.max_bytes)));
    }
    Ok(Some(Kind::File { size }))
}

/// Refuse a zip bomb: content that expands more than `restore_max_ratio` times the zip's size.
fn check_ratio(bytes: u64, zip_len: u64, limits: &Limits) -> Result<(), RestoreError> {
    if bytes > RATIO_FLOOR && bytes / zip_len.max(1) > limits.max_ratio {
        return Err(rejected(format!(
            "it expands {}-fold ({bytes} bytes from a {zip_len}-byte zip), more than restore_max_ratio ({}): a zip bomb",
            bytes / zip_len.max(1),
            limits.max_ratio
        )));
    }
    Ok(())
}

/// Check each root's tree (see [`check_tree`]): note the folders implied by paths, and leave out
/// (listed as skipped) the symlinks pointing outside their root, if the options allow it.
fn check_roots(plan: &mut Plan, options: &Options) -> Result<(), RestoreError> {
    let mut escaping = HashSet::new();
    for root in &plan.roots {
        let (implied, escapes) = check_tree(plan.entries.iter().filter(|e| e.root == *root), options)?;
        plan.implied_dirs.extend(implied.into_iter().map(|p| (*root, p)));
        escaping.extend(escapes.into_iter().map(|p| (*root, p)));
    }
    if !escaping.is_empty() {
        let layout = plan.layout;
        let prefix = |root: Root| if layout == Layout::V2 { root.prefix().to_vec() } else { Vec::new() };
        plan.skipped.extend(
            escaping.iter().map(|(root, p)| String::from_utf8_lossy(&[prefix(*root), p.clone()].concat()).into_owned()),
        );
        plan.entries.retain(|e| !escaping.contains(&(e.root, e.path.clone())));
    }
    plan.implied_dirs.sort();
    plan.skipped.sort();
    Ok(())
}

/// Folders implied by paths, and symlinks pointing outside the root.
type TreeCheck = (BTreeSet<Vec<u8>>, HashSet<Vec<u8>>);

/// The checks within one root: paths unique, nothing inside a file or through a symlink, every
/// symlink resolving inside the root. Returns the folders implied by paths, and the symlinks that
/// point outside (skipped when the caller allows it, else the zip is refused).
fn check_tree<'a>(
    entries: impl Iterator<Item = &'a Planned> + Clone,
    options: &Options,
) -> Result<TreeCheck, RestoreError> {
    let mut kinds: HashMap<&[u8], &Kind> = HashMap::new();
    for e in entries.clone() {
        if kinds.insert(e.path.as_slice(), &e.kind).is_some() {
            return Err(rejected(format!("entry \"{}\" appears twice", shown(&e.path))));
        }
    }
    let mut implied = BTreeSet::new();
    for e in entries.clone() {
        let mut parent = parent_of(&e.path);
        while let Some(p) = parent {
            match kinds.get(p) {
                Some(Kind::Symlink { .. }) => {
                    return Err(rejected(format!(
                        "entry \"{}\" goes through the symlink \"{}\"",
                        shown(&e.path),
                        shown(p)
                    )));
                }
                Some(Kind::File { .. }) => {
                    return Err(rejected(format!("entry \"{}\" is inside the file \"{}\"", shown(&e.path), shown(p))));
                }
                Some(Kind::Dir) => {}
                None => {
                    implied.insert(p.to_vec());
                }
            }
            parent = parent_of(p);
        }
    }
    let links: HashMap<&[u8], &[u8]> = entries
        .filter_map(|e| match &e.kind {
            Kind::Symlink { target } => Some((e.path.as_slice(), target.as_slice())),
            _ => None,
        })
        .collect();
    let mut escaping = HashSet::new();
    for (link, target) in &links {
        if let Err(why) = resolve_inside(&links, link, target) {
            if !options.skip_escaping_symlinks {
                return Err(rejected(format!("symlink \"{}\" -> \"{}\": {why}", shown(link), shown(target))));
            }
            escaping.insert(link.to_vec());
        }
    }
    Ok((implied, escaping))
}
