//! The drill's delivery timeline: deliveries per 10 ms bucket, per group of clients (the node
//! a client was first on) and kind (private, channel), and the pauses read off it.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

/// Resolution of the delivery timeline: a pause shorter than this is not seen.
pub const BUCKET_MS: u64 = 10;

/// Deliveries per 10 ms since `origin_ms`, per group and kind (private, channel). Atomic
/// counters, so thousands of readers record without a lock.
pub struct Timeline {
    origin_ms: u64,
    len: usize,
    counts: Vec<AtomicU32>,
}

impl Timeline {
    pub fn new(origin_ms: u64, span: Duration, groups: usize) -> Self {
        let len = (span.as_millis() as u64 / BUCKET_MS) as usize + 1;
        Self {
            origin_ms,
            len,
            counts: (0..groups * 2 * len).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn index(&self, at_ms: u64) -> usize {
        (at_ms.saturating_sub(self.origin_ms) / BUCKET_MS) as usize
    }

    pub fn add(&self, group: usize, channel: bool, at_ms: u64) {
        let i = self.index(at_ms);
        if i < self.len {
            let series = group * 2 + usize::from(channel);
            if let Some(c) = self.counts.get(series * self.len + i) {
                c.fetch_add(1, Relaxed);
            }
        }
    }

    /// Which buckets hold a delivery of any series `pick(group, channel)` selects.
    pub fn occupied(&self, pick: impl Fn(usize, bool) -> bool) -> Vec<bool> {
        let mut occ = vec![false; self.len];
        for (series, counts) in self.counts.chunks(self.len).enumerate() {
            if !pick(series / 2, series % 2 == 1) {
                continue;
            }
            for (o, c) in occ.iter_mut().zip(counts) {
                *o |= c.load(Relaxed) > 0;
            }
        }
        occ
    }

    /// The longest stretch without a delivery between `from_ms` and `to_ms` (a stretch at
    /// either end counts too), in ms.
    pub fn max_gap(&self, occ: &[bool], from_ms: u64, to_ms: u64) -> u64 {
        let (from, to) = (self.index(from_ms), self.index(to_ms).min(occ.len()));
        let mut last = from;
        let mut gap = 0;
        for (i, o) in occ.iter().enumerate().take(to).skip(from) {
            if *o {
                gap = gap.max(i - last);
                last = i;
            }
        }
        gap = gap.max(to.saturating_sub(last));
        gap as u64 * BUCKET_MS
    }

    /// The longest stretch without a delivery between `from_ms` and `to_ms` (a stretch at
    /// either end counts too) and how long after `from_ms` it ended, in ms; `None` when it
    /// lasted to `to_ms`.
    pub fn longest_gap(&self, occ: &[bool], from_ms: u64, to_ms: u64) -> (u64, Option<u64>) {
        let (from, to) = (self.index(from_ms), self.index(to_ms).min(occ.len()));
        let mut last = from;
        let mut best = (0, Some(0));
        for (i, o) in occ.iter().enumerate().take(to).skip(from) {
            if *o {
                if i - last > best.0 {
                    best = (i - last, Some(i - from));
                }
                last = i;
            }
        }
        if to.saturating_sub(last) > best.0 {
            best = (to - last, None);
        }
        (
            best.0 as u64 * BUCKET_MS,
            best.1.map(|k| k as u64 * BUCKET_MS),
        )
    }

    /// How long after `from_ms` the last delivery came, in ms.
    pub fn last_after(&self, occ: &[bool], from_ms: u64) -> Option<u64> {
        let from = self.index(from_ms);
        occ.iter()
            .skip(from)
            .rposition(|o| *o)
            .map(|k| k as u64 * BUCKET_MS)
    }

    /// How long after `from_ms` the first delivery came, in ms.
    pub fn first_after(&self, occ: &[bool], from_ms: u64) -> Option<u64> {
        let from = self.index(from_ms);
        occ.iter()
            .skip(from)
            .position(|o| *o)
            .map(|k| k as u64 * BUCKET_MS)
    }
}
