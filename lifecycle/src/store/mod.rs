//! Where session records live: the `Store` trait (compare-and-set on a version) and its
//! implementations.

pub mod embedded;

use async_trait::async_trait;

use crate::session::Session;

pub use embedded::EmbeddedStore;

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

    /// Write `session` if the stored version equals `session.version` (0: it must not exist yet).
    /// Returns the record as stored, with its new version.
    async fn put(&self, session: &Session) -> Result<Session, StoreError>;

    /// Remove a record if its stored version equals `version`.
    async fn remove(&self, id: &str, version: u64) -> Result<(), StoreError>;

    /// A small shared value (ACME account, certificates), by key.
    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Write a small shared value (last write wins).
    async fn put_blob(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Keys of the shared values starting with `prefix`.
    async fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Ok when reads and writes work.
    async fn health(&self) -> Result<(), StoreError>;
}
