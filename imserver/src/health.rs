//! The node's health as routes, sessions and tasks see it: whether the Redis subscriber is up,
//! whether the node holds its lease, and whether shutdown has begun. Three flags, each set by
//! the one task that knows.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// The node's health flags.
#[derive(Debug, Default)]
pub struct Health {
    /// True while the Redis subscriber is connected and subscribed.
    redis_up: AtomicBool,
    /// True once the node holds its lease: backends route clients to it from then on.
    leased: AtomicBool,
    /// True once shutdown began: new sockets are refused.
    shutting_down: AtomicBool,
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

    /// Records that shutdown began.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Relaxed);
    }
}
