//! The node's health as routes, sessions and tasks see it: whether the Redis subscriber is up,
//! whether the node took its lease and until when it holds it, and whether shutdown has begun.
//! Each is set by the one task that knows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The node's health flags.
#[derive(Debug)]
pub struct Health {
    /// True while the Redis subscriber is connected and subscribed.
    redis_up: AtomicBool,
    /// True once the node holds its lease: backends route clients to it from then on.
    leased: AtomicBool,
    /// True once shutdown began: new sockets are refused.
    shutting_down: AtomicBool,
    /// Until when the lease holds, in milliseconds after `since`: as of the last renewal Redis
    /// took, counted from before it was sent (0: never renewed).
    lease_until_ms: AtomicU64,
    /// Where `lease_until_ms` counts from.
    since: Instant,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            redis_up: AtomicBool::default(),
            leased: AtomicBool::default(),
            shutting_down: AtomicBool::default(),
            lease_until_ms: AtomicU64::default(),
            since: Instant::now(),
        }
    }
}

impl Health {
    /// Whether the Redis subscriber is up.
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Relaxed)
    }

    /// Whether the node has taken its lease (and announced itself) since it started.
    pub fn leased(&self) -> bool {
        self.leased.load(Relaxed)
    }

    /// Whether the node holds its lease now: its last renewal, sent less than the lease's
    /// lifetime ago, was taken by Redis. (A peer that purged the node's lease early is noticed
    /// at the next renewal, a third of the lifetime later.)
    pub fn holds_lease(&self) -> bool {
        self.millis(Instant::now()) < self.lease_until_ms.load(Relaxed)
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Relaxed)
    }

    /// Records that the subscriber is up (or down).
    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.store(up, Relaxed);
    }

    /// Records that the node took its lease.
    pub fn set_leased(&self) {
        self.leased.store(true, Relaxed);
    }

    /// Records a renewal of the lease for `lease`, sent at `sent`, that Redis took.
    pub fn lease_renewed(&self, sent: Instant, lease: Duration) {
        self.lease_until_ms
            .store(self.millis(sent + lease).max(1), Relaxed);
    }

    /// Records that the lease was given up (at shutdown).
    pub fn lease_released(&self) {
        self.lease_until_ms.store(0, Relaxed);
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.since).as_millis()).unwrap_or(u64::MAX)
    }

    /// Records that shutdown began.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_held_from_a_renewal_for_its_lifetime() {
        let health = Health::default();
        assert!(!health.holds_lease());
        health.lease_renewed(Instant::now(), Duration::from_secs(10));
        assert!(health.holds_lease());
        // Renewed long enough ago that it has run out.
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(20))
            .expect("the monotonic clock is past 20 s");
        let old = Health {
            since: long_ago,
            ..Health::default()
        };
        old.lease_renewed(long_ago, Duration::from_secs(10));
        assert!(!old.holds_lease());
        health.lease_released();
        assert!(!health.holds_lease());
    }
}
