//! The bad-request summary: how many HTTP requests the node answered 400, 408 or 431 before
//! any handler (counted by `early_answer`), said in one log line per interval in which any
//! came, instead of one line each as actix-http would write them. Anyone can send malformed
//! requests; the log must not grow with them, yet an operator should learn they come.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use imclient::NodeId;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// How often the count is looked at, and the longest a burst waits to be told.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Logs the count of bad requests of each interval that had any, until `stop` turns true.
pub async fn run(node: NodeId, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut told = metrics.bad_requests.load(Relaxed);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let total = metrics.bad_requests.load(Relaxed);
        let count = total.saturating_sub(told);
        if count > 0 {
            tracing::info!(
                %node,
                count,
                seconds = SUMMARY_EVERY.as_secs(),
                "bad HTTP requests answered 400, 408 or 431 (malformed, too slow, too large)"
            );
            told = total;
        }
    }
}
