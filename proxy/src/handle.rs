//! The per-session state the proxy touches on every request: activity counters (atomics only),
//! held-request count, and the lifecycle phase that held requests wait on.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;

use crate::host::SessionId;

/// Where a running workspace answers: a TCP address (a pod, or a local workspace without
/// isolation) or a Unix socket only wakeway can open (a local workspace under its own uid).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Upstream {
    Tcp(SocketAddr),
    Unix(Arc<str>),
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Tcp(addr) => addr.fmt(f),
            Upstream::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Self {
        Upstream::Tcp(addr)
    }
}

/// Where a session is in its life, as the proxy needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not running; a real request wakes it.
    Asleep,
    /// Being started (or restarted for a resize); requests wait.
    Starting,
    /// Answering at this address.
    Ready(Upstream),
    /// Being stopped or backed up; a request waits for that to finish, then wakes it.
    Busy,
    /// Deleted (or being deleted): 410.
    Gone,
    /// The last start failed; a new request tries again.
    Failed(Arc<str>),
}

/// What caused the latest activity (shown in status as `activity_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ActivitySource {
    None = 0,
    Http = 1,
    WebSocket = 2,
    Editor = 3,
    ApiWake = 4,
    Created = 5,
}

impl ActivitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivitySource::None => "none",
            ActivitySource::Http => "http",
            ActivitySource::WebSocket => "websocket",
            ActivitySource::Editor => "editor",
            ActivitySource::ApiWake => "api-wake",
            ActivitySource::Created => "created",
        }
    }

    /// The source named `text` (as [`as_str`](Self::as_str) writes it).
    pub fn parse(text: &str) -> Option<ActivitySource> {
        (0..=5).map(ActivitySource::from_u8).find(|source| source.as_str() == text)
    }

    /// Whether this source is a person interacting (HTTP request, editor input, API wake), as
    /// opposed to raw WebSocket traffic counted by the fallback rule. `max_awake_with_open_tab`
    /// caps how long the latter alone keeps a session awake.
    pub fn is_interaction(self) -> bool {
        matches!(
            self,
            ActivitySource::Http | ActivitySource::Editor | ActivitySource::ApiWake | ActivitySource::Created
        )
    }

    fn from_u8(v: u8) -> ActivitySource {
        match v {
            1 => ActivitySource::Http,
            2 => ActivitySource::WebSocket,
            3 => ActivitySource::Editor,
            4 => ActivitySource::ApiWake,
            5 => ActivitySource::Created,
            _ => ActivitySource::None,
        }
    }
}

/// Activity counters. Written by the proxy with relaxed atomics; read by the lifecycle.
#[derive(Debug, Default)]
pub struct Activity {
    last_activity_ms: AtomicI64,
    last_interaction_ms: AtomicI64,
    source: AtomicU8,
    pub requests: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub open_connections: AtomicUsize,
    /// A touch after this long without activity, or without interaction, ends a quiet spell
    /// (see [`Activity::touch`]); 0: never (the default).
    quiet_ms: AtomicI64,
    quiet_interaction_ms: AtomicI64,
}

impl Activity {
    /// Record user activity at `now_ms` (never moves backwards). True when it ends a quiet spell
    /// (see [`Activity::set_quiet`]): the first activity after that long without any, or the
    /// first interaction after that long without one. Of concurrent touches only one says so.
    pub fn touch(&self, now_ms: i64, source: ActivitySource) -> bool {
        let prev = self.last_activity_ms.fetch_max(now_ms, Ordering::Relaxed);
        if prev <= now_ms {
            self.source.store(source as u8, Ordering::Relaxed);
        }
        let ends = |prev: i64, quiet: &AtomicI64| {
            let quiet = quiet.load(Ordering::Relaxed);
            quiet > 0 && now_ms.saturating_sub(prev) >= quiet
        };
        let mut quiet_ended = ends(prev, &self.quiet_ms);
        if source.is_interaction() {
            let prev = self.last_interaction_ms.fetch_max(now_ms, Ordering::Relaxed);
            quiet_ended |= ends(prev, &self.quiet_interaction_ms);
        }
        quiet_ended
    }

    /// After how long without activity (and without interaction) a touch ends a quiet spell.
    /// The lifecycle sets them with several replicas, so the sweep leader hears at once of a
    /// session in use again that it could otherwise put to sleep before the next checkpoint.
    pub fn set_quiet(&self, activity: std::time::Duration, interaction: std::time::Duration) {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
        self.quiet_ms.store(ms(activity), Ordering::Relaxed);
        self.quiet_interaction_ms.store(ms(interaction), Ordering::Relaxed);
    }

    /// Seed the counters from what the store knew (at start-up); never moves them backwards.
    pub fn restore(&self, last_activity_ms: i64, last_interaction_ms: i64) {
        self.last_activity_ms.fetch_max(last_activity_ms, Ordering::Relaxed);
        self.last_interaction_ms.fetch_max(last_interaction_ms, Ordering::Relaxed);
    }

    /// Unix ms of the latest interaction (see [`ActivitySource::is_interaction`]).
    pub fn last_interaction_ms(&self) -> i64 {
        self.last_interaction_ms.load(Ordering::Relaxed)
    }

    /// Unix ms of the latest activity (0: none seen by this process).
    pub fn last_activity_ms(&self) -> i64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    pub fn source(&self) -> ActivitySource {
        ActivitySource::from_u8(self.source.load(Ordering::Relaxed))
    }

    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }
}

/// One session as the proxy sees it. Shared between proxy and lifecycle.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: SessionId,
    pub activity: Activity,
    held: AtomicUsize,
    websockets: AtomicUsize,
    /// Cookies signed with an older generation are refused (see [`crate::auth`]); raised by a
    /// revocation or deletion, learnt from the session record on every replica.
    cookie_generation: AtomicU64,
    phase: watch::Sender<Phase>,
}

impl SessionHandle {
    pub fn new(id: SessionId, phase: Phase) -> Self {
        SessionHandle {
            id,
            activity: Activity::default(),
            held: AtomicUsize::new(0),
            websockets: AtomicUsize::new(0),
            cookie_generation: AtomicU64::new(0),
            phase: watch::Sender::new(phase),
        }
    }

    /// The current phase (a cheap read; no await).
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// Publish a new phase; every waiter sees it.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_if_modified(|current| {
            let changed = *current != phase;
            *current = phase;
            changed
        });
    }

    /// Wait until the phase is `Ready`, `Gone` or `Failed` (returns it), or `deadline` passes
    /// (returns `None`). Every waiter shares the one phase channel: one wake releases all.
    pub async fn wait_settled(&self, deadline: tokio::time::Instant) -> Option<Phase> {
        let mut rx = self.phase.subscribe();
        let settled = rx.wait_for(|p| matches!(p, Phase::Ready(_) | Phase::Gone | Phase::Failed(_)));
        match tokio::time::timeout_at(deadline, settled).await {
            Ok(Ok(phase)) => Some(phase.clone()),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// The session's cookie generation (a cheap read; checked on every signed-in request).
    pub fn cookie_generation(&self) -> u64 {
        self.cookie_generation.load(Ordering::Acquire)
    }

    /// Learn a cookie generation (from the session record or a revocation); never moves back.
    pub fn raise_cookie_generation(&self, generation: u64) {
        self.cookie_generation.fetch_max(generation, Ordering::AcqRel);
    }

    /// Requests held right now for this session (the seed's `queue_length`).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Count one more held request if fewer than `max` are held; the guard un-counts it.
    pub(crate) fn try_hold(self: &Arc<Self>, max: usize) -> Option<HeldGuard> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| HeldGuard(self.clone()))
    }
}

impl SessionHandle {
    /// Count one more connection proxied to the workspace; the guard un-counts it.
    pub(crate) fn open_connection(self: &Arc<Self>) -> OpenConnection {
        self.activity.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Count one more open WebSocket if fewer than `max` are open; the slot un-counts it.
    pub(crate) fn try_open_websocket(self: &Arc<Self>, max: usize) -> Option<WebSocketSlot> {
        self.websockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| WebSocketSlot(self.clone()))
    }
}

/// A connection proxied to the workspace, counted in its session's open connections until dropped
/// (with its request, or with the WebSocket tunnel that took it over).
pub(crate) struct OpenConnection(Arc<SessionHandle>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.activity.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open WebSocket's place in its session's bound; released when dropped.
pub struct WebSocketSlot(Arc<SessionHandle>);

impl Drop for WebSocketSlot {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Un-counts a held request when dropped (also when the client goes away mid-wait).
pub(crate) struct HeldGuard(Arc<SessionHandle>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_phase_change_releases_every_waiter() {
        let handle = Arc::new(SessionHandle::new(SessionId::parse("abc12345").unwrap(), Phase::Asleep));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let h = handle.clone();
                tokio::spawn(async move { h.wait_settled(deadline).await })
            })
            .collect();
        tokio::task::yield_now().await;
        handle.set_phase(Phase::Starting);
        let addr = Upstream::Tcp("127.0.0.1:1234".parse().unwrap());
        handle.set_phase(Phase::Ready(addr.clone()));
        for w in waiters {
            assert_eq!(w.await.unwrap(), Some(Phase::Ready(addr.clone())));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_bounded() {
        let handle = SessionHandle::new(SessionId::parse("abc12345").unwrap(), Phase::Starting);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        assert_eq!(handle.wait_settled(deadline).await, None);
    }

    #[test]
    fn held_requests_are_bounded_and_uncounted_on_drop() {
        let handle = Arc::new(SessionHandle::new(SessionId::parse("abc12345").unwrap(), Phase::Asleep));
        let a = handle.try_hold(2).unwrap();
        let _b = handle.try_hold(2).unwrap();
        assert!(handle.try_hold(2).is_none());
        assert_eq!(handle.held(), 2);
        drop(a);
        assert_eq!(handle.held(), 1);
        assert!(handle.try_hold(2).is_some());
    }

    #[test]
    fn a_touch_after_a_quiet_spell_says_so_once() {
        let a = Activity::default();
        assert!(!a.touch(1_000, ActivitySource::Http), "no threshold set: never");
        a.set_quiet(std::time::Duration::from_secs(10), std::time::Duration::from_secs(60));
        assert!(!a.touch(5_000, ActivitySource::WebSocket), "4 s later");
        assert!(a.touch(15_000, ActivitySource::WebSocket), "10 s without activity");
        assert!(!a.touch(15_000, ActivitySource::WebSocket), "the same spell, told once");
        // Raw WebSocket traffic keeps it active, but nobody interacted since 1 s.
        for t in [24_000, 33_000, 42_000, 51_000, 60_000] {
            assert!(!a.touch(t, ActivitySource::WebSocket), "{t}");
        }
        assert!(a.touch(61_000, ActivitySource::Editor), "60 s without interaction");
        assert!(!a.touch(62_000, ActivitySource::Editor));
    }

    #[test]
    fn activity_never_moves_backwards() {
        let a = Activity::default();
        a.touch(2_000, ActivitySource::Http);
        a.touch(1_000, ActivitySource::WebSocket);
        assert_eq!(a.last_activity_ms(), 2_000);
        assert_eq!(a.source(), ActivitySource::Http);
        a.touch(3_000, ActivitySource::WebSocket);
        assert_eq!(
            (a.last_activity_ms(), a.last_interaction_ms()),
            (3_000, 2_000),
            "raw WebSocket data is not an interaction"
        );
    }
}
