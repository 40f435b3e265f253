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
use std::time::Instant;

use imclient::contract::CloseCode;
use imclient::node::{home_node, read_live};
use imclient::store::Store;
use imclient::{ClientId, NodeId};
use tokio::sync::watch;

use crate::node::Node;

/// How often the set is read when no announcement comes.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long after a change this node expects the clients it gained from a node still live to
/// be handed over (see `Hub::take_over`): deliveries for them are kept meanwhile, and their
/// connections wait for their stream.
pub const HANDOVER_EXPECTED_FOR: Duration = Duration::from_secs(5);

/// The configured nodes and which of them are live.
#[derive(Debug)]
pub struct NodeSet {
    configured: Vec<NodeId>,
    /// `None` until first read: until then this node serves whoever its tokens name.
    live: RwLock<Option<Vec<NodeId>>>,
    /// The live nodes before the last change (without this node at the first read: it was
    /// not running), and when it happened.
    previous: RwLock<Option<(Vec<NodeId>, Instant)>>,
}

impl NodeSet {
    /// A set over `configured` (empty: this node serves whoever its tokens name).
    pub fn new(configured: Vec<NodeId>) -> Self {
        Self {
            configured,
            live: RwLock::new(None),
            previous: RwLock::new(None),
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

    /// Whether `client` is being handed over to `me` by the node it left: its home before the
    /// last change (a few seconds ago at most) was another node that is still live. Also true
    /// before the set is first read, when a node that just started may be winning anyone.
    pub fn expects_handover(&self, me: &NodeId, client: &ClientId) -> bool {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        let Some(live) = live.as_deref() else {
            return !self.configured.is_empty();
        };
        let previous = self.previous.read().unwrap_or_else(|p| p.into_inner());
        let Some((before, at)) = previous.as_ref() else {
            return false;
        };
        if at.elapsed() > HANDOVER_EXPECTED_FOR {
            return false;
        }
        home_node(before, client.as_str()).is_some_and(|old| {
            old != me && live.contains(old) && home_node(live, client.as_str()) == Some(me)
        })
    }

    /// Sets the live nodes (`me` among them); returns whether they changed.
    fn set_live(&self, me: &NodeId, live: Vec<NodeId>) -> bool {
        let mut current = self.live.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref() == Some(&live) {
            return false;
        }
        let before = current
            .take()
            .unwrap_or_else(|| live.iter().filter(|n| *n != me).cloned().collect());
        *self.previous.write().unwrap_or_else(|p| p.into_inner()) = Some((before, Instant::now()));
        *current = Some(live);
        true
    }
}

/// Follows the live set until `stop` turns true, moving clients this node no longer owns.
pub async fn run(node: Node, store: Store, mut stop: watch::Receiver<bool>) {
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
        match read(&node, &store).await {
            Ok(live) => {
                if node.nodes().set_live(node.id(), live.clone()) {
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
async fn read(node: &Node, store: &Store) -> Result<Vec<NodeId>, String> {
    let configured = &node.nodes().configured;
    let mut conn = store.get().await.map_err(|e| e.to_string())?;
    let live = read_live(&mut conn, node.keys(), configured)
        .await
        .map_err(|e| e.to_string())?;
    Ok(configured
        .iter()
        .filter(|peer| live.contains(peer) || *peer == node.id())
        .cloned()
        .collect())
}

/// Moves every client whose home is now another node: hands its stream over to the new home,
/// then closes its connections with 4003 (see `Hub::hand_over`).
fn move_clients(node: &Node) {
    let mut moved = 0;
    for client in node.hub().clients() {
        if node.nodes().owns(node.id(), &client) {
            continue;
        }
        let Some(home) = node.nodes().home_of(&client) else {
            continue;
        };
        node.hub().mark_moved(&client);
        if node.hub().recovery().enabled() {
            if node.hub().hand_over(&client, node.keys().node_topic(&home)) {
                moved += 1;
            }
        } else {
            node.hub().kick(&client, CloseCode::Moved);
            moved += 1;
        }
    }
    if moved > 0 {
        node.metrics().clients_moved.fetch_add(moved, Relaxed);
        tracing::info!(node = %node.id(), clients = moved, "moved clients to their new home");
    }
}
