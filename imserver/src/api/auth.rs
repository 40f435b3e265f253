//! Who may call the HTTP API, and how often: the configured keys (several at once, for
//! rotation), compared in constant time, and a token bucket per key.
//!
//! Keys are kept only as SHA-256 digests. A presented key is hashed and compared with every
//! digest, always all of them and byte by byte without an early exit, so the answer's timing
//! says nothing about how close a guess was.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::config::ApiKey;

use super::errors::ApiError;

type KeyDigest = [u8; 32];

/// The accepted keys. `Debug` shows only how many there are.
pub struct ApiKeys {
    digests: Vec<KeyDigest>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("count", &self.digests.len())
            .finish()
    }
}

/// Which key a request was made with: its position in the configured list (never the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySlot(usize);

impl ApiKeys {
    /// The keys callers may present. None: the API is open (dev mode only, see `Config`).
    pub fn new(keys: &[ApiKey]) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k.expose().as_bytes())).collect(),
        }
    }

    /// Whether no key is needed.
    pub fn open(&self) -> bool {
        self.digests.is_empty()
    }

    /// How many keys are accepted.
    pub fn count(&self) -> usize {
        self.digests.len()
    }

    /// The slot of the key in `authorization` (`Bearer <key>`) or `x_api_key`, or 401.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        x_api_key: Option<&[u8]>,
    ) -> Result<KeySlot, ApiError> {
        if self.open() {
            return Ok(KeySlot(0));
        }
        let presented = authorization
            .and_then(|h| {
                h.strip_prefix(b"Bearer ")
                    .or_else(|| h.strip_prefix(b"bearer "))
            })
            .or(x_api_key)
            .ok_or_else(ApiError::unauthorized)?;
        let presented = digest(presented.trim_ascii());
        let mut found = None;
        for (slot, known) in self.digests.iter().enumerate() {
            if same(known, &presented) && found.is_none() {
                found = Some(KeySlot(slot));
            }
        }
        found.ok_or_else(ApiError::unauthorized)
    }
}

fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// Compares every byte, whatever the first difference.
fn same(a: &KeyDigest, b: &KeyDigest) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// A token bucket per key slot: `rate` requests a second on average, `burst` at once.
#[derive(Debug)]
pub struct RateLimits {
    /// Requests per second; 0 turns limiting off.
    rate: f64,
    burst: f64,
    /// One bucket per key slot. A std Mutex: held for a few arithmetic steps, never across
    /// an await.
    buckets: Mutex<Vec<Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimits {
    /// Limits for `slots` keys (at least one bucket, for an open dev-mode API).
    pub fn new(rate: u32, burst: u32, slots: usize) -> Self {
        let burst = f64::from(burst.max(1));
        let now = Instant::now();
        Self {
            rate: f64::from(rate),
            burst,
            buckets: Mutex::new(vec![
                Bucket {
                    tokens: burst,
                    at: now
                };
                slots.max(1)
            ]),
        }
    }

    /// Takes one request from `slot`'s budget, or says how long until there is one.
    pub fn take(&self, slot: KeySlot) -> Result<(), ApiError> {
        self.take_at(slot, Instant::now())
    }

    fn take_at(&self, slot: KeySlot, now: Instant) -> Result<(), ApiError> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(bucket) = buckets.get_mut(slot.0) else {
            return Ok(());
        };
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.rate;
        Err(ApiError::rate_limited(Duration::from_secs_f64(wait)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> ApiKeys {
        let keys: Vec<ApiKey> = list.iter().map(|k| k.parse().unwrap()).collect();
        ApiKeys::new(&keys)
    }

    #[test]
    fn either_of_two_keys_opens_and_nothing_else_does() {
        let keys = keys(&["old-key-0123456789", "new-key-0123456789"]);
        assert_eq!(
            keys.check(Some(b"Bearer old-key-0123456789"), None),
            Ok(KeySlot(0))
        );
        assert_eq!(
            keys.check(None, Some(b"new-key-0123456789")),
            Ok(KeySlot(1))
        );
        assert_eq!(keys.check(None, None).map_err(|e| e.status), Err(401));
        assert_eq!(
            keys.check(Some(b"Bearer old-key-012345678"), None)
                .map_err(|e| e.status),
            Err(401)
        );
        assert_eq!(
            keys.check(Some(b"old-key-0123456789"), None)
                .map_err(|e| e.status),
            Err(401)
        );
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_says_when() {
        let limits = RateLimits::new(2, 2, 1);
        let start = Instant::now();
        let slot = KeySlot(0);
        assert!(limits.take_at(slot, start).is_ok());
        assert!(limits.take_at(slot, start).is_ok());
        let refused = limits.take_at(slot, start).unwrap_err();
        assert_eq!((refused.status, refused.retry_after), (429, Some(1)));
        assert!(
            limits
                .take_at(slot, start + Duration::from_millis(500))
                .is_ok()
        );
    }
}
