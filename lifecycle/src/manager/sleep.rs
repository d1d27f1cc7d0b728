//! Sleeping and scaling: putting a workspace to sleep (decided again under the lock for the
//! policy's sleeps), stopping every workspace at exit, and restarting one with another tier.

use std::time::Duration;

use serde_json::json;
use wakeway_proxy::{Phase, SessionId};

use super::runtime::SessionRuntime;
use super::{LifecycleError, Manager, Result};
use crate::failpoint;
use crate::policy::Action;
use crate::session::{Session, State};
use crate::webhook::Event;

/// Which way to scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleDirection {
    Up,
    Down,
}

impl ScaleDirection {
    /// `up` or `down`.
    pub fn parse(name: &str) -> Option<ScaleDirection> {
        match name {
            "up" => Some(ScaleDirection::Up),
            "down" => Some(ScaleDirection::Down),
            _ => None,
        }
    }
}

/// Why a session is being put to sleep (a metric label and a log field).
#[derive(Debug, Clone, Copy)]
pub enum SleepReason {
    Idle,
    /// Only raw WebSocket traffic for `max_awake_with_open_tab`.
    OpenTabCap,
    Api,
    Crashed,
    Shutdown,
}

impl SleepReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SleepReason::Idle => "idle",
            SleepReason::OpenTabCap => "open_tab_cap",
            SleepReason::Api => "api",
            SleepReason::Crashed => "crashed",
            SleepReason::Shutdown => "shutdown",
        }
    }
}

impl Manager {
    /// Put a session to sleep (idempotent for a sleeping one).
    pub async fn sleep(&self, id: &SessionId, reason: SleepReason) -> Result<Session> {
        self.run_locked(id, "sleep", move |this, rt| async move {
            let mut s = this.load(&rt.handle.id).await?;
            // A policy sleep is decided again under the lock: a request may have come meanwhile.
            if matches!(reason, SleepReason::Idle | SleepReason::OpenTabCap)
                && !matches!(this.decide(&rt, &s), Action::Sleep | Action::SleepOpenTab)
            {
                return Ok(s);
            }
            this.sleep_inner(&rt, &mut s, reason).await?;
            Ok(s)
        })
        .await
    }

    /// The policy's decision for `s` now; with a shared store, other replicas' activity is given
    /// a grace to arrive (see [`Manager::quiet_spells`]).
    pub(super) fn decide(&self, rt: &SessionRuntime, s: &Session) -> Action {
        let grace = if self.inner.shared { self.quiet_spells(s).grace } else { Duration::ZERO };
        let at = crate::policy::before(self.now(), grace);
        self.inner.policy.decide(s, self.seen(rt, s), at)
    }

    /// Sleep `s` from whatever state it is in (op lock held).
    pub(super) async fn sleep_inner(&self, rt: &SessionRuntime, s: &mut Session, reason: SleepReason) -> Result<()> {
        match s.state {
            State::Sleeping | State::BackupFailed | State::Failed => Ok(()),
            State::Running | State::Stopping | State::Starting | State::Waking | State::Resizing => {
                if s.state == State::Running {
                    self.transition(rt, s, State::Stopping).await?;
                    failpoint::hit("sleep.after_stopping_saved");
                } else if s.state != State::Stopping {
                    self.publish(rt, s);
                }
                self.finish_sleep(rt, s, reason).await
            }
            State::Deleting | State::Deleted => Err(LifecycleError::Deleted(s.uuid.clone())),
            other => Err(LifecycleError::Conflict {
                id: s.uuid.clone(),
                state: other.as_str(),
                what: "it cannot be put to sleep now".into(),
            }),
        }
    }

    /// Stop the workspace and record it asleep.
    pub(super) async fn finish_sleep(&self, rt: &SessionRuntime, s: &mut Session, reason: SleepReason) -> Result<()> {
        rt.handle.set_phase(Phase::Busy);
        self.inner.backend.stop(s).await?;
        failpoint::hit("sleep.after_stop");
        s.placement = None;
        if s.state != State::Sleeping {
            s.usage.count_sleep(self.now(), reason.as_str());
        }
        self.transition(rt, s, State::Sleeping).await?;
        self.inner.metrics.sleeps.with_label_values(&[reason.as_str()]).inc();
        tracing::info!(session = %s.uuid, reason = reason.as_str(), "workspace asleep");
        self.event(Event::Slept, s, json!({ "reason": reason.as_str() }));
        Ok(())
    }

    /// Stop every running workspace (wakeway is exiting). They wake again on the next request.
    pub async fn stop_all(&self) {
        let awake: Vec<SessionId> =
            self.inner.sessions.iter().filter(|r| r.state().is_awake()).map(|r| r.key().clone()).collect();
        let stops = awake.iter().map(|id| self.sleep(id, SleepReason::Shutdown));
        for (id, result) in awake.iter().zip(futures::future::join_all(stops).await) {
            if let Err(e) = result {
                tracing::warn!(session = %id, error = %e, "could not stop workspace at exit");
            }
        }
    }

    /// Change a session's tier. A running workspace is restarted with the new resources (held
    /// requests wait through it); a sleeping one gets them on its next wake.
    pub async fn scale(&self, id: &SessionId, direction: ScaleDirection) -> Result<Session> {
        self.run_locked(id, "scale", move |this, rt| async move { this.scale_inner(&rt, direction).await }).await
    }

    async fn scale_inner(&self, rt: &SessionRuntime, direction: ScaleDirection) -> Result<Session> {
        let mut s = self.load(&rt.handle.id).await?;
        let tier = match direction {
            ScaleDirection::Up => self.inner.config.workspaces.scale_up_tier.clone(),
            ScaleDirection::Down => self.inner.config.workspaces.scale_down_tier.clone(),
        };
        match s.state {
            State::Running if s.tier == tier => Ok(s),
            State::Running => {
                self.resize_running(rt, &mut s, tier).await?;
                Ok(s)
            }
            State::Sleeping | State::BackupFailed | State::Failed => {
                s.tier = tier;
                self.save(rt, &mut s).await?;
                Ok(s)
            }
            State::Deleting | State::Deleted => Err(LifecycleError::Deleted(s.uuid)),
            other => Err(LifecycleError::Conflict {
                id: s.uuid.clone(),
                state: other.as_str(),
                what: "it cannot be resized now; try again when it is running or asleep".into(),
            }),
        }
    }

    /// Restart a running workspace with `tier`'s resources.
    async fn resize_running(&self, rt: &SessionRuntime, s: &mut Session, tier: String) -> Result<()> {
        self.transition(rt, s, State::Resizing).await?;
        self.inner.backend.stop(s).await?;
        failpoint::hit("scale.after_stop");
        s.placement = None;
        s.tier = tier;
        match self.start(s).await {
            Ok(started) => {
                failpoint::hit("scale.after_start");
                self.record_started(rt, s, &started).await?;
                tracing::info!(session = %s.uuid, tier = %s.tier, "workspace resized");
                Ok(())
            }
            Err(e) => {
                self.record_start_failed(rt, s, &e).await?;
                Err(e.into())
            }
        }
    }
}
