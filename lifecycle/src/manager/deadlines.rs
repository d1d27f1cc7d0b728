//! The sweep's deadline index: for each session, the earliest time the idle policy may have
//! something to do or say about it ([`Policy::next_deadlines`]), so a sweep visits only the
//! sessions due instead of decoding every record in the store (449 ms a sweep at 100,000
//! sessions before; see benches/README.md). The index only chooses whom to visit: the sweep loads
//! each of them, decides on the fresh record exactly as before, and indexes it again.
//!
//! An entry is a lower bound. Activity only moves a deadline later, so an entry computed before
//! some activity is at worst visited early (the policy says nothing, and the entry is computed
//! again). Only a new record moves a deadline earlier, and every record this replica writes or
//! reads from the store goes through [`Manager::observe`], which feeds this index and the usage
//! index from the same places. An entry is replaced only by a record at least as new (the usage
//! index's order: `accounted_until`, then version), so a read that raced a write cannot undo it.
//! What this replica cannot see (another replica's change whose notice was lost) is caught by a
//! full sweep over every record: when this replica becomes the sweep leader and every
//! [`super::FULL_SWEEP_SAFETY_NET`] with a shared store; on its own store, the list `recover`
//! reads at start fills the index (nothing else writes that store).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use wakeway_proxy::SessionId;

use super::Manager;
use crate::policy::{Deadlines, Policy, Seen};
use crate::session::Session;

/// Which of two records of a session is newer (as the usage index orders them): a write never
/// moves `accounted_until` back, and a record rebuilt after the store lost it counts from then.
type Order = (Option<DateTime<Utc>>, u64);

fn order_of(s: &Session) -> Order {
    (s.usage.accounted_until, s.version)
}

/// Every known session's next deadline, and the sessions by deadline.
#[derive(Debug, Default)]
pub(super) struct DeadlineIndex {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<SessionId, Entry>,
    /// The entries that have a deadline, earliest first.
    queue: BTreeSet<(DateTime<Utc>, SessionId)>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    order: Order,
    /// None: the policy has nothing for it until its record changes (asleep and kept, failed…).
    due: Option<DateTime<Utc>>,
}

impl DeadlineIndex {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Index `s` as due at `due`, unless a newer record of it is indexed already.
    pub(super) fn note(&self, s: &Session, due: Option<DateTime<Utc>>) {
        let id = s.id();
        let order = order_of(s);
        let mut table = self.table();
        if let Some(old) = table.entries.get(&id).copied() {
            if old.order > order {
                return;
            }
            if let Some(at) = old.due {
                table.queue.remove(&(at, id.clone()));
            }
        }
        if let Some(at) = due {
            table.queue.insert((at, id.clone()));
        }
        table.entries.insert(id, Entry { order, due });
    }

    /// Forget `id` (its record is gone).
    pub(super) fn remove(&self, id: &SessionId) {
        let mut table = self.table();
        if let Some(Entry { due: Some(at), .. }) = table.entries.remove(id) {
            table.queue.remove(&(at, id.clone()));
        }
    }

    /// The sessions due at `now`, earliest first.
    pub(super) fn due(&self, now: DateTime<Utc>) -> Vec<SessionId> {
        self.table().queue.iter().take_while(|(at, _)| *at <= now).map(|(_, id)| id.clone()).collect()
    }

    /// How many sessions are indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table().entries.len()
    }
}

/// When the sweep should next look at a session: the earlier of the policy's next action and, if
/// warnings are sent at all, its next warning. [`Manager::decide`] may act later than the policy
/// (the shared store's grace for activity): visiting at the policy's own time is early, which is
/// harmless, and needs no second statement of that grace here.
fn due_at(deadlines: Deadlines, warnings: bool) -> Option<DateTime<Utc>> {
    let warn = deadlines.warn.filter(|_| warnings);
    match (deadlines.act, warn) {
        (Some(a), Some(w)) => Some(a.min(w)),
        (a, w) => a.or(w),
    }
}

/// The activity a record itself carries (a lower bound of what the proxy has seen since).
fn recorded(s: &Session) -> Seen {
    Seen { last_activity: s.last_activity, last_interaction: s.last_interaction() }
}

/// The sweep's next look at `s`, given the activity seen of it.
fn next_look(
    policy: &Policy,
    s: &Session,
    seen: Seen,
    warnings: Option<(std::time::Duration, std::time::Duration)>,
) -> Option<DateTime<Utc>> {
    let (before_sleep, before_delete) = warnings.unwrap_or_default();
    due_at(policy.next_deadlines(s, seen, before_sleep, before_delete), warnings.is_some())
}

impl Manager {
    /// A record this replica wrote or read from the store: the usage index and the sweep's
    /// deadline index learn it (each keeps it only if it is the newest it has seen).
    pub(super) fn observe(&self, s: &Session) {
        self.inner.usage.observe(s);
        self.index_deadline(s);
    }

    /// Index `s`'s next deadline, with the activity this replica has seen of it.
    pub(super) fn index_deadline(&self, s: &Session) {
        let seen = self.runtime(&s.id()).map_or_else(|| recorded(s), |rt| self.seen(&rt, s));
        let lifecycle = &self.inner.config.lifecycle;
        let warnings =
            self.inner.notifier.enabled().then_some((lifecycle.warn_before_sleep, lifecycle.warn_before_delete));
        self.inner.deadlines.note(s, next_look(&self.inner.policy, s, seen, warnings));
    }
}

#[cfg(test)]
#[path = "deadlines_tests.rs"]
mod tests;
