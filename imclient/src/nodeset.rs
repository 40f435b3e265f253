//! The live node set: which of the configured nodes are running (hold their lease in Redis).
//! A client's home is the rendezvous winner among the live nodes, so a dead node's clients are
//! sent elsewhere and a node that comes back gets its clients again.
//!
//! Kept fresh by a watcher task: nodes announce every start, stop and purge on the node-set
//! topic, and a refresh every second covers a missed announcement. An announcement is applied
//! at once, before the leases are read again: a node announces only once its lease is taken
//! or gone, and a node that stops closes its clients right after, so they must not be sent
//! back to it while the read is under way. Until the first refresh, and whenever Redis cannot
//! be read, the configured list stands in for the live one.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use crate::contract::NodeAnnouncement;
use crate::error::Result;
use crate::ids::NodeId;
use crate::keys::Keys;
use crate::link::Link;
use crate::node::{home_node, read_live};
use crate::store::{Messages, Store, Subscriber};

/// How often the live set is read when no announcement comes.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The configured nodes and which of them are live.
#[derive(Debug)]
pub(crate) struct NodeSet {
    configured: Vec<NodeId>,
    /// `None` until known, and while Redis cannot be read.
    live: RwLock<Option<Vec<NodeId>>>,
}

impl NodeSet {
    pub(crate) fn new(configured: Vec<NodeId>) -> Self {
        Self {
            configured,
            live: RwLock::new(None),
        }
    }

    pub(crate) fn configured(&self) -> &[NodeId] {
        &self.configured
    }

    /// The live nodes, when known.
    pub(crate) fn live(&self) -> Option<Vec<NodeId>> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_live(&self, live: Option<Vec<NodeId>>) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = live;
    }

    /// Applies an announcement to the known live set (in the configured order); nothing while
    /// the live set is not known, or for a node not configured.
    fn announced(&self, announcement: &NodeAnnouncement) {
        if !self.configured.contains(&announcement.node) {
            return;
        }
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        let Some(nodes) = live.as_mut() else { return };
        let node = &announcement.node;
        if announcement.live {
            if !nodes.contains(node) {
                nodes.push(node.clone());
                nodes.sort_by_key(|n| self.configured.iter().position(|c| c == n));
            }
        } else {
            nodes.retain(|n| n != node);
        }
    }

    /// The home of `client`: the rendezvous winner among the live nodes, or among the
    /// configured ones when none is known to be live.
    pub(crate) fn home(&self, client: &str) -> Option<NodeId> {
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        match live.as_deref() {
            Some(nodes) if !nodes.is_empty() => home_node(nodes, client).cloned(),
            _ => home_node(&self.configured, client).cloned(),
        }
    }

    /// Reads which configured nodes hold their lease.
    pub(crate) async fn refresh(&self, link: &Link, keys: &Keys) -> Result<()> {
        let read = async {
            let mut conn = link.get().await?;
            Result::Ok(read_live(&mut conn, keys, &self.configured).await?)
        };
        match read.await {
            Ok(live) => {
                self.set_live(Some(live));
                Ok(())
            }
            Err(e) => {
                self.set_live(None);
                Err(e)
            }
        }
    }
}

/// What the watcher needs from its client, held weakly so the watcher ends with the client.
pub(crate) trait Watched: Send + Sync + 'static {
    fn node_set(&self) -> &NodeSet;
    fn link(&self) -> &Link;
    fn keys(&self) -> &Keys;
    /// Where to open the announcement subscription (when the client was built from a URL).
    fn store(&self) -> &Store;
}

/// Keeps the live set fresh for as long as the client lives.
pub(crate) async fn watch<W: Watched>(client: Weak<W>) {
    let topic = match client.upgrade() {
        Some(c) => c.keys().nodeset_topic(),
        None => return,
    };
    let mut announcements = None;
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(c) = client.upgrade() else { return };
        if announcements.is_none() {
            announcements = subscribe(c.store(), &topic).await;
        }
        if let Err(e) = c.node_set().refresh(c.link(), c.keys()).await {
            tracing::debug!(error = %e, "cannot read the live node set; using the configured list");
        }
        drop(c);
        let announced = async {
            match announcements.as_mut() {
                Some((_, messages)) => messages.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            message = announced => match message {
                Some(message) => {
                    if let (Some(c), Ok(announcement)) = (
                        client.upgrade(),
                        serde_json::from_slice::<NodeAnnouncement>(message.get_payload_bytes()),
                    ) {
                        c.node_set().announced(&announcement);
                    }
                }
                None => announcements = None,
            }
        }
    }
}

/// The subscription to the node-set topic: its subscriber half is kept so that it lives on.
type Announcements = (Subscriber, Messages);

async fn subscribe(store: &Store, topic: &str) -> Option<Announcements> {
    let subscribed = async {
        let (mut subscriber, messages) = store.subscribe().await?.ok()?;
        subscriber.subscribe(&[topic.to_owned()]).await.ok()?;
        Some((subscriber, messages))
    };
    tokio::time::timeout(REFRESH_EVERY, subscribed)
        .await
        .ok()
        .flatten()
}

/// Starts the watcher on the current Tokio runtime, if there is one; false when not.
pub(crate) fn spawn_watch<W: Watched>(client: &Arc<W>) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(watch(Arc::downgrade(client)));
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).expect("valid node")
    }

    fn announcement(n: &str, live: bool) -> NodeAnnouncement {
        NodeAnnouncement {
            node: node(n),
            live,
            handing_over: None,
        }
    }

    #[test]
    fn announcements_change_the_known_live_set_at_once() {
        let set = NodeSet::new(vec![node("ws://a:1"), node("ws://b:2"), node("ws://c:3")]);
        set.announced(&announcement("ws://a:1", false));
        assert_eq!(set.live(), None, "nothing known yet: nothing to change");
        set.set_live(Some(vec![node("ws://a:1"), node("ws://b:2")]));
        set.announced(&announcement("ws://a:1", false));
        assert_eq!(set.live(), Some(vec![node("ws://b:2")]));
        set.announced(&announcement("ws://c:3", true));
        set.announced(&announcement("ws://a:1", true));
        set.announced(&announcement("ws://a:1", true));
        assert_eq!(
            set.live(),
            Some(vec![node("ws://a:1"), node("ws://b:2"), node("ws://c:3")])
        );
        set.announced(&announcement("ws://elsewhere:4", true));
        assert_eq!(set.live().map(|l| l.len()), Some(3), "not configured");
    }
}
