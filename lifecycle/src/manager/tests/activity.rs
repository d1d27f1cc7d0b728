//! Activity across replicas on a shared store, with a manual clock: the sweep leader hears of a
//! session in use again on another replica at once (a quiet spell ended) or by that replica's
//! next checkpoint (it was in use lately), so it puts a session to sleep a small margin after
//! its idle timeout instead of a whole checkpoint interval later, and never before.

use wakeway_proxy::{ActivitySource, SessionId};

use super::usage::MINUTE;
use super::{Rig, rig};
use crate::manager::Manager;
use crate::session::State;

/// Replicas `a` (leading the sweep) and `b` on one store, and a session `a` woke just now.
async fn two_replicas() -> (Rig, Manager, Manager, SessionId) {
    let rig = rig(true);
    let a = rig.replica("a");
    let id = a.create("ada@example.com").await.unwrap().id();
    let b = rig.replica("b");
    b.recover().await.unwrap();
    a.wake(&id, ActivitySource::Http).await.unwrap();
    b.checkpoint().await; // b has heard of a's wake
    a.sweep().await.unwrap();
    assert_eq!(rig.store.holder("sweep").as_deref(), Some("a"), "a leads the sweep");
    (rig, a, b, id)
}

/// Someone uses `id` through replica `m` now; whether that ended a quiet spell.
fn use_through(m: &Manager, id: &SessionId) -> bool {
    m.handle(id).unwrap().activity.touch(m.now().timestamp_millis(), ActivitySource::Http)
}

#[tokio::test]
async fn the_leader_sleeps_a_session_two_seconds_after_its_idle_timeout_counting_every_replicas_activity() {
    // Defaults: idle_timeout 15 min, checkpoint_interval 30 s: a quiet spell is 14 min, the
    // leader's grace 2 s.
    let (rig, a, b, id) = two_replicas().await;
    let state = || rig.store.record(id.as_str()).state;

    // 14.5 quiet minutes, then someone uses it through b: published at once (no checkpoint).
    rig.advance(14 * MINUTE + 30);
    assert!(use_through(&b, &id), "a quiet spell ended");
    assert!(!use_through(&b, &id), "told once");
    b.note_active_again(&id);
    b.publish_active_again().await;
    rig.advance(MINUTE); // past a's own idle deadline
    a.sweep().await.unwrap();
    assert_eq!(state(), State::Running, "a knows of b's activity");

    // b's activity was at 14:30; nothing since. At 29:31 a's sweep still waits (margin) …
    rig.advance(14 * MINUTE + 1);
    a.sweep().await.unwrap();
    assert_eq!(state(), State::Running, "1 s past the idle timeout: within the margin");
    // … and at 29:33 it sleeps it (before: not until 30 s past the idle timeout).
    rig.advance(2);
    a.sweep().await.unwrap();
    assert_eq!(state(), State::Sleeping, "2 s past the idle timeout");
}

#[tokio::test]
async fn activity_soon_after_other_activity_reaches_the_leader_by_the_next_checkpoint_in_time() {
    let (rig, a, b, id) = two_replicas().await;
    let state = || rig.store.record(id.as_str()).state;

    // Used through b at 1:00, no quiet spell: nothing published until b's next checkpoint.
    rig.advance(MINUTE);
    assert!(!use_through(&b, &id), "in use a minute ago: not a quiet spell");
    rig.advance(30);
    b.checkpoint().await;
    // a's own deadline (15:02) passes without a sleep; b's (16:02) does not.
    rig.advance(14 * MINUTE);
    a.sweep().await.unwrap();
    assert_eq!(state(), State::Running, "b's checkpoint told a");
    rig.advance(MINUTE + 3);
    a.sweep().await.unwrap();
    assert_eq!(state(), State::Sleeping);
}

#[tokio::test]
async fn an_api_wake_of_a_running_session_after_a_quiet_spell_reaches_the_leader_at_once() {
    let (rig, a, b, id) = two_replicas().await;
    rig.advance(14 * MINUTE + 30);
    // Already running: no record is written, only activity counted (and published).
    b.wake_in_background(&id, ActivitySource::ApiWake).await.unwrap();
    b.publish_active_again().await;
    rig.advance(MINUTE);
    a.sweep().await.unwrap();
    assert_eq!(rig.store.record(id.as_str()).state, State::Running, "a knows of the wake through b");
}
