//! `wakeway-bench-usage [N] [DAYS]`: what `GET /usage` does over N sessions with DAYS days of
//! usage each (default 100,000 × 30): write them to an embedded store in a temporary folder, then
//! time what happens once per process — reading every record back (`Store::list`) and filling
//! the usage index from them — and what each `/usage` does: the rollup by user, session and day
//! from the index (`UsageIndex::report`), the best of five runs each. Prints one JSON line.
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

/// The best of five runs of `f`, in milliseconds, and its last result.
fn best<T>(mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..5 {
        let t0 = Instant::now();
        last = Some(f());
        best = best.min(t0.elapsed().as_secs_f64() * 1000.0);
    }
    (best, last.expect("five runs"))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let days: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let dir = std::env::temp_dir().join(format!("wakeway-bench-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let store = EmbeddedStore::open(&dir.join("wakeway.redb")).unwrap_or_else(|e| panic!("{e}"));
    let now = Utc::now();
    let sessions: Vec<Session> = (0..n).map(|i| session(i, days, now)).collect();
    store.import(&sessions).unwrap_or_else(|e| panic!("{e}"));
    drop(sessions); // from here only what is read back is held
    let bytes = std::fs::metadata(dir.join("wakeway.redb")).map(|m| m.len()).unwrap_or(0);

    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let (list_ms, all) = best(|| rt.block_on(store.list()).unwrap_or_else(|e| panic!("{e}")));
    let prices = Prices::from_config(&wakeway_config::Config::default());
    let (index_ms, index) = best(|| UsageIndex::of(&all, prices.clone()));
    let q = |group_by| Query {
        from: (now - Duration::days(days)).date_naive(),
        to: now.date_naive(),
        user_id: None,
        group_by,
    };
    let mut rollups = BTreeMap::new();
    for (name, group_by) in [("user", GroupBy::User), ("session", GroupBy::Session), ("day", GroupBy::Day)] {
        let (ms, r) = best(|| index.report(&q(group_by), now));
        rollups.insert(name, (ms, r.rows.len()));
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let rollup: Vec<String> =
        rollups.iter().map(|(k, (ms, rows))| format!("\"{k}\": {{\"ms\": {ms:.1}, \"rows\": {rows}}}")).collect();
    println!(
        "{{\"sessions\": {n}, \"days\": {days}, \"store_bytes\": {bytes}, \"list_ms\": {list_ms:.1}, \"index_ms\": {index_ms:.1}, {}}}",
        rollup.join(", ")
    );
}
