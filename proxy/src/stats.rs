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
}

impl ProxyStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
