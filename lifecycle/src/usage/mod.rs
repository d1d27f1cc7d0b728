//! Usage accounting: the time each session spends running (by tier), sleeping and deleted with
//! its backup kept, its wakes by source and sleeps by reason — kept in its record per UTC day —
//! and the rollups, priced with the configured cost model, that `GET /usage` answers with.
//!
//! Counting happens only in the compare-and-set write that stores a session (`Usage::account`):
//! the record says until when it is counted (`accounted_until`) and what the session has been
//! since (`since`), so a write that loses the race is discarded with what it counted (no double
//! counting across replicas), and whoever writes next — or a reader — counts from there (no gap
//! after a crash).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use wakeway_config::Config;

use crate::session::{Session, State};

mod index;
pub use index::UsageIndex;

/// Where a session record forgotten after `backup_retention` is kept for its usage
/// (`<FORGOTTEN><uuid>`, a store blob).
pub const FORGOTTEN: &str = "usage/forgotten/";

/// The blob key keeping the usage of forgotten session `uuid`.
pub fn forgotten_key(uuid: &str) -> String {
    format!("{FORGOTTEN}{uuid}")
}

/// What a session costs by: its workspace running, its data kept asleep, or only its backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Running,
    Sleeping,
    Deleted,
}

impl Bucket {
    pub const ALL: [Bucket; 3] = [Bucket::Running, Bucket::Sleeping, Bucket::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Running => "running",
            Bucket::Sleeping => "sleeping",
            Bucket::Deleted => "deleted",
        }
    }

    /// The bucket of a session in `state`: a process up (or being started or stopped) runs;
    /// deleted is deleted; everything else keeps its data without a process.
    pub fn of(state: State) -> Bucket {
        match state {
            State::Deleted => Bucket::Deleted,
            s if s.is_awake() || s == State::Stopping => Bucket::Running,
            _ => Bucket::Sleeping,
        }
    }
}

/// What a session has been since its record's `accounted_until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    pub bucket: Bucket,
    pub tier: String,
}

impl Since {
    pub fn of(s: &Session) -> Since {
        Since { bucket: Bucket::of(s.state), tier: s.tier.clone() }
    }
}

/// One UTC day of a session's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day {
    /// Milliseconds by bucket, then tier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ms: BTreeMap<Bucket, BTreeMap<String, u64>>,
    /// Wakes by activity source (`http`, `api-wake`, `held-request`…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wakes: BTreeMap<String, u64>,
    /// Sleeps by reason (`idle`, `api`, `crashed`…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sleeps: BTreeMap<String, u64>,
}

/// A session's usage, in its record (records written before it existed read as empty and start
/// being counted at their next write).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Everything before this is counted in `days`; the next writer counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounted_until: Option<DateTime<Utc>>,
    /// What the session has been since `accounted_until` (as last written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
    /// Counted usage per UTC day.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub days: BTreeMap<NaiveDate, Day>,
}

/// Time counted by one [`Usage::account`] (for the `wakeway_state_seconds_total` counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub since: Since,
    pub ms: u64,
}

impl Usage {
    /// Start counting a new session at `now`.
    pub fn starting(now: DateTime<Utc>, since: Since) -> Usage {
        Usage { accounted_until: Some(now), since: Some(since), days: BTreeMap::new() }
    }

    /// Count `[accounted_until, now)` as what the session has been, then count on from `now` as
    /// `next`. Call it on the record about to be written with compare-and-set, never elsewhere:
    /// a write that loses the race takes what it counted with it. A clock behind
    /// `accounted_until` (another replica's) counts nothing and never moves it back.
    pub fn account(&mut self, now: DateTime<Utc>, next: Since) -> Option<Counted> {
        let counted = match (self.accounted_until, self.since.take()) {
            (Some(from), Some(since)) if now > from => {
                split_by_day(from, now, |day, ms| add_ms(self.days.entry(day).or_default(), &since, ms));
                Some(Counted { ms: (now - from).num_milliseconds() as u64, since })
            }
            _ => None,
        };
        if self.accounted_until.is_none_or(|t| now > t) {
            self.accounted_until = Some(now);
        }
        self.since = Some(next);
        counted
    }

    /// Count a wake caused by `source` (written with the transition it causes).
    pub fn count_wake(&mut self, now: DateTime<Utc>, source: &str) {
        *self.days.entry(now.date_naive()).or_default().wakes.entry(source.into()).or_default() += 1;
    }

    /// Count a sleep for `reason` (written with the transition it causes).
    pub fn count_sleep(&mut self, now: DateTime<Utc>, reason: &str) {
        *self.days.entry(now.date_naive()).or_default().sleeps.entry(reason.into()).or_default() += 1;
    }
}

fn add_ms(day: &mut Day, since: &Since, ms: u64) {
    *day.ms.entry(since.bucket).or_default().entry(since.tier.clone()).or_default() += ms;
}

/// Call `add(day, ms)` for each UTC day `[from, to)` touches, with the milliseconds in it.
fn split_by_day(mut from: DateTime<Utc>, to: DateTime<Utc>, mut add: impl FnMut(NaiveDate, u64)) {
    while from < to {
        let day = from.date_naive();
        let midnight = (day + Duration::days(1)).and_hms_opt(0, 0, 0).map_or(to, |t| t.and_utc());
        let end = midnight.min(to);
        add(day, (end - from).num_milliseconds() as u64);
        from = end;
    }
}

/// The prices `/usage` applies (from the configuration's usage part).
#[derive(Debug, Clone)]
pub struct Prices {
    running: BTreeMap<String, f64>,
    default_running: f64,
    sleeping: f64,
    deleted: f64,
    baseline: f64,
    /// A deleted session's backup is counted for this long after its deletion.
    backup_retention: Duration,
}

impl Prices {
    pub fn from_config(config: &Config) -> Prices {
        let u = &config.usage;
        Prices {
            running: u.running_per_hour.clone(),
            default_running: u.running_price(&config.workspaces.default_tier, &config.workspaces.default_tier),
            sleeping: u.sleeping_per_hour,
            deleted: u.deleted_per_hour,
            baseline: u.baseline_per_hour,
            backup_retention: Duration::from_std(config.lifecycle.backup_retention).unwrap_or(Duration::MAX),
        }
    }

    fn per_hour(&self, bucket: Bucket, tier: &str) -> f64 {
        match bucket {
            Bucket::Running => self.running.get(tier).copied().unwrap_or(self.default_running),
            Bucket::Sleeping => self.sleeping,
            Bucket::Deleted => self.deleted,
        }
    }
}

/// How `/usage` groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    User,
    Session,
    Day,
}

impl GroupBy {
    pub const NAMES: &'static str = "user, session or day";

    pub fn parse(name: &str) -> Option<GroupBy> {
        match name {
            "user" => Some(GroupBy::User),
            "session" => Some(GroupBy::Session),
            "day" => Some(GroupBy::Day),
            _ => None,
        }
    }
}

/// Usage summed over some sessions and days.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Milliseconds by bucket (`Bucket as usize`).
    pub ms: [u64; 3],
    pub cost: f64,
    /// Hours the always-on baseline would have run.
    pub baseline_ms: u64,
    pub baseline_cost: f64,
    pub wakes: Counts,
    pub sleeps: Counts,
}

impl Totals {
    pub fn ms(&self, bucket: Bucket) -> u64 {
        self.ms[bucket as usize]
    }

    pub fn hours(&self, bucket: Bucket) -> f64 {
        self.ms(bucket) as f64 / 3_600_000.0
    }

    pub fn saved(&self) -> f64 {
        self.baseline_cost - self.cost
    }

    /// What sleeping saved, as a percentage of the baseline (0 when the baseline is 0).
    pub fn saved_percent(&self) -> f64 {
        if self.baseline_cost > 0.0 { 100.0 * self.saved() / self.baseline_cost } else { 0.0 }
    }
}

/// Counts by name (wakes by source, sleeps by reason), in name order, none zero; written in
/// JSON as an object. A list, not a map: a report holds two per row (100,000 session rows).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts(Vec<(Arc<str>, u64)>);

impl Counts {
    /// The counts of `pairs` (any order; a name given twice is added up, zeros dropped).
    pub fn of(pairs: impl IntoIterator<Item = (Arc<str>, u64)>) -> Counts {
        let mut all: Vec<(Arc<str>, u64)> = pairs.into_iter().filter(|(_, n)| *n > 0).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1 += later.1;
            }
            same
        });
        Counts(all)
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0.iter().find(|(n, _)| &**n == name).map_or(0, |(_, count)| *count)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(name, n)| (&**name, *n))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn sum(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// The key of one `/usage` row; rows come in its order (sessions by user, then creation).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowKey {
    User(Arc<str>),
    Session { user_id: Arc<str>, created_at: DateTime<Utc>, uuid: Arc<str> },
    Day(NaiveDate),
}

/// The `/usage` question: UTC days `from..=to`, one user or all, grouped.
#[derive(Debug, Clone)]
pub struct Query {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub user_id: Option<String>,
    pub group_by: GroupBy,
}

/// The `/usage` answer: rows in key order, and the total.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rows: Vec<(RowKey, Totals)>,
    pub total: Totals,
}

impl Report {
    /// The row of `key`, if it has one.
    pub fn get(&self, key: &RowKey) -> Option<&Totals> {
        self.rows.binary_search_by(|(k, _)| k.cmp(key)).ok().map(|i| &self.rows[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn running(tier: &str) -> Since {
        Since { bucket: Bucket::Running, tier: tier.into() }
    }

    #[test]
    fn an_interval_over_midnight_is_split_between_the_days() {
        let mut u = Usage::starting(at("2026-01-01T23:30:00Z"), running("small"));
        let counted = u.account(at("2026-01-02T00:45:00Z"), running("large")).unwrap();
        assert_eq!(counted.ms, 75 * 60_000);
        let day = |d: &str| u.days[&d.parse::<NaiveDate>().unwrap()].ms[&Bucket::Running]["small"];
        assert_eq!(day("2026-01-01"), 30 * 60_000);
        assert_eq!(day("2026-01-02"), 45 * 60_000);
        assert_eq!(u.since, Some(running("large")));
    }

    #[test]
    fn a_clock_behind_the_record_counts_nothing_and_never_goes_back() {
        let mut u = Usage::starting(at("2026-01-01T10:00:00Z"), running("small"));
        assert_eq!(u.account(at("2026-01-01T09:00:00Z"), running("small")), None);
        assert_eq!(u.accounted_until, Some(at("2026-01-01T10:00:00Z")));
        assert!(u.days.is_empty());
    }

    #[test]
    fn records_without_usage_still_load() {
        let u: Usage = serde_json::from_str("{}").unwrap();
        assert_eq!(u, Usage::default());
    }
}
