//! The live node set: which of the configured nodes are running (hold their lease in Redis).
//! A client's home is the rendezvous winner among the live nodes, so a dead node's clients are
//! sent elsewhere and a node that comes back gets its clients again.
//!
//! Kept fresh by a watcher task: nodes announce every start, stop and purge on the node-set
//! topic, and a refresh every second covers a missed announcement. Until the first refresh,
//! and whenever Redis cannot be read, the configured list stands in for the live one.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;

use crate::ids::NodeId;
use crate::keys::Keys;
use crate::link::Link;
use crate::node::{home_node, read_live};

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
    pub(crate) async fn refresh(&self, link: &Link, keys: &Keys) -> crate::Result<()> {
        let read = async {
            let mut conn = link.get().await?;
            crate::Result::Ok(read_live(&mut conn, keys, &self.configured).await?)
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
    /// A client to open the announcement subscription with, when the client was built from a
    /// URL.
    fn pubsub_client(&self) -> Option<&redis::Client>;
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
        if announcements.is_none()
            && let Some(redis) = c.pubsub_client()
        {
            announcements = subscribe(redis, &topic).await;
        }
        if let Err(e) = c.node_set().refresh(c.link(), c.keys()).await {
            tracing::debug!(error = %e, "cannot read the live node set; using the configured list");
        }
        drop(c);
        let announced = async {
            match announcements.as_mut() {
                Some(stream) => stream.next().await.is_some(),
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

type Announcements = futures_util::stream::BoxStream<'static, redis::Msg>;

async fn subscribe(redis: &redis::Client, topic: &str) -> Option<Announcements> {
    let subscribed = async {
        let mut pubsub = redis.get_async_pubsub().await?;
        pubsub.subscribe(topic).await?;
        redis::RedisResult::Ok(pubsub.into_on_message().boxed())
    };
    match tokio::time::timeout(REFRESH_EVERY, subscribed).await {
        Ok(Ok(stream)) => Some(stream),
        _ => None,
    }
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
