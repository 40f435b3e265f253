//! The sweeper: once a second, and at once when the recovery buffers pass the node's bound,
//! asks the hub to sweep (windows that ran out, envelopes past their age, eviction under
//! pressure) and prunes the token ids of a burst of connects that has passed. Warns about
//! memory pressure at most once a minute.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use imclient::NodeId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::admission::Admission;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// How often the sweeper runs when nothing presses it.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Least time between two warnings about memory pressure.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the sweeper works on.
#[derive(Debug, Clone)]
pub struct Sweeper {
    /// This node, for logs.
    pub node: NodeId,
    /// The clients and their buffers.
    pub hub: Arc<Hub>,
    /// The token ids to prune.
    pub admission: Arc<Admission>,
    /// Where windows expired and evicted are counted.
    pub metrics: Arc<Metrics>,
}

/// Runs the sweeper until `stop` turns true.
pub async fn run(sweeper: Sweeper, mut stop: watch::Receiver<bool>) {
    let Sweeper {
        node,
        hub,
        admission,
        metrics,
    } = sweeper;
    if !hub.recovery().enabled() {
        return;
    }
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Pressure can last: say so once a minute, with what happened meanwhile.
    let mut warned: Option<Instant> = None;
    let (mut evicted, mut trimmed) = (0, 0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = hub.pressure() => {}
            _ = stop.changed() => return,
        }
        let swept = hub.sweep(Instant::now());
        // Also the token ids of a burst of connects that has passed: not recovery, but the
        // same once-a-second sweep over memory that outlives its use.
        admission.prune();
        metrics.recovery_expired.fetch_add(swept.expired, Relaxed);
        metrics.recovery_evicted.fetch_add(swept.evicted, Relaxed);
        evicted += swept.evicted;
        trimmed += swept.trimmed;
        if (evicted > 0 || trimmed > 0) && warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                %node,
                evicted,
                trimmed_rounds = trimmed,
                "recovery buffers over --recovery-max-bytes: oldest windows ended first"
            );
            warned = Some(Instant::now());
            (evicted, trimmed) = (0, 0);
        }
    }
}
