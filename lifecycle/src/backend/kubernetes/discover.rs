//! What survives in the cluster when the store loses records: each session's PVC carries its
//! user id (annotation, set at creation) and its [`crate::session::Durable`] part (annotation
//! [`objects::DURABLE`], its own field manager), from which `discover` rebuilds the records.

use chrono::DateTime;
use kube::api::{ListParams, Patch, PatchParams};

use super::objects::{self, DURABLE, DURABLE_MANAGER, WORKSPACE_SELECTOR};
use super::{BackendError, KubernetesBackend, status_code};
use crate::backend::Discovered;
use crate::session::{Durable, Session};

impl KubernetesBackend {
    /// Set the PVC's [`DURABLE`] annotation to the session's durable part. A PVC not there yet
    /// (the session's objects are created after its record) is an error: the manager tries
    /// again at the next save, and the creation saves once the PVC exists.
    pub(super) async fn annotate_durable(&self, session: &Session) -> Result<(), BackendError> {
        let name = objects::pvc_name(&session.uuid);
        let patch = objects::durable_annotation(&self.config, session);
        let params = PatchParams::apply(DURABLE_MANAGER).force();
        match self.pvcs.patch(&name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(status_code(&e), Some(404 | 422)) => {
                Err(BackendError::Api(format!("annotate {name}: the volume does not exist (yet): {e}")))
            }
            Err(e) => Err(BackendError::Api(format!("annotate {name}: {e}"))),
        }
    }

    /// Sessions as the cluster knows them: one per workspace PVC (the data), with the user id from
    /// its annotation and the tier from its Deployment's pod template. Used to rebuild records a
    /// store lost; nothing is deleted because a record vanished.
    pub(super) async fn discovered(&self) -> Result<Vec<Discovered>, BackendError> {
        let params = ListParams::default().labels(WORKSPACE_SELECTOR);
        let err = |e: kube::Error| BackendError::Api(format!("list workspace objects: {e}"));
        let pvcs = self.pvcs.list(&params).await.map_err(err)?.items;
        let deployments = self.deployments.list(&params).await.map_err(err)?.items;
        let label = |meta: &kube::api::ObjectMeta| meta.labels.as_ref().and_then(|l| l.get(objects::UUID)).cloned();
        let mut found: Vec<Discovered> = pvcs
            .iter()
            .filter_map(|pvc| {
                let id = label(&pvc.metadata)?;
                crate::session::SessionId::parse(&id)?;
                let annotations = pvc.metadata.annotations.clone().unwrap_or_default();
                let tier = deployments
                    .iter()
                    .find(|d| label(&d.metadata).as_deref() == Some(id.as_str()))
                    .and_then(|d| {
                        d.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(objects::TIER).cloned()
                    })
                    .unwrap_or_else(|| "small".into());
                Some(Discovered {
                    user_id: annotations.get(objects::USER_ID).cloned().unwrap_or_else(|| "unknown".into()),
                    tier,
                    created_at: pvc
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .and_then(|t| DateTime::from_timestamp_millis(t.0.as_millisecond())),
                    durable: durable_of(&id, &annotations),
                    id,
                })
            })
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }
}

/// The durable part a PVC's annotation holds. None or unreadable: the defaults (the session is
/// then deleted only after a verified backup, like any other), said in the log.
fn durable_of(id: &str, annotations: &std::collections::BTreeMap<String, String>) -> Durable {
    let Some(text) = annotations.get(DURABLE) else { return Durable::default() };
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(session = %id, error = %e, "the volume's {DURABLE} annotation is unreadable; rebuilding with the default policy");
        Durable::default()
    })
}
