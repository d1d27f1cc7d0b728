//! `wakeway-bench-seed DATA_DIR N`: register N sleeping sessions in the embedded store of a
//! wakeway data folder (created if missing), in one transaction, before `wakeway serve` opens it.
//! The sessions-at-scale bench (benches/bench.py) compares a wakeway holding N of them with one
//! holding a single session. Prints one JSON line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use wakeway_lifecycle::session::{Session, SessionId, State};
use wakeway_lifecycle::store::EmbeddedStore;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(n)) = (args.next().map(PathBuf::from), args.next().and_then(|n| n.parse::<usize>().ok()))
    else {
        eprintln!("usage: wakeway-bench-seed DATA_DIR N");
        std::process::exit(2);
    };
    std::fs::create_dir_all(&dir).expect("create the data folder");
    let store = EmbeddedStore::open(&dir.join("wakeway.redb")).unwrap_or_else(|e| panic!("{e}"));
    let tier = wakeway_config::Config::default().workspaces.default_tier;
    let now = chrono::Utc::now();
    let t0 = Instant::now();
    let sessions: Vec<Session> = (0..n)
        .map(|i| {
            // Ids no API call would pick by chance: 16 hex digits starting "be".
            let id = SessionId::parse(&format!("be{i:014x}")).expect("a valid id");
            let mut s = Session::new(&id, &format!("bench-{i}@example.com"), &tier, now);
            s.state = State::Sleeping;
            s.last_activity = now - chrono::Duration::hours(1);
            s.last_interaction = Some(s.last_activity);
            s.activity_source = "http".into();
            s.slept_at = Some(now - chrono::Duration::minutes(30));
            s
        })
        .collect();
    let written = store.import(&sessions).unwrap_or_else(|e| panic!("{e}"));
    let bytes = std::fs::metadata(dir.join("wakeway.redb")).map(|m| m.len()).unwrap_or(0);
    println!("{{\"sessions\": {written}, \"seconds\": {:.3}, \"store_bytes\": {bytes}}}", t0.elapsed().as_secs_f64());
}
