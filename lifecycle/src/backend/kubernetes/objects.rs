//! The objects the kubernetes backend applies, as pure functions of (config, session): the
//! session's PVC, Deployment and Service, and the backup and restore Jobs. Snapshot-tested
//! (`snapshots/`) and printed by `wakeway render`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wakeway_config::{Config, KubernetesConfig, Tier};

use super::volume;
use crate::session::Session;

/// The field manager of every write (server-side apply and the scale subresource) but one.
pub const FIELD_MANAGER: &str = "wakeway";
/// The field manager of [`DURABLE`] alone. Its own, so the applies of the objects (which never
/// carry that annotation) leave it in place: server-side apply removes only what the same manager
/// applied before and left out now.
pub const DURABLE_MANAGER: &str = "wakeway-durable";
/// On the session's PVC: its [`crate::session::Durable`] part as JSON (policy, a requested
/// deletion, a restore in flight), read back when the store lost the session's record.
pub const DURABLE: &str = "wakeway.dev/durable";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const NAME: &str = "app.kubernetes.io/name";
pub const UUID: &str = "uuid";
/// The raw user id (not a valid label value in general).
pub const USER_ID: &str = "wakeway.dev/user-id";
/// The tier a pod template was built for: a started workspace is only routed to when its pod
/// runs the session's tier (not an old pod of a resize).
pub const TIER: &str = "wakeway.dev/tier";
/// On a Job's pods: the Job's name (how its result is found).
pub const JOB: &str = "wakeway.dev/job";
/// On a backup or restore Job: the zip it writes or reads.
pub const BACKUP_FILE: &str = "wakeway.dev/backup-file";

/// Selects the workspace objects and pods of every session (what the pod watcher and
/// reconciliation list).
pub const WORKSPACE_SELECTOR: &str = "app.kubernetes.io/managed-by=wakeway,app.kubernetes.io/name=workspace";

/// The workspace container's name (and the port's name).
pub const CONTAINER: &str = "workspace";
const PORT_NAME: &str = "http";
/// The pod volume of the session's PVC (in the workspace pod and in Jobs).
pub const DATA_VOLUME: &str = "data";
/// Where the workspace container sees the PVC's `workspace/` folder.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// Where the whole PVC is mounted in the migration init container and in Jobs.
pub const DATA_MOUNT: &str = "/data";
/// Where the backup PVC is mounted in Jobs.
pub const BACKUP_MOUNT: &str = "/backups";
/// The init container that brings a session's PVC to layout 2 (`wakeway migrate-volume`).
pub const MIGRATE_CONTAINER: &str = "migrate-volume";

pub fn deployment_name(id: &str) -> String {
    format!("user-{id}")
}

pub fn service_name(id: &str) -> String {
    format!("user-{id}")
}

pub fn pvc_name(id: &str) -> String {
    format!("pvc-{id}")
}

/// The labels of every object of session `id` (`component`: `workspace`, `backup`, `restore`).
pub fn labels(id: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), "wakeway".to_string()),
        (NAME.to_string(), component.to_string()),
        (UUID.to_string(), id.to_string()),
    ])
}

fn meta(config: &KubernetesConfig, name: String, session: &Session, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(config.namespace.clone()),
        labels: Some(labels(&session.uuid, component)),
        annotations: Some(BTreeMap::from([(USER_ID.to_string(), session.user_id.clone())])),
        ..ObjectMeta::default()
    }
}

/// CPU as the API server writes it back: `1`, `2`, `500m`, `1500m`.
pub fn cpu_quantity(cpu: f64) -> Quantity {
    let millis = (cpu * 1000.0).round() as i64;
    Quantity(if millis % 1000 == 0 { (millis / 1000).to_string() } else { format!("{millis}m") })
}

pub fn memory_quantity(mib: u64) -> Quantity {
    Quantity(format!("{mib}Mi"))
}

/// The tier named by the session, or the default tier.
pub fn session_tier(config: &Config, session: &Session) -> Tier {
    config
        .workspaces
        .tiers
        .get(&session.tier)
        .or_else(|| config.workspaces.tiers.get(&config.workspaces.default_tier))
        .cloned()
        .unwrap_or(Tier { cpu: 1.0, memory_mib: 1024 })
}

/// `pvc-<id>`: the session's workspace data (ReadWriteOnce, `pvc_size`, `storage_class`).
pub fn pvc(config: &Config, session: &Session) -> PersistentVolumeClaim {
    let k8s = &config.kubernetes;
    PersistentVolumeClaim {
        metadata: meta(k8s, pvc_name(&session.uuid), session, "workspace"),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(k8s.pvc_size.clone()))])),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: (!k8s.storage_class.is_empty()).then(|| k8s.storage_class.clone()),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The apply configuration that sets the PVC's [`DURABLE`] annotation (field manager
/// [`DURABLE_MANAGER`]): name and that annotation only, so it owns nothing else.
pub fn durable_annotation(config: &Config, session: &Session) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": pvc_name(&session.uuid),
            "namespace": config.kubernetes.namespace,
            "annotations": { DURABLE: serde_json::to_string(&session.durable()).unwrap_or_default() },
        },
    })
}

fn pod_security(k8s: &KubernetesConfig) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(k8s.run_as_user),
        run_as_group: Some(k8s.run_as_group),
        fs_group: Some(k8s.fs_group),
        // Only walk the volume when its root is not ours yet (a 5 GiB workspace starts faster).
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..PodSecurityContext::default()
    }
}

fn container_security(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        read_only_root_filesystem: read_only_root.then_some(true),
        ..SecurityContext::default()
    }
}

fn pvc_volume(name: &str, claim: String, read_only: bool) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim,
            read_only: read_only.then_some(true),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// `folder` of volume `name` (a `subPath`) at `path`, read-write.
fn folder_mount(name: &str, folder: &str, path: &str) -> VolumeMount {
    VolumeMount { sub_path: Some(folder.into()), ..mount(name, path, false) }
}

/// `/data/<folder>` in a Job: where a layout-2 volume keeps it (see `volume`).
fn data_path(folder: &str) -> String {
    format!("{DATA_MOUNT}/{folder}")
}

/// What a wakeway container (the migration, a Job) may use.
fn wakeway_resources(limits: BTreeMap<String, Quantity>) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}

/// The init container of every pod that mounts a session's PVC: `wakeway migrate-volume /data`
/// moves a volume of the old layout (the workspace at its root) into `workspace/` and makes
/// `home/`, crash-safe, before anything mounts those folders; a no-op on a migrated volume. Its
/// requests equal its limits, so the workspace pod keeps its Guaranteed QoS class.
fn migrate_container(k8s: &KubernetesConfig) -> Container {
    let limits = BTreeMap::from([
        ("cpu".to_string(), Quantity("100m".into())),
        ("memory".to_string(), Quantity("128Mi".into())),
    ]);
    Container {
        name: MIGRATE_CONTAINER.into(),
        image: Some(k8s.wakeway_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(["wakeway", "migrate-volume", DATA_MOUNT].map(String::from).to_vec()),
        resources: Some(wakeway_resources(limits)),
        security_context: Some(container_security(true)),
        volume_mounts: Some(vec![mount(DATA_VOLUME, DATA_MOUNT, false)]),
        ..Container::default()
    }
}

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.to_string()), ..EnvVar::default() }
}

/// The workspace container: code-server (the configured image) on the `http` port with the
/// tier's resources, the environment spelled out, HOME and the workspace from the PVC.
fn workspace_container(k8s: &KubernetesConfig, id: &str, tier: &Tier) -> Container {
    let resources = BTreeMap::from([
        ("cpu".to_string(), cpu_quantity(tier.cpu)),
        ("memory".to_string(), memory_quantity(tier.memory_mib)),
    ]);
    Container {
        name: CONTAINER.into(),
        image: Some(k8s.image.clone()),
        image_pull_policy: Some(k8s.image_pull_policy.clone()),
        args: Some(k8s.args.iter().map(|a| a.replace("{port}", &k8s.port.to_string())).collect()),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: i32::from(k8s.port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // The whole environment, spelled out: the session's own facts and `kubernetes.env` (no
        // `envFrom`, no secret reference). The workspace runs its user's code; wakeway's keys and
        // the cluster's addresses (service links are off below) must not reach it.
        env: Some(
            [
                env("WAKEWAY_SESSION", id),
                env("WAKEWAY_CPU", tier.cpu),
                env("WAKEWAY_MEMORY_MIB", tier.memory_mib),
                // HOME is where the PVC's home/ is mounted, whatever the image's passwd says.
                env("HOME", &k8s.home_path),
            ]
            .into_iter()
            .chain(k8s.env.iter().map(|(name, value)| env(name, value)))
            .collect(),
        ),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..ResourceRequirements::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::String(PORT_NAME.into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(1),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        security_context: Some(container_security(false)),
        volume_mounts: Some(vec![
            folder_mount(DATA_VOLUME, volume::WORKSPACE_DIR, WORKSPACE_MOUNT),
            folder_mount(DATA_VOLUME, volume::HOME_DIR, &k8s.home_path),
        ]),
        ..Container::default()
    }
}

/// `user-<id>`: one code-server pod with the tier's resources and both of the session's folders
/// on its PVC: `workspace/` at `/workspace` and `home/` at `kubernetes.home_path` (also its
/// `HOME`), after the migration init container made sure the volume has them. `spec.replicas` is deliberately absent: it defaults to 1 when the Deployment is
/// created and from then on only wakeway sets it, through the `scale` subresource (0 asleep, 1
/// awake). Applying this object again (a resize) therefore never wakes or sleeps a session.
pub fn deployment(config: &Config, session: &Session, tier: &Tier) -> Deployment {
    let k8s = &config.kubernetes;
    let id = &session.uuid;
    let selector = labels(id, "workspace");
    let container = workspace_container(k8s, id, tier);
    let mut template_annotations = BTreeMap::from([(USER_ID.to_string(), session.user_id.clone())]);
    template_annotations.insert(TIER.into(), session.tier.clone());
    Deployment {
        metadata: meta(k8s, deployment_name(id), session, "workspace"),
        spec: Some(DeploymentSpec {
            selector: LabelSelector { match_labels: Some(selector.clone()), ..LabelSelector::default() },
            // The PVC is ReadWriteOnce: the old pod must be gone before a new one mounts it.
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".into()), ..DeploymentStrategy::default() }),
            revision_history_limit: Some(2),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    annotations: Some(template_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    init_containers: Some(vec![migrate_container(k8s)]),
                    containers: vec![container],
                    volumes: Some(vec![pvc_volume(DATA_VOLUME, pvc_name(id), false)]),
                    security_context: Some(pod_security(k8s)),
                    service_account_name: (!k8s.service_account.is_empty()).then(|| k8s.service_account.clone()),
                    // A workspace runs user code: it gets no API credentials and no Service env vars.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(config.lifecycle.stop_grace.as_secs() as i64),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// `user-<id>`: a ClusterIP Service in front of the session's pod. wakeway itself routes to the
/// pod IP (no kube-proxy hop, and a pod that is Ready but not yet answering is never used); the
/// Service is the stable in-cluster name for everything else.
pub fn service(config: &Config, session: &Session) -> Service {
    let k8s = &config.kubernetes;
    Service {
        metadata: meta(k8s, service_name(&session.uuid), session, "workspace"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(labels(&session.uuid, "workspace")),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: i32::from(k8s.port),
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The name of the backup Job for `id` taken at `at`.
pub fn backup_job_name(id: &str, at: DateTime<Utc>) -> String {
    format!("backup-{id}-{}", at.format("%Y%m%d-%H%M%S"))
}

/// The name of the restore Job for `id` started at `at`.
pub fn restore_job_name(id: &str, at: DateTime<Utc>) -> String {
    format!("restore-{id}-{}", at.format("%Y%m%d-%H%M%S"))
}

/// A Job running the wakeway image itself: the migration init container (read-write on the
/// session's PVC), then `command` with the whole PVC at `/data` and the backup PVC at `/backups`.
#[allow(clippy::too_many_arguments)]
fn wakeway_job(
    config: &Config,
    session: &Session,
    component: &str,
    name: String,
    file: &str,
    command: Vec<String>,
    data_read_only: bool,
    backups_read_only: bool,
) -> Job {
    let k8s = &config.kubernetes;
    let mut pod_labels = labels(&session.uuid, component);
    pod_labels.insert(JOB.into(), name.clone());
    let mut metadata = meta(k8s, name, session, component);
    metadata.annotations.get_or_insert_default().insert(BACKUP_FILE.into(), file.into());
    let container = Container {
        name: component.into(),
        image: Some(k8s.wakeway_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(command),
        resources: Some(wakeway_resources(BTreeMap::from([("memory".to_string(), Quantity("512Mi".into()))]))),
        security_context: Some(container_security(true)),
        volume_mounts: Some(vec![
            mount(DATA_VOLUME, DATA_MOUNT, data_read_only),
            mount("backups", BACKUP_MOUNT, backups_read_only),
        ]),
        ..Container::default()
    };
    Job {
        metadata,
        spec: Some(JobSpec {
            // A failed backup is retried by wakeway's own backoff, with a new name and a fresh
            // start (a `.partial` is never trusted), not by the Job controller.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(k8s.job_timeout.as_secs() as i64),
            ttl_seconds_after_finished: Some(k8s.job_ttl.as_secs().min(i32::MAX as u64) as i32),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    init_containers: Some(vec![migrate_container(k8s)]),
                    containers: vec![container],
                    volumes: Some(vec![
                        // Writable for the migration; the backup container mounts it read-only.
                        pvc_volume(DATA_VOLUME, pvc_name(&session.uuid), false),
                        pvc_volume("backups", k8s.backup_pvc.clone(), backups_read_only),
                    ]),
                    security_context: Some(pod_security(k8s)),
                    service_account_name: (!k8s.service_account.is_empty()).then(|| k8s.service_account.clone()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// `backup-<id>-<stamp>`: `wakeway backup --src /data/workspace --home /data/home --dest
/// /backups/<file>`, both roots of the session's PVC (mounted read-only in the backup container,
/// after the migration init container brought a volume of the old layout to layout 2, so a
/// session asleep since before the upgrade is backed up whole). It prints one JSON line, read
/// back from the pod's log.
pub fn backup_job(config: &Config, session: &Session, file: &str, at: DateTime<Utc>, reason: &str) -> Job {
    let dest = format!("{BACKUP_MOUNT}/{file}");
    let (workspace, home) = (data_path(volume::WORKSPACE_DIR), data_path(volume::HOME_DIR));
    // The user and the reason go into the backup's catalog record, as with the local backend.
    let command = ["wakeway", "backup", "--src", &workspace, "--home", &home, "--dest", &dest]
        .into_iter()
        .chain(["--user-id", &session.user_id, "--reason", reason])
        .map(String::from)
        .collect();
    wakeway_job(config, session, "backup", backup_job_name(&session.uuid, at), file, command, true, false)
}

/// `restore-<id>-<stamp>`: `wakeway restore` of `file` into both folders of the session's PVC
/// (`--dest /data/workspace --home-dest /data/home`; folders on the volume, so each is swapped in
/// with renames), replacing what they hold (the manager has taken a verified `pre_restore` backup
/// first), within `limits` (its environment). The zip's SHA-256 is checked against its catalog
/// record next to it on the backup volume. A zip of the old format (workspace only) restores the
/// workspace.
pub fn restore_job(
    config: &Config,
    session: &Session,
    file: &str,
    at: DateTime<Utc>,
    limits: &crate::restore::Limits,
    skip_escaping_symlinks: bool,
) -> Job {
    let (workspace, home) = (data_path(volume::WORKSPACE_DIR), data_path(volume::HOME_DIR));
    let src = format!("{BACKUP_MOUNT}/{file}");
    let mut command = ["wakeway", "restore", "--src", &src, "--dest", &workspace, "--home-dest", &home, "--replace"]
        .map(String::from)
        .to_vec();
    if skip_escaping_symlinks {
        command.push("--skip-escaping-symlinks".into());
    }
    let mut job =
        wakeway_job(config, session, "restore", restore_job_name(&session.uuid, at), file, command, false, true);
    let limits = [
        env("WAKEWAY_RESTORE_MAX_BYTES", limits.max_bytes),
        env("WAKEWAY_RESTORE_MAX_ENTRIES", limits.max_entries),
        env("WAKEWAY_RESTORE_MAX_RATIO", limits.max_ratio),
    ];
    if let Some(container) =
        job.spec.as_mut().and_then(|s| s.template.spec.as_mut()).and_then(|p| p.containers.first_mut())
    {
        container.env = Some(limits.to_vec());
    }
    job
}

/// The PVC, Deployment and Service of `session` as JSON values (what `create` applies).
pub fn workspace_objects(config: &Config, session: &Session) -> Vec<serde_json::Value> {
    let tier = session_tier(config, session);
    let to_value = |r: Result<serde_json::Value, serde_json::Error>| r.expect("k8s-openapi objects serialize");
    vec![
        to_value(serde_json::to_value(pvc(config, session))),
        to_value(serde_json::to_value(deployment(config, session, &tier))),
        to_value(serde_json::to_value(service(config, session))),
    ]
}

/// Objects as a multi-document YAML stream (`kubectl apply -f -` takes it).
pub fn to_yaml(objects: &[serde_json::Value]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap_or_else(|e| format!("# cannot render: {e}\n")))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Objects as a `v1 List` (`kubectl apply -f -` takes it too).
pub fn to_json_list(objects: &[serde_json::Value]) -> String {
    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects });
    serde_json::to_string_pretty(&list).expect("JSON values serialize")
}
