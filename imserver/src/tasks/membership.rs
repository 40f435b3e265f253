//! The membership loader: reads the channels of clients new to this node (and of every local
//! client after a Redis outage) from Redis, in pipelined batches, and hands them to the hub.
//! The hub records membership changes that arrive while a load is under way and replays them
//! on top of what was read; docs/DESIGN.md explains why that is enough.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use imclient::keys::Keys;
use imclient::store::Store;
use imclient::{ChanName, ClientId, NodeId};
use tokio::sync::watch;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::work::HubWork;

/// Clients loaded per pipeline.
const BATCH: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the loader works on.
#[derive(Debug, Clone)]
pub struct Loader {
    /// This node, for logs.
    pub node: NodeId,
    /// Redis names (each client's channel set).
    pub keys: Keys,
    /// Where loads are applied.
    pub hub: Arc<Hub>,
    /// Which clients are due.
    pub work: Arc<HubWork>,
    /// Where loads are counted.
    pub metrics: Arc<Metrics>,
    /// Fault injection: delay before a load result is applied.
    pub fault_delay: Duration,
}

/// Runs the loader until `stop` turns true.
pub async fn run(loader: Loader, store: Store, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = loader.work.memberships.wait() => {}
            _ = stop.changed() => return,
        }
        let due = loader.work.memberships.take();
        for (i, chunk) in due.chunks(BATCH).enumerate() {
            if let Err(e) = loader.load(&store, chunk).await {
                tracing::warn!(node = %loader.node, error = %e, "cannot load channel memberships; retrying");
                loader
                    .work
                    .memberships
                    .mark_all(due[i * BATCH..].iter().cloned());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                break;
            }
            backoff = Duration::from_millis(50);
        }
    }
}

impl Loader {
    async fn load(&self, store: &Store, clients: &[ClientId]) -> Result<(), String> {
        let tickets: Vec<_> = clients
            .iter()
            .filter_map(|c| self.hub.sync_ticket(c))
            .collect();
        if tickets.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (entry, _) in &tickets {
            pipe.smembers(self.keys.client_chans(entry.id()));
        }
        let mut conn = store.get().await.map_err(|e| e.to_string())?;
        let sets: Vec<Vec<String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        if !self.fault_delay.is_zero() {
            tokio::time::sleep(self.fault_delay).await;
        }
        for ((entry, generation), names) in tickets.iter().zip(sets) {
            let chans = names
                .into_iter()
                .filter_map(|n| ChanName::new(n).ok())
                .collect();
            self.hub.finish_sync(entry, *generation, chans);
        }
        self.metrics
            .membership_loads
            .fetch_add(tickets.len() as u64, Relaxed);
        Ok(())
    }
}
