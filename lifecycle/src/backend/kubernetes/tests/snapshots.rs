//! Every generated object against its checked-in rendering in `../snapshots/`. A change in the
//! output fails here; review the diff, then re-run with `WAKEWAY_UPDATE_SNAPSHOTS=1` to accept it.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use wakeway_config::{BackendKind, Config, MapEnv};

use crate::backend::kubernetes::objects;
use crate::restore::Limits;
use crate::session::{Session, SessionId};

fn snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/backend/kubernetes/snapshots").join(name);
    if std::env::var_os("WAKEWAY_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("snapshot {} is missing ({e}): run with WAKEWAY_UPDATE_SNAPSHOTS=1", path.display())
    });
    assert!(
        expected == actual,
        "{name} changed; if intended, re-run with WAKEWAY_UPDATE_SNAPSHOTS=1\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

fn fixture() -> (Config, Session, DateTime<Utc>) {
    let mut config = Config::default();
    config.workspaces.backend = BackendKind::Kubernetes;
    config.kubernetes.storage_class = "standard-rwo".into();
    config.kubernetes.env = [("TZ", "Europe/Paris"), ("LANG", "C.UTF-8")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let created: DateTime<Utc> = "2026-03-04T05:06:07Z".parse().unwrap();
    let session = Session::new(&SessionId::parse("abc12345").unwrap(), "ada@example.com", "small", created);
    (config, session, created)
}

fn pretty(value: impl serde::Serialize) -> String {
    serde_json::to_string_pretty(&value).unwrap() + "\n"
}

#[test]
fn workspace_objects_match_their_snapshots() {
    let (config, session, _) = fixture();
    let tier = objects::session_tier(&config, &session);
    snapshot("pvc.json", &pretty(objects::pvc(&config, &session)));
    snapshot("deployment.json", &pretty(objects::deployment(&config, &session, &tier)));
    snapshot("service.json", &pretty(objects::service(&config, &session)));
    snapshot("render.yaml", &objects::to_yaml(&objects::workspace_objects(&config, &session)));
}

#[test]
fn job_objects_match_their_snapshots() {
    let (config, session, at) = fixture();
    let file = crate::backup::backup_file_name(&session.uuid, at);
    snapshot("backup-job.json", &pretty(objects::backup_job(&config, &session, &file, at, "policy")));
    snapshot(
        "restore-job.json",
        &pretty(objects::restore_job(&config, &session, &file, at, &Limits::from_config(&config), false)),
    );
}

/// What the issue asks of each object, checked on the values (the snapshots show the rest).
#[test]
fn the_objects_say_what_the_issue_asks() {
    let (config, session, at) = fixture();
    let large = config.workspaces.tiers["large"].clone();
    let d = serde_json::to_value(objects::deployment(&config, &session, &large)).unwrap();
    assert_eq!(d["metadata"]["name"], "user-abc12345");
    assert!(d["spec"].get("replicas").is_none(), "replicas only through the scale subresource (defaults to 1)");
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let labels =
        json!({"app.kubernetes.io/managed-by": "wakeway", "app.kubernetes.io/name": "workspace", "uuid": "abc12345"});
    assert_eq!(d["metadata"]["labels"], labels);
    assert_eq!(d["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(d["spec"]["template"]["metadata"]["labels"], labels);
    assert_eq!(d["metadata"]["annotations"]["wakeway.dev/user-id"], "ada@example.com");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["fsGroup"], 1000);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "docker.io/codercom/code-server:4.139.1");
    assert_eq!(c["args"][1], "0.0.0.0:8080", "{{port}} is filled in");
    assert_eq!(c["resources"]["limits"], json!({"cpu": "2", "memory": "2048Mi"}));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    // Both folders of the session's PVC: the workspace and HOME (settings, extensions, dotfiles).
    assert_eq!(
        c["volumeMounts"],
        json!([
            {"name": "data", "mountPath": "/workspace", "subPath": "workspace"},
            {"name": "data", "mountPath": "/home/coder", "subPath": "home"}
        ])
    );
    assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "pvc-abc12345");
    assert_eq!(pod["initContainers"][0]["command"], json!(["wakeway", "migrate-volume", "/data"]));
    let mut elsewhere = config.clone();
    elsewhere.kubernetes.home_path = "/var/home/dev".into();
    let d = serde_json::to_value(objects::deployment(&elsewhere, &session, &large)).unwrap();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["volumeMounts"][1], json!({"name": "data", "mountPath": "/var/home/dev", "subPath": "home"}));
    assert!(c["env"].as_array().unwrap().contains(&json!({"name": "HOME", "value": "/var/home/dev"})));

    let p = serde_json::to_value(objects::pvc(&config, &session)).unwrap();
    assert_eq!(p["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(p["spec"]["storageClassName"], "standard-rwo");
    let mut default_class = config.clone();
    default_class.kubernetes.storage_class.clear();
    let p = serde_json::to_value(objects::pvc(&default_class, &session)).unwrap();
    assert!(p["spec"].get("storageClassName").is_none(), "empty: the cluster's default class");

    let file = crate::backup::backup_file_name(&session.uuid, at);
    let job =
        serde_json::to_value(objects::restore_job(&config, &session, &file, at, &Limits::from_config(&config), false))
            .unwrap();
    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(
        spec["containers"][0]["command"],
        json!([
            "wakeway",
            "restore",
            "--src",
            "/backups/workspace-abc12345-20260304-050607.zip",
            "--dest",
            "/data/workspace",
            "--home-dest",
            "/data/home",
            "--replace"
        ])
    );
    assert_eq!(spec["volumes"][0]["persistentVolumeClaim"], json!({"claimName": "pvc-abc12345"}), "written to");
    assert_eq!(spec["initContainers"][0]["command"], json!(["wakeway", "migrate-volume", "/data"]));
    assert_eq!(spec["volumes"][1]["persistentVolumeClaim"], json!({"claimName": "backup-pvc", "readOnly": true}));
    assert_eq!(job["spec"]["backoffLimit"], 0);
}

/// A workspace pod and a Job pod get an environment spelled out in full: the workspace its
/// session's facts and `kubernetes.env`, a Job its own arguments; nothing of wakeway's (no
/// secret, no `envFrom`, no service-account token, no Service variables such as `REDIS_PORT`).
#[test]
fn pods_get_only_an_explicit_environment() {
    // wakeway's own secrets, as its Deployment gives them (environment over wakeway.toml).
    let secrets = [
        ("WAKEWAY_API_KEYS", "5e6b52afc43296ad52e4a7f5086382bb02a8041dda9325e090d540925b9a5c0b"),
        ("WAKEWAY_COOKIE_SECRET", "f369d9b306eec671f704a74123cce5ac6bd4a52ef8d35b90e4a9b2c12ae979ca"),
        ("WAKEWAY_WEBHOOK_URL", "https://hooks.internal/wakeway"),
        ("WAKEWAY_WEBHOOK_SECRET", "aac663d2b2200d9941fd139b45c4b03190b818243d8b70dd845418479b0d06f9"),
        ("WAKEWAY_REDIS_URL", "redis://:49cbe787f5feadea1da2c6dc@redis:6379/0"),
        ("WAKEWAY_BACKEND", "kubernetes"),
        ("WAKEWAY_KUBERNETES_ENV", "TZ = \"Europe/Paris\", HTTPS_PROXY = \"http://proxy:3128\""),
    ];
    let config = Config::load(None, &MapEnv::new(secrets)).unwrap();
    let (_, session, at) = fixture();
    let file = crate::backup::backup_file_name(&session.uuid, at);
    let tier = objects::session_tier(&config, &session);
    let limits = Limits::from_config(&config);
    let pods = [
        ("workspace", serde_json::to_value(objects::deployment(&config, &session, &tier)).unwrap()),
        ("backup", serde_json::to_value(objects::backup_job(&config, &session, &file, at, "policy")).unwrap()),
        ("restore", serde_json::to_value(objects::restore_job(&config, &session, &file, at, &limits, false)).unwrap()),
    ];
    let env_of = |pod: &Value| -> Vec<(String, String)> {
        let container = &pod["containers"][0];
        assert!(container.get("envFrom").is_none(), "no envFrom: {container}");
        let vars = container["env"].as_array().cloned().unwrap_or_default();
        vars.iter()
            .map(|v| {
                assert!(v.get("valueFrom").is_none(), "every value is spelled out: {v}");
                (v["name"].as_str().unwrap().to_string(), v["value"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let names = |vars: &[(String, String)]| vars.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    for (component, object) in &pods {
        let pod = &object["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{component}: no API token");
        assert_eq!(pod["enableServiceLinks"], false, "{component}: no REDIS_PORT, WAKEWAY_SERVICE_HOST, …");
        assert_eq!(pod["serviceAccountName"], "wakeway-workspace", "{component}: not wakeway's account");
        for volume in pod["volumes"].as_array().unwrap() {
            assert!(volume.get("persistentVolumeClaim").is_some(), "{component}: only data volumes: {volume}");
        }
        let text = object.to_string();
        for (var, value) in &secrets[..5] {
            assert!(!text.contains(value), "{component}: {var}'s value reaches the pod");
        }
        assert!(!text.to_lowercase().contains("secret"), "{component}: a secret is referenced: {text}");
        let init = &pod["initContainers"][0];
        assert_eq!(init["name"], "migrate-volume", "{component}");
        assert!(init.get("env").is_none() && init.get("envFrom").is_none(), "{component}: the migration gets nothing");
        let vars = env_of(pod);
        match *component {
            "workspace" => {
                assert_eq!(
                    names(&vars),
                    ["WAKEWAY_SESSION", "WAKEWAY_CPU", "WAKEWAY_MEMORY_MIB", "HOME", "HTTPS_PROXY", "TZ"]
                );
                assert_eq!(vars[0].1, "abc12345");
                assert_eq!(vars[3].1, "/home/coder", "HOME is where the PVC's home/ is mounted");
                assert_eq!(vars[4].1, "http://proxy:3128", "kubernetes.env reaches the workspace");
            }
            // Jobs run wakeway's own image on the volumes: kubernetes.env is the workspace's.
            "backup" => assert!(vars.is_empty(), "{vars:?}"),
            _ => assert_eq!(
                names(&vars),
                ["WAKEWAY_RESTORE_MAX_BYTES", "WAKEWAY_RESTORE_MAX_ENTRIES", "WAKEWAY_RESTORE_MAX_RATIO"]
            ),
        }
    }
}

#[test]
fn quantities_are_what_the_api_server_writes_back() {
    assert_eq!(objects::cpu_quantity(1.0).0, "1");
    assert_eq!(objects::cpu_quantity(0.5).0, "500m");
    assert_eq!(objects::cpu_quantity(1.25).0, "1250m");
    assert_eq!(objects::memory_quantity(1024).0, "1024Mi");
}

#[test]
fn renders_parse_back_as_the_same_objects() {
    let (config, session, _) = fixture();
    let values = objects::workspace_objects(&config, &session);
    let docs: Vec<Value> =
        objects::to_yaml(&values).split("---\n").map(|doc| serde_yaml::from_str::<Value>(doc).unwrap()).collect();
    assert_eq!(docs, values);
    let list: Value = serde_json::from_str(&objects::to_json_list(&values)).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"], Value::Array(values));
}
