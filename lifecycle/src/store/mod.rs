//! Where session records live: the `Store` trait (compare-and-set on a version) and its
//! implementations.

pub mod embedded;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::session::Session;

pub use embedded::EmbeddedStore;
pub use redis::RedisStore;

/// One replica's view of one session's activity, written every checkpoint interval.
#[derive(Debug, Clone)]
pub struct ActivityCheckpoint {
    pub id: String,
    pub replica: String,
    pub last_activity_ms: i64,
    pub last_interaction_ms: i64,
    pub open_connections: usize,
}

/// Activity merged over every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedActivity {
    pub id: String,
    pub last_activity_ms: i64,
    pub last_interaction_ms: i64,
    pub open_connections: usize,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote the record first; reload and decide again.
    #[error("session {id} was changed concurrently (expected version {expected}, found {found:?})")]
    Conflict { id: String, expected: u64, found: Option<u64> },
    /// The store cannot be reached or written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record cannot be decoded.
    #[error("store record {id} is corrupt: {message}")]
    Corrupt { id: String, message: String },
}

/// Session records, written with compare-and-set.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `embedded` or `redis`.
    fn kind(&self) -> &'static str;

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError>;

    /// Every record, in id order.
    async fn list(&self) -> Result<Vec<Session>, StoreError>;

    /// The records of `ids` that exist, in one read where the store allows it (the sweep reads
    /// the sessions due).
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Session>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.extend(self.get(id).await?);
        }
        Ok(found)
    }

    /// The id of every record, without reading the records (the leader's check for lost ones).
    async fn ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.list().await?.into_iter().map(|s| s.uuid).collect())
    }

    /// Write `session` if the stored version equals `session.version` (0: it must not exist yet).
    /// Returns the record as stored, with its new version.
    async fn put(&self, session: &Session) -> Result<Session, StoreError>;

    /// Remove a record if its stored version equals `version`.
    async fn remove(&self, id: &str, version: u64) -> Result<(), StoreError>;

    /// A small shared value (ACME account, certificates), by key.
    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Write a small shared value (last write wins).
    async fn put_blob(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Write a small shared value that disappears after `ttl` (stores without expiry keep it; the
    /// sweep removes expired ones).
    async fn put_expiring(&self, key: &str, value: &[u8], _ttl: Duration) -> Result<(), StoreError> {
        self.put_blob(key, value).await
    }

    /// Read and delete a shared value in one atomic step (a one-time token is used once, even
    /// with several replicas).
    async fn take_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Keys of the shared values starting with `prefix`.
    async fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Whether several replicas share this store (then activity, leases and events go through it).
    fn shared(&self) -> bool {
        false
    }

    /// Merge each replica's activity (max, never backwards) and return the merged values. A
    /// store used by one replica has nothing to merge.
    async fn merge_activity(
        &self,
        batch: &[ActivityCheckpoint],
        _now_ms: i64,
        _ttl: Duration,
    ) -> Result<Vec<MergedActivity>, StoreError> {
        Ok(batch
            .iter()
            .map(|c| MergedActivity {
                id: c.id.clone(),
                last_activity_ms: c.last_activity_ms,
                last_interaction_ms: c.last_interaction_ms,
                open_connections: c.open_connections,
            })
            .collect())
    }

    /// Take or renew the lease `name` for `holder` for `ttl`; true while `holder` has it. With one
    /// replica there is nobody to share with.
    async fn lease(&self, _name: &str, _holder: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Give up the lease `name` if `holder` still has it (compare-and-delete: a lease that
    /// expired and was taken by another holder stays theirs).
    async fn release(&self, _name: &str, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Ids of sessions other replicas changed, as they change (an empty id: resync everything).
    async fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        None
    }

    /// Ok when reads and writes work.
    async fn health(&self) -> Result<(), StoreError>;
}
