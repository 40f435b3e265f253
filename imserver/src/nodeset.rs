//! The live node set, as this node sees it: which configured nodes hold their lease. A client
//! whose home (the rendezvous winner among the live nodes) is another node is not this node's
//! to serve: its connections are closed with 4003 `moved` (reconnect at once, to its home), and
//! new connections for it are refused. So when a node comes back or is added, the clients it
//! wins move to it, and nobody else.
//!
//! This is the set itself; the task that reads it from Redis and moves clients is
//! `tasks::follower`. Without a configured node list (`--nodes`), nothing moves.

use std::sync::RwLock;
use std::time::Duration;
use std::time::Instant;

use imclient::node::home_node;
use imclient::{ClientId, NodeId};

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

    /// The configured nodes (empty: this node serves whoever its tokens name).
    pub fn configured(&self) -> &[NodeId] {
        &self.configured
    }

    /// Sets the live nodes (`me` among them); returns whether they changed.
    pub fn set_live(&self, me: &NodeId, live: Vec<NodeId>) -> bool {
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
