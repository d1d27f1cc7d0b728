//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go does it: the
//! holder renews `renewTime` every `lease_duration / 3`; another replica takes the Lease only
//! when it has seen the same record unchanged for a whole `leaseDurationSeconds` (measured on its
//! own clock, so clock skew between replicas does not matter); every write carries the
//! `resourceVersion` it read, so of two replicas racing for it exactly one wins (the other gets
//! 409 Conflict). Only the leader may run the sweep (sleep, back up, delete); any replica may wake.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use wakeway_proxy::Clock;

/// A Lease call that failed for another reason than losing a race.
#[derive(Debug, thiserror::Error)]
#[error("Lease {name}: {source}")]
pub struct LeaseError {
    name: String,
    #[source]
    source: kube::Error,
}

/// What this replica last saw in the Lease, and when (on its own clock).
#[derive(Debug, Clone, PartialEq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: Option<i32>,
}

/// One replica's handle on the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    clock: Arc<dyn Clock>,
    observed: Mutex<Option<(Record, i64)>>,
}

fn micro_time(ms: i64) -> MicroTime {
    MicroTime(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

impl LeaseLock {
    /// `identity` must be unique per replica (the pod name).
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
        clock: Arc<dyn Clock>,
    ) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            clock,
            observed: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn err(&self, source: kube::Error) -> LeaseError {
        LeaseError { name: self.name.clone(), source }
    }

    /// When this replica first saw `lease`'s current record (now, if it changed).
    fn observe(&self, lease: &Lease, now: i64) -> i64 {
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Record {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions,
        };
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match &*observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                *observed = Some((record, now));
                now
            }
        }
    }

    /// One round: take the Lease if it is free or expired, renew it if it is ours. `Ok(true)`:
    /// this replica leads for `lease_duration` from now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let current = self.api.get_opt(&self.name).await.map_err(|e| self.err(e))?;
        self.decide(current).await
    }

    /// The decision and the write, given what was read.
    async fn decide(&self, current: Option<Lease>) -> Result<bool, LeaseError> {
        let now = self.clock.now_ms();
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(micro_time(now)),
                    renew_time: Some(micro_time(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created, now);
                    Ok(true)
                }
                // Another replica created it first.
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let seen_since = self.observe(&lease, now);
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let held_ms = i64::from(spec.lease_duration_seconds.unwrap_or(seconds)) * 1000;
        if !mine && holder.is_some() && now < seen_since + held_ms {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(micro_time(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(micro_time(now));
        lease.spec = Some(spec);
        // `metadata.resourceVersion` is the one read: the write is a compare-and-swap.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.observe(&written, now);
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Give the Lease up (at shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(|e| self.err(e))? else { return Ok(()) };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro_time(self.clock.now_ms()));
        lease.spec = Some(spec);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Keep trying to lead until `shutdown` turns true, then release. The receiver is true while
    /// this replica leads: a renewal that fails or takes longer than `lease_duration / 3` makes
    /// it false at once (the sweep pauses rather than risk two leaders).
    pub fn run(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let every = self.duration / 3;
        let task = tokio::spawn(async move {
            loop {
                let leading = match tokio::time::timeout(every, self.try_acquire_or_renew()).await {
                    Ok(Ok(leading)) => leading,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "leader election failed this round");
                        false
                    }
                    Err(_) => false,
                };
                if *tx.borrow() != leading {
                    tracing::info!(identity = %self.identity, leading, "leadership changed");
                }
                tx.send_replace(leading);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
            tx.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "could not release the Lease; it expires on its own");
            }
        });
        (rx, task)
    }
}

#[cfg(test)]
impl LeaseLock {
    /// `decide` on a record read earlier (to test the compare-and-swap).
    pub(crate) async fn decide_on(&self, stale: Option<Lease>) -> Result<bool, LeaseError> {
        self.decide(stale).await
    }
}
