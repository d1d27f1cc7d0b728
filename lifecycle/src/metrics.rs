//! Prometheus metrics: lifecycle counters and histograms in a registry, plus the proxy's atomics
//! and per-state session counts rendered at scrape time (no I/O on scrape).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use wakeway_proxy::ProxyStats;

use crate::session::State;

/// Lifecycle metrics.
pub struct Metrics {
    registry: Registry,
    pub wakes: IntCounterVec,
    pub wake_seconds: HistogramVec,
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
    pub background_restarts: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let secs = vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
        Metrics {
            sweep_seconds: histogram(
                "wakeway_sweep_duration_seconds",
                "Time of one lifecycle sweep over every session, with the sleeps, backups and deletions it carries out (the sweep leader's), by result (ok, failed).",
                &["result"],
                vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            wakes: counter("wakeway_wakes_total", "Workspace starts by result (ok, failed).", &["result"]),
            wake_seconds: histogram(
                "wakeway_wake_duration_seconds",
                "Time from wake request to a workspace answering HTTP.",
                &["result"],
                secs.clone(),
            ),
            sleeps: counter(
                "wakeway_sleeps_total",
                "Workspaces put to sleep, by reason (idle, api, crashed, shutdown).",
                &["reason"],
            ),
            backups: counter("wakeway_backups_total", "Backups by result (ok, failed).", &["result"]),
            backup_seconds: histogram(
                "wakeway_backup_duration_seconds",
                "Time to write and verify a backup.",
                &["result"],
                secs.clone(),
            ),
            deletes: counter(
                "wakeway_deletes_total",
                "Workspaces deleted after a verified backup, by trigger (policy, api).",
                &["trigger"],
            ),
            background_restarts: counter(
                "wakeway_background_restarts_total",
                "Background tasks (sweep, checkpoint, events) restarted after a panic.",
                &["task"],
            ),
            backups_pruned: counter(
                "wakeway_backups_pruned_total",
                "Backups deleted after backup_retention.",
                &["result"],
            ),
            acme_orders: counter(
                "wakeway_acme_orders_total",
                "ACME certificate orders by result (ok, failed).",
                &["result"],
            ),
            restores: counter(
                "wakeway_restores_total",
                "Restores of a backup into a workspace, by result (ok, rejected, failed).",
                &["result"],
            ),
            restore_seconds: histogram(
                "wakeway_restore_duration_seconds",
                "Time to check, extract and swap in a backup (with the safety backup before it).",
                &["result"],
                secs,
            ),
            webhooks: counter(
                "wakeway_webhooks_total",
                "Webhook events by event and result (delivered, failed, dropped).",
                &["event", "result"],
            ),
            webhook_attempts: counter(
                "wakeway_webhook_attempts_total",
                "Webhook delivery attempts by result (ok, failed).",
                &["result"],
            ),
            api_requests: counter(
                "wakeway_api_requests_total",
                "Management API requests by endpoint and status.",
                &["endpoint", "status"],
            ),
            registry,
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
        let counters: [(&str, &str, u64); 17] = [
            ("wakeway_proxy_requests_total", "Requests proxied to workspaces.", stats.requests.load(Ordering::Relaxed)),
            (
                "wakeway_proxy_request_bytes_total",
                "Request body bytes sent to workspaces.",
                stats.bytes_in.load(Ordering::Relaxed),
            ),
            (
                "wakeway_proxy_response_bytes_total",
                "Response body bytes sent to clients.",
                stats.bytes_out.load(Ordering::Relaxed),
            ),
            (
                "wakeway_held_released_total",
                "Held requests released by a wake.",
                stats.held_released.load(Ordering::Relaxed),
            ),
            (
                "wakeway_held_timed_out_total",
                "Held requests answered 503 after hold_timeout.",
                stats.held_timed_out.load(Ordering::Relaxed),
            ),
            (
                "wakeway_held_rejected_total",
                "Requests answered 503 because too many were held.",
                stats.held_rejected.load(Ordering::Relaxed),
            ),
            (
                "wakeway_waiting_pages_total",
                "Waiting pages served to browser navigations.",
                stats.waiting_pages.load(Ordering::Relaxed),
            ),
            (
                "wakeway_unknown_host_total",
                "Requests for workspace hosts with no session.",
                stats.unknown_host.load(Ordering::Relaxed),
            ),
            (
                "wakeway_unauthorized_total",
                "Workspace requests refused by the sign-in check (401/429).",
                stats.unauthorized.load(Ordering::Relaxed),
            ),
            (
                "wakeway_signed_in_total",
                "Sign-in tokens exchanged for a workspace cookie.",
                stats.signed_in.load(Ordering::Relaxed),
            ),
            (
                "wakeway_wakes_refused_total",
                "Wakes refused by wake_attempts_per_minute.",
                stats.wakes_refused.load(Ordering::Relaxed),
            ),
            (
                "wakeway_not_woken_total",
                "Requests answered without waking (HEAD, OPTIONS, prefetch, bots, health).",
                stats.not_woken.load(Ordering::Relaxed),
            ),
            (
                "wakeway_sign_in_previews_total",
                "Sign-in links opened by something other than a browser navigation (link previews, HEAD), left unused.",
                stats.sign_in_previews.load(Ordering::Relaxed),
            ),
            (
                "wakeway_failures_limited_total",
                "Workspace requests answered 429 because their client address spent unauthenticated_per_minute on failed sign-ins or unknown hosts (API key failures show as wakeway_api_requests_total status 429).",
                stats.failures_limited.load(Ordering::Relaxed),
            ),
            (
                "wakeway_connections_over_limit_total",
                "Connections refused (429) because their address had max_connections_per_address open.",
                stats.connections_over_limit.load(Ordering::Relaxed),
            ),
            (
                "wakeway_header_timeouts_total",
                "Request heads not complete within header_timeout (408).",
                stats.header_timeouts.load(Ordering::Relaxed),
            ),
            (
                "wakeway_bad_framing_total",
                "Requests refused (400) for ambiguous framing: Content-Length with Transfer-Encoding, differing Content-Lengths, obs-fold, bare LF, invalid Transfer-Encoding.",
                stats.bad_framing.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
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
