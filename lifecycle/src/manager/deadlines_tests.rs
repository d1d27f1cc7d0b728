//! The deadline index against a full scan: over a random population (every state, overrides,
//! kept sessions, requested deletions, failed backups, restores in flight, warnings already
//! sent) and random clock advances, activity the index is not told of, writes, stale reads and
//! the sweep's own actions, visiting only the sessions due decides exactly what visiting every
//! session does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wakeway_config::Config;

use super::{DeadlineIndex, next_look, recorded};
use crate::policy::{Action, Policy, Seen, Warning};
use crate::session::{RestoreOp, Session, SessionId, State};

const WARNINGS: Option<(Duration, Duration)> = Some((Duration::from_secs(120), Duration::from_secs(3600)));

fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

/// One session as a replica holds it: the stored record, the activity seen of it (possibly newer
/// than the record and than what the index was told), and an older record a slow read may bring.
struct Held {
    record: Session,
    seen: Seen,
    older: Option<Session>,
}

/// A replica's view of the store, its deadline index, and its clock.
struct World {
    policy: Policy,
    now: DateTime<Utc>,
    held: BTreeMap<SessionId, Held>,
    index: DeadlineIndex,
    rng: StdRng,
    /// How often each decision was made (the test must reach every kind).
    made: BTreeMap<String, usize>,
    /// Warnings are sent (a webhook is configured), with these leads.
    warnings: Option<(Duration, Duration)>,
}

impl World {
    fn new(seed: u64, sessions: usize, warnings: Option<(Duration, Duration)>) -> World {
        let now = DateTime::parse_from_rfc3339("2026-03-01T08:00:00Z").unwrap().with_timezone(&Utc);
        let mut w = World {
            policy: Policy::from(&Config::default()),
            now,
            held: BTreeMap::new(),
            index: DeadlineIndex::default(),
            rng: StdRng::seed_from_u64(seed),
            made: BTreeMap::new(),
            warnings,
        };
        for i in 0..sessions {
            w.add(i);
        }
        w
    }

    fn ago(&mut self, max_minutes: i64) -> DateTime<Utc> {
        self.now - minutes(self.rng.random_range(0..max_minutes))
    }

    /// A random session, indexed as a start-up list would (from its record's own activity, or
    /// with the activity in memory).
    fn add(&mut self, i: usize) {
        let id = SessionId::parse(&format!("{i:08x}")).unwrap();
        let tier = ["small", "large"][self.rng.random_range(0..2)];
        let mut s = Session::new(&id, "ada@example.com", tier, self.ago(60 * 24 * 60));
        s.state = State::ALL[self.rng.random_range(0..State::ALL.len())];
        s.last_activity = self.ago(60 * 24 * 2);
        s.last_interaction =
            self.rng.random_bool(0.7).then(|| s.last_activity - minutes(self.rng.random_range(0..600)));
        s.slept_at = self.rng.random_bool(0.8).then(|| self.ago(60 * 24 * 3));
        s.deleted_at = (s.state == State::Deleted && self.rng.random_bool(0.9)).then(|| self.ago(60 * 24 * 40));
        s.next_backup_attempt =
            (s.state == State::BackupFailed).then(|| self.now + minutes(self.rng.random_range(-30..90)));
        s.restore = (s.state == State::Restoring).then(|| restore_op(self.now));
        s.version = self.rng.random_range(1..50);
        s.usage.accounted_until = Some(self.ago(600));
        self.shuffle_policy(&mut s);
        if self.rng.random_bool(0.1) {
            // Only WebSocket traffic since an interaction 8 h ago: the open-tab cap comes first.
            s.state = State::Running;
            s.last_activity = self.ago(10);
            s.last_interaction = Some(s.last_activity - minutes(8 * 60 - self.rng.random_range(0..10)));
        }
        let mut seen = recorded(&s);
        if self.rng.random_bool(0.4) {
            seen.last_activity += minutes(self.rng.random_range(0..30));
        }
        // Warned for the deadline the record's own activity gives (activity since may move it).
        if self.rng.random_bool(0.3) {
            s.warned_sleep_for = self.policy.sleeps_at(&s, recorded(&s));
        }
        if self.rng.random_bool(0.3) {
            s.warned_delete_for = self.policy.deletes_at(&s);
        }
        let told = if self.rng.random_bool(0.5) { recorded(&s) } else { seen };
        self.index.note(&s, next_look(&self.policy, &s, told, self.warnings));
        self.held.insert(id, Held { record: s, seen, older: None });
    }

    /// Random per-session overrides, pins and requested deletions.
    fn shuffle_policy(&mut self, s: &mut Session) {
        s.policy.keep = self.rng.random_bool(0.15);
        s.policy.idle_timeout_ms = self.rng.random_bool(0.2).then(|| self.rng.random_range(1_000..7_200_000));
        s.policy.sleep_to_delete_ms = self.rng.random_bool(0.2).then(|| self.rng.random_range(60_000..259_200_000));
        s.delete_requested = self.rng.random_bool(0.1);
    }

    /// The warning due for `s` now, if warnings are sent.
    fn warning(&self, s: &Session, seen: Seen) -> Option<Warning> {
        let (before_sleep, before_delete) = self.warnings?;
        self.policy.warning(s, seen, self.now, before_sleep, before_delete)
    }

    /// What a sweep decides for `ids` now: each action, or the warning when there is none.
    fn decisions<'a>(&self, ids: impl Iterator<Item = &'a SessionId>) -> BTreeSet<(SessionId, String)> {
        let mut out = BTreeSet::new();
        for id in ids {
            let Some(h) = self.held.get(id) else { continue };
            let action = self.policy.decide(&h.record, h.seen, self.now);
            let warning = self.warning(&h.record, h.seen);
            match (action, warning) {
                (Action::Nothing, None) => {}
                (Action::Nothing, Some(w)) => _ = out.insert((id.clone(), format!("warn {w:?}"))),
                (a, _) => _ = out.insert((id.clone(), format!("{a:?}"))),
            }
        }
        out
    }

    /// One sweep: a full scan and the index decide the same; then the index's visits act.
    fn sweep(&mut self) {
        let full = self.decisions(self.held.keys());
        let due = self.index.due(self.now);
        let indexed = self.decisions(due.iter());
        let missed: Vec<_> = full.difference(&indexed).collect();
        let extra: Vec<_> = indexed.difference(&full).collect();
        assert!(missed.is_empty() && extra.is_empty(), "at {}: the index missed {missed:?}, added {extra:?}", self.now);
        for (_, what) in &full {
            *self.made.entry(what.split('(').next().unwrap().to_string()).or_default() += 1;
        }
        for id in due {
            self.visit(&id);
        }
    }

    /// What the sweep does to a session it visits: acts, warns, or indexes it again.
    fn visit(&mut self, id: &SessionId) {
        let Some(h) = self.held.get(id) else { return self.index.remove(id) };
        let (mut s, seen) = (h.record.clone(), h.seen);
        let warning = self.warning(&s, seen);
        match self.policy.decide(&s, seen, self.now) {
            Action::Nothing => {
                self.index.note(&s, next_look(&self.policy, &s, seen, self.warnings));
                match warning {
                    Some(Warning::Sleep(at)) => s.warned_sleep_for = Some(at),
                    Some(Warning::Delete(at)) => s.warned_delete_for = Some(at),
                    None => return,
                }
            }
            Action::Sleep | Action::SleepOpenTab | Action::FinishSleep | Action::FinishRestore => {
                s.state = State::Sleeping;
                s.slept_at = Some(self.now);
                s.restore = None;
            }
            Action::BackUpAndDelete if self.rng.random_bool(0.3) => {
                s.state = State::BackupFailed;
                s.next_backup_attempt = Some(self.now + minutes(self.rng.random_range(1..60)));
            }
            Action::BackUpAndDelete => {
                s.state = State::Deleted;
                s.deleted_at = Some(self.now);
            }
            Action::Forget => {
                self.held.remove(id);
                return self.index.remove(id);
            }
        }
        self.write(s);
    }

    /// A write of `s` (as `Manager::save`): a newer record, which the index is told of.
    fn write(&mut self, mut s: Session) {
        s.version += 1;
        s.usage.accounted_until = Some(self.now);
        let h = self.held.get_mut(&s.id()).expect("a held session");
        self.index.note(&s, next_look(&self.policy, &s, h.seen, self.warnings));
        h.older = Some(std::mem::replace(&mut h.record, s));
    }

    /// Between sweeps: the clock moves, activity arrives in memory only, and some records are
    /// written (checkpoints, wakes, deletions asked, overrides, crashes mid-step) or read stale.
    fn meanwhile(&mut self) {
        let spans = [1, 1, 1, 1, 1, 1, 10, 10, 600, 60 * 24 * 5].map(minutes);
        let step = spans[self.rng.random_range(0..spans.len())];
        self.now += chrono::Duration::milliseconds(self.rng.random_range(0..step.num_milliseconds()));
        let ids: Vec<SessionId> = self.held.keys().cloned().collect();
        for id in ids {
            if self.rng.random_bool(0.1) {
                // Now, or a little later than before (a deadline moved by less than a warning's lead).
                let nudge = chrono::Duration::milliseconds(self.rng.random_range(0..90_000));
                let h = self.held.get_mut(&id).unwrap();
                let at =
                    if self.rng.random_bool(0.5) { self.now } else { (h.seen.last_activity + nudge).min(self.now) };
                h.seen.last_activity = h.seen.last_activity.max(at);
                if self.rng.random_bool(0.5) {
                    h.seen.last_interaction = h.seen.last_interaction.max(at);
                }
            }
            if self.rng.random_bool(0.05) {
                self.change(&id);
            }
            if self.rng.random_bool(0.05)
                && let Some(older) = self.held[&id].older.clone()
            {
                self.index.note(&older, next_look(&self.policy, &older, recorded(&older), self.warnings));
            }
        }
    }

    /// A random write of `id`'s record by something other than the sweep.
    fn change(&mut self, id: &SessionId) {
        let h = &self.held[id];
        let (mut s, seen) = (h.record.clone(), h.seen);
        match self.rng.random_range(0..6) {
            0 => s.last_activity = seen.last_activity,
            1 if !matches!(s.state, State::Deleted | State::Deleting) => {
                s.state = State::Running;
                s.awake_since = Some(self.now);
                let h = self.held.get_mut(id).unwrap();
                h.seen = Seen { last_activity: self.now, last_interaction: self.now };
            }
            2 => s.delete_requested = true,
            3 => self.shuffle_policy(&mut s),
            4 => {
                s.state =
                    [State::Stopping, State::BackingUp, State::Deleting, State::Restoring][self.rng.random_range(0..4)];
                s.restore = (s.state == State::Restoring).then(|| restore_op(self.now));
            }
            _ => s.warned_sleep_for = None,
        }
        self.write(s);
    }
}

fn restore_op(now: DateTime<Utc>) -> RestoreOp {
    RestoreOp { backup: "b".into(), safety_backup: None, fresh: false, skip_escaping_symlinks: false, started_at: now }
}

#[test]
fn visiting_only_the_sessions_due_decides_what_a_full_scan_decides() {
    let mut made: BTreeMap<String, usize> = BTreeMap::new();
    for (seed, warnings) in [(19, WARNINGS), (20, WARNINGS), (21, WARNINGS), (22, None), (23, None)] {
        let mut w = World::new(seed, 300, warnings);
        for step in 0..400 {
            w.meanwhile();
            if step % 25 == 0 {
                w.add(1000 + step);
            }
            w.sweep();
        }
        assert_eq!(w.index.len(), w.held.len(), "forgotten sessions leave the index");
        for (kind, n) in w.made {
            *made.entry(kind).or_default() += n;
        }
    }
    // Every kind of decision was compared, not only "nothing".
    let kinds = ["Sleep", "SleepOpenTab", "FinishSleep", "BackUpAndDelete", "Forget", "FinishRestore"];
    for kind in kinds.iter().chain(&["warn Sleep", "warn Delete"]) {
        assert!(made.get(*kind).is_some_and(|n| *n > 0), "never decided {kind}: {made:?}");
    }
}

#[test]
fn a_stale_record_never_replaces_a_newer_one_and_a_removed_session_is_never_due() {
    let policy = Policy::from(&Config::default());
    let now = DateTime::parse_from_rfc3339("2026-03-01T08:00:00Z").unwrap().with_timezone(&Utc);
    let index = DeadlineIndex::default();
    let mut s = Session::new(&SessionId::parse("0a1b2c3d").unwrap(), "ada@example.com", "small", now);
    s.state = State::Stopping;
    s.version = 2;
    index.note(&s, next_look(&policy, &s, recorded(&s), None));
    let mut older = s.clone();
    older.version = 1;
    older.state = State::Sleeping;
    older.policy.keep = true;
    index.note(&older, next_look(&policy, &older, recorded(&older), None));
    assert_eq!(index.due(now), vec![s.id()], "the stopping record still rules");
    index.remove(&s.id());
    assert!(index.due(DateTime::<Utc>::MAX_UTC).is_empty());
}

#[test]
fn a_sleep_warning_sent_does_not_hide_the_next_one_that_activity_not_indexed_brings() {
    let policy = Policy::from(&Config::default());
    let t0 = DateTime::parse_from_rfc3339("2026-03-01T08:00:00Z").unwrap().with_timezone(&Utc);
    let (before_sleep, before_delete) = WARNINGS.unwrap();
    let index = DeadlineIndex::default();
    let mut s = Session::new(&SessionId::parse("0a1b2c3d").unwrap(), "ada@example.com", "small", t0);
    s.state = State::Running;
    s.last_activity = t0;
    // Warned at 13 min for the sleep at 15 min, recorded and indexed.
    let first = policy.warning(&s, recorded(&s), t0 + minutes(13), before_sleep, before_delete);
    assert_eq!(first, Some(Warning::Sleep(t0 + minutes(15))));
    s.warned_sleep_for = Some(t0 + minutes(15));
    index.note(&s, next_look(&policy, &s, recorded(&s), WARNINGS));
    // Activity 30 s later, in memory only: the sleep moves to 15:30, not warned of yet.
    let seen = Seen { last_activity: t0 + chrono::Duration::seconds(30), last_interaction: t0 };
    let now = t0 + minutes(14);
    let second = policy.warning(&s, seen, now, before_sleep, before_delete);
    assert_eq!(second, Some(Warning::Sleep(t0 + minutes(15) + chrono::Duration::seconds(30))));
    assert_eq!(index.due(now), vec![s.id()], "visited while that warning is due");
}
