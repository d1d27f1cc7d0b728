//! The kubernetes backend against an in-process fake API server (`fake`), the objects it
//! generates against checked-in snapshots (`snapshots`), and `deploy/` against the code (RBAC
//! rules = the calls made, config parses).

mod deploy;
mod events;
mod fake;
mod fast_fail;
mod network;
mod snapshots;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use wakeway_config::{BackendKind, Config};
use wakeway_proxy::Upstream;

use super::*;
use crate::backend::{Backend, BackendError, BackendEvent};
use crate::session::{Session, SessionId};
use fake::{Fake, JobMode, PodMode, TestWorkspace};

const ID: &str = "abc12345";

/// The config of a replica whose backup volume is `backups` (where the fake's Jobs write).
fn test_config(port: u16, backups: &std::path::Path) -> Arc<Config> {
    let mut c = Config::default();
    c.workspaces.backend = BackendKind::Kubernetes;
    c.server.backup_dir = Some(backups.to_path_buf());
    c.kubernetes.port = port;
    c.kubernetes.stop_timeout = Duration::from_secs(5);
    c.kubernetes.job_timeout = Duration::from_secs(20);
    c.validate().unwrap();
    Arc::new(c)
}

fn session(id: &str, tier: &str) -> Session {
    Session::new(&SessionId::parse(id).unwrap(), "Ada Lovelace <ada@example.com>", tier, Utc::now())
}

fn deadline(secs: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(secs)
}

struct Rig {
    fake: Fake,
    workspace: TestWorkspace,
    config: Arc<Config>,
    backend: Arc<KubernetesBackend>,
    events: mpsc::UnboundedReceiver<BackendEvent>,
    volumes: tempfile::TempDir,
    backups: tempfile::TempDir,
}

async fn rig(answering: bool) -> Rig {
    rig_with(answering, |_| {}).await
}

/// A rig whose config `edit` changed (from `test_config`).
async fn rig_with(answering: bool, edit: impl FnOnce(&mut Config)) -> Rig {
    let backups = tempfile::tempdir().unwrap();
    let volumes = tempfile::tempdir().unwrap();
    let fake = Fake::start(backups.path().to_path_buf()).await;
    let workspace = TestWorkspace::start(answering).await;
    let mut config = Arc::unwrap_or_clone(test_config(workspace.port, backups.path()));
    edit(&mut config);
    let config = Arc::new(config);
    let (tx, events) = mpsc::unbounded_channel();
    let backend = KubernetesBackend::new(fake.client(), config.clone(), tx);
    Rig { fake, workspace, config, backend, events, volumes, backups }
}

impl Rig {
    /// A folder standing for `pvc-<id>`, with a few files at its root: a volume of the layout
    /// before HOME moved onto it (the workspace at the root).
    fn fill_volume(&self, id: &str) {
        let dir = self.volume(id);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("README.md"), "# my project\n").unwrap();
        std::fs::write(dir.join("src/main.rs"), "fn main() { println!(\"hi\"); }\n".repeat(50)).unwrap();
        self.fake.with(|s| s.volumes.insert(objects::pvc_name(id), dir));
    }

    /// The folder standing for `pvc-<id>` (see `fill_volume`).
    fn volume(&self, id: &str) -> std::path::PathBuf {
        self.volumes.path().join(id)
    }

    /// A manager on this rig's fake API server, with an embedded store in `data`.
    fn manager(&self, data: &std::path::Path) -> crate::manager::Manager {
        let store = crate::store::EmbeddedStore::open(&data.join("wakeway.redb")).unwrap();
        self.manager_with(Arc::new(store), Arc::new(wakeway_proxy::SystemClock))
    }

    /// A manager on this rig's fake API server, with `store` and `clock`.
    fn manager_with(
        &self,
        store: Arc<dyn crate::store::Store>,
        clock: Arc<dyn wakeway_proxy::Clock>,
    ) -> crate::manager::Manager {
        let (tx, _events) = mpsc::unbounded_channel();
        let backend = KubernetesBackend::new(self.fake.client(), self.config.clone(), tx);
        crate::manager::Manager::new(
            self.config.clone(),
            store,
            backend,
            clock,
            Arc::new(wakeway_proxy::ProxyStats::default()),
            tokio::runtime::Handle::current(),
        )
    }

    async fn start(&self, s: &Session) -> Result<crate::backend::Started, BackendError> {
        let tier = objects::session_tier(&self.config, s);
        self.backend.start(s, &tier, deadline(10)).await
    }
}

fn uid(object: &Value) -> String {
    object["metadata"]["uid"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lives_and_dies_through_the_api() {
    let mut rig = rig(false).await;
    let fake = &rig.fake;
    let mut s = session(ID, "small");

    // ---- create: server-side apply of PVC, Deployment, Service; idempotent; UIDs recorded.
    let uids = rig.backend.create(&s).await.unwrap().expect("kubernetes records UIDs");
    assert_eq!(uids.pvc, uid(&fake.object("persistentvolumeclaims", "pvc-abc12345").unwrap()));
    assert_eq!(uids.deployment, uid(&fake.object("deployments", "user-abc12345").unwrap()));
    assert_eq!(uids.service, uid(&fake.object("services", "user-abc12345").unwrap()));
    let applies = fake.calls("PATCH", "");
    assert_eq!(applies.len(), 3);
    for r in &applies {
        assert_eq!(r.content_type, "application/apply-patch+yaml", "{}", r.path);
        assert_eq!(r.query.get("fieldManager").map(String::as_str), Some("wakeway"));
        assert_eq!(r.query.get("force").map(String::as_str), Some("true"));
        assert_eq!(r.body["metadata"]["labels"]["app.kubernetes.io/managed-by"], "wakeway");
        assert_eq!(r.body["metadata"]["labels"]["uuid"], ID);
        assert_eq!(r.body["metadata"]["annotations"]["wakeway.dev/user-id"], "Ada Lovelace <ada@example.com>");
    }
    let deployment_body = &applies.iter().find(|r| r.path.ends_with("/deployments/user-abc12345")).unwrap().body;
    assert!(deployment_body["spec"].get("replicas").is_none(), "replicas is owned through the scale subresource");
    assert_eq!(rig.backend.create(&s).await.unwrap().unwrap(), uids, "applying again changes nothing");
    s.objects = Some(uids.clone());
    rig.fill_volume(ID);

    // ---- start: the pod is Ready at once, but start waits until it answers HTTP.
    let task = {
        let (backend, s, tier) = (rig.backend.clone(), s.clone(), rig.config.workspaces.tiers["small"].clone());
        tokio::spawn(async move { backend.start(&s, &tier, deadline(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!task.is_finished(), "Ready is not enough: the pod must answer");
    rig.workspace.set_ready(true);
    let started = task.await.unwrap().unwrap();
    let addr = Upstream::Tcp(SocketAddr::from(([127, 0, 0, 1], rig.workspace.port)));
    assert_eq!(started.addr, addr);
    let crate::session::Placement::Kubernetes { pod, pod_ip, port, objects: recorded, .. } = &started.placement else {
        panic!("a kubernetes placement")
    };
    assert_eq!((pod_ip.to_string(), *port), ("127.0.0.1".to_string(), rig.workspace.port));
    assert_eq!(recorded, &uids);
    assert_eq!(started.objects.as_ref(), Some(&uids));
    let first_pod = pod.clone();
    let scales = fake.calls("PATCH", "/scale");
    assert_eq!(scales.last().unwrap().body, json!({"spec": {"replicas": 1}}));
    assert_eq!(scales.last().unwrap().content_type, "application/merge-patch+json");
    s.placement = Some(started.placement.clone());
    assert!(rig.backend.is_alive(&s));
    assert_eq!(rig.backend.find_running(&s).await, Some(addr.clone()));

    // ---- the pod goes away behind our back (eviction): Exited for exactly that placement.
    fake.evict(&first_pod);
    let event = tokio::time::timeout(Duration::from_secs(5), rig.events.recv()).await.unwrap().unwrap();
    let BackendEvent::Exited { id, placement, detail } = event;
    assert_eq!((id.as_str(), &placement), (ID, &started.placement));
    assert!(detail.contains(&first_pod), "{detail}");
    assert!(!rig.backend.is_alive(&s));
    // The next start routes to the replacement pod.
    let started = rig.start(&s).await.unwrap();
    let crate::session::Placement::Kubernetes { pod, .. } = &started.placement else { unreachable!() };
    assert_ne!(pod, &first_pod);
    s.placement = Some(started.placement.clone());

    // ---- sleep: scale to 0 through the subresource; the pod is gone when stop returns.
    rig.backend.stop(&s).await.unwrap();
    assert_eq!(fake.calls("PATCH", "/scale").last().unwrap().body, json!({"spec": {"replicas": 0}}));
    assert_eq!(fake.object("deployments", "user-abc12345").unwrap()["spec"]["replicas"], 0);
    assert!(fake.workspace_pods_of(ID).is_empty());
    assert!(!rig.backend.is_alive(&s));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rig.events.try_recv().is_err(), "an expected stop is not an exit");
    s.placement = None;

    // ---- wake into the large tier: the Deployment's resources are patched, the pod has them.
    s.tier = "large".into();
    let started = rig.start(&s).await.unwrap();
    let applied = fake.calls("PATCH", "/deployments/user-abc12345");
    let last = &applied.iter().rev().find(|r| !r.path.ends_with("/scale")).unwrap().body;
    let resources = &last["spec"]["template"]["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"], json!({"cpu": "2", "memory": "2048Mi"}));
    let pods = fake.workspace_pods_of(ID);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["metadata"]["annotations"]["wakeway.dev/tier"], "large");
    assert_eq!(pods[0]["spec"]["containers"][0]["resources"]["requests"], json!({"cpu": "2", "memory": "2048Mi"}));
    s.placement = Some(started.placement);
    rig.backend.stop(&s).await.unwrap();
    s.placement = None;

    // ---- backup: a Job runs `wakeway backup` (for real, in the fake) while the Deployment is at 0.
    let now: DateTime<Utc> = "2026-03-04T05:06:07Z".parse().unwrap();
    let info = rig.backend.backup(&s, now, "delete".into()).await.unwrap();
    assert_eq!(info.file, "workspace-abc12345-20260304-050607.zip");
    let zip = rig.backups.path().join(&info.file);
    let bytes = std::fs::read(&zip).unwrap();
    assert_eq!(info.size, bytes.len() as u64);
    use sha2::Digest;
    assert_eq!(info.sha256, format!("{:x}", sha2::Sha256::digest(&bytes)));
    assert_eq!(info.entries, 3, "README.md, src/, src/main.rs");
    assert_eq!(fake.with(|st| st.rwo_violations), 0, "no workspace pod while the Job ran");
    let job = fake.object("jobs", "backup-abc12345-20260304-050607").unwrap();
    let pod_spec = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod_spec["containers"][0]["command"],
        json!([
            "wakeway",
            "backup",
            "--src",
            "/data/workspace",
            "--home",
            "/data/home",
            "--dest",
            "/backups/workspace-abc12345-20260304-050607.zip",
            "--user-id",
            "Ada Lovelace <ada@example.com>",
            "--reason",
            "delete"
        ])
    );
    // The backup reads the volume only; its migration init container may write (a volume asleep
    // since before HOME moved onto it is migrated first, then backed up whole).
    assert_eq!(
        pod_spec["containers"][0]["volumeMounts"],
        json!([{"name": "data", "mountPath": "/data", "readOnly": true}, {"name": "backups", "mountPath": "/backups"}])
    );
    assert_eq!(pod_spec["initContainers"][0]["command"], json!(["wakeway", "migrate-volume", "/data"]));
    assert_eq!(pod_spec["initContainers"][0]["volumeMounts"], json!([{"name": "data", "mountPath": "/data"}]));
    assert_eq!(pod_spec["volumes"][0]["persistentVolumeClaim"], json!({"claimName": "pvc-abc12345"}));
    assert_eq!(pod_spec["volumes"][1]["persistentVolumeClaim"], json!({"claimName": "backup-pvc"}));

    // ---- destroy: refused without a backup, refused (409, nothing deleted) for another object.
    let err = rig.backend.destroy(&s).await.unwrap_err();
    assert!(matches!(err, BackendError::Refused(_)), "{err}");
    assert!(fake.calls("DELETE", "").is_empty());
    s.backup = Some(info);
    let mut wrong = s.clone();
    wrong.objects.as_mut().unwrap().pvc = "00000000-0000-4000-8000-00000000dead".into();
    let err = rig.backend.destroy(&wrong).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Refused(m) if m.contains("nothing was deleted") && m.contains("409")),
        "{err}"
    );
    let deletes = fake.calls("DELETE", "");
    assert!(deletes.iter().all(|r| r.body["dryRun"] == json!(["All"])), "only dry runs so far");
    assert!(fake.object("deployments", "user-abc12345").is_some());
    assert!(fake.object("services", "user-abc12345").is_some());
    assert!(fake.object("persistentvolumeclaims", "pvc-abc12345").is_some());

    // ---- destroy for real: each delete names the recorded UID; the PVC goes last.
    rig.backend.destroy(&s).await.unwrap();
    let real: Vec<_> = fake.calls("DELETE", "").into_iter().filter(|r| r.body.get("dryRun").is_none()).collect();
    let order: Vec<(&str, &str)> = real
        .iter()
        .map(|r| (r.path.rsplit('/').next().unwrap(), r.body["preconditions"]["uid"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            ("user-abc12345", uids.deployment.as_str()),
            ("user-abc12345", uids.service.as_str()),
            ("pvc-abc12345", uids.pvc.as_str())
        ]
    );
    assert!(real[0].path.contains("/deployments/") && real[2].path.contains("/persistentvolumeclaims/"));
    assert!(fake.object("deployments", "user-abc12345").is_none());
    assert!(fake.object("persistentvolumeclaims", "pvc-abc12345").is_none());
    rig.backend.destroy(&s).await.unwrap();
    assert!(zip.exists(), "the backup outlives the session");

    // ---- lifecycle Events (the manager reports each step; see `events`).
    events::a_repeated_step_patches_its_series(&rig, &s).await;

    // ---- reconcile uses the same client; then RBAC must match the calls.
    let report = rig.backend.reconcile(std::slice::from_ref(&s)).await.unwrap();
    assert_eq!(report.vanished.len(), 3, "{report:?}");
    deploy::role_allows_exactly(&fake.rbac_used());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_adopts_a_running_pod_and_reports_its_exit() {
    let rig = rig(true).await;
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    let started = rig.start(&s).await.unwrap();
    s.placement = Some(started.placement.clone());

    // wakeway restarts: a fresh backend (fresh watcher) finds the same pod and adopts it.
    let (tx, mut events) = mpsc::unbounded_channel();
    let again = KubernetesBackend::new(rig.fake.client(), rig.config.clone(), tx);
    assert_eq!(again.find_running(&s).await, Some(started.addr));
    assert!(again.is_alive(&s));
    let crate::session::Placement::Kubernetes { pod, .. } = &started.placement else { unreachable!() };
    rig.fake.evict(pod);
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
    let BackendEvent::Exited { placement, .. } = event;
    assert_eq!(placement, started.placement);

    // A placement whose pod is not there is not adopted.
    assert_eq!(again.find_running(&s).await, None);
}

/// The pod watcher lags behind the API server: a start right after a stop can find the pod of
/// before the stop still cached, Ready, of the same template (its deletion not delivered yet).
/// The start must not settle on it (its address may even answer: here every pod's does) but on
/// the pod the scale created. The race behind a flaky `home_lives_on_the_volume_…`, made
/// deterministic by holding the watch events back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_never_settles_on_a_deleted_pod_the_watcher_still_has() {
    let rig = rig(true).await;
    let fake = &rig.fake;
    assert!(rig.backend.pods.wait_synced(deadline(10)).await, "the pod watcher lists pods");
    // From here on the watcher sees nothing until the test says so.
    fake.hold_watches_after(Some(fake.resource_version()));
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    let old = fake.workspace_pods_of(ID).pop().expect("the Deployment is created at 1 replica");
    let old_name = old["metadata"]["name"].as_str().unwrap().to_string();
    rig.backend.stop(&s).await.unwrap();
    assert!(fake.workspace_pods_of(ID).is_empty(), "scaled to 0: the pod is gone");
    // The watcher delivers the old pod's creation, not yet its deletion.
    let mut changes = rig.backend.pods.subscribe();
    fake.hold_watches_after(Some(old["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()));
    while rig.backend.pods.get(&old_name).is_none() {
        tokio::time::timeout_at(deadline(10), changes.changed()).await.expect("the old pod reaches the cache").unwrap();
    }

    // Start; the rest of the watch events flow once the start has asked the API server about the
    // old pod (or has settled on it without asking: the bug).
    let start = rig.start(&s);
    tokio::pin!(start);
    let asked = async {
        let by_name = format!("metadata.name={old_name}");
        while !fake.calls("GET", "/pods").iter().any(|r| r.query.get("fieldSelector") == Some(&by_name)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let early = tokio::select! {
        started = &mut start => Some(started),
        () = asked => None,
    };
    fake.hold_watches_after(None);
    let started = match early {
        Some(started) => started,
        None => start.await,
    }
    .unwrap();
    let crate::session::Placement::Kubernetes { pod, pod_uid, .. } = &started.placement else { unreachable!() };
    assert_ne!(pod, &old_name, "the start settled on the pod deleted by the stop");
    let new = fake.workspace_pods_of(ID).pop().expect("the scale created a pod");
    assert_eq!((pod.as_str(), pod_uid.as_str()), (new["metadata"]["name"].as_str().unwrap(), uid(&new).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_workspace_fails_the_start_with_its_reason_and_is_scaled_back() {
    let rig = rig(true).await;
    rig.fake.with(|st| st.pod_mode = PodMode::CrashLoop);
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    let began = std::time::Instant::now();
    let err = rig.start(&s).await.unwrap_err();
    assert!(began.elapsed() < Duration::from_secs(5), "fails on the reason, not at the timeout");
    assert!(matches!(&err, BackendError::Start(m) if m.contains("CrashLoopBackOff")), "{err}");
    assert_eq!(rig.fake.object("deployments", "user-abc12345").unwrap()["spec"]["replicas"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_or_vanished_volume_is_never_started_on() {
    let rig = rig(true).await;
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    let mut replaced = s.clone();
    replaced.objects.as_mut().unwrap().pvc = "someone-elses-uid".into();
    let err = rig.start(&replaced).await.unwrap_err();
    assert!(matches!(&err, BackendError::Start(m) if m.contains("not the volume created")), "{err}");
    assert!(rig.fake.calls("PATCH", "/scale").is_empty(), "nothing was started");

    let other = session("0123abcd", "small");
    let mut gone = other.clone();
    gone.objects = s.objects.clone();
    let err = rig.start(&gone).await.unwrap_err();
    assert!(matches!(&err, BackendError::Start(m) if m.contains("is gone") && m.contains("restore")), "{err}");
    assert!(rig.fake.object("persistentvolumeclaims", "pvc-0123abcd").is_none(), "no empty volume in its place");
    assert!(rig.fake.calls("DELETE", "").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_timed_out_backup_jobs_keep_everything() {
    let mut rig = rig(true).await;
    let mut config = (*rig.config).clone();
    config.kubernetes.job_timeout = Duration::from_secs(1);
    let (tx, _events) = mpsc::unbounded_channel();
    rig.backend = KubernetesBackend::new(rig.fake.client(), Arc::new(config), tx);
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    rig.fill_volume(ID);
    let t0: DateTime<Utc> = "2026-03-04T05:06:07Z".parse().unwrap();

    rig.fake.with(|st| {
        st.job_mode = JobMode::Fail("cannot write the backup /backups/x.zip.partial: No space left on device".into())
    });
    let err = rig.backend.backup(&s, t0, "delete".into()).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Job { job, why } if job == "backup-abc12345-20260304-050607" && why.contains("No space left")),
        "{err}"
    );

    rig.fake.with(|st| st.job_mode = JobMode::Hang);
    let err = rig.backend.backup(&s, t0 + chrono::Duration::seconds(1), "delete".into()).await.unwrap_err();
    assert!(matches!(&err, BackendError::Job { why, .. } if why.contains("DeadlineExceeded")), "{err}");

    rig.fake.with(|st| st.job_mode = JobMode::Stuck);
    let err = rig.backend.backup(&s, t0 + chrono::Duration::seconds(2), "delete".into()).await.unwrap_err();
    assert!(matches!(&err, BackendError::Job { why, .. } if why.contains("did not finish within 1s")), "{err}");

    assert!(std::fs::read_dir(rig.backups.path()).unwrap().next().is_none(), "no zip was claimed");
    assert!(rig.fake.calls("DELETE", "").is_empty());
    assert!(rig.fake.object("persistentvolumeclaims", "pvc-abc12345").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_refuses_while_pods_run_and_without_recorded_uids() {
    let rig = rig(true).await;
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    s.backup = Some(crate::session::BackupInfo {
        file: "workspace-abc12345-20260304-050607.zip".into(),
        size: 10,
        sha256: "0".repeat(64),
        entries: 1,
        content_bytes: 1,
        verified_at: Utc::now(),
        skipped: vec![],
    });
    rig.start(&s).await.unwrap();
    let err = rig.backend.destroy(&s).await.unwrap_err();
    assert!(matches!(&err, BackendError::Refused(m) if m.contains("still has pods")), "{err}");
    rig.backend.stop(&s).await.unwrap();

    let mut unrecorded = s.clone();
    unrecorded.objects = None;
    let err = rig.backend.destroy(&unrecorded).await.unwrap_err();
    assert!(matches!(&err, BackendError::Refused(m) if m.contains("no UIDs were recorded")), "{err}");
    assert!(rig.fake.calls("DELETE", "").is_empty(), "never by name");

    let mut other = session("0123abcd", "small");
    other.backup = Some(crate::session::BackupInfo {
        file: "workspace-0123abcd-20260304-050607.zip".into(),
        ..s.backup.clone().unwrap()
    });
    rig.backend.destroy(&other).await.unwrap();

    let mut foreign = s.clone();
    foreign.backup.as_mut().unwrap().file = "workspace-ffffffff-20260304-050607.zip".into();
    assert!(matches!(rig.backend.destroy(&foreign).await, Err(BackendError::Refused(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_rebuilds_sessions_from_labels_and_annotations() {
    let rig = rig(true).await;
    let mut large = session("dddd0004", "large");
    large.objects = rig.backend.create(&large).await.unwrap();
    let small = session("eeee0005", "small");
    rig.backend.create(&small).await.unwrap();
    let found = rig.backend.discover().await.unwrap();
    let summary: Vec<(&str, &str, &str)> =
        found.iter().map(|d| (d.id.as_str(), d.user_id.as_str(), d.tier.as_str())).collect();
    assert_eq!(
        summary,
        [
            ("dddd0004", "Ada Lovelace <ada@example.com>", "large"),
            ("eeee0005", "Ada Lovelace <ada@example.com>", "small")
        ]
    );
}

#[tokio::test]
async fn reconcile_reports_orphans_vanished_objects_and_foreign_scaling() {
    let rig = rig(true).await;
    let fake = &rig.fake;
    let mut running = session("aaaa0001", "small");
    running.objects = rig.backend.create(&running).await.unwrap();
    running.state = crate::session::State::Running;
    let mut asleep = session("bbbb0002", "small");
    asleep.objects = rig.backend.create(&asleep).await.unwrap();
    asleep.state = crate::session::State::Sleeping;
    let mut deleted = session("cccc0003", "small");
    deleted.state = crate::session::State::Deleted;

    // Someone replaced the sleeping session's Service, and scaled it to 1 with kubectl.
    let mut service = fake.object("services", "user-bbbb0002").unwrap();
    service["metadata"]["uid"] = json!("replaced-uid");
    fake.insert("services", service);
    let mut d = fake.object("deployments", "user-bbbb0002").unwrap();
    d["spec"]["replicas"] = json!(1);
    d["metadata"]["managedFields"] = json!([
        {"manager": "wakeway", "operation": "Apply", "fieldsV1": {"f:spec": {"f:template": {}}}},
        {"manager": "kubectl", "operation": "Update", "subresource": "scale", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
    ]);
    fake.insert("deployments", d);
    // A PVC of a deleted session, and one of a session wakeway never heard of.
    let orphan = |id: &str| {
        json!({"metadata": {"name": format!("pvc-{id}"), "labels": objects::labels(id, "workspace")},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}})
    };
    fake.insert("persistentvolumeclaims", orphan("cccc0003"));
    fake.insert("persistentvolumeclaims", orphan("dddd0004"));
    // Not a workspace object: not listed at all.
    fake.insert(
        "persistentvolumeclaims",
        json!({"metadata": {"name": "backup-pvc", "labels": {"app.kubernetes.io/name": "wakeway"}}}),
    );

    fake.with(|st| st.requests.clear());
    let report = rig.backend.reconcile(&[running.clone(), asleep.clone(), deleted]).await.unwrap();
    let orphans: Vec<(&str, &str)> = report.orphans.iter().map(|o| (o.kind, o.name.as_str())).collect();
    assert_eq!(orphans, [("PersistentVolumeClaim", "pvc-cccc0003"), ("PersistentVolumeClaim", "pvc-dddd0004")]);
    assert_eq!(report.vanished.len(), 1);
    assert_eq!(report.vanished[0].name, "user-bbbb0002");
    assert_eq!(report.vanished[0].found_uid.as_deref(), Some("replaced-uid"));
    assert_eq!(report.scaled_elsewhere.len(), 1, "{report:?}");
    let scaled = &report.scaled_elsewhere[0];
    assert_eq!((scaled.name.as_str(), scaled.replicas, scaled.expected), ("user-bbbb0002", 1, Some(0)));
    assert_eq!(scaled.other_owners, ["kubectl"]);
    // Only lists: a report never deletes or changes anything.
    assert!(fake.requests().iter().filter(|r| !r.path.contains("/pods")).all(|r| r.method == "GET"));
    assert!(fake.object("persistentvolumeclaims", "pvc-dddd0004").is_some());
}

#[test]
fn backup_results_are_read_from_the_last_json_line() {
    let info = json!({"file": "workspace-abc12345-20260304-050607.zip", "size": 123, "sha256": "a".repeat(64),
                      "entries": 3, "content_bytes": 99, "verified_at": "2026-03-04T05:06:09Z"});
    let log = format!("starting\n{}\n", json!({"ok": true, "path": "/backups/x", "backup": info}));
    let parsed = parse_backup_result(&log, "workspace-abc12345-20260304-050607.zip").unwrap();
    assert_eq!((parsed.size, parsed.entries), (123, 3));
    let err = parse_backup_result(&log, "workspace-abc12345-20260304-050608.zip").unwrap_err();
    assert!(err.contains("instead of"), "{err}");
    let err = parse_backup_result("{\"ok\":false,\"error\":\"disk full\"}\n", "x").unwrap_err();
    assert_eq!(err, "disk full");
    let err = parse_backup_result("Killed\n", "x").unwrap_err();
    assert!(err.contains("no result line") && err.contains("Killed"), "{err}");
    let mut empty = info.clone();
    empty["size"] = json!(0);
    let log = json!({"ok": true, "backup": empty}).to_string();
    assert!(parse_backup_result(&log, "workspace-abc12345-20260304-050607.zip").is_err());
}

/// The manager (state machine, store) on the kubernetes backend: the UIDs recorded at creation
/// are persisted, routing follows the pod, and an API delete backs up through a Job first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_drives_the_kubernetes_backend() {
    use crate::manager::SleepReason;
    use crate::session::{Placement, State};
    use wakeway_proxy::{ActivitySource, Phase};

    let rig = rig(true).await;
    let data = tempfile::tempdir().unwrap();
    let manager = rig.manager(data.path());
    let created = manager.create("grace@example.com").await.unwrap();
    let id = created.id();
    let recorded = created.objects.clone().expect("UIDs persisted at creation");
    assert_eq!(recorded.pvc, uid(&rig.fake.object("persistentvolumeclaims", &format!("pvc-{id}")).unwrap()));
    rig.fill_volume(id.as_str());

    let s = manager.wake(&id, ActivitySource::Http).await.unwrap();
    assert_eq!(s.state, State::Running);
    assert!(matches!(&s.placement, Some(Placement::Kubernetes { objects, .. }) if *objects == recorded));
    assert_eq!(
        manager.handle(&id).unwrap().phase(),
        Phase::Ready(Upstream::Tcp(SocketAddr::from(([127, 0, 0, 1], rig.workspace.port))))
    );
    assert_eq!(manager.placements_known(), 1, "kept to adopt the pod if the store loses its record");
    // The wake of a new pod, decomposed in /metrics from the pod's condition times.
    let metrics = manager.render_metrics();
    let count = |phase: &str| {
        let prefix = format!("wakeway_k8s_wake_phase_seconds_count{{phase=\"{phase}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok()).unwrap_or(0)
    };
    let wakes = count("scheduled");
    assert!(wakes >= 1, "{metrics}");
    assert_eq!([count("started"), count("ready"), count("routable")], [wakes; 3], "{metrics}");

    let s = manager.sleep(&id, SleepReason::Api).await.unwrap();
    assert_eq!(s.state, State::Sleeping);
    assert_eq!(manager.placements_known(), 0, "forgotten once it stops running");
    assert_eq!(s.objects.as_ref(), Some(&recorded), "kept while asleep");
    assert!(rig.fake.workspace_pods_of(id.as_str()).is_empty());

    manager.wake(&id, ActivitySource::Http).await.unwrap();
    assert_eq!(manager.placements_known(), 1);
    let s = manager.delete(&id, true).await.unwrap();
    assert_eq!(s.state, State::Deleted);
    assert_eq!(manager.placements_known(), 0, "forgotten at deletion");
    let backup = s.backup.expect("deleted after a verified backup");
    assert!(rig.backups.path().join(&backup.file).exists());
    assert!(rig.fake.object("persistentvolumeclaims", &format!("pvc-{id}")).is_none());
    let preconditions: Vec<String> = rig
        .fake
        .calls("DELETE", "")
        .iter()
        .filter(|r| r.body.get("dryRun").is_none())
        .map(|r| r.body["preconditions"]["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(preconditions, [recorded.deployment, recorded.service, recorded.pvc]);
}

/// The embedded store standing in for one shared by several replicas; the test hands out the
/// sweep lease.
struct SharedStore {
    inner: crate::store::EmbeddedStore,
    leader: std::sync::atomic::AtomicBool,
}

impl SharedStore {
    /// An embedded store in `data`, this replica leading the sweep.
    fn open(data: &std::path::Path) -> Arc<SharedStore> {
        Arc::new(SharedStore {
            inner: crate::store::EmbeddedStore::open(&data.join("wakeway.redb")).unwrap(),
            leader: std::sync::atomic::AtomicBool::new(true),
        })
    }
}

#[async_trait::async_trait]
impl crate::store::Store for SharedStore {
    fn kind(&self) -> &'static str {
        "shared-test"
    }
    async fn get(&self, id: &str) -> Result<Option<Session>, crate::store::StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self) -> Result<Vec<Session>, crate::store::StoreError> {
        self.inner.list().await
    }
    async fn put(&self, session: &Session) -> Result<Session, crate::store::StoreError> {
        self.inner.put(session).await
    }
    async fn remove(&self, id: &str, version: u64) -> Result<(), crate::store::StoreError> {
        self.inner.remove(id, version).await
    }
    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        self.inner.get_blob(key).await
    }
    async fn put_blob(&self, key: &str, value: &[u8]) -> Result<(), crate::store::StoreError> {
        self.inner.put_blob(key, value).await
    }
    async fn take_blob(&self, key: &str) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        self.inner.take_blob(key).await
    }
    async fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, crate::store::StoreError> {
        self.inner.list_blobs(prefix).await
    }
    fn shared(&self) -> bool {
        true
    }
    async fn lease(&self, _name: &str, _holder: &str, _ttl: Duration) -> Result<bool, crate::store::StoreError> {
        Ok(self.leader.load(std::sync::atomic::Ordering::SeqCst))
    }
    async fn health(&self) -> Result<(), crate::store::StoreError> {
        self.inner.health().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_leader_lists_the_cluster_only_when_a_record_may_be_missing() {
    use crate::session::State;
    use crate::store::Store;
    use std::sync::atomic::Ordering;
    use wakeway_proxy::{ActivitySource, Clock, ManualClock, SystemClock};

    let rig = rig(true).await;
    let data = tempfile::tempdir().unwrap();
    let store = SharedStore::open(data.path());
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let manager = rig.manager_with(store.clone(), clock.clone());
    // Discovery lists PVCs (then Deployments); nothing else lists PVCs here.
    let discoveries = || {
        rig.fake
            .calls("GET", "/persistentvolumeclaims")
            .iter()
            .filter(|r| r.path.ends_with("/persistentvolumeclaims"))
            .count()
    };
    let id = manager.create("grace@example.com").await.unwrap().id();
    let running = manager.wake(&id, ActivitySource::Http).await.unwrap();
    assert_eq!(running.state, State::Running);
    assert_eq!(discoveries(), 0);

    manager.sweep().await.unwrap();
    assert_eq!(discoveries(), 1, "the first sweep as leader looks");
    manager.sweep().await.unwrap();
    manager.sweep().await.unwrap();
    assert_eq!(discoveries(), 1, "nothing can be missing: no listing");

    // The store loses the record of a session this replica knows: found and adopted.
    let stored = store.get(id.as_str()).await.unwrap().unwrap();
    store.remove(id.as_str(), stored.version).await.unwrap();
    manager.sweep().await.unwrap();
    assert_eq!(discoveries(), 2);
    let rebuilt = store.get(id.as_str()).await.unwrap().expect("the record is rebuilt");
    assert_eq!((rebuilt.state, &rebuilt.placement), (State::Running, &running.placement), "adopted, not restarted");
    manager.sweep().await.unwrap();
    assert_eq!(discoveries(), 2);

    // Another replica leads for a while; becoming leader again looks once.
    store.leader.store(false, Ordering::SeqCst);
    manager.sweep().await.unwrap();
    assert_eq!(discoveries(), 2, "only the leader looks");
    store.leader.store(true, Ordering::SeqCst);
    manager.sweep().await.unwrap();
    manager.sweep().await.unwrap();
    assert_eq!(discoveries(), 3);

    // A quiet leader still looks every DISCOVERY_SAFETY_NET (a lease that went to another
    // replica and came back between two sweeps goes unseen), then not again until the next.
    clock.advance(crate::manager::DISCOVERY_SAFETY_NET);
    manager.sweep().await.unwrap();
    manager.sweep().await.unwrap();
    assert_eq!(discoveries(), 4, "the safety net, once");

    // A deleted session the leader forgot (after backup_retention) is forgotten by the other
    // replicas at their next resync, instead of staying in their maps forever. (This store sends
    // no change events: a follower learns at its resync, every FULL_SWEEP_SAFETY_NET.)
    let gone = crate::session::SessionId::parse("dead1234").unwrap();
    let mut record = crate::session::Session::new(&gone, "old@example.com", "small", chrono::Utc::now());
    record.state = State::Deleted;
    let record = store.put(&record).await.unwrap();
    store.leader.store(false, Ordering::SeqCst);
    manager.sweep().await.unwrap();
    assert!(manager.handle(&gone).is_none(), "a follower does not read every record every sweep");
    clock.advance(crate::manager::FULL_SWEEP_SAFETY_NET);
    manager.sweep().await.unwrap();
    assert!(manager.handle(&gone).is_some(), "learned from the store");
    store.remove(gone.as_str(), record.version).await.unwrap();
    manager.sweep().await.unwrap();
    assert!(manager.handle(&gone).is_some(), "not before the next resync");
    clock.advance(crate::manager::FULL_SWEEP_SAFETY_NET);
    manager.sweep().await.unwrap();
    assert!(manager.handle(&gone).is_none(), "forgotten as the leader forgot it");
    assert!(manager.handle(&id).is_some(), "the others stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_policy_is_kept_on_its_volume_and_survives_the_loss_of_its_record() {
    use crate::manager::PolicyPatch;
    use crate::store::Store;

    let rig = rig(true).await;
    let data = tempfile::tempdir().unwrap();
    let store = SharedStore::open(data.path());
    let manager = rig.manager_with(store.clone(), Arc::new(wakeway_proxy::SystemClock));
    let id = manager.create("grace@example.com").await.unwrap().id();
    let pvc = format!("pvc-{id}");
    let durable = || -> Value {
        let object = rig.fake.object("persistentvolumeclaims", &pvc).unwrap();
        serde_json::from_str(object["metadata"]["annotations"][objects::DURABLE].as_str().expect("annotated")).unwrap()
    };
    assert_eq!(durable()["policy"]["keep"], false, "the creation saves the defaults once the PVC exists");

    let patch =
        PolicyPatch { keep: Some(true), idle_timeout: Some(Some(Duration::from_secs(7200))), ..PolicyPatch::default() };
    manager.set_policy(&id, patch).await.unwrap();
    assert_eq!(durable()["policy"], json!({"idle_timeout_ms": 7_200_000, "keep": true}));
    // Written by its own field manager, holding that annotation only.
    let applies = rig.fake.calls("PATCH", &format!("/persistentvolumeclaims/{pvc}"));
    let last = applies.last().unwrap();
    assert_eq!(last.query.get("fieldManager").map(String::as_str), Some(objects::DURABLE_MANAGER));
    assert_eq!(
        last.body["metadata"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["name", "namespace", "annotations"]
    );
    assert_eq!(last.body.as_object().unwrap().len(), 3, "apiVersion, kind, metadata: nothing else is claimed");

    // The objects' own apply (field manager `wakeway`) leaves it in place.
    let record = store.get(id.as_str()).await.unwrap().unwrap();
    rig.backend.create(&record).await.unwrap();
    assert_eq!(durable()["policy"]["keep"], true, "another manager's annotation survives the objects' apply");

    // The store loses the record (once the creation's wake settled): rebuilt from the cluster
    // with its policy.
    manager.wake(&id, wakeway_proxy::ActivitySource::Http).await.unwrap();
    let record = store.get(id.as_str()).await.unwrap().unwrap();
    store.remove(id.as_str(), record.version).await.unwrap();
    manager.sweep().await.unwrap();
    let rebuilt = store.get(id.as_str()).await.unwrap().expect("rebuilt");
    assert!(rebuilt.policy.keep, "a kept session stays kept");
    assert_eq!(rebuilt.policy.idle_timeout_ms, Some(7_200_000));

    // An unreadable annotation rebuilds with the defaults rather than failing discovery.
    let mut object = rig.fake.object("persistentvolumeclaims", &pvc).unwrap();
    object["metadata"]["annotations"][objects::DURABLE] = json!("{not json");
    rig.fake.insert("persistentvolumeclaims", object);
    let found = rig.backend.discover().await.unwrap();
    assert_eq!(found.len(), 1);
    assert!(!found[0].durable.policy.keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_runs_as_a_job_inside_the_volume_after_a_backup_of_it() {
    use crate::manager::{LifecycleError, RestoreRequest, SleepReason};
    use crate::restore::RestoreError;
    use crate::session::State;
    use wakeway_proxy::ActivitySource;

    let rig = rig(true).await;
    let data = tempfile::tempdir().unwrap();
    // The catalog reads the folder the Jobs write to (the backup volume, mounted in wakeway too:
    // the rig's backup_dir).
    let manager = rig.manager(data.path());
    let id = manager.create("grace@example.com").await.unwrap().id();
    rig.fill_volume(id.as_str());
    manager.wake(&id, ActivitySource::Http).await.unwrap();
    manager.sleep(&id, SleepReason::Api).await.unwrap();
    // The workspace pod's init container moved the old layout into workspace/.
    let root = rig.volume(id.as_str());
    let volume = root.join("workspace");

    // A verified backup of another tree, in the catalog (as a Job of another session wrote it).
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(source.path().join("docs/deep")).unwrap();
    std::fs::write(source.path().join("docs/deep/notes.txt"), "restored\n").unwrap();
    std::fs::write(source.path().join("Cargo.toml"), "[package]\n").unwrap();
    let file = "workspace-0ddf1e1d-20260101-120000.zip";
    let origin = crate::catalog::Origin::new("0ddf1e1d", "grace@example.com", "delete");
    crate::backup::write_verified_zip(source.path(), &rig.backups.path().join(file), chrono::Utc::now(), &origin)
        .unwrap();

    let request = RestoreRequest { backup: file.trim_end_matches(".zip").into(), skip_escaping_symlinks: false };
    let (s, report) = manager.restore(&id, request).await.unwrap();
    assert_eq!(s.state, State::Sleeping);
    assert_eq!((report.files, report.dirs), (2, 2), "{report:?}");
    assert_eq!(std::fs::read_to_string(volume.join("docs/deep/notes.txt")).unwrap(), "restored\n");
    assert!(!volume.join("README.md").exists() && !volume.join("src").exists(), "the old tree is replaced");
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    assert_eq!(listing(&volume), ["Cargo.toml", "docs"], "the restored tree, nothing else");
    assert_eq!(listing(&root), [".wakeway-layout", "home", "workspace"], "nothing of the swap is left in the volume");
    assert_eq!(rig.fake.with(|s| s.rwo_violations), 0, "no workspace pod held the volume during the Jobs");

    // The content it replaced was backed up first, by a Job that recorded who and why.
    let safety = manager
        .backups(crate::manager::BackupFilter { session: Some(id.to_string()), ..Default::default() })
        .await
        .unwrap();
    let safety = safety.iter().find(|b| b.reason == "pre_restore").expect("a pre_restore backup");
    assert_eq!(safety.user_id.as_deref(), Some("grace@example.com"));
    assert_eq!(s.pre_restore_backup.as_deref(), Some(safety.id.as_str()));

    // The restore Job: both folders of the volume, replacing, with the configured limits.
    let jobs = rig.fake.calls("PATCH", "/jobs/restore-");
    let pod = &jobs[0].body["spec"]["template"]["spec"];
    let src = format!("/backups/{file}");
    assert_eq!(
        pod["containers"][0]["command"],
        json!([
            "wakeway",
            "restore",
            "--src",
            src,
            "--dest",
            "/data/workspace",
            "--home-dest",
            "/data/home",
            "--replace"
        ])
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"],
        json!([{"name": "data", "mountPath": "/data"}, {"name": "backups", "mountPath": "/backups", "readOnly": true}])
    );
    assert_eq!(pod["initContainers"][0]["command"], json!(["wakeway", "migrate-volume", "/data"]));

    // A zip the command refuses: the API's 422, the volume untouched.
    let evil = "workspace-0ddf1e1d-20260102-120000.zip";
    let mut zip = zip::ZipWriter::new(std::fs::File::create(rig.backups.path().join(evil)).unwrap());
    zip.start_file("../escape.txt", zip::write::SimpleFileOptions::default()).unwrap();
    std::io::Write::write_all(&mut zip, b"x").unwrap();
    zip.finish().unwrap();
    let request = RestoreRequest { backup: evil.trim_end_matches(".zip").into(), skip_escaping_symlinks: false };
    let err = manager.restore(&id, request).await.unwrap_err();
    assert!(
        matches!(err, LifecycleError::Backend(BackendError::Restore(RestoreError::Rejected(_)))),
        "refused by the command in the Job: {err}"
    );
    assert_eq!(std::fs::read_to_string(volume.join("docs/deep/notes.txt")).unwrap(), "restored\n");

    // A new session restored from that backup (`restore_from`): its fresh PVC gets the tree
    // before the workspace first starts; the Deployment created at 1 is scaled to 0 for the Job.
    rig.fake.with(|st| st.provision_into = Some(rig.volumes.path().to_path_buf()));
    let request = RestoreRequest { backup: file.trim_end_matches(".zip").into(), skip_escaping_symlinks: false };
    let (fresh, result) = manager.create_restored("lin@example.com", request).await.unwrap();
    let report = result.unwrap();
    assert_eq!((report.files, report.dirs), (2, 2), "{report:?}");
    let fresh_volume = rig.volumes.path().join(objects::pvc_name(fresh.uuid.as_str()));
    assert_eq!(std::fs::read_to_string(fresh_volume.join("workspace/docs/deep/notes.txt")).unwrap(), "restored\n");
    assert!(
        fresh_volume.join("home").is_dir() && fresh_volume.join(".wakeway-layout").is_file(),
        "a new volume has layout 2"
    );
    assert_eq!(rig.fake.with(|s| s.rwo_violations), 0, "the restore Job never shared the volume with a pod");
    assert!(rig.fake.calls("PATCH", &format!("/jobs/backup-{}", fresh.uuid)).is_empty(), "nothing to back up first");
}

fn read(path: impl AsRef<std::path::Path>) -> String {
    std::fs::read_to_string(path.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

/// HOME lives on the session's PVC: the Deployment mounts the volume's `home/` at HOME (and sets
/// `HOME`) next to `workspace/` at /workspace, after an init container migrated a volume of the
/// old layout (the workspace at its root). What a user keeps in HOME survives sleep and wake, and
/// the backup Job names both roots — also for a session asleep since before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_lives_on_the_volume_and_an_old_volume_is_migrated_before_anything_mounts_it() {
    use crate::session::Placement;
    let rig = rig(true).await;
    let fake = &rig.fake;
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    // A session that went to sleep before HOME moved onto the volume: its workspace is at the
    // volume's root.
    rig.backend.stop(&s).await.unwrap();
    rig.fill_volume(ID);
    let volume = rig.volume(ID);

    let applied = fake.calls("PATCH", "/deployments/user-abc12345");
    let pod = &applied[0].body["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"], json!([{"name": "data", "persistentVolumeClaim": {"claimName": "pvc-abc12345"}}]));
    let workspace = &pod["containers"][0];
    assert_eq!(
        workspace["volumeMounts"],
        json!([
            {"name": "data", "mountPath": "/workspace", "subPath": "workspace"},
            {"name": "data", "mountPath": "/home/coder", "subPath": "home"},
        ])
    );
    assert!(workspace["env"].as_array().unwrap().contains(&json!({"name": "HOME", "value": "/home/coder"})));
    let init = &pod["initContainers"][0];
    assert_eq!(init["command"], json!(["wakeway", "migrate-volume", "/data"]));
    assert_eq!(init["image"], "wakeway:0.1.0", "the wakeway image (kubernetes.wakeway_image)");
    assert_eq!(init["volumeMounts"], json!([{"name": "data", "mountPath": "/data"}]));
    // Pod Security `restricted`, as for the workspace container: no escalation, no capability,
    // non-root, RuntimeDefault seccomp (the last two from the pod).
    let restricted = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    for container in [init, workspace] {
        for (key, value) in restricted.as_object().unwrap() {
            assert_eq!(&container["securityContext"][key], value, "{}", container["name"]);
        }
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(init["resources"]["requests"], init["resources"]["limits"], "the pod keeps its Guaranteed QoS");

    // First start: the init container moves the old layout into workspace/ before the pod runs.
    let started = rig.start(&s).await.unwrap();
    let Placement::Kubernetes { pod: pod_name, .. } = &started.placement else { unreachable!() };
    assert_eq!(fake.with(|st| st.migrations.clone()), [(pod_name.clone(), "pvc-abc12345".to_string())]);
    assert_eq!(read(volume.join("workspace/README.md")), "# my project\n");
    assert!(!volume.join("README.md").exists() && !volume.join("src").exists());
    assert_eq!(read(volume.join(".wakeway-layout")), "2\n");
    // What code-server and the shell write under HOME is in home/ on the volume (the pod's mount)…
    let settings = volume.join("home/.local/share/code-server/User/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    std::fs::write(&settings, "{\"editor.fontSize\": 15}\n").unwrap();
    std::fs::write(volume.join("home/.bash_history"), "cargo test\n").unwrap();
    // … and still there after a sleep and a wake (the next pod's init container changes nothing).
    s.placement = Some(started.placement);
    rig.backend.stop(&s).await.unwrap();
    let started = rig.start(&s).await.unwrap();
    assert_eq!(fake.with(|st| st.migrations.len()), 2, "every new pod runs it");
    assert_eq!(read(&settings), "{\"editor.fontSize\": 15}\n");
    assert_eq!(read(volume.join("home/.bash_history")), "cargo test\n");
    assert_eq!(read(volume.join("workspace/README.md")), "# my project\n");
    s.placement = Some(started.placement);
    rig.backend.stop(&s).await.unwrap();

    // A session asleep since before the upgrade (never woken since): its backup Job migrates the
    // volume first, then backs up both roots, so nothing at the old root is left out.
    let mut old = session("0123abcd", "small");
    old.objects = rig.backend.create(&old).await.unwrap();
    rig.fill_volume("0123abcd");
    let now: DateTime<Utc> = "2026-03-04T05:06:07Z".parse().unwrap();
    let info = rig.backend.backup(&old, now, "delete".into()).await.unwrap();
    assert_eq!(info.entries, 3, "README.md, src/, src/main.rs");
    let job = fake.object("jobs", "backup-0123abcd-20260304-050607").unwrap();
    let command = &job["spec"]["template"]["spec"]["containers"][0]["command"];
    assert_eq!(
        command.as_array().unwrap()[2..6],
        json!(["--src", "/data/workspace", "--home", "/data/home"]).as_array().unwrap()[..]
    );
    let migrated_by_job = fake.with(|st| st.migrations.last().cloned().unwrap());
    assert_eq!(migrated_by_job, ("backup-0123abcd-20260304-050607-x7k2p".to_string(), "pvc-0123abcd".to_string()));
    assert_eq!(read(rig.volume("0123abcd").join("workspace/src/main.rs")).lines().count(), 50);
    assert!(rig.volume("0123abcd").join("home").is_dir());
}

/// wakeway deletes only on a zip it verified itself: a Job that reports success while its zip is
/// missing, truncated, not of the reported SHA-256, or damaged inside (same size, SHA-256 reported
/// as it now is: only the entries' CRC-32 tell) leaves the session `backup_failed`, and the API
/// server sees no DELETE at all. An honest Job's zip is verified, then everything is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_zip_does_not_verify_deletes_nothing() {
    use crate::manager::LifecycleError;
    use crate::session::State;
    use fake::Tamper;

    let rig = rig(true).await;
    let data = tempfile::tempdir().unwrap();
    let manager = rig.manager(data.path());
    for (how, says) in [
        (Tamper::Missing, "is missing on the backup volume"),
        (Tamper::Truncated, "bytes, the Job reported"),
        (Tamper::WrongSha256, "SHA-256"),
        (Tamper::FlippedByte, "verification of"),
    ] {
        let id = manager.create("grace@example.com").await.unwrap().id();
        rig.fill_volume(id.as_str());
        rig.fake.with(|st| st.job_mode = JobMode::Tamper(how));
        let err = manager.delete(&id, true).await.unwrap_err();
        assert!(
            matches!(&err, LifecycleError::BackupFailed(m) if m.to_string().contains("wakeway's own check") && m.to_string().contains(says)),
            "{how:?}: {err}"
        );
        let s = manager.view(&id).await.unwrap().session;
        assert_eq!(s.state, State::BackupFailed, "{how:?}");
        assert!(s.backup.is_none(), "{how:?}: no backup is recorded");
        assert!(rig.fake.calls("DELETE", "").is_empty(), "{how:?}: not even a dry run");
        assert!(rig.fake.object("persistentvolumeclaims", &format!("pvc-{id}")).is_some());
        assert!(rig.volume(id.as_str()).join("workspace/README.md").exists(), "{how:?}: the data is kept");
    }

    // An honest Job: wakeway verifies its zip, then deletes.
    rig.fake.with(|st| st.job_mode = JobMode::Run);
    let id = manager.create("grace@example.com").await.unwrap().id();
    rig.fill_volume(id.as_str());
    let s = manager.delete(&id, true).await.unwrap();
    assert_eq!(s.state, State::Deleted);
    let backup = s.backup.expect("deleted after a verified backup");
    let found = crate::backup::reverify(&rig.backups.path().join(&backup.file), u64::MAX).unwrap();
    assert_eq!((found.size, found.sha256), (backup.size, backup.sha256));
    let deletes: Vec<_> =
        rig.fake.calls("DELETE", "").into_iter().filter(|r| r.body.get("dryRun").is_none()).map(|r| r.path).collect();
    assert_eq!(deletes.len(), 3, "{deletes:?}");
    assert!(deletes.iter().all(|p| p.ends_with(&format!("-{id}"))), "{deletes:?}");

    // Before deleting, the recorded zip must still be there, whole: truncated since, nothing goes.
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    rig.fill_volume(ID);
    let info = rig.backend.backup(&s, "2026-03-04T05:06:07Z".parse().unwrap(), "delete".into()).await.unwrap();
    let zip = rig.backups.path().join(&info.file);
    std::fs::OpenOptions::new().write(true).open(&zip).unwrap().set_len(info.size - 1).unwrap();
    s.backup = Some(info);
    rig.fake.with(|st| st.requests.clear());
    let err = rig.backend.destroy(&s).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Refused(m) if m.contains("nothing was deleted") && m.contains("bytes")),
        "{err}"
    );
    assert!(rig.fake.calls("DELETE", "").iter().all(|r| r.body["dryRun"] == json!(["All"])), "dry runs only");
    assert!(rig.fake.object("persistentvolumeclaims", "pvc-abc12345").is_some());
}
