//! Crash injection for tests: `WAKEWAY_FAILPOINT=<name>` aborts the process (like a SIGKILL, no
//! cleanup) when execution reaches the named point inside a lifecycle step. Compiled in only with
//! the `failpoints` cargo feature (the test build); otherwise [`hit`] is an empty inline function.
//!
//! The points, in the order a step reaches them:
//! - sleep: `sleep.after_stopping_saved`, `sleep.after_stop`
//! - wake: `wake.after_waking_saved`, `wake.after_start`
//! - scale: `scale.after_stop`, `scale.after_start`
//! - backup: `backup.mid_zip`, `backup.before_rename`, `backup.after_rename`
//! - delete: `delete.before_destroy`, `delete.after_destroy`
//! - restore: `restore.after_safety_backup`, `restore.mid_extract`, `restore.before_swap`,
//!   `restore.mid_swap`, `restore.after_swap`

/// Every failpoint name (tests iterate over them).
pub const ALL: &[&str] = &[
    "sleep.after_stopping_saved",
    "sleep.after_stop",
    "wake.after_waking_saved",
    "wake.after_start",
    "scale.after_stop",
    "scale.after_start",
    "backup.mid_zip",
    "backup.before_rename",
    "backup.after_rename",
    "delete.before_destroy",
    "delete.after_destroy",
    "restore.after_safety_backup",
    "restore.mid_extract",
    "restore.before_swap",
    "restore.mid_swap",
    "restore.after_swap",
];

/// Abort the process if `WAKEWAY_FAILPOINT` names this point.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("WAKEWAY_FAILPOINT").ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(name) {
        eprintln!("wakeway: failpoint {name} reached: aborting");
        std::process::abort();
    }
}

/// Failpoints are compiled out of this build.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Whether this build can abort at failpoints.
pub const ENABLED: bool = cfg!(feature = "failpoints");
