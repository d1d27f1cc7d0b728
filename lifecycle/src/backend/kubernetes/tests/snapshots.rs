//! Every generated object against its checked-in rendering in `../snapshots/`. A change in the
//! output fails here; review the diff, then re-run with `WAKEWAY_UPDATE_SNAPSHOTS=1` to accept it.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use wakeway_config::{BackendKind, Config};

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
    config.backend = BackendKind::Kubernetes;
    config.kubernetes.storage_class = "standard-rwo".into();
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
    let large = config.tiers["large"].clone();
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
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/workspace");
    assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "pvc-abc12345");

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
            "/workspace",
            "--replace",
            "--in-place"
        ])
    );
    assert_eq!(spec["volumes"][0]["persistentVolumeClaim"], json!({"claimName": "pvc-abc12345"}), "written to");
    assert_eq!(spec["volumes"][1]["persistentVolumeClaim"], json!({"claimName": "backup-pvc", "readOnly": true}));
    assert_eq!(job["spec"]["backoffLimit"], 0);
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
