//! The Redis store, for several wakeway replicas behind one load balancer. Every record write is
//! a compare-and-set in a Lua script (the version inside the JSON), announced on a pub/sub channel
//! so every replica updates its routes at once; activity is kept beside the records and merged
//! with max (never backwards); one lease says which replica runs the sweep.
//!
//! Keys (prefix `wakeway:`): `session:<id>` (JSON), `sessions` (set of ids), `activity:<id>`
//! (hash: `last`, `interaction`, `conns:<replica>`), `lease:<name>`, `blob:<key>`, channel `events`.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::{ActivityCheckpoint, MergedActivity, Store, StoreError};
use crate::session::Session;

const PREFIX: &str = "wakeway:";

/// CAS write: KEYS = [session key, sessions set, events channel]; ARGV = [expected version,
/// json with the new version, id]. Returns {1, new} or {0, found (-1: none)}.
const PUT: &str = r#"
local cur = redis.call('GET', KEYS[1])
local expected = tonumber(ARGV[1])
if cur then
  local found = cjson.decode(cur)['version'] or 0
  if found ~= expected then return {0, found} end
elseif expected ~= 0 then
  return {0, -1}
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return {1, expected + 1}
"#;

/// CAS delete: same KEYS; ARGV = [expected version, id].
const REMOVE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0, -1} end
local found = cjson.decode(cur)['version'] or 0
if found ~= tonumber(ARGV[1]) then return {0, found} end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[2])
return {1, found}
"#;

/// Max-merge activity for a batch of sessions in one call: KEYS = activity keys; ARGV = [replica,
/// ttl ms, now ms, then per key: last ms, interaction ms, open connections]. Returns, per key,
/// the merged last, interaction, and open connections of every replica that checkpointed within
/// ttl (flattened).
const MERGE_ACTIVITY: &str = r#"
local replica, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for k = 1, #KEYS do
  local base = 3 + (k - 1) * 3
  local key = KEYS[k]
  local last = tonumber(redis.call('HGET', key, 'last') or '0')
  local inter = tonumber(redis.call('HGET', key, 'interaction') or '0')
  local new_last, new_inter = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  if new_last > last then last = new_last; redis.call('HSET', key, 'last', ARGV[base + 1]) end
  if new_inter > inter then inter = new_inter; redis.call('HSET', key, 'interaction', ARGV[base + 2]) end
  redis.call('HSET', key, 'conns:' .. replica, ARGV[base + 3] .. ':' .. ARGV[3])
  local total = 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 6) == 'conns:' then
      local n, at = string.match(fields[i + 1], '(%d+):(%d+)')
      if n and tonumber(at) + ttl >= now then total = total + tonumber(n) end
    end
  end
  out[#out + 1] = last
  out[#out + 1] = inter
  out[#out + 1] = total
end
return out
"#;

/// Take or renew a lease: KEYS = [lease key]; ARGV = [holder, ttl ms]. 1 while held.
const LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 1 end
return 0
"#;

/// Release a lease if still held: KEYS = [lease key]; ARGV = [holder].
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// A [`Store`] in Redis.
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    put: redis::Script,
    remove: redis::Script,
    merge: redis::Script,
    lease: redis::Script,
    release: redis::Script,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn key(kind: &str, id: &str) -> String {
    format!("{PREFIX}{kind}:{id}")
}

impl RedisStore {
    /// Connect (and keep reconnecting in the background). Fails only if the URL is malformed or the
    /// first connection cannot be made.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Unavailable(format!("redis URL {url:?}: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await.map_err(unavailable)?;
        Ok(RedisStore {
            client,
            conn,
            put: redis::Script::new(PUT),
            remove: redis::Script::new(REMOVE),
            merge: redis::Script::new(MERGE_ACTIVITY),
            lease: redis::Script::new(LEASE),
            release: redis::Script::new(RELEASE),
        })
    }

    fn decode(id: &str, bytes: &[u8]) -> Result<Session, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { id: id.to_string(), message: e.to_string() })
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn shared(&self) -> bool {
        true
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let bytes: Option<Vec<u8>> = self.conn.clone().get(key("session", id)).await.map_err(unavailable)?;
        bytes.map(|b| Self::decode(id, &b)).transpose()
    }

    async fn list(&self) -> Result<Vec<Session>, StoreError> {
        let mut ids = self.ids().await?;
        ids.sort();
        self.get_many(&ids).await
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Session>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| key("session", id)).collect();
        let values: Vec<Option<Vec<u8>>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        ids.iter().zip(values).filter_map(|(id, v)| v.map(|b| Self::decode(id, &b))).collect()
    }

    async fn ids(&self) -> Result<Vec<String>, StoreError> {
        self.conn.clone().smembers(format!("{PREFIX}sessions")).await.map_err(unavailable)
    }

    async fn put(&self, session: &Session) -> Result<Session, StoreError> {
        let mut next = session.clone();
        let expected = next.version;
        next.version = expected + 1;
        let json = serde_json::to_string(&next).map_err(unavailable)?;
        let (ok, found): (i64, i64) = self
            .put
            .key(key("session", &next.uuid))
            .key(format!("{PREFIX}sessions"))
            .key(format!("{PREFIX}events"))
            .arg(expected)
            .arg(json)
            .arg(&next.uuid)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if ok == 1 {
            Ok(next)
        } else {
            Err(StoreError::Conflict { id: next.uuid, expected, found: (found >= 0).then_some(found as u64) })
        }
    }

    async fn remove(&self, id: &str, version: u64) -> Result<(), StoreError> {
        let (ok, found): (i64, i64) = self
            .remove
            .key(key("session", id))
            .key(format!("{PREFIX}sessions"))
            .key(format!("{PREFIX}events"))
            .arg(version)
            .arg(id)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if ok == 1 {
            let _: Result<(), _> = self.conn.clone().del(key("activity", id)).await;
            Ok(())
        } else {
            Err(StoreError::Conflict {
                id: id.to_string(),
                expected: version,
                found: (found >= 0).then_some(found as u64),
            })
        }
    }

    async fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn.clone().get(key("blob", name)).await.map_err(unavailable)
    }

    async fn put_blob(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.conn.clone().set(key("blob", name), value).await.map_err(unavailable)
    }

    async fn put_expiring(&self, name: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let ms = ttl.as_millis().max(1) as u64;
        redis::cmd("SET")
            .arg(key("blob", name))
            .arg(value)
            .arg("PX")
            .arg(ms)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn take_blob(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        redis::cmd("GETDEL").arg(key("blob", name)).query_async(&mut self.conn.clone()).await.map_err(unavailable)
    }

    async fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", key("blob", prefix));
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            keys.extend(batch.into_iter().filter_map(|k| k.strip_prefix(&key("blob", "")).map(str::to_string)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        Ok(keys)
    }

    async fn merge_activity(
        &self,
        batch: &[ActivityCheckpoint],
        now_ms: i64,
        ttl: Duration,
    ) -> Result<Vec<MergedActivity>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // One script call per chunk: atomic, one round trip, no per-session command.
        let mut merged = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(1000) {
            let mut invocation = self.merge.prepare_invoke();
            for c in chunk {
                invocation.key(key("activity", &c.id));
            }
            invocation.arg(&chunk[0].replica).arg(ttl.as_millis() as u64).arg(now_ms);
            for c in chunk {
                invocation.arg(c.last_activity_ms).arg(c.last_interaction_ms).arg(c.open_connections);
            }
            let flat: Vec<i64> = invocation.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
            for (c, values) in chunk.iter().zip(flat.chunks(3)) {
                merged.push(MergedActivity {
                    id: c.id.clone(),
                    last_activity_ms: values[0],
                    last_interaction_ms: values[1],
                    open_connections: values[2].max(0) as usize,
                });
            }
        }
        Ok(merged)
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let held: i64 = self
            .lease
            .key(key("lease", name))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(held == 1)
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .release
            .key(key("lease", name))
            .arg(holder)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self.client.clone();
        tokio::spawn(async move {
            // Reconnect forever: a missed message is caught up by the periodic resync.
            loop {
                if tx.is_closed() {
                    return;
                }
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub.subscribe(format!("{PREFIX}events")).await.is_ok() {
                            let _ = tx.send(String::new()); // (re)subscribed: resync everything
                            let mut messages = pubsub.on_message();
                            use futures::StreamExt;
                            while let Some(message) = messages.next().await {
                                if let Ok(id) = message.get_payload::<String>()
                                    && tx.send(id).is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "redis pub/sub unavailable; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Some(rx)
    }

    async fn health(&self) -> Result<(), StoreError> {
        let pong: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        if pong == "PONG" { Ok(()) } else { Err(StoreError::Unavailable(format!("redis answered {pong:?} to PING"))) }
    }
}
