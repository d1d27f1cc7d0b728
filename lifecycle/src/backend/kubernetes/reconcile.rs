//! Compare the cluster's workspace objects with the sessions: objects without a session, objects
//! a session recorded that vanished, Deployments scaled by someone else. A pure function of the
//! listed objects; the report is logged, never acted on (nothing is deleted because of it).

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use kube::Resource;

use super::objects::{FIELD_MANAGER, UUID, deployment_name, pvc_name, service_name};
use crate::backend::{FoundObject, MissingObject, ReconcileReport, ScaledElsewhere};
use crate::session::{Session, State};

fn found<K: Resource>(kind: &'static str, object: &K) -> FoundObject {
    let meta = object.meta();
    FoundObject {
        kind,
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        session: meta.labels.as_ref().and_then(|l| l.get(UUID)).cloned().unwrap_or_default(),
    }
}

/// The replicas a session's state implies (None while it is changing).
fn expected_replicas(state: State) -> Option<i32> {
    match state {
        State::Running => Some(1),
        State::Sleeping
        | State::BackingUp
        | State::BackupFailed
        | State::Failed
        | State::Deleting
        | State::Restoring => Some(0),
        State::Creating | State::Starting | State::Waking | State::Resizing | State::Stopping | State::Deleted => None,
    }
}

/// Field managers other than wakeway that own `spec.replicas` (an HPA, `kubectl scale`, GitOps).
pub fn other_replica_owners(deployment: &Deployment) -> Vec<String> {
    let mut owners: Vec<String> = deployment
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() != Some(FIELD_MANAGER))
        .filter(|entry| {
            entry.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
        })
        .map(|entry| entry.manager.clone().unwrap_or_else(|| "(unnamed)".into()))
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

/// Build the report from what was listed (objects labelled `managed-by=wakeway,name=workspace`).
pub fn report(
    sessions: &[Session],
    deployments: &[Deployment],
    services: &[Service],
    pvcs: &[PersistentVolumeClaim],
) -> ReconcileReport {
    let live: HashMap<&str, &Session> =
        sessions.iter().filter(|s| s.state != State::Deleted).map(|s| (s.uuid.as_str(), s)).collect();
    let objects: Vec<FoundObject> = deployments
        .iter()
        .map(|d| found("Deployment", d))
        .chain(services.iter().map(|s| found("Service", s)))
        .chain(pvcs.iter().map(|p| found("PersistentVolumeClaim", p)))
        .collect();
    let mut report = ReconcileReport::default();
    for object in &objects {
        if !live.contains_key(object.session.as_str()) {
            report.orphans.push(object.clone());
        }
    }
    let mut ids: Vec<&&str> = live.keys().collect();
    ids.sort();
    for id in ids {
        let session = live[*id];
        let Some(recorded) = &session.objects else { continue };
        for (kind, name, uid) in [
            ("Deployment", deployment_name(id), &recorded.deployment),
            ("Service", service_name(id), &recorded.service),
            ("PersistentVolumeClaim", pvc_name(id), &recorded.pvc),
        ] {
            let now = objects.iter().find(|o| o.kind == kind && o.name == name);
            if now.is_none_or(|o| &o.uid != uid) {
                report.vanished.push(MissingObject {
                    session: id.to_string(),
                    kind,
                    name,
                    recorded_uid: uid.clone(),
                    found_uid: now.map(|o| o.uid.clone()),
                });
            }
        }
    }
    for deployment in deployments {
        let object = found("Deployment", deployment);
        let Some(session) = live.get(object.session.as_str()) else { continue };
        let replicas = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let expected = expected_replicas(session.state);
        let other_owners = other_replica_owners(deployment);
        if expected.is_some_and(|e| e != replicas) || !other_owners.is_empty() {
            report.scaled_elsewhere.push(ScaledElsewhere {
                session: object.session,
                name: object.name,
                replicas,
                expected,
                other_owners,
            });
        }
    }
    report
}
