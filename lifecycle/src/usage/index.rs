//! The usage index: every session's counted usage in a compact form, kept in memory and current
//! with every record this replica writes or reads, so `GET /usage` sums arrays instead of
//! decoding every record from the store (100,000 sessions × 30 days: tens of milliseconds
//! instead of seconds; see `benches/src/usage.rs`).
//!
//! A session's entry is replaced only by a newer record: newer is a later `accounted_until`
//! (which a write never moves back), then a higher version. So a list read before a write
//! cannot undo what that write told the index, and a record rebuilt after the store lost it
//! (counting again from its rebuild) replaces the old entry. Entries are never removed: a
//! forgotten session's last record is what it is counted by (as `usage/forgotten/<uuid>` in the
//! store), and that is the record the index already holds.
//!
//! Prices are applied when an entry is made (they are fixed for a process's life), so a day is
//! its milliseconds by bucket and its cost; wakes and sleeps are counted by interned name.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};

use super::{Bucket, Counts, GroupBy, Prices, Query, Report, RowKey, Totals};
use crate::session::Session;

/// One UTC day of a session: milliseconds by bucket (a day has at most 86,400,000) and cost.
#[derive(Debug, Clone, Copy)]
struct DayUse {
    day: i32,
    ms: [u32; 3],
    cost: f64,
}

/// Wakes (by source) or sleeps (by reason) of one day: 12 bytes, as a report reads them all.
#[derive(Debug, Clone, Copy)]
struct Tally {
    day: i32,
    /// `2 × name + wake?` (see [`Acc::tallies`]).
    slot: u32,
    n: u32,
}

/// A session as the index keeps it.
#[derive(Debug)]
struct Entry {
    /// Which record this is (see the module's comment).
    order: (Option<DateTime<Utc>>, u64),
    /// The user, as a number (`UsageIndex::users`).
    user: u32,
    uuid: Arc<str>,
    created_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    /// Counted in `days` until here; from here on the session is `since` (bucket, price per hour).
    accounted_until: Option<DateTime<Utc>>,
    since: Option<(Bucket, f64)>,
    days: Box<[DayUse]>,
    tallies: Box<[Tally]>,
    /// Everything in `days` and `tallies` summed, for a window that covers them all.
    whole: Whole,
}

/// A session's counted days and tallies summed, kept in its entry: a report whose window covers
/// them all (a session younger than the window) adds this instead of walking its days, which
/// are elsewhere in memory (the walk is what a report spends its time on).
#[derive(Debug, Clone, Copy, Default)]
struct Whole {
    /// The first and last day counted (days or tallies).
    first: i32,
    last: i32,
    ms: [u64; 3],
    cost: f64,
    /// Tallies by slot, when there are at most [`WHOLE_TALLIES`] slots (else `None`: walk them).
    tallies: Option<[(u32, u32); WHOLE_TALLIES]>,
}

const WHOLE_TALLIES: usize = 4;

impl Whole {
    fn of(days: &[DayUse], tallies: &[Tally]) -> Whole {
        let day_numbers = days.iter().map(|d| d.day).chain(tallies.iter().map(|t| t.day));
        let mut whole = Whole {
            first: day_numbers.clone().min().unwrap_or(i32::MAX),
            last: day_numbers.max().unwrap_or(i32::MIN),
            ..Whole::default()
        };
        for d in days {
            add_ms(&mut whole.ms, d.ms.map(u64::from));
            whole.cost += d.cost;
        }
        let mut slots = [(u32::MAX, 0u32); WHOLE_TALLIES];
        let fits =
            tallies.iter().all(|t| match slots.iter_mut().find(|(slot, _)| *slot == t.slot || *slot == u32::MAX) {
                Some(entry) => {
                    *entry = (t.slot, entry.1.saturating_add(t.n));
                    true
                }
                None => false,
            });
        whole.tallies = fits.then_some(slots);
        whole
    }
}

/// Strings (users, activity sources, sleep reasons) as small numbers.
#[derive(Debug, Default)]
struct Names(RwLock<NameTable>);

#[derive(Debug, Default)]
struct NameTable {
    ids: HashMap<Arc<str>, u32>,
    /// By id.
    names: Vec<Arc<str>>,
}

impl Names {
    fn id(&self, name: &str) -> u32 {
        if let Some(id) = self.known(name) {
            return id;
        }
        let mut table = self.0.write().unwrap_or_else(|p| p.into_inner());
        let NameTable { ids, names } = &mut *table;
        if let Some(id) = ids.get(name) {
            return *id;
        }
        let id = names.len() as u32;
        let name: Arc<str> = name.into();
        names.push(name.clone());
        ids.insert(name, id);
        id
    }

    /// The id of `name` if it has one.
    fn known(&self, name: &str) -> Option<u32> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).ids.get(name).copied()
    }

    /// Every name, by id.
    fn all(&self) -> Vec<Arc<str>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).names.clone()
    }
}

/// Every known session's usage, by uuid, in [`SHARDS`] shards by the uuid's hash: a report
/// sums the shards on every core (the sums are memory-bound: each entry's days are a cache miss).
#[derive(Debug)]
pub struct UsageIndex {
    prices: Prices,
    /// Activity sources and sleep reasons.
    names: Names,
    users: Names,
    shards: Box<[RwLock<Shard>]>,
}

type Shard = HashMap<Arc<str>, Entry>;

const SHARDS: usize = 64;

fn day_number(day: NaiveDate) -> i32 {
    day.num_days_from_ce()
}

fn date_of(number: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(number).unwrap_or_default()
}

impl UsageIndex {
    pub fn new(prices: Prices) -> UsageIndex {
        let shards = (0..SHARDS).map(|_| RwLock::default()).collect();
        UsageIndex { prices, names: Names::default(), users: Names::default(), shards }
    }

    fn shard(&self, uuid: &str) -> &RwLock<Shard> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(uuid);
        &self.shards[hash as usize % SHARDS]
    }

    fn read(shard: &RwLock<Shard>) -> std::sync::RwLockReadGuard<'_, Shard> {
        shard.read().unwrap_or_else(|p| p.into_inner())
    }

    /// An index of `sessions` (each a different session).
    pub fn of(sessions: &[Session], prices: Prices) -> UsageIndex {
        let index = UsageIndex::new(prices);
        for s in sessions {
            index.observe(s);
        }
        index
    }

    /// How many sessions it holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| Self::read(shard).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Learn record `s`, unless the index already holds it or a newer one.
    pub fn observe(&self, s: &Session) {
        let order = (s.usage.accounted_until, s.version);
        let shard = self.shard(&s.uuid);
        if Self::read(shard).get(s.uuid.as_str()).is_some_and(|e| e.order >= order) {
            return;
        }
        let entry = self.entry(s, order);
        let mut entries = shard.write().unwrap_or_else(|p| p.into_inner());
        if entries.get(&entry.uuid).is_none_or(|e| e.order < entry.order) {
            entries.insert(entry.uuid.clone(), entry);
        }
    }

    fn entry(&self, s: &Session, order: (Option<DateTime<Utc>>, u64)) -> Entry {
        let mut days = Vec::with_capacity(s.usage.days.len());
        let mut tallies = Vec::new();
        for (day, counted) in &s.usage.days {
            let mut use_ = DayUse { day: day_number(*day), ms: [0; 3], cost: 0.0 };
            for (bucket, tiers) in &counted.ms {
                for (tier, ms) in tiers {
                    use_.ms[*bucket as usize] = use_.ms[*bucket as usize].saturating_add(*ms as u32);
                    use_.cost += self.prices.per_hour(*bucket, tier) * *ms as f64 / 3_600_000.0;
                }
            }
            days.push(use_);
            let named = |wake: bool, map: &BTreeMap<String, u64>| {
                map.iter().map(move |(name, n)| (wake, name.clone(), *n)).collect::<Vec<_>>()
            };
            for (wake, name, n) in named(true, &counted.wakes).into_iter().chain(named(false, &counted.sleeps)) {
                let slot = 2 * self.names.id(&name) + u32::from(wake);
                tallies.push(Tally { day: use_.day, slot, n: n.min(u64::from(u32::MAX)) as u32 });
            }
        }
        Entry {
            order,
            user: self.users.id(&s.user_id),
            uuid: s.uuid.as_str().into(),
            created_at: s.created_at,
            deleted_at: s.deleted_at,
            accounted_until: s.usage.accounted_until,
            since: s.usage.since.as_ref().map(|since| (since.bucket, self.prices.per_hour(since.bucket, &since.tier))),
            whole: Whole::of(&days, &tallies),
            days: days.into_boxed_slice(),
            tallies: tallies.into_boxed_slice(),
        }
    }

    /// Usage over `q`'s days as of `now`: what the records counted, plus what each session has
    /// been since (`since` from `accounted_until` to `now`, not yet written), and the always-on
    /// baseline from creation to deletion. The shards are summed on every core.
    pub fn report(&self, q: &Query, now: DateTime<Utc>) -> Report {
        let window = Window::of(q, now);
        let only = match q.user_id.as_deref() {
            Some(user) => match self.users.known(user) {
                Some(id) => Some(id),
                None => return Report::default(),
            },
            None => None,
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(SHARDS);
        let (names, users) = (self.names.all(), self.users.all());
        let ranks = match q.group_by {
            GroupBy::Session => ranks(&users),
            _ => Vec::new(),
        };
        let sum = |part: usize| {
            // Each core names tallies with its own copies: the names' reference counts are
            // touched for every row, and shared ones would bounce between the cores.
            let names: Vec<Arc<str>> = names.iter().map(|name| Arc::from(&**name)).collect();
            let mut rows = Rows::new(q.group_by, &window);
            for shard in self.shards.iter().skip(part).step_by(threads) {
                for entry in Self::read(shard).values().filter(|e| only.is_none_or(|u| e.user == u)) {
                    let mut row = rows.row(entry, &ranks);
                    self.add_entry(entry, &window, &mut row, q.group_by);
                }
            }
            Part::of(rows, &users, &names)
        };
        let parts: Vec<Part> = std::thread::scope(|scope| {
            let others: Vec<_> = (1..threads).map(|part| scope.spawn(move || sum(part))).collect();
            let mut parts = vec![sum(0)];
            parts.extend(others.into_iter().map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))));
            parts
        });
        Part::into_report(parts, &names)
    }

    fn add_entry(&self, e: &Entry, w: &Window, row: &mut RowSink, group_by: GroupBy) {
        let covered = group_by != GroupBy::Day && w.from <= e.whole.first && e.whole.last <= w.to;
        match e.whole.tallies.filter(|_| covered) {
            Some(tallies) => {
                let acc = row.at(e.whole.first);
                add_ms(&mut acc.ms, e.whole.ms);
                acc.cost += e.whole.cost;
                for (slot, n) in tallies.into_iter().filter(|(slot, _)| *slot != u32::MAX) {
                    acc.tally(slot, u64::from(n));
                }
            }
            None => self.add_days(e, w, row),
        }
        self.add_since_and_baseline(e, w, row, group_by);
    }

    /// Add `e`'s counted days and tallies in `w`, one by one.
    fn add_days(&self, e: &Entry, w: &Window, row: &mut RowSink) {
        let first = e.days.partition_point(|d| d.day < w.from);
        for d in e.days[first..].iter().take_while(|d| d.day <= w.to) {
            let acc = row.at(d.day);
            add_ms(&mut acc.ms, d.ms.map(u64::from));
            acc.cost += d.cost;
        }
        let first = e.tallies.partition_point(|t| t.day < w.from);
        for t in e.tallies[first..].iter().take_while(|t| t.day <= w.to) {
            row.at(t.day).tally(t.slot, u64::from(t.n));
        }
    }

    /// Add what `e` has been since its record was written, and its always-on baseline, in `w`.
    fn add_since_and_baseline(&self, e: &Entry, w: &Window, row: &mut RowSink, group_by: GroupBy) {
        if let (Some(from), Some((bucket, per_hour))) = (e.accounted_until, e.since) {
            let mut until = w.end;
            if bucket == Bucket::Deleted {
                let kept = e.deleted_at.unwrap_or(from).checked_add_signed(self.prices.backup_retention);
                until = until.min(kept.unwrap_or(until));
            }
            spread(from.max(w.start), until, group_by == GroupBy::Day, |day, ms| {
                let acc = row.at(day);
                acc.ms[bucket as usize] += ms;
                acc.cost += per_hour * ms as f64 / 3_600_000.0;
            });
        }
        let alive_until = e.deleted_at.unwrap_or(w.end).min(w.end);
        spread(e.created_at.max(w.start), alive_until, group_by == GroupBy::Day, |day, ms| {
            let acc = row.at(day);
            acc.baseline_ms += ms;
            acc.baseline_cost += self.prices.baseline * ms as f64 / 3_600_000.0;
        });
    }
}

/// Each user's place in name order, by user number: session rows are sorted by these numbers
/// (names are unique, so this is their name order) before they are named.
fn ranks(users: &[Arc<str>]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..users.len() as u32).collect();
    order.sort_unstable_by(|a, b| users[*a as usize].cmp(&users[*b as usize]));
    let mut ranks = vec![0; users.len()];
    for (rank, user) in order.into_iter().enumerate() {
        ranks[user as usize] = rank as u32;
    }
    ranks
}

/// Milliseconds by bucket, added up.
fn add_ms(total: &mut [u64; 3], ms: [u64; 3]) {
    for (total, ms) in total.iter_mut().zip(ms) {
        *total += ms;
    }
}

const DAY_MS: i64 = 86_400_000;
/// `day_number` of 1970-01-01, the first day of Unix time.
const UNIX_DAY: i32 = 719_163;

/// Call `add(day, ms)` for `[from, to)`: split by UTC day when `by_day`, else once (day unused).
fn spread(from: DateTime<Utc>, to: DateTime<Utc>, by_day: bool, mut add: impl FnMut(i32, u64)) {
    let (mut from, to) = (from.timestamp_millis(), to.timestamp_millis());
    if !by_day {
        if to > from {
            add(0, (to - from) as u64);
        }
        return;
    }
    while from < to {
        let day = from.div_euclid(DAY_MS);
        let end = ((day + 1) * DAY_MS).min(to);
        add(UNIX_DAY + day as i32, (end - from) as u64);
        from = end;
    }
}

/// The days asked for, as numbers and instants.
struct Window {
    from: i32,
    to: i32,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl Window {
    fn of(q: &Query, now: DateTime<Utc>) -> Window {
        let start = q.from.and_hms_opt(0, 0, 0).map_or(now, |t| t.and_utc());
        let end = (q.to + Duration::days(1)).and_hms_opt(0, 0, 0).map_or(now, |t| t.and_utc()).min(now);
        Window { from: day_number(q.from), to: day_number(q.to), start, end }
    }
}

/// Sums of one row while the report is made.
#[derive(Debug, Default, Clone)]
struct Acc {
    ms: [u64; 3],
    cost: f64,
    baseline_ms: u64,
    baseline_cost: f64,
    /// Counts by `2 × name + wake?` (see [`Names`]).
    tallies: Vec<u64>,
}

impl Acc {
    /// Nothing was counted: no row for it (a user or session with no time in the window).
    fn is_empty(&self) -> bool {
        self.baseline_ms == 0 && self.ms.iter().all(|ms| *ms == 0) && self.tallies.iter().all(|n| *n == 0)
    }

    fn tally(&mut self, slot: u32, n: u64) {
        let slot = slot as usize;
        if self.tallies.len() <= slot {
            self.tallies.resize(slot + 1, 0);
        }
        self.tallies[slot] += n;
    }

    fn add(&mut self, other: &Acc) {
        add_ms(&mut self.ms, other.ms);
        self.cost += other.cost;
        self.baseline_ms += other.baseline_ms;
        self.baseline_cost += other.baseline_cost;
        if self.tallies.len() < other.tallies.len() {
            self.tallies.resize(other.tallies.len(), 0);
        }
        for (total, n) in self.tallies.iter_mut().zip(&other.tallies) {
            *total += n;
        }
    }

    fn totals(&self, names: &[Arc<str>]) -> Totals {
        let counts = |wake: bool| {
            Counts::of(
                self.tallies
                    .iter()
                    .enumerate()
                    .filter(|(slot, n)| **n > 0 && (slot % 2 == 1) == wake)
                    .map(|(slot, n)| (names.get(slot / 2).cloned().unwrap_or_else(|| "".into()), *n)),
            )
        };
        Totals {
            ms: self.ms,
            cost: self.cost,
            baseline_ms: self.baseline_ms,
            baseline_cost: self.baseline_cost,
            wakes: counts(true),
            sleeps: counts(false),
        }
    }
}

/// What one core made of its shards.
enum Part {
    /// Rows another core may also have (a user's or a day's), to be added up.
    Sums(Vec<(RowKey, Acc)>),
    /// Rows no other core has (sessions), made into totals and sorted on this core, and their sum.
    Done { rows: Vec<(SessionOrder, RowKey, Totals)>, total: Acc },
}

impl Part {
    /// What `rows` become on the core that made them (`users` and `names` by number).
    fn of(rows: Rows, users: &[Arc<str>], names: &[Arc<str>]) -> Part {
        let user = |id: u32| users.get(id as usize).cloned().unwrap_or_else(|| "".into());
        let sums = match rows {
            Rows::User(accs) => accs
                .into_iter()
                .enumerate()
                .filter(|(_, acc)| !acc.is_empty())
                .map(|(id, acc)| (RowKey::User(user(id as u32)), acc))
                .collect(),
            Rows::Day { from, days } => {
                days.into_iter().enumerate().map(|(i, acc)| (RowKey::Day(date_of(from + i as i32)), acc)).collect()
            }
            Rows::Session(mut sessions) => {
                sessions.retain(|(_, _, acc)| !acc.is_empty());
                sessions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                let mut total = Acc::default();
                let rows = sessions
                    .into_iter()
                    .map(|(order, user_id, acc)| {
                        total.add(&acc);
                        let (created_at, uuid) = (order.created_at, order.uuid.clone());
                        let key = RowKey::Session { user_id: user(user_id), created_at, uuid };
                        (order, key, acc.totals(names))
                    })
                    .collect();
                return Part::Done { rows, total };
            }
        };
        Part::Sums(sums)
    }

    /// One report of the parts every core made: rows with the same key are added up, and
    /// the sessions each core sorted are merged.
    fn into_report(parts: Vec<Part>, names: &[Arc<str>]) -> Report {
        let mut total = Acc::default();
        let mut sums: Vec<(RowKey, Acc)> = Vec::new();
        let mut sessions: Vec<(SessionOrder, RowKey, Totals)> = Vec::new();
        for part in parts {
            match part {
                Part::Sums(rows) => sums.extend(rows),
                Part::Done { rows, total: sum } => {
                    total.add(&sum);
                    sessions.extend(rows);
                }
            }
        }
        // A stable sort merges the sorted runs (one per core).
        sessions.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rows: Vec<(RowKey, Totals)> = sessions.into_iter().map(|(_, key, t)| (key, t)).collect();
        sums.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        sums.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1.add(&later.1);
            }
            same
        });
        for (key, acc) in sums.into_iter().filter(|(_, acc)| !acc.is_empty()) {
            total.add(&acc);
            rows.push((key, acc.totals(names)));
        }
        Report { rows, total: total.totals(names) }
    }
}

/// Where one session's sums go: its row (user or session), or a row per day.
enum RowSink<'a> {
    One(&'a mut Acc),
    Days { from: i32, days: &'a mut [Acc] },
}

impl RowSink<'_> {
    fn at(&mut self, day: i32) -> &mut Acc {
        match self {
            RowSink::One(acc) => acc,
            RowSink::Days { from, days } => {
                let i = (day - *from).clamp(0, days.len() as i32 - 1) as usize;
                &mut days[i]
            }
        }
    }
}

/// Where a session's row goes: session rows are in `RowKey` order (user name, creation, uuid),
/// compared here without reading a name — the user by its place in name order (`ranks`), the
/// uuid (8 to 32 hex digits) by its first 32 bytes held here before the whole.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct SessionOrder {
    user_rank: u32,
    created_at: DateTime<Utc>,
    uuid_prefix: [u64; 4],
    uuid: Arc<str>,
}

impl SessionOrder {
    fn of(e: &Entry, ranks: &[u32]) -> SessionOrder {
        // Zero-padded and big-endian: prefixes order as the strings do where they differ.
        let mut prefix = [0u8; 32];
        let n = e.uuid.len().min(32);
        prefix[..n].copy_from_slice(&e.uuid.as_bytes()[..n]);
        let word = |i: usize| u64::from_be_bytes(prefix[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        SessionOrder {
            user_rank: ranks.get(e.user as usize).copied().unwrap_or(u32::MAX),
            created_at: e.created_at,
            uuid_prefix: [word(0), word(1), word(2), word(3)],
            uuid: e.uuid.clone(),
        }
    }
}

/// The rows being made, by grouping.
enum Rows {
    /// By user number.
    User(Vec<Acc>),
    /// By session: where its row goes and its user's number (named when the rows are made).
    Session(Vec<(SessionOrder, u32, Acc)>),
    Day {
        from: i32,
        days: Vec<Acc>,
    },
}

impl Rows {
    fn new(group_by: GroupBy, w: &Window) -> Rows {
        match group_by {
            GroupBy::User => Rows::User(Vec::new()),
            GroupBy::Session => Rows::Session(Vec::new()),
            GroupBy::Day => Rows::Day { from: w.from, days: vec![Acc::default(); (w.to - w.from + 1).max(1) as usize] },
        }
    }

    fn row(&mut self, e: &Entry, ranks: &[u32]) -> RowSink<'_> {
        match self {
            Rows::User(users) => {
                if users.len() <= e.user as usize {
                    users.resize(e.user as usize + 1, Acc::default());
                }
                RowSink::One(&mut users[e.user as usize])
            }
            Rows::Session(sessions) => {
                sessions.push((SessionOrder::of(e, ranks), e.user, Acc::default()));
                RowSink::One(&mut sessions.last_mut().expect("just pushed").2)
            }
            Rows::Day { from, days } => RowSink::Days { from: *from, days },
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use wakeway_proxy::SessionId;

    use super::*;
    use crate::session::State;
    use crate::usage::Since;

    fn prices() -> Prices {
        Prices::from_config(&wakeway_config::Config::default())
    }

    /// The successive records of one random session: each a write that counts from the last.
    fn history(rng: &mut StdRng, i: usize, start: DateTime<Utc>) -> Vec<Session> {
        let id = SessionId::parse(&format!("{i:08x}")).unwrap();
        let tier = ["small", "large"][rng.random_range(0..2)];
        let mut s = Session::new(&id, &format!("user{}", i % 7), tier, start);
        let mut now = start;
        let mut records = vec![s.clone()];
        for _ in 0..rng.random_range(1..12) {
            now += Duration::minutes(rng.random_range(1..3000));
            let state = match (s.state, rng.random_range(0..8)) {
                (State::Deleted, _) | (_, 7) => State::Deleted,
                (_, 0..4) => State::Running,
                _ => State::Sleeping,
            };
            if state == State::Deleted && s.deleted_at.is_none() {
                s.deleted_at = Some(now);
            }
            s.state = state;
            if rng.random_bool(0.3) {
                s.usage.count_wake(now, ["http", "api-wake", "held-request"][rng.random_range(0..3)]);
            }
            if rng.random_bool(0.3) {
                s.usage.count_sleep(now, ["idle", "api"][rng.random_range(0..2)]);
            }
            s.usage.account(now, Since::of(&s));
            s.version += 1;
            records.push(s.clone());
        }
        records
    }

    /// What each grouping reports, written out (hours rounded to the millisecond, cost to 1e-9).
    fn shown(r: &Report) -> Vec<String> {
        let line = |k: &dyn std::fmt::Debug, t: &Totals| {
            format!(
                "{k:?} {:?} {:.9} {} {:.9} {:?} {:?}",
                t.ms, t.cost, t.baseline_ms, t.baseline_cost, t.wakes, t.sleeps
            )
        };
        let mut lines: Vec<String> = r.rows.iter().map(|(k, t)| line(k, t)).collect();
        lines.push(line(&"total", &r.total));
        lines
    }

    #[test]
    fn an_index_fed_every_write_in_any_order_reports_what_one_made_from_the_last_records_does() {
        let mut rng = StdRng::seed_from_u64(19);
        let start = DateTime::parse_from_rfc3339("2026-01-01T08:00:00Z").unwrap().with_timezone(&Utc);
        let histories: Vec<Vec<Session>> = (0..60).map(|i| history(&mut rng, i, start)).collect();
        let fed = UsageIndex::new(prices());
        // Every record, in a shuffled order: stale reads arrive after newer writes.
        let mut all: Vec<&Session> = histories.iter().flatten().collect();
        for i in (1..all.len()).rev() {
            all.swap(i, rng.random_range(0..=i));
        }
        for s in all {
            fed.observe(s);
        }
        let last: Vec<Session> = histories.iter().map(|h| h.last().unwrap().clone()).collect();
        let fresh = UsageIndex::of(&last, prices());
        let now = start + Duration::days(40);
        for group_by in [GroupBy::User, GroupBy::Session, GroupBy::Day] {
            for (from, to) in [(0, 45), (3, 9), (20, 20)] {
                let q = Query {
                    from: (start + Duration::days(from)).date_naive(),
                    to: (start + Duration::days(to)).date_naive(),
                    user_id: None,
                    group_by,
                };
                assert_eq!(shown(&fed.report(&q, now)), shown(&fresh.report(&q, now)), "{group_by:?} {from}..{to}");
            }
        }
        // And the sums are those of the records themselves (an independent count).
        let q = Query { from: start.date_naive(), to: now.date_naive(), user_id: None, group_by: GroupBy::User };
        let total = fed.report(&q, now).total;
        let mut expected = [0u64; 3];
        for s in &last {
            for day in s.usage.days.values() {
                for (bucket, tiers) in &day.ms {
                    expected[*bucket as usize] += tiers.values().sum::<u64>();
                }
            }
            if let (Some(from), Some(since)) = (s.usage.accounted_until, &s.usage.since) {
                let mut until = now;
                if since.bucket == Bucket::Deleted {
                    until = until.min(s.deleted_at.unwrap() + Duration::days(30));
                }
                expected[since.bucket as usize] += (until - from).num_milliseconds().max(0) as u64;
            }
        }
        for bucket in Bucket::ALL {
            assert_eq!(total.ms(bucket), expected[bucket as usize], "{bucket:?}");
        }
        // Split by day, the same time and cost (and days numbered as chrono numbers them).
        assert_eq!(day_number(NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()), UNIX_DAY);
        let by_day = fed.report(&Query { group_by: GroupBy::Day, ..q.clone() }, now);
        assert_eq!(
            shown(&Report { rows: Vec::new(), ..by_day.clone() }),
            shown(&Report { rows: Vec::new(), total: total.clone() })
        );
        let day_ms: u64 = by_day.rows.iter().map(|(_, t)| t.ms.iter().sum::<u64>() + t.baseline_ms).sum();
        assert_eq!(day_ms, total.ms.iter().sum::<u64>() + total.baseline_ms);
        let wakes: u64 = last.iter().flat_map(|s| s.usage.days.values()).flat_map(|d| d.wakes.values()).sum();
        assert_eq!(total.wakes.sum(), wakes);
    }

    #[test]
    fn session_rows_come_in_key_order_whatever_order_users_and_uuids_were_met_in() {
        let mut rng = StdRng::seed_from_u64(16);
        let start = DateTime::parse_from_rfc3339("2026-01-01T08:00:00Z").unwrap().with_timezone(&Utc);
        let index = UsageIndex::new(prices());
        let mut sessions = Vec::new();
        for i in 0..400 {
            // Uuids of 8 to 32 digits sharing long prefixes (some one another's prefix); users met
            // in an order that is not their name order; creations often equal.
            let len = rng.random_range(8..=32);
            let uuid: String = (0..len)
                .map(|k| if k < 6 { 'a' } else { ["0", "f", "7"][rng.random_range(0..3)].chars().next().unwrap() })
                .collect();
            let Some(id) = SessionId::parse(&uuid) else { continue };
            let user = ["zoe", "ann", "bob", "ann-marie", "Zed", "al"][rng.random_range(0..6)];
            let created = start + Duration::minutes(rng.random_range(0..3) * 60 + i % 2);
            let mut s = Session::new(&id, user, "small", created);
            s.usage = crate::usage::Usage::starting(created, Since::of(&s));
            sessions.push(s);
        }
        for s in &sessions {
            index.observe(s);
        }
        let q = Query { from: start.date_naive(), to: start.date_naive(), user_id: None, group_by: GroupBy::Session };
        let report = index.report(&q, start + Duration::hours(5));
        let mut distinct: Vec<&str> = sessions.iter().map(|s| s.uuid.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(report.rows.len(), distinct.len());
        for pair in report.rows.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{:?} then {:?}", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn a_record_rebuilt_after_the_store_lost_it_replaces_the_old_entry_and_a_stale_read_does_not() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T08:00:00Z").unwrap().with_timezone(&Utc);
        let id = SessionId::parse("abcd1234").unwrap();
        let mut old = Session::new(&id, "ann", "small", start);
        old.state = State::Running;
        old.usage = crate::usage::Usage::starting(start, Since::of(&old));
        old.usage.account(start + Duration::hours(5), Since::of(&old));
        old.version = 40;
        let index = UsageIndex::new(prices());
        index.observe(&old);
        let mut stale = old.clone();
        stale.version = 39;
        stale.usage.accounted_until = Some(start + Duration::hours(1));
        index.observe(&stale);
        let q = Query { from: start.date_naive(), to: start.date_naive(), user_id: None, group_by: GroupBy::User };
        let running = |index: &UsageIndex| index.report(&q, start + Duration::hours(6)).total.ms(Bucket::Running);
        assert_eq!(running(&index), 6 * 3_600_000, "five counted hours and one since");
        // Rebuilt at 5:30 with version 1: counting starts again there.
        let mut rebuilt = Session::new(&id, "ann", "small", start);
        rebuilt.state = State::Sleeping;
        rebuilt.usage = crate::usage::Usage::starting(start + Duration::minutes(330), Since::of(&rebuilt));
        rebuilt.version = 1;
        index.observe(&rebuilt);
        let report = index.report(&q, start + Duration::hours(6));
        assert_eq!(report.total.ms(Bucket::Running), 0);
        assert_eq!(report.total.ms(Bucket::Sleeping), 30 * 60_000);
    }
}
