//! Kubernetes Events for lifecycle steps (`events`), as the fake API server receives them:
//! one per step on the session's Deployment, a repeated step counted in its series, and a
//! refused write that changes nothing else.

use super::*;
use crate::backend::kubernetes::events::REPORTING_CONTROLLER;

/// The fake's Events once `done` holds for them (the writer is a background task).
pub(super) async fn events_once(fake: &Fake, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events = fake.events();
        if done(&events) {
            return events;
        }
        assert!(std::time::Instant::now() < give_up, "Events never got there: {events:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn with_reason<'a>(events: &'a [Value], reason: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["reason"] == reason).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lifecycle_step_is_an_event_on_the_sessions_deployment() {
    use crate::manager::SleepReason;
    use wakeway_proxy::ActivitySource;

    let rig = rig(true).await;
    let data = tempfile::tempdir().unwrap();
    let manager = rig.manager(data.path());
    let created = manager.create("grace@example.com").await.unwrap();
    let id = created.id();
    let deployment = format!("user-{id}");
    rig.fill_volume(id.as_str());
    // Settles the wake at creation (this one may find it done, or be the wake itself).
    manager.wake(&id, ActivitySource::Http).await.unwrap();
    for _ in 0..2 {
        manager.sleep(&id, SleepReason::Api).await.unwrap();
        manager.wake(&id, ActivitySource::ApiWake).await.unwrap();
    }
    let uid = manager.view(&id).await.unwrap().session.objects.unwrap().deployment;
    manager.delete(&id, true).await.unwrap();

    let events = events_once(&rig.fake, |e| !with_reason(e, "Deleted").is_empty()).await;
    assert_eq!(events[0]["reason"], "Created");
    assert_eq!(events[0]["note"], "created (tier small)");
    for e in &events {
        assert_eq!(e["reportingController"], REPORTING_CONTROLLER);
        assert_eq!(e["reportingInstance"], crate::manager::replica_name(None));
        let regarding = &e["regarding"];
        assert_eq!((&regarding["apiVersion"], &regarding["kind"]), (&json!("apps/v1"), &json!("Deployment")));
        assert_eq!((&regarding["name"], &regarding["namespace"]), (&json!(deployment), &json!("wakeway")));
        assert!(e["metadata"]["name"].as_str().unwrap().starts_with(&format!("{deployment}.")));
        // With the UID, `kubectl describe deployment` lists it (it selects on involvedObject.uid).
        assert_eq!(regarding["uid"], uid.as_str(), "{e}");
    }
    // The same step again: one Event, its series counting each (two sleeps, and the one before the
    // deletion's backup).
    let slept = with_reason(&events, "Slept");
    let by_api: Vec<_> = slept.iter().filter(|e| e["note"] == "asleep: api").collect();
    assert_eq!(by_api.len(), 1, "{slept:#?}");
    assert_eq!(by_api[0]["series"]["count"], 3);
    assert_eq!((&by_api[0]["action"], &by_api[0]["type"]), (&json!("Sleep"), &json!("Normal")));
    let woke: Vec<_> = with_reason(&events, "Woke").into_iter().filter(|e| e["note"] == "woken by api-wake").collect();
    assert_eq!(woke.len(), 1, "{events:#?}");
    assert_eq!(woke[0]["series"]["count"], 2);
    let verified = with_reason(&events, "BackupVerified");
    assert!(verified.iter().any(|e| e["note"].as_str().unwrap().ends_with("(delete) written and verified")));
    let deleted = with_reason(&events, "Deleted");
    assert!(deleted[0]["note"].as_str().unwrap().starts_with("deleted (api), last backup workspace-"), "{deleted:?}");

    let posts = rig.fake.calls("POST", "/events");
    assert_eq!(posts.len(), events.len(), "one create per Event");
    assert!(posts.iter().all(|r| r.path == "/apis/events.k8s.io/v1/namespaces/wakeway/events"));
    let patches = rig.fake.calls("PATCH", "/events/");
    assert!(patches.len() >= 2, "{patches:?}");
    assert!(patches.iter().all(|r| r.content_type == "application/merge-patch+json"));
}

/// Without the RBAC rule the API server refuses every Event: logged, and the lifecycle goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_never_stands_in_the_way() {
    use crate::session::State;
    use wakeway_proxy::ActivitySource;

    let rig = rig(true).await;
    rig.fake.with(|st| st.refuse_events = true);
    let data = tempfile::tempdir().unwrap();
    let manager = rig.manager(data.path());
    let id = manager.create("grace@example.com").await.unwrap().id();
    let s = manager.wake(&id, ActivitySource::Http).await.unwrap();
    assert_eq!(s.state, State::Running);
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    while rig.fake.calls("POST", "/events").len() < 2 {
        assert!(std::time::Instant::now() < give_up, "the Events were never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rig.fake.events().is_empty());
}

/// Called by `a_session_lives_and_dies_through_the_api` (whose RBAC check needs both verbs):
/// a step recorded twice is one Event whose series counts 2.
pub(super) async fn a_repeated_step_patches_its_series(rig: &Rig, s: &Session) {
    let fields = json!({"trigger": "api", "backup": "workspace-abc12345-20260304-050607"});
    for _ in 0..2 {
        rig.backend.lifecycle_event(&crate::webhook::Event::Deleted, s, Utc::now(), &fields);
    }
    let events = events_once(&rig.fake, |e| e.iter().any(|e| e["series"]["count"] == 2)).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["note"], "deleted (api), last backup workspace-abc12345-20260304-050607");
}
