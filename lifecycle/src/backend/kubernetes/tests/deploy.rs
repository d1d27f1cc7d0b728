//! `deploy/` checked against the code: every manifest is a well-formed object of its kind (a typed
//! round trip through k8s-openapi drops unknown or misspelled fields, so they fail here), the Role
//! grants exactly the calls the backend makes, and the ConfigMap's wakeway.toml, the Deployment's
//! environment and the other manifests agree with each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wakeway_config::{BackendKind, Config, MapEnv, WorkspaceAuth};

use crate::backend::kubernetes::objects;

pub(super) fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

pub(super) fn read(file: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(file)).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

/// Every document of a multi-document YAML file.
pub(super) fn docs(file: &str) -> Vec<Value> {
    let text = read(file);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("deploy/{file} is not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

pub(super) fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/"))
}

/// Parse as `T` and serialize again: anything k8s-openapi does not know is lost, and the
/// comparison fails.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(typed).unwrap();
    assert_eq!(&back, doc, "{} {} has fields its kind does not have", doc["kind"], doc["metadata"]["name"]);
}

/// Every manifest kustomization.yaml lists.
fn all_manifests() -> Vec<Value> {
    let kustomization: Value = serde_yaml::from_str(&read("kustomization.yaml")).unwrap();
    kustomization["resources"].as_array().unwrap().iter().flat_map(|f| docs(f.as_str().unwrap())).collect()
}

/// The Role grants exactly `used` (API group, resource, verb); `resourceNames` narrow further.
pub fn role_allows_exactly(used: &BTreeSet<(String, String, String)>) {
    let all = docs("rbac.yaml");
    let role = find(&all, "Role", "wakeway");
    let mut allowed = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    let s = |v: &Value| v.as_str().unwrap().to_string();
                    allowed.insert((s(group), s(resource), s(verb)));
                }
            }
        }
    }
    let missing: Vec<_> = used.difference(&allowed).collect();
    let unused: Vec<_> = allowed.difference(used).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "deploy/rbac.yaml must grant exactly what the backend calls.\n  used but not granted: {missing:?}\n  granted but never used: {unused:?}"
    );
}

#[test]
fn every_manifest_is_a_well_formed_object() {
    let all = all_manifests();
    assert!(all.len() >= 14, "{} objects", all.len());
    for doc in &all {
        match doc["kind"].as_str().unwrap() {
            "Namespace" => round_trip::<Namespace>(doc),
            "ServiceAccount" => round_trip::<ServiceAccount>(doc),
            "Role" => round_trip::<Role>(doc),
            "RoleBinding" => round_trip::<RoleBinding>(doc),
            "PersistentVolumeClaim" => round_trip::<PersistentVolumeClaim>(doc),
            "Deployment" => round_trip::<Deployment>(doc),
            "DaemonSet" => round_trip::<DaemonSet>(doc),
            "Service" => round_trip::<Service>(doc),
            "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(doc),
            "NetworkPolicy" => round_trip::<NetworkPolicy>(doc),
            other => panic!("unexpected kind {other} in deploy/"),
        }
        // wakeway's reconciliation lists managed-by=wakeway,name=workspace: nothing of deploy/
        // may look like a workspace object.
        assert_ne!(doc["metadata"]["labels"]["app.kubernetes.io/managed-by"], "wakeway", "{}", doc["metadata"]["name"]);
    }
}

#[test]
fn the_deployment_and_its_config_agree() {
    let all = all_manifests();
    let config = Config::from_toml(&read("wakeway.toml")).expect("deploy/wakeway.toml parses");
    // Alone it is not enough: two replicas share Redis and sign cookies, so the cookie secret must
    // come from wakeway-secrets (checked with the Deployment's environment below).
    let alone = config.validate().unwrap_err().to_string();
    assert!(alone.contains("cookie_secret"), "{alone}");
    assert_eq!(config.workspaces.backend, BackendKind::Kubernetes);
    assert_eq!(config.access.workspace_auth, WorkspaceAuth::Token);
    assert!(!config.workspaces.stop_workspaces_on_exit, "a rolling update must not put workspaces to sleep");
    assert_eq!(config.server.backup_dir.as_deref().and_then(|d| d.to_str()), Some("/backups"));

    let wakeway = find(&all, "Deployment", "wakeway");
    assert_eq!(wakeway["spec"]["replicas"], 2);
    let pod = &wakeway["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    assert!(grace > pre_stop + config.server.shutdown_grace.as_secs() + 15, "terminationGracePeriodSeconds {grace}");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/health");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["enableServiceLinks"], false, "service links would inject unknown WAKEWAY_* variables");

    // Every WAKEWAY_* variable the Deployment sets is a setting wakeway knows.
    let env = deployment_env(container, |_| GENERATED.to_string());
    let path = deploy_dir().join("wakeway.toml");
    let effective = Config::load(Some(&path), &MapEnv(env.clone())).expect("the Deployment's environment applies");
    assert_eq!(effective.kubernetes.namespace, "workspaces", "the pod's namespace wins");
    assert_eq!(
        env["WAKEWAY_KUBERNETES_WAKEWAY_IMAGE"],
        container["image"].as_str().unwrap(),
        "Jobs run wakeway's image"
    );
    assert_eq!(config.kubernetes.wakeway_image, container["image"].as_str().unwrap());

    let secrets: BTreeSet<String> = read("secrets.env.example")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| l.split('=').next().unwrap().to_string())
        .collect();
    let referenced: BTreeSet<String> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["valueFrom"]["secretKeyRef"]["key"].as_str().map(String::from))
        .collect();
    assert_eq!(secrets, referenced, "secrets.env.example names what the Deployment reads");

    let backup = find(&all, "PersistentVolumeClaim", &config.kubernetes.backup_pvc);
    assert_eq!(backup["spec"]["resources"]["requests"]["storage"], "50Gi");
    // Jobs on any node and every replica mount it at once.
    assert_eq!(backup["spec"]["accessModes"], serde_json::json!(["ReadWriteMany"]));
    // wakeway opens and verifies each zip a Job writes (and prunes old ones): the backup PVC is
    // mounted read-write at backup_dir, the folder the start-up check looks at.
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"] == config.kubernetes.backup_pvc.as_str())
        .expect("wakeway's pod has the backup PVC");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the wakeway container mounts the backup PVC");
    assert_eq!(mount["mountPath"].as_str().map(PathBuf::from), Some(config.backup_dir()));
    assert!(mount.get("readOnly").is_none() && mount.get("subPath").is_none(), "{mount}");

    let service = find(&all, "Service", "wakeway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    let ports: Vec<i64> =
        service["spec"]["ports"].as_array().unwrap().iter().map(|p| p["port"].as_i64().unwrap()).collect();
    assert_eq!(ports, [80, 443]);
    let pdb = find(&all, "PodDisruptionBudget", "wakeway");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], wakeway["spec"]["selector"]["matchLabels"]);

    // Workspaces are reachable from wakeway's pods only, on the port wakeway routes to.
    let policy = find(&all, "NetworkPolicy", "workspaces-from-wakeway-only");
    let workspace_labels = objects::labels("abc12345", "workspace");
    for (key, value) in policy["spec"]["podSelector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(workspace_labels.get(key).map(String::as_str), value.as_str(), "selects workspace pods");
    }
    let from = &policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"];
    assert_eq!(from, &serde_json::json!({"app.kubernetes.io/name": "wakeway"}));
    assert_eq!(wakeway["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"], "wakeway");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], config.kubernetes.port);

    // Identities: wakeway runs as the bound ServiceAccount; workspaces as one without a token.
    assert_eq!(pod["serviceAccountName"], "wakeway");
    let binding = find(&all, "RoleBinding", "wakeway");
    assert_eq!(binding["subjects"][0]["name"], "wakeway");
    assert_eq!(binding["subjects"][0]["namespace"], "wakeway");
    let workspace_sa = find(&all, "ServiceAccount", &config.kubernetes.service_account);
    assert_eq!(workspace_sa["automountServiceAccountToken"], false);
}

/// A secret as `openssl rand -hex 32` makes one (what deploy/secrets.env.example asks for).
const GENERATED: &str = "b42e5df1bffeb871570c43de7e87f25961a5d6da3ad410f7c2098fecfe25cfb9";

/// The wakeway container's environment as the pod would see it: fields from the pod (namespace,
/// name) filled in, each secret key's value from `secret`.
fn deployment_env(container: &Value, secret: impl Fn(&str) -> String) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match (e["value"].as_str(), e["valueFrom"]["secretKeyRef"]["key"].as_str()) {
                (Some(v), _) => v.to_string(),
                (None, Some(key)) => secret(key),
                (None, None) if name == "WAKEWAY_KUBERNETES_NAMESPACE" => "workspaces".into(),
                (None, None) => "wakeway-0".into(),
            };
            (name, value)
        })
        .collect()
}

/// `cp secrets.env.example secrets.env` + `kubectl apply -k`: wakeway refuses to start with the
/// placeholders, naming the key and how to make a good one.
#[test]
fn the_example_secrets_are_refused_at_start() {
    let all = all_manifests();
    let container = &find(&all, "Deployment", "wakeway")["spec"]["template"]["spec"]["containers"][0];
    let example: BTreeMap<String, String> = read("secrets.env.example")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let path = deploy_dir().join("wakeway.toml");
    for placeholder in example.keys() {
        let env =
            deployment_env(
                container,
                |key| {
                    if key == placeholder { example[key].clone() } else { GENERATED.to_string() }
                },
            );
        let err = Config::load(Some(&path), &MapEnv(env)).unwrap_err().to_string();
        assert!(err.contains(placeholder.as_str()) && err.contains("openssl rand -hex 32"), "{placeholder}: {err}");
    }
    assert!(read("secrets.env.example").contains("refuses to start"), "the example says its placeholders are refused");
}

/// The image puller keeps exactly the images a wake and a Job need on the nodes workspaces can
/// land on, pulled by init containers that exit, and costs next to nothing.
#[test]
fn the_image_puller_pulls_the_configured_images_where_workspaces_run() {
    let all = all_manifests();
    let config = Config::from_toml(&read("wakeway.toml")).unwrap();
    let puller = find(&all, "DaemonSet", "image-puller");
    let pod = &puller["spec"]["template"]["spec"];
    let image = |c: &Value| c["image"].as_str().unwrap().to_string();
    let pulled: Vec<String> = pod["initContainers"].as_array().unwrap().iter().map(image).collect();
    assert_eq!(pulled, [config.kubernetes.image.clone(), config.kubernetes.wakeway_image.clone()]);
    let wakeway = &find(&all, "Deployment", "wakeway")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(image(wakeway), config.kubernetes.wakeway_image, "Jobs run wakeway's own image");
    for init in pod["initContainers"].as_array().unwrap() {
        assert_eq!(init["command"], serde_json::json!(["/bin/true"]), "pulls, then exits at once");
        assert_eq!(init["imagePullPolicy"], config.kubernetes.image_pull_policy.as_str());
    }
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    assert!(image(&containers[0]).starts_with("registry.k8s.io/pause:"), "{}", containers[0]["image"]);
    for c in containers.iter().chain(pod["initContainers"].as_array().unwrap()) {
        assert_eq!(c["resources"]["requests"], serde_json::json!({"cpu": "1m", "memory": "8Mi"}), "{}", c["name"]);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    }
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(puller["spec"]["updateStrategy"]["type"], "RollingUpdate", "an image change rolls it");

    // Where workspaces run: the same node selection as a workspace pod's.
    let c = &config;
    let session = crate::session::Session::new(
        &crate::session::SessionId::parse("abc12345").unwrap(),
        "ada@example.com",
        &c.workspaces.default_tier,
        chrono::Utc::now(),
    );
    let tier = objects::session_tier(c, &session);
    let workspace = serde_json::to_value(objects::deployment(c, &session, &tier)).unwrap();
    let workspace_pod = &workspace["spec"]["template"]["spec"];
    for key in ["nodeSelector", "tolerations", "affinity"] {
        assert_eq!(pod.get(key), workspace_pod.get(key), "{key} differs from the workspaces'");
    }
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_non_root() {
    let text = read("Dockerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].contains(" AS build"), "{}", froms[0]);
    assert!(froms[1].contains("debian:bookworm-slim"), "{}", froms[1]);
    assert!(text.contains("cmake"), "pingora builds zlib-ng with CMake");
    let user = text.lines().rev().find(|l| l.starts_with("USER ")).expect("a USER line");
    let uid: u32 = user[5..].split(':').next().unwrap().trim().parse().expect("a numeric uid (runAsNonRoot checks it)");
    assert!(uid > 0);
    assert!(text.contains("--locked"), "the image is built from Cargo.lock");
}
