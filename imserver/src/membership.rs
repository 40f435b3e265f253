//! The membership loader: reads the channels of clients new to this node (and of every local
//! client after a Redis outage) from Redis, in pipelined batches, and hands them to the hub.
//! The hub records membership changes that arrive while a load is under way and replays them
//! on top of what was read; docs/DESIGN.md explains why that is enough.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use imclient::ChanName;
use imclient::store::Store;
use tokio::sync::watch;

use crate::node::Node;

/// Clients loaded per pipeline.
const BATCH: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs the loader until `stop` turns true.
pub async fn run(node: Node, store: Store, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::select! {
            _ = node.work().memberships.wait() => {}
            _ = stop.changed() => return,
        }
        let due = node.work().memberships.take();
        for (i, chunk) in due.chunks(BATCH).enumerate() {
            if let Err(e) = load(&node, &store, chunk).await {
                tracing::warn!(node = %node.id(), error = %e, "cannot load channel memberships; retrying");
                node.work()
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

async fn load(node: &Node, store: &Store, clients: &[imclient::ClientId]) -> Result<(), String> {
    let tickets: Vec<_> = clients
        .iter()
        .filter_map(|c| node.hub().sync_ticket(c))
        .collect();
    if tickets.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (entry, _) in &tickets {
        pipe.smembers(node.keys().client_chans(entry.id()));
    }
    let mut conn = store.get().await.map_err(|e| e.to_string())?;
    let sets: Vec<Vec<String>> = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let delay = node.limits().fault_membership_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    for ((entry, generation), names) in tickets.iter().zip(sets) {
        let chans = names
            .into_iter()
            .filter_map(|n| ChanName::new(n).ok())
            .collect();
        node.hub().finish_sync(entry, *generation, chans);
    }
    node.metrics()
        .membership_loads
        .fetch_add(tickets.len() as u64, Relaxed);
    Ok(())
}
