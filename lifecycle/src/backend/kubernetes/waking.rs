//! Why a wake's pod will not come, told while the user is still on the waiting page instead of at
//! `start_timeout`: a container that cannot start (`pods::fatal_reason`), a pod the scheduler
//! finds no node for past `unschedulable_grace`, and a pod the ReplicaSet cannot even create
//! (quota, admission webhook, Pod Security, missing service account).
//!
//! A pod that is never created leaves nothing for the pod watcher to see. The ReplicaSet
//! controller records the API server's refusal as its `ReplicaFailure` condition (reason
//! `FailedCreate`, message the refusal) and the Deployment controller copies that condition onto
//! the Deployment, which wakeway may already `list`: a waiting wake reads it there once a second
//! (no `events` list/watch permission needed for it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;
use wakeway_config::format_duration;

use super::pods;

/// How often a waiting wake reads its Deployment for a `ReplicaFailure`.
pub(super) const DEPLOYMENT_POLL: Duration = Duration::from_secs(1);

/// What one wake has seen so far of the reasons its pod will not come.
pub(super) struct Verdicts {
    grace: Duration,
    /// Pod UID → when this wake first saw it Unschedulable (wakeway's clock, not the server's).
    unschedulable_since: HashMap<String, Instant>,
    next_poll: Instant,
}

impl Verdicts {
    pub fn new(grace: Duration, now: Instant) -> Self {
        Verdicts { grace, unschedulable_since: HashMap::new(), next_poll: now + DEPLOYMENT_POLL }
    }

    /// The next moment a verdict can change without a pod event: the next read of the
    /// Deployment, or the end of a pod's grace.
    pub fn next_check(&self) -> Instant {
        let graces = self.unschedulable_since.values().map(|since| *since + self.grace);
        graces.fold(self.next_poll, Instant::min)
    }

    /// A container that cannot start, or a pod Unschedulable for longer than the grace.
    pub fn of_pods(&mut self, found: &[Arc<Pod>], now: Instant) -> Option<String> {
        if let Some(why) = found.iter().find_map(|p| pods::fatal_reason(p)) {
            return Some(why);
        }
        let stuck: Vec<(String, String)> = found
            .iter()
            .filter_map(|p| Some((p.metadata.uid.clone().unwrap_or_default(), pods::unschedulable(p)?)))
            .collect();
        // A pod that got a node (or went away) starts its grace afresh if it is ever stuck again.
        self.unschedulable_since.retain(|uid, _| stuck.iter().any(|(u, _)| u == uid));
        for (uid, why) in stuck {
            let since = *self.unschedulable_since.entry(uid).or_insert(now);
            if now.duration_since(since) >= self.grace {
                return Some(format!("{why} (still unschedulable after {})", format_duration(self.grace)));
            }
        }
        None
    }

    /// Whether the Deployment is due to be read now (then the next read is a poll later).
    pub fn poll_due(&mut self, now: Instant) -> bool {
        if now < self.next_poll {
            return false;
        }
        self.next_poll = now + DEPLOYMENT_POLL;
        true
    }
}

/// Why the Deployment's ReplicaSet cannot create its pod: a `ReplicaFailure` condition, once the
/// Deployment controller has seen the latest scale (`observedGeneration`), so a condition from
/// before this wake's scale is not taken for this one's. (The controllers clear the condition
/// once the failed wake scaled back to 0; a wake within that second could still read it, and then
/// fails with the reason the previous one gave.)
pub(super) fn replica_failure(deployment: &Deployment) -> Option<String> {
    let generation = deployment.metadata.generation?;
    let status = deployment.status.as_ref()?;
    if status.observed_generation? < generation {
        return None;
    }
    let failure = status.conditions.iter().flatten().find(|c| c.type_ == "ReplicaFailure" && c.status == "True")?;
    let name = deployment.metadata.name.as_deref().unwrap_or("the Deployment");
    Some(format!(
        "the ReplicaSet of {name} cannot create its pod: {}: {}",
        failure.reason.as_deref().unwrap_or("FailedCreate"),
        failure.message.as_deref().unwrap_or("(no message)")
    ))
}

/// A time of the API server's as wakeway's `DateTime`.
fn chrono_of(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t.as_microsecond())
}

/// The phases of a wake whose pod was created for it, in seconds, each from the end of the one
/// before: `scheduled` (scale `accepted` → `PodScheduled`), `started` (→ the workspace container
/// running: image pull and init containers), `ready` (→ `Ready`), `routable` (→ wakeway's first
/// answered probe, at `routable`). The pod's times have a resolution of a second and come from
/// other clocks: a negative phase counts as 0. A pod older than the wake (it was already
/// running) tells nothing of wake latency: no phases.
pub(super) fn phases(pod: &Pod, accepted: DateTime<Utc>, routable: DateTime<Utc>) -> Vec<(&'static str, f64)> {
    let Some(status) = &pod.status else { return Vec::new() };
    let created = pod.metadata.creation_timestamp.as_ref().and_then(|t| chrono_of(&t.0));
    if created.is_none_or(|c| c < accepted - TimeDelta::seconds(2)) {
        return Vec::new();
    }
    let became = |kind: &str| {
        let c = status.conditions.iter().flatten().find(|c| c.type_ == kind && c.status == "True")?;
        chrono_of(&c.last_transition_time.as_ref()?.0)
    };
    let running = status.container_statuses.iter().flatten();
    let started = running.filter_map(|c| chrono_of(&c.state.as_ref()?.running.as_ref()?.started_at.as_ref()?.0)).max();
    let marks = [("scheduled", became("PodScheduled")), ("started", started), ("ready", became("Ready"))];
    let mut out = Vec::new();
    let mut previous = accepted;
    for (phase, at) in marks.into_iter().chain([("routable", Some(routable))]) {
        // A missing mark leaves the next phase without a start: stop there.
        let Some(at) = at else { break };
        out.push((phase, (at - previous).num_milliseconds().max(0) as f64 / 1000.0));
        previous = at.max(previous);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, scheduled: serde_json::Value) -> Arc<Pod> {
        let pod = json!({"metadata": {"name": format!("user-abc-{uid}"), "uid": uid},
            "status": {"phase": "Pending", "conditions": [scheduled]}});
        Arc::new(serde_json::from_value(pod).unwrap())
    }

    fn unschedulable(uid: &str) -> Arc<Pod> {
        pod(
            uid,
            json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu."}),
        )
    }

    #[test]
    fn an_unschedulable_pod_fails_only_after_the_grace_of_its_own() {
        let start = Instant::now();
        let mut v = Verdicts::new(Duration::from_secs(30), start);
        assert_eq!(v.of_pods(&[unschedulable("a")], start), None);
        assert_eq!(v.next_check(), start + DEPLOYMENT_POLL, "the Deployment is read before the grace ends");
        assert!(v.poll_due(start + DEPLOYMENT_POLL));
        assert_eq!(v.next_check(), start + 2 * DEPLOYMENT_POLL);
        assert_eq!(v.of_pods(&[unschedulable("a")], start + Duration::from_secs(29)), None);
        let why = v.of_pods(&[unschedulable("a")], start + Duration::from_secs(30)).unwrap();
        assert!(why.contains("3 Insufficient cpu") && why.contains("after 30s"), "{why}");

        // Scheduled in between: a new stuck spell gets a whole grace again.
        let scheduled = pod("a", json!({"type": "PodScheduled", "status": "True"}));
        let later = start + Duration::from_secs(40);
        assert_eq!(v.of_pods(&[scheduled], later), None);
        assert_eq!(v.of_pods(&[unschedulable("a")], later + Duration::from_secs(1)), None);
    }

    #[test]
    fn a_pod_waiting_for_its_volume_is_not_unschedulable() {
        let start = Instant::now();
        let mut v = Verdicts::new(Duration::from_secs(1), start);
        let waiting = pod(
            "a",
            json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."}),
        );
        assert_eq!(v.of_pods(std::slice::from_ref(&waiting), start), None);
        assert_eq!(v.of_pods(&[waiting], start + Duration::from_secs(60)), None);
    }

    #[test]
    fn a_wake_is_split_into_phases_from_the_pods_times() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "user-abc-1", "creationTimestamp": "2026-03-04T05:06:07Z"},
            "status": {"conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-03-04T05:06:08Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-03-04T05:06:20Z"}],
            "containerStatuses": [{"name": "workspace", "ready": true, "restartCount": 0, "image": "x",
                "imageID": "", "state": {"running": {"startedAt": "2026-03-04T05:06:17Z"}}}]}}))
        .unwrap();
        let accepted = at("2026-03-04T05:06:07.500Z");
        let got = phases(&pod, accepted, at("2026-03-04T05:06:20.250Z"));
        assert_eq!(got, [("scheduled", 0.5), ("started", 9.0), ("ready", 3.0), ("routable", 0.25)]);
        // Its clock behind wakeway's: never negative.
        let got = phases(&pod, at("2026-03-04T05:06:08.900Z"), at("2026-03-04T05:06:20.250Z"));
        assert_eq!(got[0], ("scheduled", 0.0));
        assert_eq!(phases(&pod, at("2026-03-04T05:07:00Z"), at("2026-03-04T05:07:01Z")), [], "an older pod");
        let mut unstarted = pod.clone();
        unstarted.status.as_mut().unwrap().container_statuses = None;
        assert_eq!(phases(&unstarted, accepted, at("2026-03-04T05:06:21Z")), [("scheduled", 0.5)]);
    }

    #[test]
    fn a_replica_failure_counts_once_the_controller_saw_the_scale() {
        let deployment = |observed: i64| -> Deployment {
            serde_json::from_value(json!({"metadata": {"name": "user-abc", "generation": 4},
                "status": {"observedGeneration": observed, "conditions": [
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                    {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                     "message": "pods \"user-abc-1\" is forbidden: exceeded quota: compute"}]}}))
            .unwrap()
        };
        assert_eq!(replica_failure(&deployment(3)), None, "a condition from before this scale");
        let why = replica_failure(&deployment(4)).unwrap();
        assert_eq!(
            why,
            "the ReplicaSet of user-abc cannot create its pod: FailedCreate: pods \"user-abc-1\" is forbidden: exceeded quota: compute"
        );
    }
}
