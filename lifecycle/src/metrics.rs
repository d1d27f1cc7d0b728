//! Prometheus metrics: lifecycle counters and histograms in a registry, plus the proxy's atomics
//! and per-state session counts rendered at scrape time (no I/O on scrape).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use wakeway_proxy::ProxyStats;

use crate::session::State;

/// Where a proxy counter is counted.
type Counted = fn(&ProxyStats) -> &AtomicU64;

/// The proxy's counters, rendered at scrape time: name, help, and the atomic that counts it.
const PROXY_COUNTERS: [(&str, &str, Counted); 17] = [
    ("wakeway_proxy_requests_total", "Requests proxied to workspaces.", |s| &s.requests),
    ("wakeway_proxy_request_bytes_total", "Request body bytes sent to workspaces.", |s| &s.bytes_in),
    ("wakeway_proxy_response_bytes_total", "Response body bytes sent to clients.", |s| &s.bytes_out),
    ("wakeway_held_released_total", "Held requests released by a wake.", |s| &s.held_released),
    ("wakeway_held_timed_out_total", "Held requests answered 503 after hold_timeout.", |s| &s.held_timed_out),
    ("wakeway_held_rejected_total", "Requests answered 503 because too many were held.", |s| &s.held_rejected),
    ("wakeway_waiting_pages_total", "Waiting pages served to browser navigations.", |s| &s.waiting_pages),
    ("wakeway_unknown_host_total", "Requests for workspace hosts with no session.", |s| &s.unknown_host),
    ("wakeway_unauthorized_total", "Workspace requests refused by the sign-in check (401/429).", |s| &s.unauthorized),
    ("wakeway_signed_in_total", "Sign-in tokens exchanged for a workspace cookie.", |s| &s.signed_in),
    ("wakeway_wakes_refused_total", "Wakes refused by wake_attempts_per_minute.", |s| &s.wakes_refused),
    ("wakeway_not_woken_total", "Requests answered without waking (HEAD, OPTIONS, prefetch, bots, health).", |s| {
        &s.not_woken
    }),
    (
        "wakeway_sign_in_previews_total",
        "Sign-in links opened by something other than a browser navigation (link previews, HEAD), left unused.",
        |s| &s.sign_in_previews,
    ),
    (
        "wakeway_failures_limited_total",
        "Workspace requests answered 429 because their client address spent unauthenticated_per_minute on failed sign-ins or unknown hosts (API key failures show as wakeway_api_requests_total status 429).",
        |s| &s.failures_limited,
    ),
    (
        "wakeway_connections_over_limit_total",
        "Connections refused (429) because their address had max_connections_per_address open.",
        |s| &s.connections_over_limit,
    ),
    ("wakeway_header_timeouts_total", "Request heads not complete within header_timeout (408).", |s| {
        &s.header_timeouts
    }),
    (
        "wakeway_bad_framing_total",
        "Requests refused (400) for ambiguous framing: Content-Length with Transfer-Encoding, differing Content-Lengths, obs-fold, bare LF, invalid Transfer-Encoding.",
        |s| &s.bad_framing,
    ),
];

/// Makes metrics, each registered in one registry.
struct Registrar(Registry);

impl Registrar {
    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.0.register(Box::new(c.clone())).expect("unique metric");
        c
    }

    /// A counter of fractional amounts (seconds).
    fn float_counter(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        let c = CounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.0.register(Box::new(c.clone())).expect("unique metric");
        c
    }

    /// A counter by result (`ok`, `failed`, …).
    fn results(&self, name: &str, help: &str) -> IntCounterVec {
        self.counter(name, help, &["result"])
    }

    /// A histogram by result.
    fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
        self.histogram_by(name, help, buckets, "result")
    }

    /// A histogram by `label`.
    fn histogram_by(&self, name: &str, help: &str, buckets: Vec<f64>, label: &str) -> HistogramVec {
        let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[label]).expect("valid metric");
        self.0.register(Box::new(h.clone())).expect("unique metric");
        h
    }

    /// A histogram of durations by result, from 10 ms to 2 min.
    fn seconds(&self, name: &str, help: &str) -> HistogramVec {
        self.seconds_by(name, help, "result")
    }

    /// A histogram of durations by `label`, from 10 ms to 2 min.
    fn seconds_by(&self, name: &str, help: &str, label: &str) -> HistogramVec {
        let buckets = vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
        self.histogram_by(name, help, buckets, label)
    }
}

const WAKE_PHASE_HELP: &str = "Kubernetes wakes of a new pod, by phase: scheduled (scale accepted to PodScheduled), started (to the workspace container running: image pull, init containers), ready (to the Ready condition), routable (to wakeway's first answered HTTP probe). From the pod's condition times (1 s resolution).";

/// Lifecycle metrics.
pub struct Metrics {
    registry: Registry,
    pub wakes: IntCounterVec,
    pub wake_seconds: HistogramVec,
    /// Kubernetes wakes by phase: scheduled, started, ready, routable.
    pub wake_phase_seconds: HistogramVec,
    pub sleeps: IntCounterVec,
    pub backups: IntCounterVec,
    pub backup_seconds: HistogramVec,
    pub deletes: IntCounterVec,
    pub backups_pruned: IntCounterVec,
    pub restores: IntCounterVec,
    pub restore_seconds: HistogramVec,
    pub webhooks: IntCounterVec,
    pub webhook_attempts: IntCounterVec,
    pub api_requests: IntCounterVec,
    pub acme_orders: IntCounterVec,
    pub sweep_seconds: HistogramVec,
    /// Sessions whose activity was published at once, outside a checkpoint (shared store).
    pub activity_published: IntCounterVec,
    pub background_restarts: IntCounterVec,
    /// Seconds sessions spent in each state and tier, counted as records are written.
    pub state_seconds: CounterVec,
    /// Sign-ins with the OIDC provider by result (`workspace_auth = "oidc"`).
    pub oidc_logins: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registrar(Registry::new());
        Metrics {
            sweep_seconds: r.histogram(
                "wakeway_sweep_duration_seconds",
                "Time of one lifecycle sweep over every session, with the sleeps, backups and deletions it carries out (the sweep leader's), by result (ok, failed).",
                vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            activity_published: r.counter(
                "wakeway_activity_published_total",
                "Sessions whose activity this replica wrote to the shared store at once because it ended a quiet spell (the sweep leader hears of it before it could sleep the session), outside the regular checkpoints.",
                &[],
            ),
            wakes: r.results("wakeway_wakes_total", "Workspace starts by result (ok, failed)."),
            wake_seconds: r.seconds("wakeway_wake_duration_seconds", "Time from wake request to a workspace answering HTTP."),
            wake_phase_seconds: r.seconds_by("wakeway_k8s_wake_phase_seconds", WAKE_PHASE_HELP, "phase"),
            sleeps: r.counter(
                "wakeway_sleeps_total",
                "Workspaces put to sleep, by reason (idle, api, crashed, shutdown).",
                &["reason"],
            ),
            backups: r.results("wakeway_backups_total", "Backups by result (ok, failed)."),
            backup_seconds: r.seconds("wakeway_backup_duration_seconds", "Time to write and verify a backup."),
            deletes: r.counter(
                "wakeway_deletes_total",
                "Workspaces deleted after a verified backup, by trigger (policy, api).",
                &["trigger"],
            ),
            background_restarts: r.counter(
                "wakeway_background_restarts_total",
                "Background tasks (sweep, checkpoint, events) restarted after a panic.",
                &["task"],
            ),
            backups_pruned: r.results("wakeway_backups_pruned_total", "Backups deleted after backup_retention."),
            acme_orders: r.results("wakeway_acme_orders_total", "ACME certificate orders by result (ok, failed)."),
            restores: r.results(
                "wakeway_restores_total",
                "Restores of a backup into a workspace, by result (ok, rejected, failed).",
            ),
            restore_seconds: r.seconds(
                "wakeway_restore_duration_seconds",
                "Time to check, extract and swap in a backup (with the safety backup before it).",
            ),
            webhooks: r.counter(
                "wakeway_webhooks_total",
                "Webhook events by event and result (delivered, failed, dropped).",
                &["event", "result"],
            ),
            webhook_attempts: r.results("wakeway_webhook_attempts_total", "Webhook delivery attempts by result (ok, failed)."),
            api_requests: r.counter(
                "wakeway_api_requests_total",
                "Management API requests by endpoint and status.",
                &["endpoint", "status"],
            ),
            state_seconds: r.float_counter(
                "wakeway_state_seconds_total",
                "Seconds sessions spent running (by tier), sleeping and deleted with their backup kept, counted when their records are written (transitions, activity checkpoints); summed over replicas, each second is counted once.",
                &["state", "tier"],
            ),
            oidc_logins: r.results(
                "wakeway_oidc_logins_total",
                "Sign-ins with the OIDC provider by result: ok, denied (at the provider), expired (or used), other_browser, unverified (the ID token failed a check), provider_down, wrong_user (signed in, not this workspace's user), no_user (no verified user claim), store_down.",
            ),
            registry: r.0,
        }
    }

    /// The whole exposition: registry + session states + proxy counters.
    pub fn render(&self, states: &[(State, usize)], stats: &ProxyStats, store_up: bool) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        let _ = writeln!(text, "# HELP wakeway_sessions Sessions by lifecycle state.\n# TYPE wakeway_sessions gauge");
        for (state, n) in states {
            let _ = writeln!(text, "wakeway_sessions{{state=\"{}\"}} {n}", state.as_str());
        }
        let _ = writeln!(
            text,
            "# HELP wakeway_store_up Whether the session store answers (1) or not (0).\n# TYPE wakeway_store_up gauge"
        );
        let _ = writeln!(text, "wakeway_store_up {}", u8::from(store_up));
        for (name, help, counted) in PROXY_COUNTERS {
            let value = counted(stats).load(Ordering::Relaxed);
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let held = stats.held_now.load(Ordering::Relaxed);
        let _ = writeln!(
            text,
            "# HELP wakeway_held_requests Requests held right now while a workspace wakes.\n# TYPE wakeway_held_requests gauge\nwakeway_held_requests {held}"
        );
        text
    }
}
