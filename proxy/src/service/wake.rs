//! Until the workspace is ready: a navigation gets the waiting page, an API or asset request is
//! held (bounded per session and in all) until the wake settles, a passive request is answered
//! without waking anything. Wakes are rate-limited per session.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora::prelude::Session;

use super::reply::{Reply, Verdict, phase_state};
use super::{RequestCtx, WakewayProxy};
use crate::classify::{RequestKind, classify};
use crate::handle::{ActivitySource, HeldGuard, Phase, SessionHandle, Upstream};
use crate::refusal::Reason;
use crate::stats::ProxyStats;

/// Where a request stands once the workspace's phase is known.
pub(super) enum Readiness {
    /// Forward it to the workspace here.
    Ready(Upstream),
    /// Answer it here (waiting page, refusal).
    Answer(Reply),
}

impl From<Reason> for Readiness {
    fn from(reason: Reason) -> Self {
        Readiness::Answer(Reply::Refuse(reason))
    }
}

impl WakewayProxy {
    /// Classify the request, note it in `ctx`, and count it as activity unless it is passive.
    pub(super) fn note_activity(
        &self,
        session: &Session,
        handle: &Arc<SessionHandle>,
        ctx: &mut RequestCtx,
    ) -> (RequestKind, ActivitySource) {
        let req = session.req_header();
        let kind = classify(&req.method, req.uri.path(), req.uri.query(), &req.headers, &self.settings.bot_user_agents);
        ctx.upgrade = session.is_upgrade_req();
        ctx.counts = !matches!(kind, RequestKind::Passive(_));
        ctx.session = Some(handle.clone());
        let source = if ctx.upgrade { ActivitySource::WebSocket } else { ActivitySource::Http };
        if ctx.counts {
            self.meter.touch(handle, source);
        }
        (kind, source)
    }

    /// Wait (or answer) until the workspace is ready for a request of this `kind`.
    pub(super) async fn until_ready(
        &self,
        handle: &Arc<SessionHandle>,
        kind: RequestKind,
        source: ActivitySource,
    ) -> Readiness {
        match (handle.phase(), kind) {
            (Phase::Ready(addr), _) => Readiness::Ready(addr),
            (Phase::Gone, _) => Reason::Gone.into(),
            (phase, RequestKind::Passive(reason)) => {
                ProxyStats::bump(&self.stats.not_woken);
                let (state, ..) = phase_state(&phase);
                Reason::Asleep { state, request: reason.as_str() }.into()
            }
            (_, RequestKind::Navigate) => {
                if let Verdict::Answer(reply) = self.wake(handle, source) {
                    return Readiness::Answer(reply);
                }
                ProxyStats::bump(&self.stats.waiting_pages);
                Readiness::Answer(Reply::Waiting)
            }
            (_, RequestKind::Hold) => self.hold(handle, source).await,
        }
    }

    /// Hold the request (body unread) until the wake settles, within `hold_timeout`.
    async fn hold(&self, handle: &Arc<SessionHandle>, source: ActivitySource) -> Readiness {
        let Some(_slot) = self.hold_slot(handle) else {
            ProxyStats::bump(&self.stats.held_rejected);
            return Reason::TooManyWaiting.into();
        };
        if let Verdict::Answer(reply) = self.wake(handle, source) {
            return Readiness::Answer(reply);
        }
        let deadline = tokio::time::Instant::now() + self.settings.hold_timeout;
        match handle.wait_settled(deadline).await {
            Some(Phase::Ready(addr)) => {
                ProxyStats::bump(&self.stats.held_released);
                Readiness::Ready(addr)
            }
            Some(Phase::Gone) => Reason::Gone.into(),
            Some(Phase::Failed(why)) => Reason::StartFailed { why: why.to_string() }.into(),
            _ => {
                ProxyStats::bump(&self.stats.held_timed_out);
                Reason::WakeTimeout { secs: self.settings.hold_timeout.as_secs() }.into()
            }
        }
    }

    /// Ask for a wake, within `wake_attempts_per_minute` for this session (429 beyond).
    fn wake(&self, handle: &Arc<SessionHandle>, source: ActivitySource) -> Verdict {
        if matches!(handle.phase(), Phase::Asleep | Phase::Failed(_))
            && let Err(wait) = self.wakes.check(&handle.id)
        {
            ProxyStats::bump(&self.stats.wakes_refused);
            return Reason::TooManyWakes { wait }.into();
        }
        self.lifecycle.request_wake(handle, source);
        Verdict::Pass
    }

    fn hold_slot(&self, handle: &Arc<SessionHandle>) -> Option<(HeldGuard, GlobalHeld<'_>)> {
        let global = GlobalHeld::try_new(&self.stats.held_now, self.settings.max_held_total)?;
        let local = handle.try_hold(self.settings.max_held_per_session)?;
        Some((local, global))
    }
}

/// A slot in the global count of held requests; released on drop.
struct GlobalHeld<'a>(&'a AtomicUsize);

impl<'a> GlobalHeld<'a> {
    fn try_new(counter: &'a AtomicUsize, max: usize) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| GlobalHeld(counter))
    }
}

impl Drop for GlobalHeld<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
