//! The folder of a workspace's Unix socket (`sockets/<id>/`): handed to the workspace while it
//! starts (its server creates the socket there), taken back once it answers, and checked (see the
//! backend's module documentation for why). Blocking file system work, run off the runtime.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::isolation::{self, RunAs};
use super::{LocalBackend, blocking_io};

impl LocalBackend {
    /// Give `id`'s socket folder, emptied, to the workspace for its start (its server creates the
    /// socket there).
    pub(super) async fn open_socket_dir(&self, id: &str, run_as: RunAs) -> std::io::Result<()> {
        let dir = self.paths.socket_dir(id);
        blocking_io(move || open(&dir, run_as)).await
    }

    /// Take `id`'s socket folder back once the workspace answers (wakeway's, 0700: the entry can
    /// no longer change, and no other uid can open the socket), then check that what answers is
    /// a socket its own uid bound (not a link to someone else's). Idempotent.
    pub(super) async fn close_socket_dir(&self, id: &str, uid: Option<u32>) -> Result<(), String> {
        let (dir, socket) = (self.paths.socket_dir(id), self.paths.socket(id));
        tokio::task::spawn_blocking(move || close(&dir, socket, uid)).await.map_err(|e| e.to_string())?
    }
}

fn open(dir: &Path, run_as: RunAs) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    isolation::ensure_dir(dir, 0o700)?;
    if let RunAs::Uid(uid) = run_as {
        std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    }
    Ok(())
}

fn close(dir: &Path, socket: PathBuf, uid: Option<u32>) -> Result<(), String> {
    let (me, my_group) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    std::os::unix::fs::lchown(dir, Some(me), Some(my_group))
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot take back {}: {e}", dir.display()))?;
    let meta = std::fs::symlink_metadata(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let owner_ok = uid.is_none_or(|uid| meta.uid() == uid);
    if !meta.file_type().is_socket() || !owner_ok {
        return Err(format!(
            "{} is not a socket the workspace's own server bound; refusing to route to it",
            socket.display()
        ));
    }
    Ok(())
}
