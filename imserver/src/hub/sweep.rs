//! Window sweeping and memory accounting: recovery windows that ran out end, envelopes past
//! their age go, and while the buffers hold more than the node's bound the oldest windows end
//! first and, as a last resort, the buffers of online clients are halved. Handed-over entries
//! leave once they stopped forwarding. The bytes every buffer holds are counted here, and the
//! sweeper is woken as soon as they pass the bound.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Hub;
use super::entry::{ClientEntry, Move};
use crate::metrics::Metrics;

/// What a sweep of the recovery buffers did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Windows that ran out.
    pub expired: u64,
    /// Windows ended early because the node held too many bytes.
    pub evicted: u64,
    /// Rounds of halving online clients' buffers because the node still held too many bytes.
    pub trimmed: u64,
}

/// The bytes recovery buffers hold (kept in the `im_recovery_bytes` gauge), against the
/// node's bound.
#[derive(Debug)]
pub(super) struct Memory {
    max: u64,
    metrics: Arc<Metrics>,
    /// Woken when the buffers hold more than the bound.
    pressure: Notify,
}

impl Memory {
    pub(super) fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            max: max as u64,
            metrics,
            pressure: Notify::new(),
        }
    }

    /// Records a change in the bytes held; wakes the sweeper when over the bound.
    pub(super) fn account(&self, delta: isize) {
        if delta >= 0 {
            let total = self.metrics.recovery_bytes.fetch_add(delta as u64, Relaxed) + delta as u64;
            if total > self.max {
                self.pressure.notify_one();
            }
        } else {
            self.free(delta.unsigned_abs());
        }
    }

    /// Records bytes freed.
    pub(super) fn free(&self, bytes: usize) {
        self.metrics.recovery_bytes.fetch_sub(bytes as u64, Relaxed);
    }

    /// Whether the buffers hold more than the bound.
    fn over(&self) -> bool {
        self.metrics.recovery_bytes.load(Relaxed) > self.max
    }
}

/// What the sweep found an entry to be.
enum Found {
    /// Done forwarding: to remove.
    Forwarded,
    /// Its window ran out.
    Expired,
    /// Its window is open, since then.
    Window(Instant),
    /// Online with something buffered.
    Buffering,
    Idle,
}

impl Hub {
    /// Completes when the recovery buffers hold more than the node's bound.
    pub async fn pressure(&self) {
        self.memory.pressure.notified().await;
    }

    /// Ends recovery windows that ran out and trims envelopes past their age; then, while the
    /// buffers hold more than the node's bound, ends the oldest windows first, and as a last
    /// resort halves the buffers of online clients.
    pub fn sweep(&self, now: Instant) -> Swept {
        let mut swept = Swept::default();
        let (mut expired, mut windows, mut online, mut forwarded) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        self.chans.shrink();
        self.clients.shrink();
        for entries in self.clients.each_shard() {
            for entry in entries {
                match self.inspect(&entry, now) {
                    Found::Forwarded => forwarded.push(entry),
                    Found::Expired => expired.push(entry),
                    Found::Window(at) => windows.push((at, entry)),
                    Found::Buffering => online.push(entry),
                    Found::Idle => {}
                }
            }
        }
        for entry in &expired {
            if self.end_window(entry) {
                swept.expired += 1;
            }
        }
        for entry in &forwarded {
            self.end_forwarding(entry);
        }
        windows.sort_by_key(|(at, _)| *at);
        for (_, entry) in &windows {
            if !self.memory.over() {
                break;
            }
            if self.end_window(entry) {
                swept.evicted += 1;
            }
        }
        while self.memory.over() && !online.is_empty() {
            online.retain(|entry| {
                let freed = entry.lock().buffer.halve();
                self.memory.free(freed);
                freed > 0
            });
            swept.trimmed += 1;
        }
        swept
    }

    /// Trims one entry's buffer by age and says what it is to the sweep.
    fn inspect(&self, entry: &ClientEntry, now: Instant) -> Found {
        let mut inner = entry.lock();
        match inner.moving.get() {
            Move::Forwarding { until, .. } => {
                return if now > *until && inner.conns.is_empty() {
                    Found::Forwarded
                } else {
                    Found::Idle
                };
            }
            Move::TakingOver { until, .. } if now > *until => {
                inner.moving.set(Move::Settled);
            }
            _ => {}
        }
        let connected = inner.detached.is_none();
        let freed = inner
            .buffer
            .trim_age(now, self.recovery.max_age_for(connected));
        self.memory.free(freed);
        match inner.detached {
            Some(at) if now.saturating_duration_since(at) >= self.recovery.window => Found::Expired,
            Some(at) => Found::Window(at),
            None if inner.buffer.bytes() > 0 => Found::Buffering,
            None => Found::Idle,
        }
    }

    /// Ends the recovery window of `entry` if it is still open: the client leaves the hub.
    /// Returns whether it did.
    pub(super) fn end_window(&self, entry: &Arc<ClientEntry>) -> bool {
        let Some((freed, chans)) = self
            .clients
            .remove_if(entry, || entry.lock().close_window())
        else {
            return false;
        };
        self.memory.free(freed);
        self.metrics.recovery_windows.fetch_sub(1, Relaxed);
        for chan in chans {
            self.chan_remove(&chan, entry);
        }
        true
    }

    /// Removes a handed-over entry once it stopped passing deliveries on.
    fn end_forwarding(&self, entry: &Arc<ClientEntry>) {
        let removed = self.clients.remove_if(entry, || {
            let mut inner = entry.lock();
            inner.conns.is_empty().then(|| inner.remove())
        });
        if let Some((freed, chans)) = removed {
            self.memory.free(freed);
            for chan in chans {
                self.chan_remove(&chan, entry);
            }
        }
    }
}
