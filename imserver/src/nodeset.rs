//! The live node set, as this node sees it: which configured nodes hold their lease. A client
//! whose home (the rendezvous winner among the live nodes) is another node is not this node's
//! to serve: its connections are closed with 4003 `moved` (reconnect at once, to its home), and
//! new connections for it are refused. So when a node comes back or is added, the clients it
//! wins move to it, and nobody else.
//!
//! Read every second and whenever a node announces a change on the node-set topic (the broker
//! wakes this task). Without a configured node list (`--nodes`), nothing moves.

use std::sync::RwLock;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use deadpool_redis::Pool;
use imclient::contract::CloseCode;
use imclient::node::{home_node, read_live};
use imclient::{ClientId, NodeId};
use tokio::sync::watch;

use crate::node::Node;

/// How often the set is read when no announcement comes.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The configured nodes and which of them are live.
#[derive(Debug)]
pub struct NodeSet {
    configured: Vec<NodeId>,
    /// `None` until first read: until then this node serves whoever its tokens name.
    live: RwLock<Option<Vec<NodeId>>>,
}

impl NodeSet {
    /// A set over `configured` (empty: this node serves whoever its tokens name).
    pub fn new(configured: Vec<NodeId>) -> Self {
        Self {
            configured,
            live: RwLock::new(None),
        }
    }

    /// Whether this node (`me`) is the home of `client` among the live nodes as last read.
    pub fn owns(&self, me: &NodeId, client: &ClientId) -> bool {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        match live.as_deref() {
            Some(nodes) => home_node(nodes, client.as_str()).is_none_or(|home| home == me),
            None => true,
        }
    }

    /// The home of `client` among the live nodes as last read, when known.
    pub fn home_of(&self, client: &ClientId) -> Option<NodeId> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        live.as_deref()
            .and_then(|nodes| home_node(nodes, client.as_str()))
            .cloned()
    }

    /// Sets the live nodes; returns whether they changed.
    fn set_live(&self, live: Vec<NodeId>) -> bool {
        let mut current = self.live.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref() == Some(&live) {
            return false;
        }
        *current = Some(live);
        true
    }
}

/// Follows the live set until `stop` turns true, moving clients this node no longer owns.
pub async fn run(node: Node, pool: Pool, mut stop: watch::Receiver<bool>) {
    if node.nodes().configured.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.work().nodeset.notified() => {}
            _ = stop.changed() => return,
        }
        if node.shutting_down() {
            return;
        }
        match read(&node, &pool).await {
            Ok(live) => {
                if node.nodes().set_live(live.clone()) {
                    tracing::info!(node = %node.id(), live = ?live, "live node set changed");
                    move_clients(&node);
                }
            }
            Err(e) => {
                tracing::debug!(node = %node.id(), error = %e, "cannot read the live node set");
            }
        }
    }
}

/// The configured nodes holding a lease, this node always among them: it is running.
async fn read(node: &Node, pool: &Pool) -> Result<Vec<NodeId>, String> {
    let configured = &node.nodes().configured;
    let mut conn = pool.get().await.map_err(|e| e.to_string())?;
    let live = read_live(&mut conn, node.keys(), configured)
        .await
        .map_err(|e| e.to_string())?;
    Ok(configured
        .iter()
        .filter(|peer| live.contains(peer) || *peer == node.id())
        .cloned()
        .collect())
}

/// Closes with 4003 every client whose home is now another node.
fn move_clients(node: &Node) {
    let mut moved = 0;
    for client in node.hub().clients() {
        if !node.nodes().owns(node.id(), &client) {
            node.hub().mark_moved(&client);
            node.hub().kick(&client, CloseCode::Moved);
            moved += 1;
        }
    }
    if moved > 0 {
        node.metrics().clients_moved.fetch_add(moved, Relaxed);
        tracing::info!(node = %node.id(), clients = moved, "moved clients to their new home");
    }
}
