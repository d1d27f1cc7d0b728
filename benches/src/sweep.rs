//! `wakeway-bench-sweep [N]`: the sweep over N registered sessions (default 100,000, asleep as in
//! the sessions-at-scale step: slept 30 min ago, so none is due), through a real manager built as
//! `wakeway serve` builds it (embedded store in a temporary data folder, local backend). Timed:
//! the first sweep of a manager that has not read the store yet — it reads and decides on every
//! record, as every sweep did before the deadline index (best of three fresh managers) — then,
//! after `recover` (which `wakeway serve` runs at start and which fills the index), the median of
//! five sweeps that visit only the sessions due. Prints one JSON line.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use wakeway_config::{Config, Isolation};
use wakeway_lifecycle::session::{Session, SessionId, State};
use wakeway_lifecycle::store::EmbeddedStore;
use wakeway_proxy::{ProxyStats, SystemClock};

/// N sleeping sessions, as `wakeway-bench-seed` registers them, written to the data folder.
fn seed(dir: &std::path::Path, n: usize, tier: &str) {
    let store = EmbeddedStore::open(&dir.join("wakeway.redb")).unwrap_or_else(|e| panic!("{e}"));
    let now = Utc::now();
    let sessions: Vec<Session> = (0..n)
        .map(|i| {
            let id = SessionId::parse(&format!("be{i:014x}")).expect("a valid id");
            let mut s = Session::new(&id, &format!("bench-{i}@example.com"), tier, now);
            s.state = State::Sleeping;
            s.last_activity = now - chrono::Duration::hours(1);
            s.last_interaction = Some(s.last_activity);
            s.slept_at = Some(now - chrono::Duration::minutes(30));
            s
        })
        .collect();
    store.import(&sessions).unwrap_or_else(|e| panic!("{e}"));
}

/// Milliseconds one sweep takes.
fn timed(rt: &tokio::runtime::Runtime, manager: &wakeway_lifecycle::Manager) -> f64 {
    let t0 = Instant::now();
    rt.block_on(manager.sweep()).unwrap_or_else(|e| panic!("the sweep failed: {e}"));
    t0.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("wakeway-bench-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    let mut config = Config::default();
    config.server.data_dir = dir.clone();
    config.workspaces.command = Some("sleep 3600 # {workspace}".into());
    config.local.isolation = Isolation::Off;
    seed(&dir, n, &config.workspaces.default_tier);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let (config, stats) = (Arc::new(config), Arc::new(ProxyStats::default()));
    let build = || {
        let clock = Arc::new(SystemClock);
        rt.block_on(wakeway_lifecycle::build(config.clone(), clock, stats.clone(), rt.handle().clone()))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // Three fresh managers (the store warm after the first), each timed at its first sweep.
    let mut full_ms = Vec::new();
    let mut built = None;
    for _ in 0..3 {
        drop(built.take());
        let fresh = build();
        full_ms.push(timed(&rt, &fresh.wakeway.manager));
        built = Some(fresh);
    }
    let manager = built.as_ref().expect("a manager").wakeway.manager.clone();
    rt.block_on(manager.recover()).unwrap_or_else(|e| panic!("{e}"));
    let mut due_ms: Vec<f64> = (0..5).map(|_| timed(&rt, &manager)).collect();
    due_ms.sort_by(f64::total_cmp);
    full_ms.sort_by(f64::total_cmp);
    drop((manager, built));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{{\"sessions\": {n}, \"full_sweep_ms_best\": {:.1}, \"full_sweep_ms\": {full_ms:.1?}, \
         \"due_sweep_ms_median\": {:.2}, \"due_sweep_ms\": {due_ms:.2?}}}",
        full_ms[0], due_ms[2]
    );
}
