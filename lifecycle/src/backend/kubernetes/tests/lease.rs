//! Leader election against the fake API server: one holder at a time, takeover only after a
//! whole lease duration without renewal (on the taker's own clock), compare-and-swap on
//! resourceVersion, release for a quick handover.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use wakeway_proxy::ManualClock;

use super::fake::Fake;
use crate::backend::kubernetes::LeaseLock;

fn holder(fake: &Fake) -> (Option<String>, i64) {
    let lease = fake.object("leases", "wakeway-leader").unwrap();
    (lease["spec"]["holderIdentity"].as_str().map(String::from), lease["spec"]["leaseTransitions"].as_i64().unwrap())
}

#[tokio::test]
async fn one_leader_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start(dir.path().to_path_buf()).await;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let lock = |who: &str| {
        LeaseLock::new(fake.client(), "wakeway", "wakeway-leader", who, Duration::from_secs(15), clock.clone())
    };
    let (a, b) = (lock("pod-a"), lock("pod-b"));

    assert!(a.try_acquire_or_renew().await.unwrap(), "a creates the Lease");
    assert_eq!(holder(&fake), (Some("pod-a".into()), 0));
    let created = fake.object("leases", "wakeway-leader").unwrap();
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
    assert!(!b.try_acquire_or_renew().await.unwrap(), "held by a");

    // a keeps renewing: b never sees the record unchanged for 15 s.
    for _ in 0..4 {
        clock.advance(Duration::from_secs(10));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
    }
    let renewed = fake.object("leases", "wakeway-leader").unwrap();
    assert_ne!(renewed["spec"]["renewTime"], created["spec"]["renewTime"]);
    assert_eq!(renewed["spec"]["acquireTime"], created["spec"]["acquireTime"]);

    // a stops (crash): b takes over once it has seen the same record for the lease duration.
    clock.advance(Duration::from_secs(14));
    assert!(!b.try_acquire_or_renew().await.unwrap(), "14 s unchanged is not expired");
    clock.advance(Duration::from_secs(2));
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&fake), (Some("pod-b".into()), 1));
    assert!(!a.try_acquire_or_renew().await.unwrap(), "a came back: it follows");

    // Two writers from the same read: the second gets 409 and loses.
    let stale: Lease = serde_json::from_value(fake.object("leases", "wakeway-leader").unwrap()).unwrap();
    assert!(b.try_acquire_or_renew().await.unwrap(), "b renews (new resourceVersion)");
    clock.advance(Duration::from_secs(60));
    assert!(!a.decide_on(Some(stale)).await.unwrap(), "a's write carried the old resourceVersion");
    assert_eq!(holder(&fake).0.as_deref(), Some("pod-b"));
    let rejected = fake.requests().into_iter().rfind(|r| r.method == "PUT").unwrap();
    assert!(rejected.body["metadata"]["resourceVersion"].is_string(), "every write is a compare-and-swap");

    // Release hands over at once.
    b.release().await.unwrap();
    assert_eq!(holder(&fake).0, None);
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&fake), (Some("pod-a".into()), 2));
    b.release().await.unwrap();
    assert_eq!(holder(&fake).0.as_deref(), Some("pod-a"), "releasing someone else's Lease does nothing");
}

#[tokio::test]
async fn run_leads_renews_and_releases_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::start(dir.path().to_path_buf()).await;
    let clock = Arc::new(wakeway_proxy::SystemClock);
    let lock =
        Arc::new(LeaseLock::new(fake.client(), "wakeway", "wakeway-leader", "pod-a", Duration::from_secs(3), clock));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (mut leading, task) = lock.run(shutdown);
    tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| *l)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let renewals = fake.requests().iter().filter(|r| r.method == "PUT").count();
    assert!(renewals >= 1, "renewed every lease_duration / 3");
    stop.send(true).unwrap();
    task.await.unwrap();
    assert!(!*leading.borrow());
    assert_eq!(holder(&fake).0, None, "released at shutdown");
}
