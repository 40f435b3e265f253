//! The node-set follower: reads which configured nodes hold their lease, every second and
//! whenever a node announces a change on the node-set topic (the broker wakes it), and moves
//! the clients this node no longer owns to their new home: their stream is handed over and
//! their connections closed with 4003 (without recovery, they are only closed). When the node
//! stops, [`leave`] moves every client the same way, to the node that wins it among the others.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use imclient::contract::CloseCode;
use imclient::keys::Keys;
use imclient::store::Store;
use imclient::{ClientId, NodeId};
use tokio::sync::watch;

use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::nodeset::NodeSet;
use crate::work::HubWork;

/// How often the set is read when no announcement comes.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What the follower works on.
#[derive(Debug, Clone)]
pub struct Follower {
    /// This node.
    pub node: NodeId,
    /// Redis names (lease keys, node topics).
    pub keys: Keys,
    /// The set it keeps up to date.
    pub nodes: Arc<NodeSet>,
    /// The clients it moves.
    pub hub: Arc<Hub>,
    /// Where announcements wake it.
    pub work: Arc<HubWork>,
    /// Where moves are counted.
    pub metrics: Arc<Metrics>,
    /// It stops following once shutdown began.
    pub health: Arc<Health>,
}

/// Follows the live set until `stop` turns true, moving clients this node no longer owns.
pub async fn run(follower: Follower, store: Store, mut stop: watch::Receiver<bool>) {
    if follower.nodes.configured().is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = follower.work.nodeset.notified() => {}
            _ = stop.changed() => return,
        }
        if follower.health.shutting_down() {
            return;
        }
        match follower.read(&store).await {
            // Shutdown began during the read: the node's set is `leave`'s now.
            Ok(_) if follower.health.shutting_down() => return,
            Ok(live) => {
                if follower.nodes.set_live(&follower.node, live.clone()) {
                    tracing::info!(node = %follower.node, live = ?live, "live node set changed");
                    follower.move_clients();
                }
            }
            Err(e) => {
                tracing::debug!(node = %follower.node, error = %e, "cannot read the live node set");
            }
        }
    }
}

impl Follower {
    /// The configured nodes holding a lease, this node always among them: it is running.
    /// With the run holding each lease: a node that announced it is leaving still holds it
    /// for a moment in a read that raced its release.
    async fn read(&self, store: &Store) -> Result<Vec<(NodeId, Option<String>)>, String> {
        let configured = self.nodes.configured();
        let mut conn = store.get().await.map_err(|e| e.to_string())?;
        let mut pipe = redis::pipe();
        for node in configured {
            pipe.get(self.keys.lease(node));
        }
        let runs: Vec<Option<String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(configured
            .iter()
            .zip(runs)
            .filter(|(peer, run)| run.is_some() || **peer == self.node)
            .map(|(peer, run)| (peer.clone(), run))
            .collect())
    }

    /// Moves every client whose home is now another node: hands its stream over to the new
    /// home, then closes its connections with 4003 (see `Hub::hand_over`). Returns how many.
    fn move_clients(&self) -> u64 {
        let moved = self
            .hub
            .clients()
            .iter()
            .filter(|client| {
                move_if_elsewhere(&self.node, &self.nodes, &self.hub, &self.keys, client)
            })
            .count() as u64;
        if moved > 0 {
            self.metrics.clients_moved.fetch_add(moved, Relaxed);
            tracing::info!(node = %self.node, clients = moved, "moved clients to their new home");
        }
        moved
    }
}

/// Moves `client` when its home among the live nodes, as this node last read them, is another
/// node: its stream is handed over there and its connections closed with 4003 (without
/// recovery, they are only closed). False when it stays, or was handed over already.
///
/// The follower calls it for every client when the set changes, and a handshake for its own
/// client once registered: a client admitted under the old set whose registration came after
/// the follower's pass over the clients would otherwise stay here, away from where backends
/// now send its messages, until the set changed again. Registering then checking, against
/// changing the set then listing the clients, leaves no such gap: one of the two sees the other.
pub fn move_if_elsewhere(
    me: &NodeId,
    nodes: &NodeSet,
    hub: &Hub,
    keys: &Keys,
    client: &ClientId,
) -> bool {
    if nodes.owns(me, client) {
        return false;
    }
    let Some(home) = nodes.home_of(client) else {
        return false;
    };
    hub.mark_moved(client);
    if hub.recovery().enabled() {
        hub.hand_over(client, keys.node_topic(&home))
    } else {
        hub.kick(client, CloseCode::Moved) > 0
    }
}

/// Moves every client of a node that is stopping, once it gave up its lease: reads which other
/// nodes are live, and hands each client over to the one that wins it (see
/// `Follower::move_clients`). Returns how many moved: none when no other node is live (or
/// without a node list), and the caller closes them as before.
pub async fn leave(follower: &Follower, store: &Store) -> Result<u64, String> {
    if follower.nodes.configured().is_empty() {
        return Ok(0);
    }
    let others: Vec<(NodeId, Option<String>)> = follower
        .read(store)
        .await?
        .into_iter()
        .filter(|(node, _)| *node != follower.node)
        .collect();
    if others.is_empty() {
        return Ok(0);
    }
    tracing::info!(node = %follower.node, live = ?others, "leaving: handing every client to the node that wins it");
    follower.nodes.set_live(&follower.node, others);
    Ok(follower.move_clients())
}
