//! `wakeway render`: the objects of a session as the kubernetes backend would apply them, for
//! review or `kubectl apply --dry-run=server -f -`, from the config alone (no cluster); and the
//! kubernetes backend's other cluster-free parts of the binary: `wakeway migrate-volume` (the init
//! container of every pod mounting a session's PVC) and the start-up check of the backup volume.

use std::os::unix::process::CommandExt;
use std::process::Command;

use serde_json::Value;

fn render(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    wakeway(&["render"], args, env)
}

/// `wakeway <command> <args>` with only `env` of the WAKEWAY_* variables.
fn wakeway(command_words: &[&str], args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wakeway"));
    command.args(command_words).args(args);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("WAKEWAY_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn render_prints_a_sessions_objects() {
    let out = render(
        &["--session", "abc12345", "--user", "ada@example.com", "--tier", "large", "--jobs", "--output", "json"],
        &[("WAKEWAY_KUBERNETES_NAMESPACE", "team-a"), ("WAKEWAY_KUBERNETES_STORAGE_CLASS", "fast")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> =
        items.iter().map(|i| (i["kind"].as_str().unwrap(), i["metadata"]["name"].as_str().unwrap())).collect();
    assert_eq!(
        &kinds[..3],
        [("PersistentVolumeClaim", "pvc-abc12345"), ("Deployment", "user-abc12345"), ("Service", "user-abc12345")]
    );
    assert_eq!(kinds[3].0, "Job");
    assert!(kinds[3].1.starts_with("backup-abc12345-"));
    assert!(kinds[4].1.starts_with("restore-abc12345-"));
    for item in items {
        assert_eq!(item["metadata"]["namespace"], "team-a");
        assert_eq!(item["metadata"]["annotations"]["wakeway.dev/user-id"], "ada@example.com");
    }
    assert_eq!(items[0]["spec"]["storageClassName"], "fast");
    let limits = &items[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    assert_eq!(limits, &serde_json::json!({"cpu": "2", "memory": "2048Mi"}));

    let yaml = render(&["--session", "abc12345"], &[]);
    assert!(yaml.status.success());
    let text = String::from_utf8(yaml.stdout).unwrap();
    assert_eq!(text.matches("\n---\n").count(), 2, "three YAML documents");
    assert!(text.contains("kind: Deployment") && text.contains("claimName: pvc-abc12345"));
}

#[test]
fn render_names_its_mistakes() {
    let out = render(&["--session", "not-an-id"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a session id"));
    let out = render(&["--session", "abc12345", "--tier", "huge"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tier \"huge\""));
}

/// The init container's command on a volume of the old layout (the workspace at its root): moved
/// into workspace/, home/ made, one JSON line; again, nothing to do; a clash changes nothing.
#[test]
fn migrate_volume_moves_an_old_volume_once() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("pvc");
    std::fs::create_dir_all(volume.join("workspace")).unwrap();
    std::fs::write(volume.join("workspace/notes.txt"), "a user folder named workspace\n").unwrap();
    std::fs::write(volume.join("main.py"), "print('hi')\n").unwrap();
    let path = volume.to_str().unwrap();

    let out = wakeway(&["migrate-volume"], &[path], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["ok"], true);
    assert_eq!(line["migrated"], serde_json::json!({"layout": 2, "moved": 2, "already": false}));
    assert_eq!(std::fs::read_to_string(volume.join("workspace/main.py")).unwrap(), "print('hi')\n");
    assert!(volume.join("workspace/workspace/notes.txt").is_file() && volume.join("home").is_dir());

    let again = wakeway(&["migrate-volume"], &[path], &[]);
    let line: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(line["migrated"]["already"], true);

    // Half-migrated by hand into a clash: refused with the path, nothing overwritten.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join(".wakeway-layout-new")).unwrap();
    std::fs::write(other.join(".wakeway-layout-new/a.txt"), "staged\n").unwrap();
    std::fs::write(other.join("a.txt"), "root\n").unwrap();
    let out = wakeway(&["migrate-volume"], &[other.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(line["ok"] == false && line["error"].as_str().unwrap().contains("a.txt"), "{line}");
    assert_eq!(std::fs::read_to_string(other.join("a.txt")).unwrap(), "root\n");
}

/// `backend = "kubernetes"` with a backup_dir that is a folder of the container's own filesystem
/// (the backup PVC not mounted): wakeway refuses to start and says what to mount, instead of
/// running with deletions it could never verify.
#[test]
fn kubernetes_refuses_to_start_without_the_backup_volume() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let data = dir.path().join("data");
    let env = [
        ("WAKEWAY_BACKEND", "kubernetes"),
        ("WAKEWAY_LISTEN", "127.0.0.1:0"),
        ("WAKEWAY_DATA_DIR", data.to_str().unwrap()),
        ("WAKEWAY_BACKUP_DIR", backups.to_str().unwrap()),
    ];
    let out = wakeway(&["serve"], &[], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is not a mounted volume") && stderr.contains("mount the backup PVC \"backup-pvc\""),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 0, "nothing left behind");
}

/// As in a pod: the migration runs as the workspace's uid (1000, no capabilities) on a volume
/// whose root the kubelet gave the pod's fsGroup. A folder its owner made read-only still moves
/// (Linux needs it writable to move it: `u+w` for the move, its mode back after), and the
/// filesystem's root-owned `lost+found` stays at the root.
#[test]
fn migrate_volume_works_as_the_workspace_uid() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to make a volume owned by another uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let volume = dir.path().join("pvc");
    let owned = |path: &std::path::Path, mode: u32| {
        std::os::unix::fs::chown(path, Some(1000), Some(1000)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    std::fs::create_dir_all(volume.join("frozen")).unwrap();
    std::fs::create_dir_all(volume.join("lost+found")).unwrap();
    std::fs::set_permissions(volume.join("lost+found"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&volume, Some(0), Some(1000)).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::write(volume.join("frozen/keep.txt"), "kept\n").unwrap();
    owned(&volume.join("frozen/keep.txt"), 0o444);
    owned(&volume.join("frozen"), 0o555);
    std::fs::write(volume.join("main.py"), "print('hi')\n").unwrap();
    owned(&volume.join("main.py"), 0o644);

    let out = Command::new(env!("CARGO_BIN_EXE_wakeway"))
        .args(["migrate-volume", volume.to_str().unwrap()])
        .uid(1000)
        .gid(1000)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let frozen = volume.join("workspace/frozen");
    assert_eq!(std::fs::read_to_string(frozen.join("keep.txt")).unwrap(), "kept\n");
    assert_eq!(std::fs::metadata(&frozen).unwrap().mode() & 0o7777, 0o555, "its mode is given back");
    assert!(volume.join("workspace/main.py").is_file());
    assert!(volume.join("lost+found").is_dir(), "the filesystem's own folder stays");
    assert_eq!(std::fs::metadata(volume.join("home")).unwrap().uid(), 1000, "made by the workspace's uid");
}
