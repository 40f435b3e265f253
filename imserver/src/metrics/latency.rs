//! The delivery latency histogram: fixed buckets, counted with relaxed atomic adds (no lock on
//! the delivery path), rendered cumulated in Prometheus text form.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// What a delivery latency is measured for: the three ways an envelope reaches clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// A private message (or one passed on by the node a client left): a few receivers.
    Direct,
    /// A channel message: every local member.
    Channel,
    /// A broadcast: every local client.
    Broadcast,
}

impl DeliveryKind {
    pub(super) const ALL: [DeliveryKind; 3] = [
        DeliveryKind::Direct,
        DeliveryKind::Channel,
        DeliveryKind::Broadcast,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            DeliveryKind::Direct => "direct",
            DeliveryKind::Channel => "channel",
            DeliveryKind::Broadcast => "broadcast",
        }
    }
}

/// Upper bounds of the latency histogram's buckets, in microseconds: from what one private
/// message takes (tens of µs) to a fan-out to tens of thousands of members (tens of ms), and
/// past that what only a stalled node takes.
const LATENCY_BOUNDS_US: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A latency histogram with fixed buckets: one relaxed add to a bucket and one to the sum per
/// observation, no lock. Buckets are kept per bucket, not cumulated; rendering cumulates them.
#[derive(Debug, Default)]
pub(super) struct Latency {
    /// One per bound, then the overflow (`+Inf`).
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Latency {
    pub(super) fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|bound| *bound < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub(super) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Relaxed);
            let le = LATENCY_BOUNDS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| format_seconds(*us));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {seen}");
        }
        let sum = format_seconds(self.sum_us.load(Relaxed));
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {seen}");
    }
}

/// Microseconds as seconds, exactly (Prometheus reads `0.000025`, and `le` values must be
/// written alike in every scrape).
fn format_seconds(us: u64) -> String {
    let frac = format!("{:06}", us % 1_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{}", us / 1_000_000)
    } else {
        format!("{}.{frac}", us / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_written_exactly() {
        assert_eq!(format_seconds(25), "0.000025");
        assert_eq!(format_seconds(2_500), "0.0025");
        assert_eq!(format_seconds(1_000_000), "1");
        assert_eq!(format_seconds(2_000_961), "2.000961");
    }
}
