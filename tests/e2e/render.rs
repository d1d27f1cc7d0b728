//! `wakeway render`: the objects of a session as the kubernetes backend would apply them, for
//! review or `kubectl apply --dry-run=server -f -`, from the config alone (no cluster).

use std::process::Command;

use serde_json::Value;

fn render(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wakeway"));
    command.arg("render").args(args);
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
