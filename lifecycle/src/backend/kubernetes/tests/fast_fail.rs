//! Wakes that cannot succeed fail in seconds with the cluster's reason (`waking`): a pod the
//! ReplicaSet cannot create, a pod no node fits past `unschedulable_grace`; one still within its
//! grace keeps waiting.

use super::*;
use fake::NO_NODE;

/// What the API server answers the ReplicaSet controller's pod create with, as it says it (the
/// wording of each checked against a real v1.36.2 API server: a used-up quota, a deleted service
/// account, a pod that Pod Security `restricted` refuses).
const REFUSALS: [&str; 3] = [
    "exceeded quota: compute-resources, requested: limits.cpu=1,limits.memory=1Gi, used: limits.cpu=8,limits.memory=8Gi, limited: limits.cpu=8,limits.memory=8Gi",
    "error looking up service account wakeway/wakeway-workspace: serviceaccount \"wakeway-workspace\" not found",
    "violates PodSecurity \"restricted:latest\": seccompProfile (pod or container \"workspace\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_replicaset_cannot_create_fails_the_wake_with_the_refusal() {
    for refusal in REFUSALS {
        let rig = rig(true).await;
        let mut s = session(ID, "small");
        rig.fake.with(|st| st.create_failure = Some(refusal.to_string()));
        s.objects = rig.backend.create(&s).await.unwrap();
        // It fails on the refusal (its words below), not at start_timeout; no wall-clock bound.
        let err = rig.start(&s).await.unwrap_err();
        let BackendError::Start(message) = &err else { panic!("{err:?}") };
        assert!(message.contains("the ReplicaSet of user-abc12345 cannot create its pod: FailedCreate"), "{message}");
        assert!(message.contains(refusal), "{message}");
        assert_eq!(rig.fake.object("deployments", "user-abc12345").unwrap()["spec"]["replicas"], 0, "back to sleep");
        let reads = rig.fake.calls("GET", "/deployments");
        assert!(
            reads
                .iter()
                .all(|r| r.query.get("fieldSelector").map(String::as_str) == Some("metadata.name=user-abc12345"))
        );

        // Fixed (quota raised, service account created): the next wake gets its pod.
        rig.fake.with(|st| st.create_failure = None);
        let started = rig.start(&s).await.unwrap();
        assert_eq!(started.addr, Upstream::Tcp(SocketAddr::from(([127, 0, 0, 1], rig.workspace.port))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_no_node_fits_fails_the_wake_after_its_grace() {
    let rig = rig_with(true, |c| c.kubernetes.unschedulable_grace = Duration::from_secs(1)).await;
    rig.fake.with(|st| st.pod_mode = PodMode::Unschedulable);
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    let began = std::time::Instant::now();
    let err = rig.start(&s).await.unwrap_err();
    let elapsed = began.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "not before the grace: {elapsed:?}");
    let BackendError::Start(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("cannot be scheduled") && message.contains(NO_NODE), "{message}");
    assert!(message.contains("still unschedulable after 1s"), "{message}");
    assert_eq!(rig.fake.object("deployments", "user-abc12345").unwrap()["spec"]["replicas"], 0);
}

/// A cluster autoscaler adds a node within the grace: the wake waits for it and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_unschedulable_within_its_grace_keeps_the_wake_waiting() {
    let rig = rig(true).await;
    assert_eq!(rig.config.kubernetes.unschedulable_grace, Duration::from_secs(30), "the default");
    rig.fake.with(|st| st.pod_mode = PodMode::Unschedulable);
    let mut s = session(ID, "small");
    s.objects = rig.backend.create(&s).await.unwrap();
    let (backend, tier, waking) = (rig.backend.clone(), objects::session_tier(&rig.config, &s), s.clone());
    let start = tokio::spawn(async move { backend.start(&waking, &tier, deadline(20)).await });
    let pod = loop {
        if let Some(pod) = rig.fake.workspace_pods_of(ID).pop() {
            break pod;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Several reads of the Deployment and pod events later, still waiting.
    tokio::time::sleep(crate::backend::kubernetes::waking::DEPLOYMENT_POLL * 3).await;
    assert!(!start.is_finished(), "an unschedulable pod within its grace is waited for");

    let mut scheduled = pod.clone();
    scheduled["status"] = json!({"phase": "Running", "podIP": "127.0.0.1",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]});
    rig.fake.insert("pods", scheduled);
    let started = start.await.unwrap().unwrap();
    assert!(matches!(&started.placement, Placement::Kubernetes { pod: name, .. } if *name == pod["metadata"]["name"]));
}

/// Through the manager: the session is asleep again with the reason as its `last_error`, and
/// the waiting page and held requests get it from the phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_records_the_refusal_and_sleeps() {
    use crate::session::State;
    use wakeway_proxy::{ActivitySource, Phase};

    let rig = rig(true).await;
    let data = tempfile::tempdir().unwrap();
    let manager = rig.manager(data.path());
    // Refused from the start: the wake at creation fails too, and so does each one after it.
    rig.fake.with(|st| st.create_failure = Some(REFUSALS[1].into()));
    let id = manager.create("grace@example.com").await.unwrap().id();
    // Failed with the refusal's words, not at start_timeout (no wall-clock bound: tests never
    // fail on timing).
    manager.wake(&id, ActivitySource::Http).await.unwrap_err();
    // The wake begun at creation may still be failing (this one was then refused as busy):
    // wait for the session to settle.
    let settle = tokio::time::Instant::now() + Duration::from_secs(120);
    while manager.view(&id).await.unwrap().session.state != State::Sleeping {
        manager.handle(&id).unwrap().wait_settled(settle).await;
        assert!(tokio::time::Instant::now() < settle, "the session never went back to sleep");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = manager.view(&id).await.unwrap().session;
    assert_eq!(s.state, State::Sleeping);
    assert!(s.last_error.as_deref().is_some_and(|e| e.contains(REFUSALS[1])), "{:?}", s.last_error);
    assert!(matches!(manager.handle(&id).unwrap().phase(), Phase::Failed(why) if why.contains(REFUSALS[1])));
    // And `kubectl describe deployment` says why: a Warning on the session's Deployment.
    let failed = |e: &[Value]| !super::events::with_reason(e, "WakeFailed").is_empty();
    let events = super::events::events_once(&rig.fake, failed).await;
    let event = super::events::with_reason(&events, "WakeFailed")[0];
    assert_eq!(event["type"], "Warning");
    assert!(
        event["note"].as_str().is_some_and(|n| n.starts_with("wake failed: ") && n.contains(REFUSALS[1])),
        "{event}"
    );
}
