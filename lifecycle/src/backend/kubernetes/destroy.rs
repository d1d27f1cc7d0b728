//! Deleting a session's objects: only those whose UIDs were recorded at creation (a dry run of
//! all three first, so a replaced object stops everything), only after the recorded backup is
//! checked again on the backup volume, the PVC (the data) last.

use kube::api::{DeleteParams, Preconditions, PropagationPolicy};

use super::objects::{deployment_name, pvc_name, service_name};
use super::{BackendError, KubernetesBackend, status_code, verify};
use crate::session::{BackupInfo, ObjectUids, Session};

/// The kinds of a session's objects, in the order they are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deployment,
    Service,
    PersistentVolumeClaim,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
        }
    }
}

/// One object to delete: its kind, name and the UID recorded at creation.
struct Target {
    kind: Kind,
    name: String,
    uid: String,
}

impl KubernetesBackend {
    /// See [`crate::backend::Backend::destroy`].
    pub(super) async fn destroy_objects(&self, session: &Session) -> Result<(), BackendError> {
        let id = &session.uuid;
        let Some((backup, uids)) = self.destroyable(session).await? else { return Ok(()) };
        let targets = [
            Target { kind: Kind::Deployment, name: deployment_name(id), uid: uids.deployment.clone() },
            Target { kind: Kind::Service, name: service_name(id), uid: uids.service.clone() },
            Target { kind: Kind::PersistentVolumeClaim, name: pvc_name(id), uid: uids.pvc.clone() },
        ];
        // First a dry run of all three: the API server checks each UID precondition, so a
        // replaced object (409) stops the whole deletion before anything is deleted.
        let present = self.delete_each(id, targets.into(), true).await?;
        if !present.is_empty() {
            self.check_backup_again(id, backup).await?;
        }
        self.delete_each(id, present, false).await?;
        self.running.remove(id);
        Ok(())
    }

    /// Delete (or, `dry_run`, ask the API server whether it would delete) each target in turn;
    /// the ones that exist. A replaced object (409) stops at once; a vanished one (404) is skipped.
    async fn delete_each(&self, id: &str, targets: Vec<Target>, dry_run: bool) -> Result<Vec<Target>, BackendError> {
        let mut present = Vec::new();
        for target in targets {
            let (kind, name, uid) = (target.kind.as_str(), &target.name, &target.uid);
            match self.delete_object(&target, dry_run).await {
                Ok(()) if dry_run => present.push(target),
                Ok(()) => {
                    tracing::info!(session = %id, kind, %name, %uid, "deleted");
                    present.push(target);
                }
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) if status_code(&e) == Some(409) => {
                    return Err(BackendError::Refused(if dry_run {
                        format!(
                            "{kind} {name} is not the object created for session {id} (uid {uid}): {e}; nothing was deleted"
                        )
                    } else {
                        format!("{kind} {name} was replaced while deleting (uid {uid} expected): {e}")
                    }));
                }
                Err(e) => {
                    let what = if dry_run { "delete (dry run)" } else { "delete" };
                    return Err(BackendError::Api(format!("{what} {kind} {name}: {e}")));
                }
            }
        }
        Ok(present)
    }

    /// The backup and recorded UIDs a deletion needs, or why it is refused. `None`: nothing was
    /// recorded and nothing exists, so there is nothing to delete (never delete by name).
    async fn destroyable<'a>(
        &self,
        session: &'a Session,
    ) -> Result<Option<(&'a BackupInfo, &'a ObjectUids)>, BackendError> {
        let id = &session.uuid;
        let Some(backup) = &session.backup else {
            return Err(BackendError::Refused(format!("session {id} has no verified backup")));
        };
        if verify::zip_path(&self.config.backup_dir(), id, &backup.file).is_err() {
            return Err(BackendError::Refused(format!("the backup {} is not of session {id}", backup.file)));
        }
        if self.pods.synced() && !self.pods.of_session(id).is_empty() {
            return Err(BackendError::Refused(format!("session {id} still has pods; put it to sleep first")));
        }
        match &session.objects {
            Some(uids) => Ok(Some((backup, uids))),
            None => {
                let found = self.labelled_objects(id).await?;
                if found.is_empty() {
                    return Ok(None);
                }
                Err(BackendError::Refused(format!(
                    "no UIDs were recorded for session {id}, yet {found:?} exist; delete them by hand after checking"
                )))
            }
        }
    }

    /// The zip wakeway verified when its Job finished must still be there, whole, on the backup
    /// volume it reads itself.
    async fn check_backup_again(&self, id: &str, backup: &BackupInfo) -> Result<(), BackendError> {
        let (dir, session_id, recorded) = (self.config.backup_dir(), id.to_string(), backup.clone());
        tokio::task::spawn_blocking(move || verify::recorded_zip(&dir, &session_id, &recorded))
            .await
            .map_err(|e| BackendError::Refused(format!("the backup check failed: {e}; nothing was deleted")))?
            .map_err(|why| BackendError::Refused(format!("session {id}: {why}; nothing was deleted")))
    }

    /// Delete one object in the background, on the condition that it still has the UID recorded.
    async fn delete_object(&self, target: &Target, dry_run: bool) -> Result<(), kube::Error> {
        let params = DeleteParams {
            dry_run,
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions { uid: Some(target.uid.clone()), resource_version: None }),
            ..DeleteParams::default()
        };
        let name = &target.name;
        match target.kind {
            Kind::Deployment => self.deployments.delete(name, &params).await.map(drop),
            Kind::Service => self.services.delete(name, &params).await.map(drop),
            Kind::PersistentVolumeClaim => self.pvcs.delete(name, &params).await.map(drop),
        }
    }
}
