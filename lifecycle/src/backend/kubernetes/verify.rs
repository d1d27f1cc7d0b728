//! wakeway's own check of what a backup Job wrote, before anything is deleted on its word: the
//! backup volume is mounted in wakeway's pods too, the zip the Job names is opened there, and its
//! size, SHA-256 and every entry (read to the end, so each CRC-32 is checked) must match the
//! Job's record. Also the start-up check that the backup volume is there to be read.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::backup;
use crate::session::BackupInfo;

/// The path of backup `file` of session `id` inside `dir`, if `file` is exactly a name wakeway
/// gives such a backup (`workspace-<id>-YYYYMMDD-HHMMSS.zip`): no folder, no `..`, no other
/// session's zip.
pub(crate) fn zip_path(dir: &Path, id: &str, file: &str) -> Result<PathBuf, String> {
    let stamp = file.strip_prefix(&format!("workspace-{id}-")).and_then(|rest| rest.strip_suffix(".zip"));
    let valid = stamp.is_some_and(|s| {
        s.len() == 15
            && s.bytes().all(|b| b.is_ascii_digit() || b == b'-')
            && chrono::NaiveDateTime::parse_from_str(s, "%Y%m%d-%H%M%S").is_ok()
    });
    if !valid {
        return Err(format!("{file:?} is not the name of a backup of session {id}"));
    }
    Ok(dir.join(file))
}

/// The zip itself, as a regular file (a symlink could lead anywhere).
fn regular_file(path: &Path) -> Result<fs::Metadata, String> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => Ok(meta),
        Ok(_) => Err(format!("{} is not a regular file", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("{} is missing on the backup volume wakeway mounts", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Open the zip a backup Job reported (`info`) in `dir` and check it end to end against that
/// report: size, SHA-256, entry count and content bytes, and every entry's CRC-32 (no more than
/// `max_bytes` expanded). Blocks (reads the whole zip): call from `spawn_blocking`.
pub(crate) fn job_zip(dir: &Path, id: &str, info: &BackupInfo, max_bytes: u64) -> Result<(), String> {
    let path = zip_path(dir, id, &info.file)?;
    let meta = regular_file(&path)?;
    if meta.len() != info.size {
        return Err(format!("{} has {} bytes, the Job reported {}", path.display(), meta.len(), info.size));
    }
    let found = backup::reverify(&path, max_bytes).map_err(|e| e.to_string())?;
    let mismatches: Vec<String> = [
        ("size", found.size.to_string(), info.size.to_string()),
        ("SHA-256", found.sha256.clone(), info.sha256.clone()),
        ("entries", found.entries.to_string(), info.entries.to_string()),
        ("content bytes", found.content_bytes.to_string(), info.content_bytes.to_string()),
    ]
    .into_iter()
    .filter(|(_, found, reported)| found != reported)
    .map(|(what, found, reported)| format!("{what} {found}, the Job reported {reported}"))
    .collect();
    if !mismatches.is_empty() {
        return Err(format!("{} is not what the Job reported: {}", path.display(), mismatches.join("; ")));
    }
    Ok(())
}

/// Before a deletion: the backup the session records is still there, a regular file of the size
/// that was verified (the full check ran when the Job finished).
pub(crate) fn recorded_zip(dir: &Path, id: &str, info: &BackupInfo) -> Result<(), String> {
    let path = zip_path(dir, id, &info.file)?;
    let meta = regular_file(&path)?;
    if meta.len() != info.size {
        return Err(format!("{} has {} bytes, {} were verified", path.display(), meta.len(), info.size));
    }
    Ok(())
}

/// Whether `dir` is the mount point of a filesystem listed in `mountinfo` (the text of
/// `/proc/self/mountinfo`: the fifth field is the mount point, with spaces and the like escaped
/// as `\040`).
pub(crate) fn is_mounted(dir: &Path, mountinfo: &str) -> bool {
    let unescape = |field: &str| {
        let mut out = Vec::new();
        let bytes = field.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let octal = bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
            match (bytes[i], octal) {
                (b'\\', Some(b)) => {
                    out.push(b);
                    i += 4;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
    };
    mountinfo.lines().filter_map(|line| line.split(' ').nth(4)).any(|point| unescape(point) == dir)
}

/// The start-up check for `backend = "kubernetes"`: `dir` (`backup_dir`) must be the backup PVC
/// (`backup_pvc`) mounted read-write in wakeway's own pod — a mounted volume wakeway can list and
/// write — or no deletion could ever be verified.
pub(crate) fn backup_volume(dir: &Path, backup_pvc: &str) -> Result<(), String> {
    let fix = format!(
        "mount the backup PVC {backup_pvc:?} (kubernetes.backup_pvc) read-write at backup_dir = {:?} in wakeway's pods, \
         as deploy/wakeway.yaml does at /backups: wakeway opens and verifies every zip a backup Job writes there before \
         it deletes anything",
        dir.display()
    );
    let meta = fs::metadata(dir).map_err(|e| format!("backup_dir {} cannot be read ({e}): {fix}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("backup_dir {} is not a folder: {fix}", dir.display()));
    }
    fs::read_dir(dir).map_err(|e| format!("backup_dir {} cannot be listed ({e}): {fix}", dir.display()))?;
    // Replicas share the volume and often have the same pid (1): the pod's name tells them apart.
    let nanos = std::time::SystemTime::UNIX_EPOCH.elapsed().map_or(0, |d| d.subsec_nanos());
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let probe = dir.join(format!(".wakeway-probe-{host}-{}-{nanos}", std::process::id()));
    fs::File::create_new(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| format!("backup_dir {} is not writable ({e}): {fix}", dir.display()))?;
    // A folder of the container's own filesystem would pass the checks above and never see a
    // zip: it must be a volume. (Without /proc, as outside Linux, this cannot be told.)
    if let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") {
        let real = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if !is_mounted(&real, &mountinfo) {
            return Err(format!("backup_dir {} is not a mounted volume: {fix}", dir.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sessions_own_backup_names_are_opened() {
        let dir = Path::new("/backups");
        let ok = zip_path(dir, "abc12345", "workspace-abc12345-20260304-050607.zip").unwrap();
        assert_eq!(ok, Path::new("/backups/workspace-abc12345-20260304-050607.zip"));
        let long = "0123456789abcdef0123456789abcdef";
        zip_path(dir, long, &format!("workspace-{long}-20260304-050607.zip")).unwrap();
        for bad in [
            "workspace-ffffffff-20260304-050607.zip",
            "workspace-abc12345-20260304-050607.zip/../../etc/passwd",
            "workspace-abc12345-../20260304-0506.zip",
            "../workspace-abc12345-20260304-050607.zip",
            "workspace-abc12345-20261304-050607.zip",
            "workspace-abc12345-20260304-050607.json",
            "workspace-abc12345-20260304-050607.zip.partial",
            "",
        ] {
            let err = zip_path(dir, "abc12345", bad).unwrap_err();
            assert!(err.contains("not the name of a backup of session abc12345"), "{bad}: {err}");
        }
    }

    #[test]
    fn mount_points_are_read_from_mountinfo() {
        let info = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
                    35 22 0:31 /pvc-1 /backups rw,relatime - nfs4 srv:/x rw\n\
                    36 22 0:32 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        assert!(is_mounted(Path::new("/backups"), info));
        assert!(is_mounted(Path::new("/mnt/with space"), info));
        assert!(!is_mounted(Path::new("/var/lib/wakeway/backups"), info));
        assert!(!is_mounted(Path::new("/backup"), info));
    }

    #[test]
    fn a_backup_volume_that_is_not_there_is_refused_with_what_to_mount() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("backups");
        let err = backup_volume(&missing, "backup-pvc").unwrap_err();
        assert!(err.contains("cannot be read") && err.contains("mount the backup PVC \"backup-pvc\""), "{err}");
        std::fs::write(&missing, "").unwrap();
        assert!(backup_volume(&missing, "backup-pvc").unwrap_err().contains("not a folder"));
        // A folder of the container's own filesystem (a temporary folder here) is not a volume.
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!is_mounted(&folder, &mountinfo));
        let err = backup_volume(&folder, "backup-pvc").unwrap_err();
        assert!(err.contains("not a mounted volume") && err.contains("deploy/wakeway.yaml"), "{err}");
        assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0, "the write probe is removed");
        // A mounted, writable volume passes (tmpfs at /dev/shm, where the machine has it).
        let shm = Path::new("/dev/shm");
        if is_mounted(shm, &mountinfo) {
            backup_volume(shm, "backup-pvc").unwrap();
        }
    }
}
