//! A token bucket per key (API key and endpoint, client IP, session…), refilled continuously
//! from an injected clock. One implementation for every limit wakeway applies.

use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;

use crate::clock::Clock;

struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

/// `per_minute` requests per key, refilled continuously; bursts up to `per_minute`.
pub struct RateLimiter<K: Hash + Eq> {
    per_minute: f64,
    buckets: DashMap<K, Bucket>,
    clock: Arc<dyn Clock>,
}

/// Above this many keys, full (idle) buckets are dropped, so a flood of distinct keys (random
/// client addresses) cannot grow memory without bound.
const PRUNE_ABOVE: usize = 100_000;

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(per_minute: u32, clock: Arc<dyn Clock>) -> Self {
        RateLimiter { per_minute: per_minute.max(1) as f64, buckets: DashMap::new(), clock }
    }

    /// `Ok` to go ahead, or `Err(seconds)` to wait before the next request is allowed.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        let now = self.clock.now_ms();
        let rate_per_ms = self.per_minute / 60_000.0;
        if self.buckets.len() > PRUNE_ABOVE {
            self.buckets.retain(|_, b| b.tokens + (now - b.updated_ms).max(0) as f64 * rate_per_ms < self.per_minute);
        }
        let mut bucket = self.buckets.entry(key.clone()).or_insert(Bucket { tokens: self.per_minute, updated_ms: now });
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

    /// Keys tracked now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_hundred_a_minute_per_key() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let limiter = RateLimiter::new(100, clock.clone());
        let key = |k: usize, e: &str| (k, e.to_string());
        for _ in 0..100 {
            limiter.check(&key(0, "POST /session/create")).unwrap();
        }
        assert_eq!(limiter.check(&key(0, "POST /session/create")), Err(1), "one token comes back every 0.6 s");
        limiter.check(&key(0, "GET /sessions")).unwrap();
        limiter.check(&key(1, "POST /session/create")).unwrap();
        clock.advance(std::time::Duration::from_millis(600));
        limiter.check(&key(0, "POST /session/create")).unwrap();
        assert!(limiter.check(&key(0, "POST /session/create")).is_err());
        clock.advance(std::time::Duration::from_secs(60));
        for _ in 0..100 {
            limiter.check(&key(0, "POST /session/create")).unwrap();
        }
    }

    #[test]
    fn idle_keys_are_pruned_past_the_bound() {
        let clock = Arc::new(ManualClock::new(0));
        let limiter = RateLimiter::new(10, clock.clone());
        for ip in 0..(PRUNE_ABOVE as u32 + 10) {
            limiter.check(&ip).unwrap();
        }
        clock.advance(std::time::Duration::from_secs(60));
        limiter.check(&u32::MAX).unwrap();
        assert!(limiter.len() < 10, "refilled buckets were dropped: {}", limiter.len());
    }
}
