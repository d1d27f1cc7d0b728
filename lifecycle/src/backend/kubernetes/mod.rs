//! The kubernetes backend: per session a PVC `pvc-<id>` (holding `workspace/` and `home/`, see
//! `volume`), a Deployment `user-<id>` and a Service `user-<id>`, written with server-side apply
//! (field manager `wakeway`). Sleep and wake go through the Deployment's `scale` subresource;
//! readiness comes from one pod watcher for the whole namespace plus an HTTP probe of the pod;
//! backups are Jobs running the wakeway image, whose zips wakeway opens and verifies itself on
//! the backup volume (`verify`); and deletion targets the UIDs recorded at creation only.
//!
//! `spec.replicas` of a workspace Deployment belongs to wakeway alone: an HPA, a GitOps tool or
//! `kubectl scale` owning it would wake or sleep sessions behind wakeway's back (reconciliation
//! reports such Deployments).

mod destroy;
mod discover;
mod events;
mod jobs;
pub mod objects;
mod pods;
pub mod reconcile;
#[cfg(test)]
mod tests;
mod verify;
pub mod volume;
mod waking;

use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use wakeway_config::{Config, Tier};
use wakeway_proxy::Upstream;

use super::{Backend, BackendError, BackendEvent, ReconcileReport, Started};
use crate::backup::backup_file_name;
use crate::probe;
use crate::session::{BackupInfo, ObjectUids, Placement, Session};
use objects::{FIELD_MANAGER, NAME, UUID, WORKSPACE_SELECTOR, deployment_name, pvc_name};
use pods::PodWatch;

pub use jobs::{parse_backup_result, parse_restore_result};
pub use objects::{backup_job, restore_job};

/// Runs each workspace as a Deployment in one namespace.
pub struct KubernetesBackend {
    config: Arc<Config>,
    client: Client,
    deployments: Api<Deployment>,
    services: Api<Service>,
    pvcs: Api<PersistentVolumeClaim>,
    pod_api: Api<Pod>,
    jobs: Api<Job>,
    pods: PodWatch,
    /// Kubernetes Events for lifecycle steps, written in the background.
    recorder: events::Recorder,
    /// Sessions this replica started or adopted, by id: the watcher reports their pods' exits.
    running: Arc<DashMap<String, Placement>>,
}

/// The HTTP status of an API error (404, 409, …).
fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn uid_of<K: Resource>(object: &K) -> Result<String, BackendError> {
    object.meta().uid.clone().ok_or_else(|| {
        BackendError::Api(format!("{} came back without a uid", object.meta().name.as_deref().unwrap_or("an object")))
    })
}

impl KubernetesBackend {
    /// Connect with the in-cluster service account, or `KUBECONFIG` / `~/.kube/config`. Refuses
    /// to start when `backup_dir` is not the backup volume, mounted and usable: wakeway verifies
    /// each zip a Job writes there before it deletes anything.
    pub async fn connect(
        config: Arc<Config>,
        events: mpsc::UnboundedSender<BackendEvent>,
    ) -> Result<Arc<Self>, BackendError> {
        verify::backup_volume(&config.backup_dir(), &config.kubernetes.backup_pvc).map_err(BackendError::Io)?;
        let client = Client::try_default().await.map_err(|e| {
            BackendError::Api(format!("cannot configure a Kubernetes client (in-cluster or KUBECONFIG): {e}"))
        })?;
        Ok(Self::new(client, config, events))
    }

    /// A backend on `client` (needs a Tokio runtime: it starts the pod watcher).
    pub fn new(client: Client, config: Arc<Config>, events: mpsc::UnboundedSender<BackendEvent>) -> Arc<Self> {
        let ns = config.kubernetes.namespace.clone();
        let running: Arc<DashMap<String, Placement>> = Arc::new(DashMap::new());
        let watched = running.clone();
        let watch_ns = ns.clone();
        let pods = PodWatch::spawn(Api::namespaced(client.clone(), &ns), ns.clone(), move |store| {
            report_exits(&watched, store, &watch_ns, &events)
        });
        let instance = crate::manager::replica_name(config.store.replica_id.as_deref());
        let recorder = events::Recorder::spawn(Api::namespaced(client.clone(), &ns), ns.clone(), &instance);
        Arc::new(KubernetesBackend {
            recorder,
            deployments: Api::namespaced(client.clone(), &ns),
            services: Api::namespaced(client.clone(), &ns),
            pvcs: Api::namespaced(client.clone(), &ns),
            pod_api: Api::namespaced(client.clone(), &ns),
            jobs: Api::namespaced(client.clone(), &ns),
            client,
            config,
            pods,
            running,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Server-side apply, field manager `wakeway`, forced (wakeway owns these fields).
    async fn apply<K>(&self, api: &Api<K>, object: K) -> Result<K, BackendError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
            .await
            .map_err(|e| BackendError::Api(format!("apply {} {name}: {e}", K::kind(&()))))
    }

    /// Set the Deployment's replicas through the `scale` subresource. `Ok(false)`: no Deployment.
    async fn scale(&self, id: &str, replicas: i32) -> Result<bool, BackendError> {
        let name = deployment_name(id);
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } }));
        match self.deployments.patch_scale(&name, &params, &patch).await {
            Ok(_) => Ok(true),
            Err(e) if status_code(&e) == Some(404) => Ok(false),
            Err(e) => Err(BackendError::Api(format!("scale {name} to {replicas}: {e}"))),
        }
    }

    /// Apply the Deployment (with `tier`) and Service; check that the PVC recorded at creation is
    /// still the one there. A PVC is only ever created for a session that has none recorded: a
    /// vanished volume is an error, never silently replaced by an empty one.
    async fn ensure_objects(&self, session: &Session, tier: &Tier) -> Result<ObjectUids, BackendError> {
        let id = &session.uuid;
        let pvc = match &session.objects {
            Some(recorded) => {
                let name = pvc_name(id);
                let found =
                    self.pvcs.get_opt(&name).await.map_err(|e| BackendError::Api(format!("get {name}: {e}")))?;
                match found {
                    None => {
                        return Err(BackendError::Start(format!(
                            "the workspace volume {name} (uid {}) is gone; restore the session from a backup",
                            recorded.pvc
                        )));
                    }
                    Some(p) if p.metadata.uid.as_deref() != Some(recorded.pvc.as_str()) => {
                        return Err(BackendError::Start(format!(
                            "{name} is not the volume created for this session (uid {} instead of {}); refusing to start on it",
                            p.metadata.uid.as_deref().unwrap_or("?"),
                            recorded.pvc
                        )));
                    }
                    Some(_) => recorded.pvc.clone(),
                }
            }
            None => uid_of(&self.apply(&self.pvcs, objects::pvc(&self.config, session)).await?)?,
        };
        let deployment =
            uid_of(&self.apply(&self.deployments, objects::deployment(&self.config, session, tier)).await?)?;
        let service = uid_of(&self.apply(&self.services, objects::service(&self.config, session)).await?)?;
        if let Some(recorded) = &session.objects
            && (recorded.deployment != deployment || recorded.service != service)
        {
            tracing::warn!(session = %id, "the Deployment or Service was recreated; recording the new UIDs");
        }
        Ok(ObjectUids { deployment, service, pvc })
    }

    /// Wait for a Ready pod of the session built for its tier, or a reason it will not come
    /// (`waking`).
    ///
    /// The watcher's cache lags behind the API server: it can still hold a pod deleted before
    /// this start (its deletion not delivered yet), Ready and of the same template as the one the
    /// scale just asked for. So a candidate is confirmed with a fresh read before it is used, and
    /// one the API server no longer has is passed over.
    async fn wait_for_ready_pod(
        &self,
        session: &Session,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Pod>, BackendError> {
        let id = &session.uuid;
        let mut changes = self.pods.subscribe();
        let mut gone: Vec<String> = Vec::new();
        let grace = self.config.kubernetes.unschedulable_grace;
        let mut verdicts = waking::Verdicts::new(grace, tokio::time::Instant::now());
        loop {
            changes.borrow_and_update();
            let mut found = self.pods.of_session(id);
            found.retain(|p| p.metadata.uid.as_ref().is_none_or(|uid| !gone.contains(uid)));
            if let Some(pod) =
                found.iter().find(|p| pods::is_ready(p) && pods::tier_of(p) == Some(session.tier.as_str()))
            {
                if self.still_exists(pod).await? {
                    return Ok(pod.clone());
                }
                tracing::debug!(session = %id, pod = %pod.name_any(), "the pod watcher still had a deleted pod; waiting for the new one");
                gone.push(pod.metadata.uid.clone().unwrap_or_default());
                continue;
            }
            if let Some(why) = self.hopeless(id, &found, &mut verdicts).await {
                return Err(BackendError::Start(why));
            }
            let next = verdicts.next_check().min(deadline);
            match tokio::time::timeout_at(next, changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(BackendError::Start("the pod watcher stopped".into())),
                Err(_) if tokio::time::Instant::now() < deadline => continue,
                Err(_) => return Err(self.no_ready_pod(id, &found)),
            }
        }
    }

    /// Why the wake of session `id` cannot succeed, if it cannot: its pods say so, or (when it
    /// has no pod that is not going away) its Deployment's `ReplicaFailure` does.
    async fn hopeless(&self, id: &str, found: &[Arc<Pod>], verdicts: &mut waking::Verdicts) -> Option<String> {
        let now = tokio::time::Instant::now();
        if let Some(why) = verdicts.of_pods(found, now) {
            return Some(why);
        }
        if found.iter().any(|p| !pods::is_terminating(p)) || !verdicts.poll_due(now) {
            return None;
        }
        let name = deployment_name(id);
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        match self.deployments.list(&params).await {
            Ok(list) => list.items.iter().find_map(waking::replica_failure),
            Err(e) => {
                tracing::debug!(session = %id, error = %e, "could not read the Deployment while waking; retrying");
                None
            }
        }
    }

    /// The error of a start that saw no Ready pod before its deadline, saying where things stand.
    fn no_ready_pod(&self, id: &str, found: &[Arc<Pod>]) -> BackendError {
        let seen = if !found.is_empty() {
            found.iter().map(|p| pods::describe(p)).collect::<Vec<_>>().join("; ")
        } else if self.pods.synced() {
            "no pod was created (see `kubectl describe deployment` for quota or admission errors)".into()
        } else {
            "the pod watcher could not list pods yet".into()
        };
        BackendError::Start(format!("no Ready pod for {} before the start timeout: {seen}", deployment_name(id)))
    }

    /// Whether the API server (not the watcher's cache) has `pod` (same UID), not terminating. A
    /// list by name: a consistent read with the `list` permission the watcher needs anyway.
    async fn still_exists(&self, pod: &Pod) -> Result<bool, BackendError> {
        let name = pod.name_any();
        let params = ListParams::default().fields(&format!("metadata.name={name}"));
        let found = self.pod_api.list(&params).await.map_err(|e| BackendError::Api(format!("get pod {name}: {e}")))?;
        Ok(found.items.iter().any(|p| p.metadata.uid == pod.metadata.uid && !pods::is_terminating(p)))
    }

    /// Resolves once pod `name` (with `uid`) is gone or terminating.
    async fn until_pod_gone(&self, name: &str, uid: &str) {
        let mut changes = self.pods.subscribe();
        loop {
            changes.borrow_and_update();
            let present = self
                .pods
                .get(name)
                .is_some_and(|p| p.metadata.uid.as_deref() == Some(uid) && !pods::is_terminating(&p));
            if !present || changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Wait until a Ready pod answers HTTP on its IP; the placement that routes to it.
    async fn wait_until_serving(
        &self,
        session: &Session,
        objects: &ObjectUids,
        accepted: DateTime<Utc>,
        deadline: tokio::time::Instant,
    ) -> Result<(Upstream, Placement, Vec<(&'static str, f64)>), BackendError> {
        let pod = self.wait_for_ready_pod(session, deadline).await?;
        let name = pod.name_any();
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).unwrap_or_default();
        let pod_ip: IpAddr =
            ip.parse().map_err(|_| BackendError::Start(format!("pod {name} has an unusable IP {ip:?}")))?;
        let port = self.config.kubernetes.port;
        let addr = Upstream::Tcp(SocketAddr::new(pod_ip, port));
        // Ready is the kubelet's view; wakeway must be able to reach the pod itself.
        if !probe::wait_until_answers(&addr, deadline, self.until_pod_gone(&name, &pod_uid)).await {
            let gone = self.pods.get(&name).is_none_or(|p| pods::is_terminating(&p));
            return Err(BackendError::Start(if gone {
                format!("pod {name} went away before it answered HTTP")
            } else {
                format!(
                    "pod {name} is Ready but {addr} did not answer HTTP before the start timeout (a NetworkPolicy?)"
                )
            }));
        }
        let phases = waking::phases(&pod, accepted, Utc::now());
        let placement = Placement::Kubernetes { pod: name, pod_uid, pod_ip, port, objects: objects.clone() };
        Ok((addr, placement, phases))
    }

    /// The session's objects, found by their `uuid` label (for sessions with no recorded UIDs).
    async fn labelled_objects(&self, id: &str) -> Result<Vec<String>, BackendError> {
        let params = ListParams::default().labels(&format!("{WORKSPACE_SELECTOR},uuid={id}"));
        let err = |e: kube::Error| BackendError::Api(format!("list objects of {id}: {e}"));
        let mut names = Vec::new();
        names.extend(self.deployments.list(&params).await.map_err(err)?.items.iter().map(|o| o.name_any()));
        names.extend(self.services.list(&params).await.map_err(err)?.items.iter().map(|o| o.name_any()));
        names.extend(self.pvcs.list(&params).await.map_err(err)?.items.iter().map(|o| o.name_any()));
        Ok(names)
    }
}

/// Report every tracked session whose pod is gone, replaced or terminating (once).
fn report_exits(
    running: &DashMap<String, Placement>,
    store: &Store<Pod>,
    namespace: &str,
    events: &mpsc::UnboundedSender<BackendEvent>,
) {
    let gone: Vec<(String, Placement, String)> = running
        .iter()
        .filter_map(|entry| {
            let Placement::Kubernetes { pod, pod_uid, .. } = entry.value() else { return None };
            let detail = match store.get(&ObjectRef::new(pod).within(namespace)) {
                None => format!("pod {pod} was deleted"),
                Some(p) if p.metadata.uid.as_deref() != Some(pod_uid.as_str()) => format!("pod {pod} was replaced"),
                Some(p) if pods::is_terminating(&p) => format!("pod {pod} is being deleted"),
                Some(_) => return None,
            };
            Some((entry.key().clone(), entry.value().clone(), detail))
        })
        .collect();
    for (id, placement, detail) in gone {
        if running.remove_if(&id, |_, p| *p == placement).is_some() {
            tracing::warn!(session = %id, %detail, "workspace pod went away");
            let _ = events.send(BackendEvent::Exited { id, placement, detail });
        }
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    async fn create(&self, session: &Session) -> Result<Option<ObjectUids>, BackendError> {
        let tier = objects::session_tier(&self.config, session);
        let pvc = self.apply(&self.pvcs, objects::pvc(&self.config, session)).await?;
        let deployment = self.apply(&self.deployments, objects::deployment(&self.config, session, &tier)).await?;
        let service = self.apply(&self.services, objects::service(&self.config, session)).await?;
        let uids = ObjectUids { deployment: uid_of(&deployment)?, service: uid_of(&service)?, pvc: uid_of(&pvc)? };
        tracing::info!(session = %session.uuid, deployment = %uids.deployment, service = %uids.service, pvc = %uids.pvc, "workspace objects applied");
        Ok(Some(uids))
    }

    async fn start(
        &self,
        session: &Session,
        tier: &Tier,
        deadline: tokio::time::Instant,
    ) -> Result<Started, BackendError> {
        let id = &session.uuid;
        let objects = self.ensure_objects(session, tier).await?;
        if !self.scale(id, 1).await? {
            return Err(BackendError::Start(format!("Deployment {} disappeared while starting", deployment_name(id))));
        }
        let accepted = Utc::now();
        match self.wait_until_serving(session, &objects, accepted, deadline).await {
            Ok((addr, placement, phases)) => {
                self.running.insert(id.clone(), placement.clone());
                tracing::info!(session = %id, %addr, ?phases, "workspace pod serving");
                Ok(Started { addr, placement, objects: Some(objects), phases })
            }
            Err(e) => {
                // Like a local process that failed to start: it must not keep running (and
                // holding its volume) while the session is asleep.
                if let Err(stop) = self.scale(id, 0).await {
                    tracing::warn!(session = %id, error = %stop, "could not scale a failed start back to 0");
                }
                Err(e)
            }
        }
    }

    async fn stop(&self, session: &Session) -> Result<(), BackendError> {
        let id = &session.uuid;
        self.running.remove(id);
        let found = self.scale(id, 0).await.map_err(|e| BackendError::Stop(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.config.kubernetes.stop_timeout;
        if !self.pods.wait_synced(deadline).await {
            return Err(BackendError::Stop(
                "the pod watcher has not listed pods yet: cannot tell if it stopped".into(),
            ));
        }
        // The volume is ReadWriteOnce: stopped means the pod is gone, not merely terminating.
        let mut changes = self.pods.subscribe();
        loop {
            changes.borrow_and_update();
            let left = self.pods.of_session(id);
            if left.is_empty() {
                if found {
                    tracing::info!(session = %id, "workspace scaled to 0");
                }
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                let names: Vec<String> = left.iter().map(|p| p.name_any()).collect();
                return Err(BackendError::Stop(format!(
                    "pods {names:?} still exist {} after scaling {} to 0",
                    wakeway_config::format_duration(self.config.kubernetes.stop_timeout),
                    deployment_name(id)
                )));
            }
        }
    }

    async fn find_running(&self, session: &Session) -> Option<Upstream> {
        let placement = session.placement.as_ref()?;
        let Placement::Kubernetes { pod, pod_uid, pod_ip, port, .. } = placement else { return None };
        if !self.pods.wait_synced(tokio::time::Instant::now() + Duration::from_secs(30)).await {
            return None;
        }
        let found = self.pods.get(pod)?;
        let same_ip = found.status.as_ref().and_then(|s| s.pod_ip.as_deref()?.parse::<IpAddr>().ok()) == Some(*pod_ip);
        if found.metadata.uid.as_deref() != Some(pod_uid.as_str()) || !pods::is_ready(&found) || !same_ip {
            return None;
        }
        let addr = Upstream::Tcp(SocketAddr::new(*pod_ip, *port));
        if !probe::answers_http(&addr).await {
            return None;
        }
        self.running.insert(session.uuid.clone(), placement.clone());
        Some(addr)
    }

    fn is_alive(&self, session: &Session) -> bool {
        let Some(Placement::Kubernetes { pod, pod_uid, .. }) = &session.placement else { return false };
        if !self.pods.synced() {
            // Nothing is known yet: never call a workspace dead on an empty cache.
            return true;
        }
        self.pods
            .get(pod)
            .is_some_and(|p| p.metadata.uid.as_deref() == Some(pod_uid.as_str()) && !pods::is_terminating(&p))
    }

    async fn backup(
        &self,
        session: &Session,
        now: DateTime<Utc>,
        reason: crate::catalog::BackupReason,
    ) -> Result<BackupInfo, BackendError> {
        // The Deployment stays at 0 while the Job runs: the volume is ReadWriteOnce, and a zip of
        // a folder being written to is not a backup. (A wake waits: the manager holds the
        // session's lock for the whole backup.)
        self.stop(session).await?;
        let file = backup_file_name(&session.uuid, now);
        let job = objects::backup_job(&self.config, session, &file, now, reason.as_str());
        let name = job.name_any();
        let failed = |why: String| BackendError::Job { job: name.clone(), why };
        tracing::info!(session = %session.uuid, job = %name, %file, "backup Job starting");
        let jobs::JobRun { succeeded, reason, log } = self.run_job(job, "backup").await?;
        if !succeeded {
            let detail = match log.as_deref().map(|l| parse_backup_result(l, &file)) {
                Ok(Err(why)) => format!("{reason}; {why}"),
                _ => reason,
            };
            return Err(failed(detail));
        }
        let info = log.and_then(|l| parse_backup_result(&l, &file)).map_err(&failed)?;
        tracing::info!(session = %session.uuid, job = %name, file = %info.file, bytes = info.size, "backup Job succeeded; verifying its zip");
        // The Job's word is not enough to delete on: open the zip it names on the backup volume
        // (mounted here too) and check it against what the Job reported.
        let (dir, id, reported, max_bytes) =
            (self.config.backup_dir(), session.uuid.clone(), info.clone(), self.config.restore.max_bytes);
        tokio::task::spawn_blocking(move || verify::job_zip(&dir, &id, &reported, max_bytes))
            .await
            .map_err(|e| failed(format!("the verification task failed: {e}")))?
            .map_err(|why| {
                failed(format!("the Job reported success, but wakeway's own check of its zip failed: {why}"))
            })?;
        tracing::info!(session = %session.uuid, job = %name, file = %info.file, sha256 = %info.sha256, "backup zip verified by wakeway");
        Ok(info)
    }

    /// A Job runs `wakeway restore` into both folders of the session's PVC (the workspace scaled to
    /// 0 first: the volume is ReadWriteOnce) and reports on its log; the zip is read from the
    /// backup volume, where the catalog found it, and checked against its record's SHA-256 there.
    async fn restore(
        &self,
        session: &Session,
        zip: &std::path::Path,
        limits: crate::restore::Limits,
        options: crate::restore::Options,
    ) -> Result<crate::restore::Report, BackendError> {
        let Some(file) = zip.file_name().and_then(|f| f.to_str()).filter(|f| f.ends_with(".zip")) else {
            return Err(BackendError::Refused(format!("{} is not a backup file", zip.display())));
        };
        self.stop(session).await?;
        let job =
            objects::restore_job(&self.config, session, file, Utc::now(), &limits, options.skip_escaping_symlinks);
        let name = job.name_any();
        tracing::info!(session = %session.uuid, job = %name, %file, "restore Job starting");
        let jobs::JobRun { succeeded, reason, log } = self.run_job(job, "restore").await?;
        match log.as_deref().map(parse_restore_result).map_err(String::clone) {
            Ok(Ok(Ok(report))) if succeeded => {
                tracing::info!(session = %session.uuid, job = %name, files = report.files, "restore Job succeeded");
                Ok(report)
            }
            // The command's own verdict (refused zip, damaged zip, no space): nothing was swapped in.
            Ok(Ok(Err(e))) => Err(BackendError::Restore(e)),
            Ok(Ok(Ok(_))) => {
                Err(BackendError::Job { job: name, why: format!("{reason}, yet its log reports success") })
            }
            Ok(Err(why)) | Err(why) => {
                let why = if succeeded { why } else { format!("{reason}; {why}") };
                Err(BackendError::Job { job: name, why })
            }
        }
    }

    /// A restore Job still running from before a crash finishes (or fails) on its own; wait for it
    /// (bounded), so the volume holds one whole tree before anything reads it. What a killed Job
    /// left half-swapped is finished by the next `wakeway restore` on the volume (its swap's
    /// `recover`) — after the manager's `pre_restore` backup, which keeps all of it.
    async fn clean_interrupted_restore(&self, session: &Session) -> Result<(), BackendError> {
        let params = ListParams::default().labels(&format!("{UUID}={},{NAME}=restore", session.uuid));
        let jobs = self.jobs.list(&params).await.map_err(|e| BackendError::Api(format!("list Jobs: {e}")))?;
        for job in jobs.items.iter().filter(|j| jobs::job_outcome(j).is_none()) {
            let name = job.name_any();
            tracing::warn!(session = %session.uuid, job = %name, "a restore Job from before a restart is still running; waiting for it");
            self.finished_job(&name).await?;
        }
        Ok(())
    }

    async fn destroy(&self, session: &Session) -> Result<(), BackendError> {
        self.destroy_objects(session).await
    }

    async fn save_durable(&self, session: &Session) -> Result<(), BackendError> {
        self.annotate_durable(session).await
    }

    async fn discover(&self) -> Result<Vec<crate::backend::Discovered>, BackendError> {
        self.discovered().await
    }

    fn lifecycle_event(
        &self,
        event: &crate::webhook::Event,
        session: &Session,
        at: DateTime<Utc>,
        fields: &serde_json::Value,
    ) {
        if let Some(step) = events::step(event, session, fields) {
            self.recorder.record(step, at);
        }
    }

    async fn reconcile(&self, sessions: &[Session]) -> Result<ReconcileReport, BackendError> {
        let params = ListParams::default().labels(WORKSPACE_SELECTOR);
        let err = |e: kube::Error| BackendError::Api(format!("list workspace objects: {e}"));
        let deployments = self.deployments.list(&params).await.map_err(err)?.items;
        let services = self.services.list(&params).await.map_err(err)?.items;
        let pvcs = self.pvcs.list(&params).await.map_err(err)?.items;
        Ok(reconcile::report(sessions, &deployments, &services, &pvcs))
    }
}
