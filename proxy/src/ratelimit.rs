//! A token bucket per key (API key and endpoint, client IP, session…), refilled continuously
//! from an injected clock. One implementation for every limit wakeway applies.

use std::hash::Hash;
use std::net::IpAddr;
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

    /// Like [`RateLimiter::check`] without taking a token: whether `key` may go ahead now.
    pub fn peek(&self, key: &K) -> Result<(), u64> {
        let Some(bucket) = self.buckets.get(key) else { return Ok(()) };
        let rate_per_ms = self.per_minute / 60_000.0;
        let elapsed = (self.clock.now_ms() - bucket.updated_ms).max(0) as f64;
        let tokens = (bucket.tokens + elapsed * rate_per_ms).min(self.per_minute);
        if tokens >= 1.0 { Ok(()) } else { Err(((1.0 - tokens) / rate_per_ms / 1000.0).ceil().max(1.0) as u64) }
    }

    /// Keys tracked now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// One client address's budget of failed attempts against a [`RateLimiter`]. The proxy hands
/// one to the management API in each request's extensions, so missing or wrong API keys are
/// limited per client address (`unauthenticated_per_minute`) by the API that knows the keys.
#[derive(Clone)]
pub struct FailureBudget {
    limiter: Arc<RateLimiter<IpAddr>>,
    client: IpAddr,
}

impl FailureBudget {
    pub fn new(limiter: Arc<RateLimiter<IpAddr>>, client: IpAddr) -> Self {
        FailureBudget { limiter, client }
    }

    /// `Err(seconds)` when this address has spent its budget (answer 429 before checking anything).
    pub fn exhausted(&self) -> Result<(), u64> {
        self.limiter.peek(&self.client)
    }

    /// Spend one failure. `Err(seconds)` when none was left.
    pub fn spend(&self) -> Result<(), u64> {
        self.limiter.check(&self.client)
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
    fn peeking_takes_nothing() {
        let clock = Arc::new(ManualClock::new(0));
        let limiter = Arc::new(RateLimiter::new(2, clock.clone()));
        let budget = FailureBudget::new(limiter.clone(), IpAddr::from([10, 0, 0, 1]));
        for _ in 0..10 {
            budget.exhausted().unwrap();
        }
        assert!(limiter.is_empty(), "a peek records no key");
        budget.spend().unwrap();
        budget.spend().unwrap();
        assert_eq!(budget.exhausted(), Err(30), "one failure comes back every 30 s");
        assert!(budget.spend().is_err());
        FailureBudget::new(limiter, IpAddr::from([10, 0, 0, 2])).exhausted().unwrap();
        clock.advance(std::time::Duration::from_secs(30));
        budget.exhausted().unwrap();
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
