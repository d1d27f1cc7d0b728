//! The per-session operation lease (shared store): one replica at a time runs an operation on a
//! session — a backup, deletion, restore, scale, sleep or start — renewed while it runs, released
//! when it ends, and expiring after `lease_ttl` when its holder dies, so whoever comes next (the
//! sweep leader, a wake) resumes the step from the record.

use std::future::Future;
use std::time::Duration;

use wakeway_proxy::SessionId;

use super::{LifecycleError, Manager, Result};

/// How often a wake that found the lease taken asks again.
const BUSY_POLL: Duration = Duration::from_millis(250);

/// An operation lease this replica holds.
pub(super) struct OpLease {
    name: String,
}

impl Manager {
    /// Take session `id`'s operation lease (only with a shared store: with one replica the
    /// in-process lock is enough). Another replica holds it: wait for it up to `patience`, then
    /// [`LifecycleError::Busy`].
    pub(super) async fn take_op_lease(&self, id: &SessionId, patience: Duration) -> Result<Option<OpLease>> {
        if !self.inner.shared {
            return Ok(None);
        }
        let name = format!("op:{id}");
        let ttl = self.inner.config.store.lease_ttl;
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.inner.store.lease(&name, &self.inner.replica, ttl).await {
                Ok(true) => return Ok(Some(OpLease { name })),
                Ok(false) if tokio::time::Instant::now() < deadline => tokio::time::sleep(BUSY_POLL).await,
                Ok(false) => {
                    return Err(LifecycleError::Busy { id: id.to_string(), retry_after: ttl.as_secs().max(1) });
                }
                Err(e) => {
                    self.note_store_error(&e);
                    return Err(e.into());
                }
            }
        }
    }

    /// Run `op` holding `lease` (renewed every third of `lease_ttl`), then release it.
    pub(super) async fn holding<T>(&self, lease: OpLease, op: impl Future<Output = Result<T>>) -> Result<T> {
        let ttl = self.inner.config.store.lease_ttl;
        let renew = async {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match self.inner.store.lease(&lease.name, &self.inner.replica, ttl).await {
                    Ok(true) => {}
                    // The step goes on (cutting it in half is worse); every write it makes is
                    // still a compare-and-set on the record.
                    Ok(false) => tracing::error!(lease = %lease.name, "operation lease lost while the operation runs"),
                    Err(e) => tracing::warn!(lease = %lease.name, error = %e, "could not renew the operation lease"),
                }
            }
        };
        let result = tokio::select! {
            biased;
            result = op => result,
            never = renew => never,
        };
        if let Err(e) = self.inner.store.release(&lease.name, &self.inner.replica).await {
            tracing::warn!(lease = %lease.name, error = %e, "could not release the operation lease; it expires");
        }
        result
    }
}
