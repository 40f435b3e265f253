//! The live node set, as this node sees it: which configured nodes hold their lease. A client
//! whose home (the rendezvous winner among the live nodes) is another node is not this node's
//! to serve: its connections are closed with 4003 `moved` (reconnect at once, to its home), and
//! new connections for it are refused. So when a node comes back or is added, the clients it
//! wins move to it, and nobody else. A node that stops on purpose announces that it is handing
//! its clients over (see `imclient::contract::NodeAnnouncement`): it leaves the set at once, and
//! the nodes that win its clients expect their streams.
//!
//! A node that starts again after dying knows which clients its previous run held (their
//! presence entries were left behind): nobody hands those over, so their connections do not
//! wait for a stream.
//!
//! This is the set itself; the task that reads it from Redis and moves clients is
//! `tasks::follower`. Without a configured node list (`--nodes`), nothing moves.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;
use std::time::Instant;

use imclient::node::home_node;
use imclient::{ClientId, NodeId};

/// How long after a change this node expects the clients it gained from a node still live to
/// be handed over (see `Hub::take_over`): deliveries for them are kept meanwhile, and their
/// connections wait for their stream. Also how long a node that announced it is leaving counts
/// as handing over.
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
    /// The clients this node's previous run held when it died, and when that was found:
    /// nobody will hand them over.
    orphans: RwLock<Option<(HashSet<ClientId>, Instant)>>,
    /// Nodes stopping on purpose that announced they hand their clients over: the run that
    /// stops, and when it said so.
    leaving: RwLock<HashMap<NodeId, (String, Instant)>>,
    /// How many times the live nodes changed: a handshake that saw another count at its
    /// admission checks its client's home again once registered (see
    /// `tasks::follower::move_if_elsewhere`).
    changes: AtomicU64,
}

impl NodeSet {
    /// A set over `configured` (empty: this node serves whoever its tokens name).
    pub fn new(configured: Vec<NodeId>) -> Self {
        Self {
            configured,
            live: RwLock::new(None),
            previous: RwLock::new(None),
            orphans: RwLock::new(None),
            leaving: RwLock::new(HashMap::new()),
            changes: AtomicU64::new(0),
        }
    }

    /// How many times the live nodes changed since this node started.
    pub fn changes(&self) -> u64 {
        self.changes.load(SeqCst)
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
    /// last change (a few seconds ago at most) was another node that is still live, or that is
    /// leaving and said it hands its clients over. Also true before the set is first read,
    /// when a node that just started may be winning anyone.
    pub fn expects_handover(&self, me: &NodeId, client: &ClientId) -> bool {
        if self.orphaned(client) {
            return false;
        }
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
            old != me
                && (live.contains(old) || self.handing_over(old))
                && home_node(live, client.as_str()) == Some(me)
        })
    }

    /// Records the clients this node's previous run held when it died (its presence entries
    /// were still there at start): their streams died with it, so none is expected.
    pub fn set_orphans(&self, clients: impl IntoIterator<Item = ClientId>) {
        *self.orphans.write().unwrap_or_else(|p| p.into_inner()) =
            Some((clients.into_iter().collect(), Instant::now()));
    }

    fn orphaned(&self, client: &ClientId) -> bool {
        let orphans = self.orphans.read().unwrap_or_else(|p| p.into_inner());
        orphans.as_ref().is_some_and(|(clients, at)| {
            at.elapsed() <= HANDOVER_EXPECTED_FOR && clients.contains(client)
        })
    }

    /// Whether `node` announced, a few seconds ago at most, that it is leaving and handing
    /// its clients over.
    fn handing_over(&self, node: &NodeId) -> bool {
        let leaving = self.leaving.read().unwrap_or_else(|p| p.into_inner());
        leaving
            .get(node)
            .is_some_and(|(_, at)| at.elapsed() <= HANDOVER_EXPECTED_FOR)
    }

    /// Records that `node`, running `run`, is leaving and handing its clients over: it is out
    /// of the set from now on (a read of the leases that raced its release does not bring it
    /// back), and the clients it held are expected here if `me` wins them. Returns whether the
    /// set changed.
    pub fn leaving(&self, me: &NodeId, node: &NodeId, run: String) -> bool {
        if node == me {
            return false;
        }
        self.leaving
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone(), (run, Instant::now()));
        let mut current = self.live.write().unwrap_or_else(|p| p.into_inner());
        let Some(live) = current.as_ref().filter(|l| l.contains(node)) else {
            return false;
        };
        let before = live.clone();
        let after: Vec<NodeId> = before.iter().filter(|n| *n != node).cloned().collect();
        *self.previous.write().unwrap_or_else(|p| p.into_inner()) = Some((before, Instant::now()));
        *current = Some(after);
        true
    }

    /// The configured nodes (empty: this node serves whoever its tokens name).
    pub fn configured(&self) -> &[NodeId] {
        &self.configured
    }

    /// Sets the live nodes with the run holding each one's lease (`me` among them, its run
    /// unread); returns whether the nodes changed. A node still running the run that announced
    /// it is leaving stays out: its lease was read before it gave it up.
    pub fn set_live(&self, me: &NodeId, live: Vec<(NodeId, Option<String>)>) -> bool {
        let live: Vec<(NodeId, Option<String>)> = {
            let leaving = self.leaving.read().unwrap_or_else(|p| p.into_inner());
            live.into_iter()
                .filter(|(node, run)| {
                    leaving
                        .get(node)
                        .is_none_or(|(left, _)| run.as_ref() != Some(left))
                })
                .collect()
        };
        let mut orphans = self.orphans.write().unwrap_or_else(|p| p.into_inner());
        if orphans
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > HANDOVER_EXPECTED_FOR)
        {
            *orphans = None;
        }
        drop(orphans);
        let live: Vec<NodeId> = live.into_iter().map(|(node, _)| node).collect();
        let mut current = self.live.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref() == Some(&live) {
            return false;
        }
        let before = current
            .take()
            .unwrap_or_else(|| live.iter().filter(|n| *n != me).cloned().collect());
        *self.previous.write().unwrap_or_else(|p| p.into_inner()) = Some((before, Instant::now()));
        *current = Some(live);
        // Counted before the lock is let go: whoever reads the new count reads the new set.
        self.changes.fetch_add(1, SeqCst);
        true
    }
}
