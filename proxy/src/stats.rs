//! Process-wide proxy counters (atomics), rendered by the lifecycle's `/metrics`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters the proxy bumps on its hot path. Monotonic except `held_now`.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Requests proxied to a workspace (including WebSocket upgrades).
    pub requests: AtomicU64,
    /// Request body bytes sent to workspaces (client → workspace, including WebSocket frames).
    pub bytes_in: AtomicU64,
    /// Response body bytes sent to clients (workspace → client).
    pub bytes_out: AtomicU64,
    /// Requests held right now while their workspace wakes.
    pub held_now: AtomicUsize,
    /// Requests released after waiting for a wake.
    pub held_released: AtomicU64,
    /// Requests answered 503 because the wait ran out.
    pub held_timed_out: AtomicU64,
    /// Requests answered 503 because too many were held already.
    pub held_rejected: AtomicU64,
    /// Waiting pages served to browser navigations.
    pub waiting_pages: AtomicU64,
    /// Requests for a workspace host with no such session.
    pub unknown_host: AtomicU64,
    /// Requests refused by the workspace sign-in check (401/429).
    pub unauthorized: AtomicU64,
    /// Sign-in tokens exchanged for a workspace cookie.
    pub signed_in: AtomicU64,
    /// Wakes refused by `wake_attempts_per_minute`.
    pub wakes_refused: AtomicU64,
    /// Requests answered without waking (HEAD, OPTIONS, prefetch, bots, health checks).
    pub not_woken: AtomicU64,
    /// Sign-in links opened by something other than a browser navigation (link previews, HEAD):
    /// answered with a page, the token left unused.
    pub sign_in_previews: AtomicU64,
    /// Requests answered 429 because their client address spent its failure budget (failed
    /// sign-ins, unknown workspace hosts, missing or wrong API keys).
    pub failures_limited: AtomicU64,
    /// Connections refused because their address had `max_connections_per_address` open.
    pub connections_over_limit: AtomicU64,
    /// Request heads not complete within `header_timeout` (answered 408).
    pub header_timeouts: AtomicU64,
    /// Requests refused for ambiguous framing (smuggling attempts: CL+TE, differing
    /// Content-Lengths, obs-fold, bare LF, invalid Transfer-Encoding), answered 400.
    pub bad_framing: AtomicU64,
}

impl ProxyStats {
    /// Add one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
