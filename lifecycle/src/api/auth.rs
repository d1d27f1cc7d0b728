//! API keys (constant-time check, generated once if none is configured) and the per-key,
//! per-endpoint rate limit (a token bucket refilled continuously).

use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use wakeway_proxy::Clock;

/// The accepted keys, kept as SHA-256 digests so comparison time does not depend on the key.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        ApiKeys { digests: keys.iter().map(|k| Sha256::digest(k.as_bytes()).into()).collect() }
    }

    /// The index of the matching key, comparing against every key in constant time.
    pub fn check(&self, presented: &str) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (i, d) in self.digests.iter().enumerate() {
            if bool::from(d.ct_eq(&digest)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }
}

/// Read the generated key from `data_dir/api-key`, or create it (mode 0600). Returns the key and
/// whether it was just created (so it is printed once).
pub fn load_or_generate_key(data_dir: &Path) -> std::io::Result<(String, bool)> {
    let path = data_dir.join("api-key");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 16 => return Ok((text.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let bytes: [u8; 24] = rand::rng().random();
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    file.write_all(key.as_bytes())?;
    file.sync_all()?;
    Ok((key, true))
}

struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

/// A token bucket per (key, endpoint): `per_minute` requests, refilled continuously.
pub struct RateLimiter {
    per_minute: f64,
    buckets: DashMap<(usize, String), Bucket>,
    clock: Arc<dyn Clock>,
}

impl RateLimiter {
    pub fn new(per_minute: u32, clock: Arc<dyn Clock>) -> Self {
        RateLimiter { per_minute: per_minute as f64, buckets: DashMap::new(), clock }
    }

    /// `Ok` to go ahead, or `Err(seconds)` to wait before the next request is allowed.
    pub fn check(&self, key: usize, endpoint: &str) -> Result<(), u64> {
        let now = self.clock.now_ms();
        let rate_per_ms = self.per_minute / 60_000.0;
        let mut bucket = self
            .buckets
            .entry((key, endpoint.to_string()))
            .or_insert(Bucket { tokens: self.per_minute, updated_ms: now });
        let elapsed = (now - bucket.updated_ms).max(0) as f64;
        bucket.tokens = (bucket.tokens + elapsed * rate_per_ms).min(self.per_minute);
        bucket.updated_ms = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = (1.0 - bucket.tokens) / rate_per_ms;
            Err((wait_ms / 1000.0).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wakeway_proxy::ManualClock;

    #[test]
    fn keys_match_exactly() {
        let keys = ApiKeys::new(&["first-key-0123456789".into(), "second-key-0123456789".into()]);
        assert_eq!(keys.check("first-key-0123456789"), Some(0));
        assert_eq!(keys.check("second-key-0123456789"), Some(1));
        assert_eq!(keys.check("first-key-012345678"), None);
        assert_eq!(keys.check(""), None);
    }

    #[test]
    fn a_hundred_a_minute_per_key_and_endpoint() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let limiter = RateLimiter::new(100, clock.clone());
        for _ in 0..100 {
            limiter.check(0, "POST /session/create").unwrap();
        }
        let wait = limiter.check(0, "POST /session/create").unwrap_err();
        assert!((1..=1).contains(&wait), "one token comes back every 0.6 s: {wait}");
        limiter.check(0, "GET /sessions").unwrap();
        limiter.check(1, "POST /session/create").unwrap();
        clock.advance(std::time::Duration::from_millis(600));
        limiter.check(0, "POST /session/create").unwrap();
        assert!(limiter.check(0, "POST /session/create").is_err());
        clock.advance(std::time::Duration::from_secs(60));
        for _ in 0..100 {
            limiter.check(0, "POST /session/create").unwrap();
        }
    }

    #[test]
    fn a_generated_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (key, new) = load_or_generate_key(dir.path()).unwrap();
        assert!(new && key.len() == 48);
        let (again, new) = load_or_generate_key(dir.path()).unwrap();
        assert!(!new && again == key);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("api-key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
