//! A workspace runs its user's code: what that code can see and reach, tried from inside real
//! isolated workspaces (wakeway runs as root here, as in CI and in containers).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use reqwest::Method;

use crate::harness::{Wakeway, assert_status, testspace_command};

const LONG: Duration = Duration::from_secs(30);

/// A secret only wakeway's own environment holds.
const CANARY: &str = "canary-7f3a9c1e5b2d4f6a8c0e";
/// wakeway's cookie secret in this test (random hex, as `openssl rand -hex 24` makes).
const COOKIE_SECRET: &str = "a81f4c9e07d35b62f0e9c4a1b8d72e5f3c6a90b14d8e27f5";

/// What the probe does from inside workspace B, once A runs: dump its environment, try to read
/// every target listed in `targets` (wakeway's files, A's folders) and to connect to A's socket,
/// and leave a detached (`setsid`) process behind. One `RESULT path READ|DENIED` line per target.
const PROBE: &str = r#"#!/bin/sh
cd "$1"
env > env.txt
id -u > uid.txt
setsid sh -c 'echo $$ > daemon.pid; exec sleep 1000' </dev/null >/dev/null 2>&1 &
: > probe.txt
if [ -f "$2" ]; then
  while read -r kind target; do
    case "$kind" in
      file) if cat "$target" >/dev/null 2>&1; then r=READ; else r=DENIED; fi ;;
      dir) if ls "$target" >/dev/null 2>&1; then r=READ; else r=DENIED; fi ;;
      socket) if python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$target" 2>/dev/null; then r=READ; else r=DENIED; fi ;;
    esac
    echo "RESULT $target $r" >> probe.txt
  done < "$2"
fi
"#;

fn root_or_ci_failure() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI runs as root: isolation must be tested there");
    eprintln!("not root: workspace isolation cannot be tested here (CI tests it)");
    false
}

/// The isolation rules of issue 13, each tried from inside a real workspace: its environment is
/// the allow-list only; it cannot read wakeway's files nor another workspace's folder, nor open
/// another workspace's socket; it runs under a uid of its own; and a process it detached with
/// `setsid` is gone after a sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_cannot_reach_wakeway_or_another_workspace() {
    if !root_or_ci_failure() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let probe = tmp.path().join("probe.sh");
    std::fs::write(&probe, PROBE).unwrap();
    let targets = tmp.path().join("targets");
    let command =
        format!("sh {} {{workspace}} {} && {}", probe.display(), targets.display(), testspace_command(tmp.path(), ""));
    let w = Wakeway::start_in(
        tmp.path(),
        &[
            ("WAKEWAY_WORKSPACE_COMMAND", &command),
            ("WAKEWAY_COOKIE_SECRET", COOKIE_SECRET),
            ("WAKEWAY_LOCAL_ENV", r#"EDITOR = "vim""#),
            ("AWS_SECRET_ACCESS_KEY", CANARY),
        ],
    )
    .await;
    let health: serde_json::Value = w.client.get(w.url("/health")).send().await.unwrap().json().await.unwrap();
    assert!(health["problems"].get("isolation").is_none(), "isolated as root: {health}");

    let a = w.create().await;
    w.wait_state(&a, "running", LONG).await;
    let data = w.dir.join("data");
    let lines = [
        format!("file {}", data.join("wakeway.redb").display()),
        format!("file {}", data.join(format!("logs/{a}.log")).display()),
        format!("file {}", data.join(format!("run/{a}.json")).display()),
        format!("file {}", data.join(format!("sessions/{a}.json")).display()),
        format!("dir {}", data.join("workspaces").display()),
        format!("dir {}", data.join("backups").display()),
        format!("dir {}", data.join(format!("workspaces/{a}")).display()),
        format!("dir {}", data.join(format!("state/{a}")).display()),
        format!("file {}", data.join(format!("workspaces/{a}/uid.txt")).display()),
        format!("socket {}", data.join(format!("sockets/{a}/workspace.sock")).display()),
    ];
    std::fs::write(&targets, lines.join("\n") + "\n").unwrap();
    let b = w.create().await;
    w.wait_state(&b, "running", LONG).await;
    let b_dir = w.workspace_dir(&b);

    // Every target is refused to B's code (and each really exists: READ for root).
    let probe = std::fs::read_to_string(b_dir.join("probe.txt")).unwrap();
    let results: Vec<&str> = probe.lines().filter(|l| l.starts_with("RESULT ")).collect();
    assert_eq!(results.len(), lines.len(), "{probe}");
    for line in &results {
        assert!(line.ends_with(" DENIED"), "{line}\n{probe}");
        let target = line.split(' ').nth(1).unwrap();
        assert!(std::path::Path::new(target).exists(), "the probe tried a real path: {target}");
    }

    // The environment: the allow-list, the [local] env entry, and no trace of wakeway's.
    let env = std::fs::read_to_string(b_dir.join("env.txt")).unwrap();
    assert!(!env.contains(CANARY), "a secret of wakeway's environment reached the workspace:\n{env}");
    assert!(!env.contains(COOKIE_SECRET), "the cookie secret reached the workspace:\n{env}");
    assert!(!env.contains(crate::harness::KEY), "the API key reached the workspace:\n{env}");
    let names: BTreeSet<&str> = env.lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k).collect();
    let allowed: BTreeSet<&str> = [
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
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
        "EDITOR",
        "WAKEWAY_SESSION",
        "WAKEWAY_CPU",
        "WAKEWAY_MEMORY_MIB",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ]
    .into();
    let extra: Vec<_> = names.difference(&allowed).collect();
    assert!(extra.is_empty(), "variables outside the allow-list: {extra:?}\n{env}");
    assert!(env.contains("EDITOR=vim") && env.contains(&format!("HOME={}", data.join(format!("state/{b}")).display())));

    // Each workspace has a uid of its own, owns its folders, and they are closed to others.
    let uid_of = |id: &str| -> u32 {
        std::fs::read_to_string(w.workspace_dir(id).join("uid.txt")).unwrap().trim().parse().unwrap()
    };
    let (uid_a, uid_b) = (uid_of(&a), uid_of(&b));
    assert_ne!(uid_a, uid_b);
    assert!((200000..=299999).contains(&uid_a) && (200000..=299999).contains(&uid_b));
    for folder in [w.workspace_dir(&b), data.join(format!("state/{b}"))] {
        let meta = std::fs::metadata(&folder).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (uid_b, 0o700), "{}", folder.display());
    }
    for file in ["wakeway.redb", "api-key", "cookie-secret"] {
        if let Ok(meta) = std::fs::metadata(data.join(file)) {
            assert_eq!(meta.mode() & 0o777, 0o600, "{file}");
        }
    }

    // The workspace still works through the proxy (over its socket), and B's detached process is
    // gone once B sleeps, with every other process of its uid.
    let r = w.ws(Method::GET, &b, "/files/uid.txt").send().await.unwrap();
    assert_status(r.status(), 200, "B through the proxy");
    assert_eq!(r.text().await.unwrap().trim(), uid_b.to_string());
    let daemon: i32 = std::fs::read_to_string(b_dir.join("daemon.pid")).unwrap().trim().parse().unwrap();
    assert!(process_alive(daemon), "the detached process runs while the workspace does");
    w.sleep(&b).await;
    assert!(!process_alive(daemon), "a setsid process outlived the sleep");
    assert!(processes_of(uid_b).is_empty(), "processes of uid {uid_b} outlived the sleep");
    assert!(!processes_of(uid_a).is_empty(), "A keeps running");
}

fn process_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')
}

/// Pids whose real uid is `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
            uids.split_whitespace().next() == Some(uid.to_string().as_str()) && process_alive(*pid)
        })
        .collect()
}
