//! The local backend against real processes: readiness only while its own process runs, Unix
//! sockets only wakeway opens, isolation under uids of their own, process groups and zombies.

use std::os::unix::fs::PermissionsExt;

use nix::sys::signal::killpg;
use nix::unistd::Pid;

use super::process::{group_exists, shell_quote, start_ticks};
use super::*;

/// A workspace server on its Unix socket (Python's http.server).
pub(crate) const PY_SOCKET_SERVER: &str = r#"exec python3 -c 'import sys, socketserver, http.server as h
H = type("H", (h.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
socketserver.UnixStreamServer(sys.argv[1], H).serve_forever()' {socket}"#;

#[test]
fn placeholders_are_quoted_for_the_shell() {
    assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    assert_eq!(
        isolation::command_program("exec '/opt/cs/bin/code-server' --x"),
        Some(PathBuf::from("/opt/cs/bin/code-server"))
    );
    assert_eq!(isolation::command_program("python3 -m x"), None);
}

fn settings(command: &str, uids: Option<std::ops::RangeInclusive<u32>>) -> LocalSettings {
    LocalSettings {
        command: command.into(),
        port_range: 21000..=21999,
        stop_grace: Duration::from_secs(2),
        uids,
        env: BTreeMap::new(),
        writer: "test-replica".into(),
    }
}

fn backend(dir: &Path, command: &str) -> Arc<LocalBackend> {
    let paths = LocalPaths::new(dir, dir.join("backups"));
    let (tx, _rx) = mpsc::unbounded_channel();
    LocalBackend::new(settings(command, None), paths, tx).unwrap()
}

fn session(id: &str) -> Session {
    Session::new(&crate::session::SessionId::parse(id).unwrap(), "u", "small", chrono::Utc::now())
}

fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(20)
}

const TIER: Tier = Tier { cpu: 1.0, memory_mib: 512 };

#[tokio::test]
async fn a_workspace_is_only_ready_while_its_own_process_runs() {
    let dir = tempfile::tempdir().unwrap();
    // A command that leaves a server behind and exits: whoever answers is not the workspace.
    let detaching = backend(dir.path(), "python3 -m http.server --bind 127.0.0.1 {port} >/dev/null 2>&1 & exit 0");
    let s = session("abc12345");
    let err = detaching.start(&s, &TIER, deadline()).await.unwrap_err().to_string();
    assert!(err.contains("exited"), "{err}");
    // A foreground server is ready, on a port from the range, and stops with its group.
    let foreground = backend(dir.path(), "exec python3 -m http.server --bind 127.0.0.1 {port}");
    let started = foreground.start(&s, &TIER, deadline()).await.unwrap();
    let Upstream::Tcp(addr) = &started.addr else { panic!("{:?}", started.addr) };
    assert!((21000..=21999).contains(&addr.port()));
    let mut s = s;
    s.placement = Some(started.placement);
    assert!(foreground.is_alive(&s));
    foreground.stop(&s).await.unwrap();
    assert!(!foreground.is_alive(&s));
    assert!(!probe::answers_http(&started.addr).await);
}

#[tokio::test]
async fn a_workspace_without_a_port_serves_on_a_socket_only_wakeway_can_open() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path(), PY_SOCKET_SERVER);
    let mut s = session("abc12345");
    let started = b.start(&s, &TIER, deadline()).await.unwrap();
    let Upstream::Unix(path) = &started.addr else { panic!("{:?}", started.addr) };
    assert_eq!(Path::new(&**path), dir.path().join("sockets/abc12345/workspace.sock"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("sockets/abc12345")), 0o700);
    assert!(probe::answers_http(&started.addr).await);
    s.placement = Some(started.placement);

    // Another workspace's socket, linked in place of its own: wakeway would follow the link
    // as it connects, so the start is refused.
    let other = session("def67890");
    let link = format!("ln -s {} {{socket}}; exec sleep 60", path);
    let linking = backend(dir.path(), &link);
    let err = linking.start(&other, &TIER, deadline()).await.unwrap_err().to_string();
    assert!(err.contains("not a socket the workspace's own server bound"), "{err}");

    b.stop(&s).await.unwrap();
    assert!(!probe::answers_http(&started.addr).await, "nothing answers once it sleeps");
}

/// As root: the workspace runs under a uid of its own from the range, owns its folders, and
/// nothing it started — detached with `setsid` included — outlives a stop.
#[tokio::test]
async fn an_isolated_workspace_runs_as_its_own_uid_and_leaves_nothing_behind() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root: isolation must be tested there");
        eprintln!("not root: isolation cannot be tested here (CI tests it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let command = format!("setsid sleep 600 </dev/null >/dev/null 2>&1 & id -u > uid; {PY_SOCKET_SERVER}");
    let paths = LocalPaths::new(dir.path(), dir.path().join("backups"));
    let (tx, _rx) = mpsc::unbounded_channel();
    let b = LocalBackend::new(settings(&command, Some(230000..=230099)), paths, tx).unwrap();
    let mut s = session("abc12345");
    let started = b.start(&s, &TIER, deadline()).await.unwrap();
    let workspace = dir.path().join("workspaces/abc12345");
    let uid: u32 = std::fs::read_to_string(workspace.join("uid")).unwrap().trim().parse().unwrap();
    assert!((230000..=230099).contains(&uid), "{uid}");
    use std::os::unix::fs::MetadataExt;
    for folder in [&workspace, &dir.path().join("state/abc12345")] {
        let meta = std::fs::metadata(folder).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (uid, uid, 0o700), "{}", folder.display());
    }
    assert_eq!(std::fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o711);
    let socket_dir = std::fs::metadata(dir.path().join("sockets/abc12345")).unwrap();
    assert_eq!((socket_dir.uid(), socket_dir.mode() & 0o777), (0, 0o700), "taken back once it answered");
    let socket = std::fs::symlink_metadata(dir.path().join("sockets/abc12345/workspace.sock")).unwrap();
    assert_eq!(socket.uid(), uid);
    assert!(isolation::processes_of(uid).len() >= 2, "the server and the detached sleep");
    s.placement = Some(started.placement);
    b.stop(&s).await.unwrap();
    assert_eq!(isolation::processes_of(uid), Vec::<i32>::new(), "the setsid process is gone too");
    // A restart finds the same uid from the folder's owner.
    let (tx, _rx) = mpsc::unbounded_channel();
    let again = LocalBackend::new(
        settings(&command, Some(230000..=230099)),
        LocalPaths::new(dir.path(), dir.path().join("backups")),
        tx,
    )
    .unwrap();
    assert_eq!(again.uid_of("abc12345"), Some(uid));
    // A command built around a TCP port is refused when isolated.
    let (tx, _rx) = mpsc::unbounded_channel();
    let paths = LocalPaths::new(dir.path(), dir.path().join("backups"));
    let refused = LocalBackend::new(settings("srv --port {port}", Some(230000..=230099)), paths, tx);
    assert!(refused.err().unwrap().contains("{socket}"));
}

#[test]
fn a_group_of_zombies_is_not_alive() {
    use std::os::unix::process::CommandExt;
    // A child that exits and is not reaped yet: its group holds only a zombie.
    let mut child = std::process::Command::new("/bin/true").env_clear().process_group(0).spawn().unwrap();
    let pgid = child.id();
    while start_ticks(pgid).is_some() {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(killpg(Pid::from_raw(pgid as i32), None).is_ok(), "the zombie still counts for the kernel");
    assert!(!group_exists(pgid));
    child.wait().unwrap();
    let mut running = std::process::Command::new("/bin/sleep").arg("30").env_clear().process_group(0).spawn().unwrap();
    assert!(group_exists(running.id()));
    running.kill().unwrap();
    running.wait().unwrap();
}

#[test]
fn our_own_start_ticks_are_readable() {
    assert!(start_ticks(std::process::id()).is_some());
    assert!(start_ticks(u32::MAX - 1).is_none());
}
