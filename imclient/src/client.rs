//! `ImClient`: the handle a business backend keeps. Built from [`ImClientOptions`], it knows the
//! live nodes and each client's home among them, signs connect URLs and disconnects clients.
//! What it sends is in `sending`, channel membership in `channels`, presence questions in
//! `presence` and events in `events`: each adds its methods to this one handle. Cheap to clone;
//! share one per process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use crate::contract::{Kick, NodeCommand};
use crate::error::{Error, Result};
use crate::ids::{ClientId, NodeId};
use crate::keys::Keys;
use crate::link::{Link, LinkConn};
use crate::nodeset::{self, NodeSet, Watched};
use crate::options::{ImClientOptions, RedisSource};
use crate::store::Store;
use crate::token::{ConnectClaims, TokenIssuer};

struct Inner {
    store: Store,
    link: Link,
    nodes: NodeSet,
    /// Whether the node-set watcher runs.
    watching: AtomicBool,
    issuer: TokenIssuer,
    token_ttl: Duration,
    keys: Keys,
    max_payload_bytes: usize,
    join_ack_timeout: Duration,
}

/// The business-side handle to the push cluster.
///
/// ```no_run
/// # async fn f() -> imclient::Result<()> {
/// use imclient::{ImClient, ImClientOptions};
/// let im = ImClient::new(ImClientOptions::new(
///     "redis://127.0.0.1:6379", ["ws://127.0.0.1:6001"], "a-long-random-secret-of-32-bytes"))?;
/// let url = im.prev_connect_server("alice", serde_json::json!({"name": "Alice"}))?;
/// // hand `url` to the browser; later:
/// im.send_message("bob", ["alice"], &serde_json::json!({"text": "hi"}), true).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ImClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImClient")
            .field("nodes", &self.inner.nodes)
            .field("prefix", &self.inner.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl ImClient {
    /// Builds a client. Fails on an empty node list, a bad node address, a short secret or a
    /// bad Redis URL; it does not connect to Redis until the first call that needs it.
    pub fn new(options: ImClientOptions) -> Result<Self> {
        if options.nodes.is_empty() {
            return Err(Error::NoNodes);
        }
        let nodes = options
            .nodes
            .into_iter()
            .map(NodeId::new)
            .collect::<Result<Vec<_>>>()?;
        crate::keys::check_prefix(&options.key_prefix).map_err(Error::Options)?;
        let issuer = match options.signing_key {
            Some(issuer) => issuer,
            None => TokenIssuer::new(&options.token_secret)?,
        };
        let store = match options.redis {
            RedisSource::Pool(pool) => Store::from_pool(pool),
            RedisSource::ClusterPool(pool) => Store::from_cluster_pool(pool),
            RedisSource::Url(url) => Store::open_with(&url, options.redis_timeouts)?,
        };
        let im = Self {
            inner: Arc::new(Inner {
                link: Link::new(store.clone()),
                nodes: NodeSet::new(nodes),
                watching: AtomicBool::new(false),
                issuer,
                token_ttl: options.token_ttl,
                keys: Keys::new(options.key_prefix).sharded(store.is_cluster()),
                store,
                max_payload_bytes: options.max_payload_bytes,
                join_ack_timeout: options.join_ack_timeout,
            }),
        };
        im.ensure_watching();
        Ok(im)
    }

    /// Starts the live node set's watcher once a Tokio runtime is at hand.
    fn ensure_watching(&self) {
        if !self.inner.watching.load(Relaxed) && nodeset::spawn_watch(&self.inner) {
            self.inner.watching.store(true, Relaxed);
        }
    }

    /// Reads the live node set now, instead of within the second the watcher takes. Useful
    /// right after starting or stopping a node.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// im.refresh_nodes().await?;
    /// assert!(!im.live_nodes().is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn refresh_nodes(&self) -> Result<()> {
        self.ensure_watching();
        self.inner
            .nodes
            .refresh(&self.inner.link, &self.inner.keys)
            .await
    }

    /// The configured nodes that hold their lease, as last read; the configured list while
    /// that is unknown (before the first read, or with Redis unreachable).
    ///
    /// ```
    /// # use imclient::{ImClient, ImClientOptions};
    /// let im = ImClient::new(ImClientOptions::new("redis://127.0.0.1",
    ///     ["ws://a:1", "ws://b:2"], "a-long-random-secret-of-32-bytes")).unwrap();
    /// assert_eq!(im.live_nodes().len(), 2);
    /// ```
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.inner
            .nodes
            .live()
            .filter(|live| !live.is_empty())
            .unwrap_or_else(|| self.inner.nodes.configured().to_vec())
    }

    /// The Redis (or Redis Cluster) this client talks to, for the application's own use.
    ///
    /// ```
    /// # use imclient::{ImClient, ImClientOptions};
    /// let im = ImClient::new(ImClientOptions::new("redis://127.0.0.1",
    ///     ["ws://a:1"], "a-long-random-secret-of-32-bytes")).unwrap();
    /// assert!(!im.store().is_cluster());
    /// ```
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The shared connection for non-blocking commands.
    pub(crate) async fn conn(&self) -> Result<LinkConn<'_>> {
        self.ensure_watching();
        self.inner.link.get().await
    }

    /// How long a join waits for its acknowledgement.
    pub(crate) fn join_ack_timeout(&self) -> Duration {
        self.inner.join_ack_timeout
    }

    /// The largest payload accepted, in bytes of JSON.
    pub(crate) fn max_payload_bytes(&self) -> usize {
        self.inner.max_payload_bytes
    }

    /// The Redis names this client uses.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The configured node list.
    pub fn nodes(&self) -> &[NodeId] {
        self.inner.nodes.configured()
    }

    /// The home node of `client_id`: the rendezvous winner among the live nodes (see
    /// [`ImClient::live_nodes`]).
    ///
    /// ```
    /// # use imclient::{ImClient, ImClientOptions};
    /// let im = ImClient::new(ImClientOptions::new("redis://127.0.0.1",
    ///     ["ws://a:1", "ws://b:2"], "a-long-random-secret-of-32-bytes")).unwrap();
    /// let home = im.home_node("alice").unwrap();
    /// assert!(im.nodes().contains(&home));
    /// ```
    pub fn home_node(&self, client_id: &str) -> Result<NodeId> {
        self.home_of(&ClientId::new(client_id)?)
    }

    /// The home node of a client whose id is checked already.
    pub(crate) fn home_of(&self, client: &ClientId) -> Result<NodeId> {
        self.inner.nodes.home(client.as_str()).ok_or(Error::NoNodes)
    }

    /// The URL a browser opens to connect as `client_id`: its home node with a fresh single-use
    /// token. `metadata` (any JSON, e.g. a display name) comes back in online/offline events.
    /// Call it for every connection attempt; tokens cannot be reused.
    ///
    /// ```
    /// # use imclient::{ImClient, ImClientOptions};
    /// let im = ImClient::new(ImClientOptions::new("redis://127.0.0.1",
    ///     ["ws://127.0.0.1:6001"], "a-long-random-secret-of-32-bytes")).unwrap();
    /// let url = im.prev_connect_server("alice", serde_json::json!({"name": "Alice"})).unwrap();
    /// assert!(url.starts_with("ws://127.0.0.1:6001/ws?token="));
    /// ```
    pub fn prev_connect_server(
        &self,
        client_id: &str,
        metadata: serde_json::Value,
    ) -> Result<String> {
        let client = ClientId::new(client_id)?;
        let node = self.home_of(&client)?;
        let claims = ConnectClaims::new(client, node.clone(), metadata, self.inner.token_ttl);
        let token = self.inner.issuer.sign(&claims)?;
        Ok(node.connect_url(&token))
    }

    /// Checks that Redis answers, e.g. for the backend's health endpoint.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// im.ping().await?;
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// Closes every connection of `client_id` (close code 4002: do not reconnect). Returns
    /// whether its home node is running.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// im.force_offline("mallory").await?;
    /// # Ok(()) }
    /// ```
    pub async fn force_offline(&self, client_id: &str) -> Result<bool> {
        let client = ClientId::new(client_id)?;
        let node = self.home_node(client.as_str())?;
        let cmd = NodeCommand::Kick(Kick { client });
        let mut conn = self.conn().await?;
        let subscribers: i64 = self
            .inner
            .keys
            .publish(
                &self.inner.keys.node_topic(&node),
                serde_json::to_string(&cmd)?,
            )
            .query_async(&mut conn)
            .await?;
        Ok(subscribers > 0)
    }
}

impl Watched for Inner {
    fn node_set(&self) -> &NodeSet {
        &self.nodes
    }

    fn link(&self) -> &Link {
        &self.link
    }

    fn keys(&self) -> &Keys {
        &self.keys
    }

    fn store(&self) -> &Store {
        &self.store
    }
}
