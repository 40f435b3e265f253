//! The drill clients' reconnect policy: the browser client's (`demo-web/static/imclient.js`,
//! `ImConnection`), so that a crowd of drill clients comes back the way a crowd of browsers
//! would. Exponential backoff from `backoffBaseMs` doubling up to `backoffMaxMs`, each wait
//! drawn between half of it and all of it; a 4003 `moved` comes back at once, at most once a
//! second; after `maxAttempts` failures in a row the client waits `failedRetryMs` (with the
//! same jitter) between attempts; a welcome starts over.

use std::time::{Duration, Instant};

/// `backoffBaseMs`: the first wait after a close or a failed attempt, before jitter.
const BASE_MS: u64 = 300;
/// `backoffMaxMs`: the longest wait, before jitter.
const MAX_MS: u64 = 10_000;
/// `maxAttempts`: failures in a row before the client counts as failed.
const MAX_ATTEMPTS: u32 = 12;
/// `failedRetryMs`: the wait between attempts once failed, before jitter.
const FAILED_RETRY_MS: u64 = 30_000;
/// A 4003 reconnects at once only if the last one that did was longer ago than this.
const FAST_EVERY: Duration = Duration::from_secs(1);

/// A small xorshift generator: jitter and receivers need spread, not quality.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One client's reconnect state: failures in a row since its last welcome, and when it last
/// came back at once after a 4003.
pub struct Backoff {
    rng: Rng,
    attempt: u32,
    last_fast: Option<Instant>,
}

impl Backoff {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            attempt: 0,
            last_fast: None,
        }
    }

    /// A welcome: the next close starts from the base again.
    pub fn welcomed(&mut self) {
        self.attempt = 0;
    }

    /// How long to wait before the next attempt, after a close with `code` (`None`: without a
    /// close frame) or a failed attempt (`moved` false).
    pub fn next(&mut self, moved: bool) -> Duration {
        if moved && self.last_fast.is_none_or(|t| t.elapsed() > FAST_EVERY) {
            self.last_fast = Some(Instant::now());
            return Duration::ZERO;
        }
        self.attempt += 1;
        if self.attempt > MAX_ATTEMPTS {
            return self.jitter(FAILED_RETRY_MS);
        }
        let ms = BASE_MS.saturating_mul(1 << (self.attempt - 1).min(20));
        self.jitter(ms.min(MAX_MS))
    }

    /// Between half of `ms` and `ms`.
    fn jitter(&mut self, ms: u64) -> Duration {
        Duration::from_millis(ms / 2 + self.rng.below(ms / 2 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_base_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new(7);
        let mut ceiling = BASE_MS;
        for _ in 0..MAX_ATTEMPTS {
            let ms = b.next(false).as_millis() as u64;
            assert!(
                (ceiling / 2..=ceiling).contains(&ms),
                "{ms} outside {ceiling}"
            );
            ceiling = (ceiling * 2).min(MAX_MS);
        }
        let failed = b.next(false).as_millis() as u64;
        assert!((FAILED_RETRY_MS / 2..=FAILED_RETRY_MS).contains(&failed));
        b.welcomed();
        assert!(b.next(false).as_millis() as u64 <= BASE_MS);
    }

    #[test]
    fn moved_comes_back_at_once_once_a_second() {
        let mut b = Backoff::new(1);
        assert_eq!(b.next(true), Duration::ZERO);
        // A second 4003 within the second waits like any close.
        let ms = b.next(true).as_millis() as u64;
        assert!((BASE_MS / 2..=BASE_MS).contains(&ms));
    }
}
