//! Usage accounting with a manual clock: a session's whole life to the second and the cent, and
//! two replicas on one store with a crash — nothing counted twice, nothing missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use wakeway_proxy::{ActivitySource, ProxyStats, SessionId};

use super::fakes::ScriptedBackend;
use super::{Rig, rig, rig_with};
use crate::manager::{Manager, SleepReason};
use crate::session::State;
use crate::store::Store;
use crate::usage::{Bucket, GroupBy, Query, Report};

pub(super) const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;

impl Rig {
    pub(super) fn advance(&self, seconds: u64) {
        self.clock.advance(Duration::from_secs(seconds));
    }

    /// A person uses the workspace now.
    fn touch(&self, id: &SessionId) {
        let now = self.manager.now().timestamp_millis();
        self.manager.handle(id).unwrap().activity.touch(now, ActivitySource::Http);
    }

    /// Another replica on the same store (its own backend: its own processes).
    pub(super) fn replica(&self, name: &str) -> Manager {
        let mut config = self.manager.config().clone();
        config.store.replica_id = Some(name.into());
        Manager::new(
            Arc::new(config),
            self.store.clone(),
            Arc::new(ScriptedBackend::default()),
            self.clock.clone(),
            Arc::new(ProxyStats::default()),
            tokio::runtime::Handle::current(),
        )
    }
}

/// `/usage` for everyone over a wide span of days, grouped by `group_by`, as of `m`'s clock.
async fn usage(m: &Manager, group_by: GroupBy) -> Report {
    let day = |d: &str| d.parse::<NaiveDate>().unwrap();
    let q = Query { from: day("2025-01-01"), to: day("2026-12-31"), user_id: None, group_by };
    m.usage(&q).await.unwrap()
}

/// Milliseconds the record counted (closed intervals only) by bucket.
fn counted(m: &Rig, id: &SessionId) -> BTreeMap<Bucket, u64> {
    let mut by = BTreeMap::new();
    for day in m.store.record(id.as_str()).usage.days.values() {
        for (bucket, tiers) in &day.ms {
            *by.entry(*bucket).or_default() += tiers.values().sum::<u64>();
        }
    }
    by
}

#[tokio::test]
async fn a_sessions_life_gives_the_exact_seconds_and_cost() {
    let rig = rig_with(false, |c| c.lifecycle.sleep_to_delete = Duration::from_secs(48 * HOUR));
    let m = &rig.manager;
    let created = m.now();
    let id = m.create("ada@example.com").await.unwrap().id();
    m.wake(&id, ActivitySource::ApiWake).await.unwrap();

    // 20 minutes of use, then the idle timeout (15 min) passes and the sweep puts it to sleep.
    for _ in 0..20 {
        rig.advance(MINUTE);
        rig.touch(&id);
    }
    rig.advance(15 * MINUTE);
    m.sweep().await.unwrap();
    assert_eq!(rig.store.record(id.as_str()).state, State::Sleeping);

    // Two days asleep: the policy backs it up and deletes it.
    rig.advance(48 * HOUR);
    m.sweep().await.unwrap();
    let s = rig.store.record(id.as_str());
    assert_eq!(s.state, State::Deleted);
    assert_eq!(s.deleted_at, Some(created + chrono::Duration::seconds((35 * MINUTE + 48 * HOUR) as i64)));

    let ms = counted(&rig, &id);
    assert_eq!(ms[&Bucket::Running], 35 * MINUTE * 1000, "20 min used + 15 min idle, running small");
    assert_eq!(ms[&Bucket::Sleeping], 48 * HOUR * 1000, "two days asleep");
    assert_eq!(ms.get(&Bucket::Deleted), None, "nothing since the deletion yet");
    let metrics = m.render_metrics();
    assert!(metrics.contains("wakeway_state_seconds_total{state=\"running\",tier=\"small\"} 2100"), "{metrics}");
    assert!(metrics.contains("wakeway_state_seconds_total{state=\"sleeping\",tier=\"small\"} 172800"), "{metrics}");

    // An hour after the deletion, only the backup is paid for.
    rig.advance(HOUR);
    let report = usage(m, GroupBy::User).await;
    let t = &report.total;
    assert_eq!(t.hours(Bucket::Running), 35.0 / 60.0);
    assert_eq!(t.hours(Bucket::Sleeping), 48.0);
    assert_eq!(t.hours(Bucket::Deleted), 1.0);
    let cost = 35.0 / 60.0 * 0.05 + 48.0 * 0.001 + 1.0 * 0.0001;
    assert!((t.cost - cost).abs() < 1e-9, "{} != {cost}", t.cost);
    let baseline = (35.0 / 60.0 + 48.0) * 0.05;
    assert!((t.baseline_cost - baseline).abs() < 1e-9, "always-on from creation to deletion: {}", t.baseline_cost);
    assert!((t.saved() - (baseline - cost)).abs() < 1e-9);
    assert!((t.saved_percent() - 100.0 * (baseline - cost) / baseline).abs() < 1e-9);
    assert_eq!(t.wakes.iter().collect::<Vec<_>>(), [("api-wake", 1)]);
    assert_eq!(t.sleeps.iter().collect::<Vec<_>>(), [("idle", 1)]);
    assert_eq!(report.rows.len(), 1, "one user");

    // Per UTC day: the days (split at midnight) add up to the total; there are three of them
    // (created at 08:53 on the first day, deleted at 09:28 two days later, an hour after that).
    let days = usage(m, GroupBy::Day).await;
    assert_eq!(days.rows.len(), 3);
    let sum: u64 = days.rows.iter().map(|(_, r)| r.ms.iter().sum::<u64>()).sum();
    assert_eq!(sum, (35 * MINUTE + 49 * HOUR) * 1000);
    let costs: f64 = days.rows.iter().map(|(_, r)| r.cost).sum();
    assert!((costs - cost).abs() < 1e-9);
}

#[tokio::test]
async fn a_deleted_sessions_usage_outlives_its_record_and_its_backup_is_paid_for_until_retention() {
    let rig = rig_with(false, |c| c.lifecycle.sleep_to_delete = Duration::from_secs(24 * HOUR));
    let m = &rig.manager;
    let id = m.create("ada@example.com").await.unwrap().id();
    m.wake(&id, ActivitySource::ApiWake).await.unwrap();
    rig.advance(HOUR);
    m.sleep(&id, SleepReason::Api).await.unwrap();
    rig.advance(24 * HOUR);
    m.sweep().await.unwrap();
    assert_eq!(rig.store.record(id.as_str()).state, State::Deleted);

    // Past backup_retention (30 days) the record is forgotten; its usage is not.
    rig.advance(31 * 24 * HOUR);
    let before = usage(m, GroupBy::Session).await;
    m.sweep().await.unwrap();
    assert!(rig.store.get(id.as_str()).await.unwrap().is_none(), "the record is forgotten");
    let after = usage(m, GroupBy::Session).await;
    assert_eq!(after.total, before.total);
    assert_eq!(after.rows.len(), 1);
    let t = &after.total;
    assert_eq!((t.hours(Bucket::Running), t.hours(Bucket::Sleeping)), (1.0, 24.0));
    assert_eq!(t.hours(Bucket::Deleted), 30.0 * 24.0, "the backup is paid for until backup_retention, not after");
}

/// Everything counted (the records' days and what each session has been since), in ms.
async fn everything(m: &Manager) -> u64 {
    usage(m, GroupBy::Session).await.total.ms.iter().sum()
}

#[tokio::test]
async fn two_replicas_and_a_crash_count_every_second_once() {
    let rig = rig(true);
    let a = rig.replica("a");
    let created = a.now();
    let id = a.create("ada@example.com").await.unwrap().id();
    let b = rig.replica("b");
    b.recover().await.unwrap();

    // A wakes it; 10 minutes later B puts it to sleep; 20 minutes later A wakes it again.
    a.wake(&id, ActivitySource::Http).await.unwrap();
    rig.advance(10 * MINUTE);
    b.sleep(&id, SleepReason::Api).await.unwrap();
    rig.advance(20 * MINUTE);
    a.wake(&id, ActivitySource::ApiWake).await.unwrap();
    let ms = counted(&rig, &id);
    assert_eq!(ms[&Bucket::Running], 10 * MINUTE * 1000, "each replica counted from where the other stopped");
    assert_eq!(ms[&Bucket::Sleeping], 20 * MINUTE * 1000);

    // A write that loses a compare-and-set counts nothing: B's write landed first (with its count).
    rig.advance(5 * MINUTE);
    let at = a.now();
    rig.store.before_next_put(move |s| {
        s.usage.account(at, crate::usage::Since::of(s));
        s.last_error = Some("written by b".into());
    });
    assert!(a.sleep(&id, SleepReason::Api).await.is_err(), "the conflict is reported");
    assert_eq!(counted(&rig, &id)[&Bucket::Running], 15 * MINUTE * 1000, "5 more minutes, once");
    a.sleep(&id, SleepReason::Api).await.unwrap();
    assert_eq!(counted(&rig, &id)[&Bucket::Running], 15 * MINUTE * 1000, "the retry counts from B's write");

    // A wakes it and crashes (dropped: no checkpoint, no sleep). Two hours later B takes over.
    a.wake(&id, ActivitySource::Http).await.unwrap();
    rig.advance(MINUTE);
    drop(a);
    rig.advance(2 * HOUR);
    let elapsed = |m: &Manager| (m.now() - created).num_milliseconds() as u64;
    assert_eq!(everything(&b).await, elapsed(&b), "before anyone writes, the reader counts the gap");
    b.sleep(&id, SleepReason::Crashed).await.unwrap();
    rig.advance(HOUR);
    assert_eq!(everything(&b).await, elapsed(&b), "no second counted twice or missing");
    let ms = counted(&rig, &id);
    assert_eq!(ms[&Bucket::Running], (15 * MINUTE + MINUTE + 2 * HOUR) * 1000, "the crash's gap is counted");
    let wakes: u64 = usage(&b, GroupBy::User).await.total.wakes.sum();
    assert_eq!(wakes, 3, "three wakes, each once");
}
