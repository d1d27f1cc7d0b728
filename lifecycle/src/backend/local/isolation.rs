//! What keeps one local workspace from another and from wakeway: a uid of its own for each
//! workspace (when wakeway runs as root), folders only that uid can open, an environment built
//! from an allow-list, and stopping every process of the uid — whatever it detached — at sleep.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Variables a workspace takes from wakeway's own environment, when set: the search path, the
/// locale and the time zone. Nothing else of wakeway's environment (its keys, secrets, Redis URL)
/// ever reaches a workspace.
pub const INHERITED_VARS: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
    "TZ",
];

/// PATH when wakeway has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Who a workspace's processes run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// wakeway's own user: no isolation between workspaces (single-tenant).
    Wakeway,
    /// A uid (and gid of the same number) of the workspace's own.
    Uid(u32),
}

/// The environment of a workspace process: the allow-listed variables of wakeway's environment
/// (`inherited`), then what the workspace needs (HOME, USER, XDG_*, …), then the operator's
/// `[local] env`. Returned as a list for `Command::env_clear().envs(..)`.
pub fn workspace_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    home: &Path,
    user: &str,
    extra: &std::collections::BTreeMap<String, String>,
) -> Vec<(OsString, OsString)> {
    let mut env: std::collections::BTreeMap<OsString, OsString> =
        inherited.into_iter().filter(|(k, _)| k.to_str().is_some_and(|k| INHERITED_VARS.contains(&k))).collect();
    env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    let shell = ["/bin/bash", "/bin/sh"].into_iter().find(|s| Path::new(s).exists()).unwrap_or("/bin/sh");
    for (k, v) in [
        ("HOME", home.as_os_str().to_owned()),
        ("USER", user.into()),
        ("LOGNAME", user.into()),
        ("SHELL", shell.into()),
        ("XDG_CONFIG_HOME", home.join(".config").into_os_string()),
        ("XDG_DATA_HOME", home.join(".local/share").into_os_string()),
        ("XDG_CACHE_HOME", home.join(".cache").into_os_string()),
    ] {
        env.insert(k.into(), v);
    }
    for (k, v) in extra {
        env.insert(k.into(), v.into());
    }
    env.into_iter().collect()
}

/// The uids of isolated workspaces: one per workspace, recorded as the owner of its folder (so the
/// allocation survives restarts with no record of its own), never one that has an account.
pub struct UidPool {
    range: std::ops::RangeInclusive<u32>,
    /// Workspace id → uid, for every workspace folder found or given a uid.
    given: Mutex<HashMap<String, u32>>,
}

impl UidPool {
    /// Read who owns each folder in `workspaces` (`<workspaces>/<id>`).
    pub fn load(range: std::ops::RangeInclusive<u32>, workspaces: &Path) -> UidPool {
        let mut given = HashMap::new();
        for entry in std::fs::read_dir(workspaces).into_iter().flatten().flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if let Ok(meta) = entry.metadata()
                && range.contains(&meta.uid())
            {
                given.insert(id, meta.uid());
            }
        }
        UidPool { range, given: Mutex::new(given) }
    }

    /// The uid of workspace `id`, given now if it has none: a free one at a random offset in the
    /// range (free: no other workspace holds it, no account has it, no process runs as it).
    pub fn uid_for(&self, id: &str) -> std::io::Result<u32> {
        let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(uid) = given.get(id) {
            return Ok(*uid);
        }
        let taken: std::collections::HashSet<u32> = given.values().copied().collect();
        let (first, len) =
            (*self.range.start() as u64, self.range.end().saturating_sub(*self.range.start()) as u64 + 1);
        let offset = rand::random::<u64>() % len;
        for i in 0..len {
            let uid = (first + (offset + i) % len) as u32;
            if !taken.contains(&uid) && !has_account(uid) && processes_of(uid).is_empty() {
                given.insert(id.to_owned(), uid);
                return Ok(uid);
            }
        }
        Err(std::io::Error::other(format!("every uid in {:?} is in use: widen [local] uids", self.range)))
    }

    /// The uid recorded for `id`, if any.
    pub fn recorded(&self, id: &str) -> Option<u32> {
        self.given.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied()
    }

    /// Forget `id`'s uid (its folders are gone).
    pub fn release(&self, id: &str) {
        self.given.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Whether `uid` has an account in the system's user database.
fn has_account(uid: u32) -> bool {
    matches!(nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)), Ok(Some(_)))
}

/// What `/proc/<pid>/stat` says of a process, as far as stopping workspaces needs it.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub zombie: bool,
    /// Its process group.
    pub pgrp: u32,
    /// Start time in clock ticks since boot (field 22): tells a reused pid from the original.
    pub start_ticks: u64,
}

/// `/proc/<pid>/stat`, read past the command name (which may hold spaces and parentheses).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the closing parenthesis: field 3 (state), 4 (ppid), 5 (pgrp) … 22 (starttime).
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let zombie = fields.next()? == "Z";
    let pgrp = fields.nth(1)?.parse().ok()?;
    let start_ticks = fields.nth(16)?.parse().ok()?;
    Some(ProcStat { zombie, pgrp, start_ticks })
}

/// Every pid in `/proc`.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Whether some process of group `pgid` runs (zombies do not count).
pub fn group_runs(pgid: u32) -> bool {
    pids().filter_map(proc_stat).any(|s| !s.zombie && s.pgrp == pgid)
}

/// Every running process (not a zombie) whose real or effective uid is `uid`.
pub fn processes_of(uid: u32) -> Vec<i32> {
    let owned_by = |pid: u32| {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
        let mut ids = uids.split_whitespace().filter_map(|u| u.parse::<u32>().ok());
        let (real, effective) = (ids.next(), ids.next());
        real == Some(uid) || effective == Some(uid)
    };
    pids().filter(|pid| owned_by(*pid) && proc_stat(*pid).is_some_and(|s| !s.zombie)).map(|pid| pid as i32).collect()
}

/// Send `signal` to every process of `uid`.
pub fn signal_all(uid: u32, signal: Signal) {
    for pid in processes_of(uid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Stop every process of `uid`, however it detached (`setsid`, `nohup`, a double fork): freeze
/// them all with SIGSTOP until a pass finds none left running (a stopped process cannot fork),
/// then SIGKILL them. True when none is left.
pub async fn kill_all(uid: u32) -> bool {
    for _ in 0..50 {
        let pids = processes_of(uid);
        if pids.is_empty() {
            return true;
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
        }
        let again = processes_of(uid);
        if again.iter().all(|p| pids.contains(p)) {
            for pid in &again {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    processes_of(uid).is_empty()
}

/// Make `dir` (created if missing) belong to `uid` with mode 0700, and everything inside it too
/// when its owner is not `uid` yet (a workspace made before isolation, or a restore wakeway wrote).
/// Symbolic links are changed themselves, never followed.
pub fn own_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.uid() != uid || meta.gid() != uid {
        chown_tree(dir, uid)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// `lchown -R uid:uid path`.
pub fn chown_tree(path: &Path, uid: u32) -> std::io::Result<()> {
    let mut stack: Vec<PathBuf> = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(uid))?;
        if std::fs::symlink_metadata(&p)?.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Create `dir` if missing and set its mode (0700: wakeway's alone; 0711: others may pass through
/// to a folder inside that is theirs, but not list it).
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// The first folder on the way to `path` that other users cannot pass through (mode without
/// o+x), if any: a workspace uid could not reach its own folder below it.
pub fn blocked_ancestor(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    absolute.ancestors().skip(1).find(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 == 0)).map(Path::to_owned)
}

/// The program a command template runs first, when it names one by absolute path
/// (`exec '/opt/x/code-server' …` → `/opt/x/code-server`).
pub fn command_program(command: &str) -> Option<PathBuf> {
    let mut words = command.split_whitespace().skip_while(|w| *w == "exec");
    let first = words.next()?.trim_matches('\'');
    first.starts_with('/').then(|| PathBuf::from(first))
}

/// Whether every other user can run `program` (it and every folder above it allow o+x).
pub fn runnable_by_others(program: &Path) -> bool {
    let Ok(real) = std::fs::canonicalize(program) else { return false };
    std::fs::metadata(&real).is_ok_and(|m| m.mode() & 0o001 != 0) && blocked_ancestor(&real).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_gets_only_allow_listed_variables() {
        let inherited = [
            ("PATH", "/usr/bin"),
            ("LANG", "C.UTF-8"),
            ("WAKEWAY_API_KEY", "secret"),
            ("WAKEWAY_COOKIE_SECRET", "secret"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let extra = [("HTTPS_PROXY".to_string(), "http://p:3128".to_string())].into();
        let env = workspace_env(inherited, Path::new("/data/state/abc12345"), "ws-abc12345", &extra);
        let map: std::collections::BTreeMap<_, _> =
            env.iter().map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap())).collect();
        let names: Vec<_> = map.keys().copied().collect();
        assert_eq!(
            names,
            [
                "HOME",
                "HTTPS_PROXY",
                "LANG",
                "LOGNAME",
                "PATH",
                "SHELL",
                "USER",
                "XDG_CACHE_HOME",
                "XDG_CONFIG_HOME",
                "XDG_DATA_HOME"
            ]
        );
        assert_eq!(map["HOME"], "/data/state/abc12345");
        assert_eq!(map["PATH"], "/usr/bin");
        let no_path = workspace_env([], Path::new("/h"), "u", &Default::default());
        assert!(no_path.iter().any(|(k, v)| k == "PATH" && v == DEFAULT_PATH));
    }

    #[test]
    fn blocked_ancestors_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(blocked_ancestor(&inner.join("c")), Some(dir.path().join("a")));
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(blocked_ancestor(&inner.join("c")), None);
    }
}
