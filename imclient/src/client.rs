//! `ImClient`: the handle a business backend keeps. It signs connect tokens, routes messages to
//! home nodes, and reads presence. Cheap to clone; share one per process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_redis::Pool;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::contract::{Deliver, Kick, Kind, NodeCommand, ReceiptResult, ReceiptStatus, Receipts};
use crate::error::{Error, Result};
use crate::ids::{ClientId, NodeId};
use crate::keys::Keys;
use crate::link::{Link, LinkConn};
use crate::nodeset::{self, NodeSet, Watched};
use crate::store::Store;
use crate::token::{ConnectClaims, TokenIssuer};

/// Default lifetime of a connect token: long enough to open a socket, short enough that a
/// leaked URL is soon useless.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Default largest payload, in bytes of JSON.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "im";
/// Default longest wait of a join for the home node's acknowledgement.
pub const DEFAULT_JOIN_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where imclient gets its Redis connections.
#[derive(Clone)]
pub enum RedisSource {
    /// Build a pool from this URL: one server's (`redis://127.0.0.1:6379`) or a Redis
    /// Cluster's (`redis+cluster://10.0.0.1:7000,10.0.0.2:7000`, see [`crate::store`]).
    Url(String),
    /// Use a pool the application already has.
    Pool(Pool),
    /// Use a Redis Cluster pool the application already has.
    ClusterPool(deadpool_redis::cluster::Pool),
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisSource::Url(url) => f.debug_tuple("Url").field(url).finish(),
            RedisSource::Pool(_) => f.write_str("Pool(..)"),
            RedisSource::ClusterPool(_) => f.write_str("ClusterPool(..)"),
        }
    }
}

/// Options for [`ImClient::new`].
///
/// ```
/// use std::time::Duration;
/// use imclient::ImClientOptions;
/// let opts = ImClientOptions::new(
///     "redis://127.0.0.1:6379",
///     ["ws://127.0.0.1:6001", "ws://127.0.0.1:6002"],
///     "a-long-random-secret-of-32-bytes",
/// )
/// .token_ttl(Duration::from_secs(30))
/// .key_prefix("chat");
/// ```
#[derive(Clone)]
pub struct ImClientOptions {
    /// Redis to talk to. No default.
    pub redis: RedisSource,
    /// Node addresses as browsers reach them; the same list every node and backend uses.
    pub nodes: Vec<String>,
    /// Secret shared with the nodes (IM_TOKEN_SECRET); at least 16 bytes.
    pub token_secret: Vec<u8>,
    /// Lifetime of connect tokens. Default [`DEFAULT_TOKEN_TTL`].
    pub token_ttl: Duration,
    /// Prefix of every Redis name, so several apps can share one Redis. Default `im`.
    pub key_prefix: String,
    /// Largest payload accepted, in bytes of JSON. Default [`DEFAULT_MAX_PAYLOAD_BYTES`].
    pub max_payload_bytes: usize,
    /// Longest a join of an online client waits for its home node to say the channel reaches
    /// it. Default [`DEFAULT_JOIN_ACK_TIMEOUT`].
    pub join_ack_timeout: Duration,
    /// Signs tokens instead of the shared secret, e.g. with a private key whose public half
    /// the nodes hold. Default: HS256 with `token_secret`.
    pub signing_key: Option<TokenIssuer>,
}

impl std::fmt::Debug for ImClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImClientOptions")
            .field("redis", &self.redis)
            .field("nodes", &self.nodes)
            .field("token_ttl", &self.token_ttl)
            .field("key_prefix", &self.key_prefix)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("join_ack_timeout", &self.join_ack_timeout)
            .finish_non_exhaustive()
    }
}

impl ImClientOptions {
    /// Options with a Redis URL, the node list and the token secret; the rest defaulted.
    pub fn new<N: Into<String>>(
        redis_url: impl Into<String>,
        nodes: impl IntoIterator<Item = N>,
        token_secret: impl AsRef<[u8]>,
    ) -> Self {
        Self {
            redis: RedisSource::Url(redis_url.into()),
            nodes: nodes.into_iter().map(Into::into).collect(),
            token_secret: token_secret.as_ref().to_vec(),
            token_ttl: DEFAULT_TOKEN_TTL,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            join_ack_timeout: DEFAULT_JOIN_ACK_TIMEOUT,
            signing_key: None,
        }
    }

    /// Signs connect tokens with `issuer` (e.g. an EdDSA private key, named by a key id for
    /// rotation) instead of the shared secret, which may then be empty.
    ///
    /// ```
    /// use imclient::{ImClientOptions, token::{KeyAlgorithm, TokenIssuer}};
    /// let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIP3VnQ85jmIYsXuJhUbPUbjhvYO3tGAT115nMZE9clqf\n-----END PRIVATE KEY-----\n";
    /// let key = TokenIssuer::from_pem(KeyAlgorithm::EdDsa, pem).unwrap().with_key_id("2026-11");
    /// let opts = ImClientOptions::new("redis://127.0.0.1", ["ws://a:1"], "").signing_key(key);
    /// assert!(imclient::ImClient::new(opts).is_ok());
    /// ```
    pub fn signing_key(mut self, issuer: TokenIssuer) -> Self {
        self.signing_key = Some(issuer);
        self
    }

    /// Uses an existing deadpool-redis pool instead of the URL.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.redis = RedisSource::Pool(pool);
        self
    }

    /// Uses an existing deadpool-redis cluster pool instead of the URL.
    pub fn cluster_pool(mut self, pool: deadpool_redis::cluster::Pool) -> Self {
        self.redis = RedisSource::ClusterPool(pool);
        self
    }

    /// Sets the connect token lifetime.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Sets the Redis key prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the largest accepted payload.
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Sets how long a join of an online client waits for its home node's acknowledgement.
    pub fn join_ack_timeout(mut self, timeout: Duration) -> Self {
        self.join_ack_timeout = timeout;
        self
    }
}

/// What happened to a message, per home node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// The message id every receiver sees.
    pub message_id: String,
    /// One entry per home node the receivers live on.
    pub nodes: Vec<NodeReport>,
}

impl SendReport {
    /// Receivers whose home node was not running (nobody subscribed to its topic).
    pub fn unreachable(&self) -> impl Iterator<Item = &ClientId> {
        self.nodes
            .iter()
            .filter(|n| !n.taken)
            .flat_map(|n| n.receivers.iter())
    }
}

/// One node's share of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The node.
    pub node: NodeId,
    /// The receivers whose home it is.
    pub receivers: Vec<ClientId>,
    /// Whether a running node took the message (its topic had a subscriber).
    pub taken: bool,
}

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
            RedisSource::Url(url) => Store::open(&url)?,
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
        let client = ClientId::new(client_id)?;
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
        let node = self
            .inner
            .nodes
            .home(client.as_str())
            .ok_or(Error::NoNodes)?;
        let claims = ConnectClaims::new(client, node.clone(), metadata, self.inner.token_ttl);
        let token = self.inner.issuer.sign(&claims)?;
        Ok(node.connect_url(&token))
    }

    /// Pushes `payload` to every connection of each receiver. One PUBLISH per home node,
    /// pipelined, whatever the number of receivers. With `receipt`, the sender (if online) is
    /// pushed one receipt per receiver: delivered or offline.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let report = im.send_message("system", ["alice", "bob"], &"hello", false).await?;
    /// for node in &report.nodes {
    ///     tracing::info!("{}: {} receivers, taken: {}", node.node, node.receivers.len(), node.taken);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_message<I, S, P>(
        &self,
        sender: &str,
        receivers: I,
        payload: &P,
        receipt: bool,
    ) -> Result<SendReport>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        P: Serialize + ?Sized,
    {
        self.send_message_with_id(&new_message_id(), sender, receivers, payload, receipt)
            .await
    }

    /// [`ImClient::send_message`] under a message id the caller chose. A send that failed may
    /// still have gone out (Redis ran the PUBLISH, its answer was lost): sent again under the
    /// same id, receivers drop the second copy, as clients de-duplicate on the id. Take the id
    /// from [`new_message_id`] at the first attempt and keep it with the request's retry key:
    /// ids from it are time-ordered, and pages may sort messages by id.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let id = imclient::new_message_id(); // kept for every retry of this send
    /// im.send_message_with_id(&id, "alice", ["bob"], &"hello", false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_message_with_id<I, S, P>(
        &self,
        message_id: &str,
        sender: &str,
        receivers: I,
        payload: &P,
        receipt: bool,
    ) -> Result<SendReport>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        P: Serialize + ?Sized,
    {
        let message_id = checked_message_id(message_id)?;
        let sender = ClientId::new(sender)?;
        let payload = self.encode_payload(payload)?;
        let mut by_node: BTreeMap<NodeId, Vec<ClientId>> = BTreeMap::new();
        for receiver in receivers {
            let client = ClientId::new(receiver.as_ref())?;
            let node = self
                .inner
                .nodes
                .home(client.as_str())
                .ok_or(Error::NoNodes)?;
            let list = by_node.entry(node).or_default();
            if !list.contains(&client) {
                list.push(client);
            }
        }
        if by_node.is_empty() {
            return Err(Error::NoReceivers);
        }
        let receipt_node = if receipt {
            Some(self.home_node(sender.as_str())?)
        } else {
            None
        };
        let ts = now_ms();

        let mut pipe = redis::pipe();
        let mut nodes = Vec::with_capacity(by_node.len());
        for (node, to) in by_node {
            let cmd = NodeCommand::Deliver(Deliver {
                id: message_id.clone(),
                kind: Kind::Message,
                from: Some(sender.clone()),
                to,
                payload: &payload,
                ts,
                receipt_node: receipt_node.clone(),
            });
            pipe.add_command(self.inner.keys.publish(
                &self.inner.keys.node_topic(&node),
                serde_json::to_string(&cmd)?,
            ));
            let NodeCommand::Deliver(d) = cmd else {
                unreachable!("built as Deliver")
            };
            nodes.push(NodeReport {
                node: node.clone(),
                receivers: d.to,
                taken: false,
            });
        }
        let mut conn = self.conn().await?;
        let counts: Vec<i64> = pipe.query_async(&mut conn).await?;
        for (report, subscribers) in nodes.iter_mut().zip(counts) {
            report.taken = subscribers > 0;
        }
        let report = SendReport { message_id, nodes };

        // Receivers on a node that is not running cannot be delivered; no node will say so,
        // so the sender's receipts for them come from here.
        if let Some(sender_node) = &receipt_node {
            let results: Vec<ReceiptResult> = report
                .unreachable()
                .map(|client| ReceiptResult {
                    client: client.clone(),
                    status: ReceiptStatus::Offline,
                })
                .collect();
            if !results.is_empty() {
                let cmd = NodeCommand::Receipts(Receipts {
                    to: sender,
                    message_id: report.message_id.clone(),
                    results,
                });
                let _: i64 = self
                    .inner
                    .keys
                    .publish(
                        &self.inner.keys.node_topic(sender_node),
                        serde_json::to_string(&cmd)?,
                    )
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(report)
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

    pub(crate) fn encode_payload<P: Serialize + ?Sized>(
        &self,
        payload: &P,
    ) -> Result<Box<RawValue>> {
        let raw = serde_json::value::to_raw_value(payload)?;
        let size = raw.get().len();
        if size > self.inner.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size,
                limit: self.inner.max_payload_bytes,
            });
        }
        Ok(raw)
    }
}

/// A new unique, time-ordered message id (UUIDv7, 32 hex digits).
pub fn new_message_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// `id` if it can serve as a message id: it goes into envelopes and clients compare it.
pub(crate) fn checked_message_id(id: &str) -> Result<String> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id.to_owned())
    } else {
        Err(Error::InvalidMessageId(id.to_owned()))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
