//! The idle policy as a pure function of a session, its latest activity and "now": what the
//! sweep should do next. No I/O and no clock here, so 15 min / 24 h / 30 d are tested instantly.

use std::time::Duration;

use chrono::{DateTime, Utc};
use wakeway_config::Config;

use crate::session::{Session, State};

/// The durations the policy needs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub idle_timeout: Duration,
    pub sleep_to_delete: Duration,
    pub backup_retention: Duration,
    pub max_awake_with_open_tab: Duration,
}

impl From<&Config> for Policy {
    fn from(c: &Config) -> Self {
        Policy {
            idle_timeout: c.lifecycle.idle_timeout,
            sleep_to_delete: c.lifecycle.sleep_to_delete,
            backup_retention: c.lifecycle.backup_retention,
            max_awake_with_open_tab: c.lifecycle.max_awake_with_open_tab,
        }
    }
}

/// What the proxy has seen of a session (merged from the store and memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Latest activity of any kind that counts.
    pub last_activity: DateTime<Utc>,
    /// Latest interaction (not raw WebSocket traffic).
    pub last_interaction: DateTime<Utc>,
}

/// What to do with one session now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Idle for `idle_timeout`: stop the workspace.
    Sleep,
    /// Only raw WebSocket traffic for `max_awake_with_open_tab`: stop the workspace.
    SleepOpenTab,
    /// A stop was interrupted (crash): finish it.
    FinishSleep,
    /// Asleep for `sleep_to_delete`, deletion requested, a failed backup due for retry, or a
    /// deletion interrupted by a crash: back up (verified), then delete.
    BackUpAndDelete,
    /// Deleted longer ago than `backup_retention`: forget the record.
    Forget,
    /// A restore was interrupted (crash): finish it.
    FinishRestore,
}

/// A warning due now: what it is about and the deadline it announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warning {
    /// The session will be put to sleep at this time unless someone uses it.
    Sleep(DateTime<Utc>),
    /// The session will be backed up and deleted at this time unless someone uses it.
    Delete(DateTime<Utc>),
}

/// `t + d`, saturating at the last representable time: a deadline never overflows (config bounds
/// every duration, but a per-session override or a stored time may still be extreme).
pub fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).ok().and_then(|d| t.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating at the first representable time.
pub fn before(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).ok().and_then(|d| t.checked_sub_signed(d)).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Policy {
    /// The session's idle timeout: its override, or the configured one.
    pub fn idle_timeout(&self, s: &Session) -> Duration {
        s.policy.idle_timeout_ms.map_or(self.idle_timeout, Duration::from_millis)
    }

    /// The session's time asleep before deletion: its override, or the configured one.
    pub fn sleep_to_delete(&self, s: &Session) -> Duration {
        s.policy.sleep_to_delete_ms.map_or(self.sleep_to_delete, Duration::from_millis)
    }

    /// When a running session will be put to sleep if nothing happens.
    pub fn sleeps_at(&self, s: &Session, seen: Seen) -> Option<DateTime<Utc>> {
        let idle = after(seen.last_activity, self.idle_timeout(s));
        let cap = after(seen.last_interaction, self.max_awake_with_open_tab);
        (s.state == State::Running).then(|| idle.min(cap))
    }

    /// When a sleeping session will be backed up and deleted. A kept (pinned) session never is,
    /// unless its deletion was asked for explicitly.
    pub fn deletes_at(&self, s: &Session) -> Option<DateTime<Utc>> {
        if s.policy.keep && !s.delete_requested {
            return None;
        }
        match s.state {
            State::Sleeping if s.delete_requested => Some(s.updated_at),
            State::Sleeping => s.slept_at.map(|t| after(t, self.sleep_to_delete(s))),
            State::BackupFailed => s.next_backup_attempt,
            _ => None,
        }
    }

    /// The warning due for `s` at `now`, if any and not sent yet for this deadline.
    pub fn warning(
        &self,
        s: &Session,
        seen: Seen,
        now: DateTime<Utc>,
        before_sleep: Duration,
        before_delete: Duration,
    ) -> Option<Warning> {
        let mut windows = self.warning_windows(s, seen, before_sleep, before_delete).into_iter().flatten();
        windows.find(|(from, w)| now >= *from && now < w.at() && !w.sent(s)).map(|(_, w)| w)
    }

    /// The warnings `s` gets if nothing happens (sent or not), each with the time its window
    /// opens (it closes at the deadline it announces). `before_sleep` is capped at half the
    /// session's idle timeout, so a short timeout does not warn after every request.
    fn warning_windows(
        &self,
        s: &Session,
        seen: Seen,
        before_sleep: Duration,
        before_delete: Duration,
    ) -> [Option<(DateTime<Utc>, Warning)>; 2] {
        let lead = before_sleep.min(self.idle_timeout(s) / 2);
        let sleep =
            self.sleeps_at(s, seen).filter(|_| !lead.is_zero()).map(|at| (before(at, lead), Warning::Sleep(at)));
        let deletes = !before_delete.is_zero() && !s.delete_requested && s.state == State::Sleeping;
        let delete = self.deletes_at(s).filter(|_| deletes).map(|at| (before(at, before_delete), Warning::Delete(at)));
        [sleep, delete]
    }

    /// The next action for `s`, given its latest activity (store and in-memory, merged).
    pub fn decide(&self, s: &Session, seen: Seen, now: DateTime<Utc>) -> Action {
        let mut due = self.scheduled(s, seen).into_iter().flatten();
        due.find(|(at, _)| now >= *at).map_or(Action::Nothing, |(_, action)| action)
    }

    /// What the policy will do to `s` if nothing happens, and from when, in the order
    /// [`Policy::decide`] prefers them when several are due. The one statement of the rules, so
    /// the sweep's deadline index ([`Policy::next_deadlines`]) cannot disagree with `decide`.
    /// Steps a crash interrupted are due from the beginning of time (at once).
    fn scheduled(&self, s: &Session, seen: Seen) -> [Option<(DateTime<Utc>, Action)>; 2] {
        let at_once = DateTime::<Utc>::MIN_UTC;
        match s.state {
            State::Running => [
                Some((after(seen.last_activity, self.idle_timeout(s)), Action::Sleep)),
                Some((after(seen.last_interaction, self.max_awake_with_open_tab), Action::SleepOpenTab)),
            ],
            State::Stopping => [Some((at_once, Action::FinishSleep)), None],
            State::Sleeping | State::BackupFailed => [self.deletes_at(s).map(|t| (t, Action::BackUpAndDelete)), None],
            State::BackingUp | State::Deleting => [Some((at_once, Action::BackUpAndDelete)), None],
            State::Restoring => [Some((at_once, Action::FinishRestore)), None],
            State::Deleted => [s.deleted_at.map(|t| (after(t, self.backup_retention), Action::Forget)), None],
            _ => [None, None],
        }
    }

    /// The earliest times `decide` may act on `s` and `warning` may send something, if nothing
    /// happens meanwhile. Activity only moves them later, so times computed from older activity
    /// are safe lower bounds: before them, `decide` says `Nothing` and `warning` `None`.
    pub fn next_deadlines(
        &self,
        s: &Session,
        seen: Seen,
        before_sleep: Duration,
        before_delete: Duration,
    ) -> Deadlines {
        // A sleep warning already sent still counts: activity not in `seen` yet may move the sleep
        // to a deadline not warned of, whose window opens any time after this one. A deletion's
        // deadline moves only with the record.
        let pending = |w: &Warning| !matches!(w, Warning::Delete(_)) || !w.sent(s);
        let windows = self.warning_windows(s, seen, before_sleep, before_delete).into_iter().flatten();
        Deadlines {
            act: self.scheduled(s, seen).into_iter().flatten().map(|(at, _)| at).min(),
            warn: windows.filter(|(from, w)| *from < w.at() && pending(w)).map(|(from, _)| from).min(),
        }
    }
}

/// When the policy may next have something to say about a session (see
/// [`Policy::next_deadlines`]); `None`: never, unless the record changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// `decide` says `Nothing` before this.
    pub act: Option<DateTime<Utc>>,
    /// `warning` says `None` before this.
    pub warn: Option<DateTime<Utc>>,
}

impl Warning {
    /// The deadline the warning announces.
    pub fn at(self) -> DateTime<Utc> {
        match self {
            Warning::Sleep(at) | Warning::Delete(at) => at,
        }
    }

    /// Whether `s` records this warning as sent (once per deadline).
    fn sent(self, s: &Session) -> bool {
        match self {
            Warning::Sleep(at) => s.warned_sleep_for == Some(at),
            Warning::Delete(at) => s.warned_delete_for == Some(at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    const MIN: Duration = Duration::from_secs(60);

    fn policy() -> Policy {
        Policy::from(&Config::default())
    }

    fn seen(t: DateTime<Utc>) -> Seen {
        Seen { last_activity: t, last_interaction: t }
    }

    fn session(state: State, t0: DateTime<Utc>) -> Session {
        let mut s = Session::new(&SessionId::parse("abc12345").unwrap(), "u", "small", t0);
        s.state = state;
        s
    }

    #[test]
    fn extreme_durations_saturate_instead_of_overflowing() {
        let t0 = Utc::now();
        let mut p = policy();
        p.backup_retention = Duration::MAX;
        p.sleep_to_delete = Duration::MAX;
        let mut deleted = session(State::Deleted, t0);
        deleted.deleted_at = Some(t0);
        assert_eq!(p.decide(&deleted, seen(t0), DateTime::<Utc>::MAX_UTC - chrono::Duration::days(1)), Action::Nothing);
        let mut asleep = session(State::Sleeping, t0);
        asleep.slept_at = Some(t0);
        assert_eq!(p.deletes_at(&asleep), Some(DateTime::<Utc>::MAX_UTC));
        let warning = p.warning(&asleep, seen(t0), t0, 60 * MIN, 60 * MIN);
        assert_eq!(warning, None, "no warning for a deadline that never comes");
        assert_eq!(before(t0, Duration::MAX), DateTime::<Utc>::MIN_UTC);
    }

    #[test]
    fn a_running_session_sleeps_after_fifteen_idle_minutes_and_not_before() {
        let t0 = Utc::now();
        let s = session(State::Running, t0);
        let p = policy();
        assert_eq!(p.decide(&s, seen(t0), after(t0, 14 * MIN)), Action::Nothing);
        assert_eq!(p.decide(&s, seen(t0), after(t0, 15 * MIN)), Action::Sleep);
        // Activity 10 minutes in moves the deadline.
        let active = after(t0, 10 * MIN);
        assert_eq!(p.decide(&s, seen(active), after(t0, 20 * MIN)), Action::Nothing);
        assert_eq!(p.decide(&s, seen(active), after(t0, 25 * MIN)), Action::Sleep);
        assert_eq!(p.sleeps_at(&s, seen(active)), Some(after(t0, 25 * MIN)));
    }

    #[test]
    fn websocket_traffic_alone_keeps_a_session_awake_at_most_the_open_tab_cap() {
        let t0 = Utc::now();
        let s = session(State::Running, t0);
        let p = policy();
        let hours = |h: u64| Duration::from_secs(h * 3600);
        // WebSocket data a minute ago, the last interaction 7 h ago: still awake.
        let ws = Seen { last_activity: after(t0, hours(7) + 59 * MIN), last_interaction: after(t0, MIN) };
        assert_eq!(p.decide(&s, ws, after(t0, hours(8))), Action::Nothing);
        assert_eq!(p.decide(&s, ws, after(t0, hours(8) + MIN)), Action::SleepOpenTab);
        assert_eq!(p.sleeps_at(&s, ws), Some(after(t0, hours(8) + MIN)));
    }

    #[test]
    fn a_sleeping_session_is_deleted_after_a_day_with_backup_first() {
        let t0 = Utc::now();
        let mut s = session(State::Sleeping, t0);
        s.slept_at = Some(t0);
        let p = policy();
        assert_eq!(p.decide(&s, seen(t0), after(t0, 23 * 60 * MIN)), Action::Nothing);
        assert_eq!(p.decide(&s, seen(t0), after(t0, 24 * 60 * MIN)), Action::BackUpAndDelete);
        assert_eq!(p.deletes_at(&s), Some(after(t0, 24 * 60 * MIN)));
    }

    #[test]
    fn a_failed_backup_is_retried_when_due_and_interrupted_steps_resume() {
        let t0 = Utc::now();
        let mut s = session(State::BackupFailed, t0);
        s.next_backup_attempt = Some(after(t0, 5 * MIN));
        let p = policy();
        assert_eq!(p.decide(&s, seen(t0), after(t0, 4 * MIN)), Action::Nothing);
        assert_eq!(p.decide(&s, seen(t0), after(t0, 5 * MIN)), Action::BackUpAndDelete);
        for state in [State::BackingUp, State::Deleting] {
            assert_eq!(p.decide(&session(state, t0), seen(t0), t0), Action::BackUpAndDelete);
        }
        assert_eq!(p.decide(&session(State::Restoring, t0), seen(t0), t0), Action::FinishRestore);
        assert_eq!(p.decide(&session(State::Stopping, t0), seen(t0), t0), Action::FinishSleep);
    }

    #[test]
    fn deleted_records_are_forgotten_after_the_retention() {
        let t0 = Utc::now();
        let mut s = session(State::Deleted, t0);
        s.deleted_at = Some(t0);
        let p = policy();
        assert_eq!(p.decide(&s, seen(t0), after(t0, 29 * 24 * 60 * MIN)), Action::Nothing);
        assert_eq!(p.decide(&s, seen(t0), after(t0, 30 * 24 * 60 * MIN)), Action::Forget);
    }

    #[test]
    fn overrides_replace_the_configured_durations_and_keep_pins() {
        let t0 = Utc::now();
        let p = policy();
        let mut s = session(State::Running, t0);
        s.policy.idle_timeout_ms = Some(30 * 60 * 1000);
        assert_eq!(p.decide(&s, seen(t0), after(t0, 20 * MIN)), Action::Nothing, "30 min, not 15");
        assert_eq!(p.decide(&s, seen(t0), after(t0, 30 * MIN)), Action::Sleep);
        assert_eq!(p.sleeps_at(&s, seen(t0)), Some(after(t0, 30 * MIN)));

        let mut s = session(State::Sleeping, t0);
        s.slept_at = Some(t0);
        s.policy.sleep_to_delete_ms = Some(3 * 24 * 3600 * 1000);
        assert_eq!(p.decide(&s, seen(t0), after(t0, 48 * 60 * MIN)), Action::Nothing, "3 days, not 1");
        assert_eq!(p.decide(&s, seen(t0), after(t0, 72 * 60 * MIN)), Action::BackUpAndDelete);
        s.policy.keep = true;
        assert_eq!(p.deletes_at(&s), None);
        assert_eq!(p.decide(&s, seen(t0), after(t0, 1000 * 24 * 60 * MIN)), Action::Nothing, "kept");
        s.delete_requested = true;
        assert_eq!(p.decide(&s, seen(t0), after(t0, MIN)), Action::BackUpAndDelete, "an explicit DELETE still deletes");
    }

    #[test]
    fn warnings_come_once_per_deadline_before_it() {
        let t0 = Utc::now();
        let p = policy();
        let two = 2 * MIN;
        let hour = 60 * MIN;
        let mut s = session(State::Running, t0);
        assert_eq!(p.warning(&s, seen(t0), after(t0, 12 * MIN), two, hour), None, "3 min before: too early");
        let at = after(t0, 15 * MIN);
        assert_eq!(p.warning(&s, seen(t0), after(t0, 13 * MIN), two, hour), Some(Warning::Sleep(at)));
        s.warned_sleep_for = Some(at);
        assert_eq!(p.warning(&s, seen(t0), after(t0, 14 * MIN), two, hour), None, "sent once");
        // Activity moves the deadline: a new warning when the new one nears.
        let later = after(t0, 10 * MIN);
        assert_eq!(
            p.warning(&s, seen(later), after(t0, 23 * MIN), two, hour),
            Some(Warning::Sleep(after(t0, 25 * MIN)))
        );
        // A 1 s idle timeout warns at most 0.5 s before.
        s.policy.idle_timeout_ms = Some(1000);
        let now = t0 + chrono::Duration::milliseconds(400);
        assert_eq!(p.warning(&s, seen(t0), now, two, hour), None);

        let mut s = session(State::Sleeping, t0);
        s.slept_at = Some(t0);
        let deletes = after(t0, 24 * 60 * MIN);
        assert_eq!(p.warning(&s, seen(t0), after(t0, 22 * 60 * MIN), two, hour), None);
        assert_eq!(p.warning(&s, seen(t0), after(t0, 23 * 60 * MIN), two, hour), Some(Warning::Delete(deletes)));
        s.warned_delete_for = Some(deletes);
        assert_eq!(p.warning(&s, seen(t0), after(t0, 23 * 60 * MIN + MIN), two, hour), None);
        s.warned_delete_for = None;
        s.policy.keep = true;
        assert_eq!(p.warning(&s, seen(t0), after(t0, 23 * 60 * MIN), two, hour), None, "a kept session is not deleted");
        assert_eq!(p.warning(&s, seen(t0), after(t0, 23 * 60 * MIN), two, Duration::ZERO), None);
    }

    #[test]
    fn nothing_happens_to_sessions_in_flight() {
        let t0 = Utc::now();
        let later = after(t0, 1000 * 60 * MIN);
        for state in [State::Creating, State::Starting, State::Waking, State::Resizing, State::Failed] {
            assert_eq!(policy().decide(&session(state, t0), seen(t0), later), Action::Nothing, "{state:?}");
        }
    }
}
