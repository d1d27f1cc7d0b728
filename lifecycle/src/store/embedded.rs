//! The embedded store: a redb database file in `data_dir`, so a single `wakeway serve` keeps its
//! sessions across restarts with nothing else installed.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Store, StoreError};
use crate::session::Session;

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");

/// A redb-backed [`Store`]. Writes are durable (fsynced) when `put` returns.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedStore {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open {}: {e} (is another wakeway using this data_dir?)",
                path.display()
            ))
        })?;
        let txn = db.begin_write().map_err(unavailable)?;
        txn.open_table(SESSIONS).map_err(unavailable)?;
        txn.open_table(BLOBS).map_err(unavailable)?;
        txn.commit().map_err(unavailable)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    /// Add many new records in one durable transaction (bulk import: `benches/` seeds 100,000
    /// sessions this way; one `put` each would be one fsync each). Every id must be new: an
    /// existing one fails the whole import with a conflict and nothing is written.
    pub fn import(&self, sessions: &[Session]) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = txn.open_table(SESSIONS).map_err(unavailable)?;
            for s in sessions {
                if let Some(v) = table.get(s.uuid.as_str()).map_err(unavailable)? {
                    let found = decode(&s.uuid, v.value())?.version;
                    return Err(StoreError::Conflict { id: s.uuid.clone(), expected: 0, found: Some(found) });
                }
                let mut next = s.clone();
                next.version = 1;
                let bytes = serde_json::to_vec(&next).map_err(unavailable)?;
                table.insert(next.uuid.as_str(), bytes.as_slice()).map_err(unavailable)?;
            }
        }
        txn.commit().map_err(unavailable)?;
        Ok(sessions.len())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(unavailable)?
    }
}

fn decode(id: &str, bytes: &[u8]) -> Result<Session, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { id: id.to_string(), message: e.to_string() })
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let id = id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(SESSIONS).map_err(unavailable)?;
            let value = table.get(id.as_str()).map_err(unavailable)?;
            value.map(|v| decode(&id, v.value())).transpose()
        })
        .await
    }

    async fn list(&self) -> Result<Vec<Session>, StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(SESSIONS).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(unavailable)? {
                let (k, v) = row.map_err(unavailable)?;
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn put(&self, session: &Session) -> Result<Session, StoreError> {
        let mut next = session.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut table = txn.open_table(SESSIONS).map_err(unavailable)?;
                let found = match table.get(next.uuid.as_str()).map_err(unavailable)? {
                    Some(v) => Some(decode(&next.uuid, v.value())?.version),
                    None => None,
                };
                let expected = next.version;
                if found.unwrap_or(0) != expected || (expected > 0 && found.is_none()) {
                    return Err(StoreError::Conflict { id: next.uuid.clone(), expected, found });
                }
                next.version = expected + 1;
                let bytes = serde_json::to_vec(&next).map_err(unavailable)?;
                table.insert(next.uuid.as_str(), bytes.as_slice()).map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)?;
            Ok(next)
        })
        .await
    }

    async fn remove(&self, id: &str, version: u64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut table = txn.open_table(SESSIONS).map_err(unavailable)?;
                let found = match table.get(id.as_str()).map_err(unavailable)? {
                    Some(v) => Some(decode(&id, v.value())?.version),
                    None => None,
                };
                if found != Some(version) {
                    return Err(StoreError::Conflict { id, expected: version, found });
                }
                table.remove(id.as_str()).map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(BLOBS).map_err(unavailable)?;
            Ok(table.get(key.as_str()).map_err(unavailable)?.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn put_blob(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            txn.open_table(BLOBS).map_err(unavailable)?.insert(key.as_str(), value.as_slice()).map_err(unavailable)?;
            txn.commit().map_err(unavailable)
        })
        .await
    }

    async fn take_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let taken = {
                let mut table = txn.open_table(BLOBS).map_err(unavailable)?;
                table.remove(key.as_str()).map_err(unavailable)?.map(|v| v.value().to_vec())
            };
            txn.commit().map_err(unavailable)?;
            Ok(taken)
        })
        .await
    }

    async fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(BLOBS).map_err(unavailable)?;
            let mut keys = Vec::new();
            for row in table.range(prefix.as_str()..).map_err(unavailable)? {
                let (k, _) = row.map_err(unavailable)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                keys.push(k.value().to_string());
            }
            Ok(keys)
        })
        .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            txn.open_table(SESSIONS).map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionId;

    fn session(id: &str) -> Session {
        Session::new(&SessionId::parse(id).unwrap(), "u@example.com", "small", chrono::Utc::now())
    }

    #[tokio::test]
    async fn compare_and_set_rejects_stale_writes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let s = store.put(&session("abc12345")).await.unwrap();
        assert_eq!(s.version, 1);
        assert!(matches!(store.put(&session("abc12345")).await, Err(StoreError::Conflict { .. })), "create twice");
        let mut a = s.clone();
        a.user_id = "a".into();
        let a = store.put(&a).await.unwrap();
        assert_eq!(a.version, 2);
        let mut stale = s.clone();
        stale.user_id = "stale".into();
        assert!(matches!(store.put(&stale).await, Err(StoreError::Conflict { expected: 1, found: Some(2), .. })));
        assert!(store.remove("abc12345", 1).await.is_err());
        drop(store);

        let store = EmbeddedStore::open(&path).unwrap();
        let back = store.get("abc12345").await.unwrap().unwrap();
        assert_eq!(back.user_id, "a");
        assert_eq!(store.list().await.unwrap().len(), 1);
        store.put_blob("certs/b", b"two").await.unwrap();
        store.put_blob("certs/a", b"one").await.unwrap();
        store.put_blob("other", b"x").await.unwrap();
        assert_eq!(store.list_blobs("certs/").await.unwrap(), ["certs/a", "certs/b"]);
        assert_eq!(store.get_blob("certs/a").await.unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.get_blob("missing").await.unwrap(), None);
        assert_eq!(store.take_blob("certs/a").await.unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(store.take_blob("certs/a").await.unwrap(), None, "taken once");
        store.remove("abc12345", 2).await.unwrap();
        assert!(store.get("abc12345").await.unwrap().is_none());
        store.health().await.unwrap();
    }

    #[tokio::test]
    async fn import_adds_new_records_in_one_transaction_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
        store.put(&session("abc12345")).await.unwrap();
        let batch = [session("bbb12345"), session("ccc12345")];
        assert_eq!(store.import(&batch).unwrap(), 2);
        assert_eq!(store.get("bbb12345").await.unwrap().unwrap().version, 1, "as if put once");
        let clash = [session("ddd12345"), session("abc12345")];
        assert!(matches!(store.import(&clash), Err(StoreError::Conflict { found: Some(1), .. })));
        assert!(store.get("ddd12345").await.unwrap().is_none(), "a failed import writes nothing");
        assert_eq!(store.list().await.unwrap().len(), 3);
    }
}
