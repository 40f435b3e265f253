//! The live node set: which of the configured nodes are running (hold their lease in Redis).
//! A client's home is the rendezvous winner among the live nodes, so a dead node's clients are
//! sent elsewhere and a node that comes back gets its clients again.
//!
//! Kept fresh by a watcher task: nodes announce every start, stop and purge on the node-set
//! topic, and a refresh every second covers a missed announcement. Until the first refresh,
//! and whenever Redis cannot be read, the configured list stands in for the live one.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

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
                Some((_, messages)) => messages.next().await.is_some(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            still_open = announced => {
                if !still_open {
                    announcements = None;
                }
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
