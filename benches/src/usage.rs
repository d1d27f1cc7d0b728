//! `wakeway-bench-usage [N] [DAYS] [--store] [--only=user|session|day]`: what `GET /usage` does over N sessions with DAYS
//! days of usage each (default 100,000 × 30): the rollup by user, session and day from the usage
//! index (`UsageIndex::report`) and the JSON body made of it, the best of five runs each. With
//! `--store`, the sessions are first written to an embedded store in a temporary folder and what
//! happens once per process is timed too — reading every record back (`Store::list`) and filling
//! the index from them. Prints one JSON line.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{Duration, Utc};
use wakeway_lifecycle::session::{Session, SessionId, State};
use wakeway_lifecycle::store::{EmbeddedStore, Store};
use wakeway_lifecycle::usage::{Bucket, Day, GroupBy, Prices, Query, Since, UsageIndex};

/// A session with `days` days of usage: an hour running, the rest asleep, a wake and a sleep a day.
fn session(i: usize, days: i64, now: chrono::DateTime<Utc>) -> Session {
    let id = SessionId::parse(&format!("be{i:014x}")).expect("a valid id");
    let created = now - Duration::days(days);
    let mut s = Session::new(&id, &format!("bench-{}@example.com", i % 10_000), "small", created);
    s.state = State::Sleeping;
    for d in 0..days {
        let day = (created + Duration::days(d)).date_naive();
        s.usage.days.insert(
            day,
            Day {
                ms: BTreeMap::from([
                    (Bucket::Running, BTreeMap::from([("small".to_string(), 3_600_000)])),
                    (Bucket::Sleeping, BTreeMap::from([("small".to_string(), 82_800_000)])),
                ]),
                wakes: BTreeMap::from([("http".to_string(), 1)]),
                sleeps: BTreeMap::from([("idle".to_string(), 1)]),
            },
        );
    }
    s.usage.accounted_until = Some(now - Duration::hours(1));
    s.usage.since = Some(Since { bucket: Bucket::Sleeping, tier: "small".into() });
    s
}

/// The best of five runs of `f`, in milliseconds, and its last result. A result is dropped
/// after the clock stops, as `GET /usage` drops its report after answering.
fn best<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..5 {
        let t0 = Instant::now();
        let result = f();
        best = best.min(t0.elapsed().as_secs_f64() * 1000.0);
        last = Some(result);
    }
    (best, last.expect("five runs"))
}

/// The index over `n` generated sessions: read back from an embedded store (`--store`: the
/// once-per-process `list` and fill are timed and printed) or fed one session at a time as
/// they are made (the usual: only the index is held, ~2 GB less than the records).
fn index(n: usize, days: i64, now: chrono::DateTime<Utc>, prices: &Prices, with_store: bool) -> (UsageIndex, String) {
    if !with_store {
        let t0 = Instant::now();
        let index = UsageIndex::new(prices.clone());
        for i in 0..n {
            index.observe(&session(i, days, now));
        }
        return (index, format!("\"fed_ms\": {:.1}", t0.elapsed().as_secs_f64() * 1000.0));
    }
    let dir = std::env::temp_dir().join(format!("wakeway-bench-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let store = EmbeddedStore::open(&dir.join("wakeway.redb")).unwrap_or_else(|e| panic!("{e}"));
    let sessions: Vec<Session> = (0..n).map(|i| session(i, days, now)).collect();
    store.import(&sessions).unwrap_or_else(|e| panic!("{e}"));
    drop(sessions); // from here only what is read back is held
    let bytes = std::fs::metadata(dir.join("wakeway.redb")).map(|m| m.len()).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let (list_ms, all) = best(|| rt.block_on(store.list()).unwrap_or_else(|e| panic!("{e}")));
    let (index_ms, index) = best(|| UsageIndex::of(&all, prices.clone()));
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    (index, format!("\"store_bytes\": {bytes}, \"list_ms\": {list_ms:.1}, \"index_ms\": {index_ms:.1}"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_store = args.iter().any(|a| a == "--store");
    // `--only=session` (or user, day): one grouping (for a profile of it).
    let only = args.iter().find_map(|a| a.strip_prefix("--only="));
    let mut numbers = args.iter().filter(|a| !a.starts_with("--"));
    let n: usize = numbers.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let days: i64 = numbers.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let now = Utc::now();
    let prices = Prices::from_config(&wakeway_config::Config::default());
    let (index, setup) = index(n, days, now, &prices, with_store);
    let q = |group_by| Query {
        from: (now - Duration::days(days)).date_naive(),
        to: now.date_naive(),
        user_id: None,
        group_by,
    };
    let mut rollups = Vec::new();
    let groupings = [("user", GroupBy::User), ("session", GroupBy::Session), ("day", GroupBy::Day)];
    for (name, group_by) in groupings.into_iter().filter(|(name, _)| only.is_none_or(|only| only == *name)) {
        let q = q(group_by);
        let (ms, r) = best(|| index.report(&q, now));
        // What GET /usage sends: the same report as its JSON body.
        let (json_ms, parts) = best(|| wakeway_lifecycle::api::usage_json_parts(&q, &r));
        rollups.push(format!(
            "\"{name}\": {{\"ms\": {ms:.1}, \"json_ms\": {json_ms:.1}, \"rows\": {}, \"json_bytes\": {}}}",
            r.rows.len(),
            parts.iter().map(Vec::len).sum::<usize>()
        ));
    }
    println!("{{\"sessions\": {n}, \"days\": {days}, {setup}, {}}}", rollups.join(", "));
}
