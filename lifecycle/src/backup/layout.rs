//! The zip layout of a backup. Layout 2 (written since HOME is backed up) holds two roots: the
//! workspace folder under `workspace/…` and HOME under `home/…`, each with an entry for the root
//! folder itself (`workspace/`, `home/`), and says so in the archive comment `wakeway-backup v2`.
//! Layout 1 (no such comment) holds the workspace folder alone, without a prefix.

use std::path::Path;

/// The archive comment of a layout-2 zip.
pub const COMMENT: &str = "wakeway-backup v2";

/// What every layout comment starts with (a later layout is refused, not misread as layout 1).
const COMMENT_PREFIX: &str = "wakeway-backup v";

/// A folder a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Root {
    /// The workspace folder (`/workspace`).
    Workspace,
    /// The workspace user's HOME (code-server's settings and extensions, dotfiles, history).
    Home,
}

impl Root {
    pub const ALL: [Root; 2] = [Root::Workspace, Root::Home];

    /// `workspace` or `home`: the root's name in the zip and in records.
    pub fn name(self) -> &'static str {
        match self {
            Root::Workspace => "workspace",
            Root::Home => "home",
        }
    }

    /// `workspace/` or `home/`: the root folder's own entry, and the prefix of every entry in it.
    pub fn prefix(self) -> &'static [u8] {
        match self {
            Root::Workspace => b"workspace/",
            Root::Home => b"home/",
        }
    }
}

/// How a zip's entries map to roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// No marker: every entry is in the workspace folder.
    V1,
    /// `workspace/…` and `home/…`.
    V2,
}

impl Layout {
    /// The layout a zip's archive comment names. Err for a layout this wakeway does not know.
    pub fn of_comment(comment: &[u8]) -> Result<Layout, String> {
        match std::str::from_utf8(comment).map(str::trim) {
            Ok(COMMENT) => Ok(Layout::V2),
            Ok(other) if other.starts_with(COMMENT_PREFIX) => {
                Err(format!("it says {other:?}: a layout this wakeway does not know (it reads 1 and 2)"))
            }
            _ => Ok(Layout::V1),
        }
    }

    pub fn version(self) -> u32 {
        match self {
            Layout::V1 => 1,
            Layout::V2 => 2,
        }
    }

    /// The root an entry belongs to and its path inside it (empty for the root's own entry).
    /// `None` when a layout-2 name is under neither root.
    pub fn split(self, name: &[u8]) -> Option<(Root, &[u8])> {
        match self {
            Layout::V1 => Some((Root::Workspace, name)),
            Layout::V2 => Root::ALL.into_iter().find_map(|root| Some((root, name.strip_prefix(root.prefix())?))),
        }
    }
}

/// The folders one backup is taken of.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    pub workspace: &'a Path,
    /// HOME, when it is backed up too (`None`: the zip holds the `workspace` root alone, and a
    /// restore of it leaves HOME as it is).
    pub home: Option<&'a Path>,
}

impl<'a> Sources<'a> {
    /// Each root with its folder, in zip order.
    pub fn roots(&self) -> Vec<(Root, &'a Path)> {
        let mut roots = vec![(Root::Workspace, self.workspace)];
        roots.extend(self.home.map(|home| (Root::Home, home)));
        roots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_comment_names_the_layout() {
        assert_eq!(Layout::of_comment(b""), Ok(Layout::V1));
        assert_eq!(Layout::of_comment(b"made by zip 3.0"), Ok(Layout::V1));
        assert_eq!(Layout::of_comment(COMMENT.as_bytes()), Ok(Layout::V2));
        assert!(Layout::of_comment(b"wakeway-backup v3").is_err());
        assert_eq!(Layout::V2.split(b"home/.bashrc"), Some((Root::Home, &b".bashrc"[..])));
        assert_eq!(Layout::V2.split(b"workspace/"), Some((Root::Workspace, &b""[..])));
        assert_eq!(Layout::V2.split(b"other/x"), None);
        assert_eq!(Layout::V1.split(b"home/x"), Some((Root::Workspace, &b"home/x"[..])));
    }
}
