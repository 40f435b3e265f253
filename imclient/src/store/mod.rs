//! The Redis that backends and nodes share: one server, or a Redis Cluster. [`Store`] hands out
//! connections that speak to either, and a subscription ([`Subscriber`] and [`Messages`])
//! receives the topics a node or a backend listens to: plain pub/sub on one server, sharded
//! pub/sub (SSUBSCRIBE/SPUBLISH) on a cluster, so that messages spread over the shards instead
//! of being copied to every one.
//!
//! A cluster is named by a URL with the scheme `redis+cluster://` (or `rediss+cluster://`)
//! and a comma-separated list of seed addresses; credentials and options apply to every seed:
//! `redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7000`. Anything else is one server's URL.
//!
//! The cluster side (seed URLs, hash slots, pipelines split by slot, sharded subscriptions)
//! lives in its own part of this module; its public items are re-exported here.
//!
//! How long a connection may take to open and a reply to come are [`RedisTimeouts`], the same
//! settings for nodes (`--redis-connect-timeout-ms`, `--redis-response-timeout-ms`) and
//! imclient ([`crate::ImClientOptions::redis_timeouts`]).

mod cluster;

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Msg, Pipeline, PushInfo, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc;

pub use cluster::{ClusterLink, cluster_seeds, slot};
use cluster::{Wanted, bounded};

use crate::error::{Error, Result};

/// Default longest wait for a connection to Redis to open. A connect on loopback took at most
/// 2.8 ms over 60 s with the machine's load at 8 on 2 cores (docs/OPERATIONS.md, "Redis
/// timeouts"); the default leaves room for a remote Redis, TLS and a busy server.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default longest wait for a reply. redis-rs waits 500 ms, and a loaded test machine once went
/// past it; measured there, replies took up to 37 ms (p99.9 4.8 ms). Two seconds is far above
/// any healthy reply and still lets a caller learn of a hung Redis within its own deadlines
/// (the HTTP API's 5 s, a cluster request's 3 s).
pub const DEFAULT_REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest reply timeout allowed: blocking reads (events, webhook batches, join
/// acknowledgements) wait up to 250 ms for data on a pooled connection, and must not trip it.
pub const MIN_REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long to wait on Redis: for a connection to open, and for each reply. They apply to one
/// server's pooled connections; on a Redis Cluster the connect timeout applies to the
/// subscription, and every request is bounded as a whole (3 s, retries included).
///
/// ```
/// use std::time::Duration;
/// use imclient::store::RedisTimeouts;
/// let t = RedisTimeouts { response: Duration::from_secs(5), ..RedisTimeouts::default() };
/// assert!(t.check().is_ok());
/// let too_short = RedisTimeouts { response: Duration::from_millis(100), ..t };
/// assert!(too_short.check().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisTimeouts {
    /// Longest wait for a connection to open (TCP, TLS, AUTH).
    pub connect: Duration,
    /// Longest wait for a reply to a command.
    pub response: Duration,
}

impl Default for RedisTimeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_REDIS_CONNECT_TIMEOUT,
            response: DEFAULT_REDIS_RESPONSE_TIMEOUT,
        }
    }
}

impl RedisTimeouts {
    /// Refuses timeouts that cannot work: a zero connect timeout, or a reply timeout below
    /// [`MIN_REDIS_RESPONSE_TIMEOUT`].
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.connect.is_zero() {
            return Err("the Redis connect timeout must be above zero".into());
        }
        if self.response < MIN_REDIS_RESPONSE_TIMEOUT {
            return Err(format!(
                "the Redis response timeout ({} ms) must be at least {} ms: blocking reads wait \
                 up to 250 ms for data",
                self.response.as_millis(),
                MIN_REDIS_RESPONSE_TIMEOUT.as_millis()
            ));
        }
        Ok(())
    }

    fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect))
            .set_response_timeout(Some(self.response))
    }
}

/// Where imclient and the nodes keep what they share.
///
/// ```
/// use imclient::store::Store;
/// let one = Store::open("redis://127.0.0.1:6379").unwrap();
/// assert!(!one.is_cluster());
/// let cluster = Store::open("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap();
/// assert!(cluster.is_cluster());
/// ```
#[derive(Clone)]
pub struct Store {
    pool: Pooled,
    /// How to open a subscription; unknown when the application handed in its own pool.
    source: Option<Source>,
}

#[derive(Clone)]
enum Pooled {
    Single(Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

#[derive(Clone)]
enum Source {
    Single(Box<redis::Client>, RedisTimeouts),
    Cluster(Vec<String>, RedisTimeouts),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store for one server's URL (`redis://`, `rediss://`) or a cluster's
    /// (`redis+cluster://seed1,seed2`), with the default [`RedisTimeouts`]. Does not connect yet.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, RedisTimeouts::default())
    }

    /// [`Store::open`] with these timeouts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use imclient::store::{RedisTimeouts, Store};
    /// let t = RedisTimeouts { connect: Duration::from_secs(1), response: Duration::from_secs(3) };
    /// assert!(Store::open_with("redis://127.0.0.1:6379", t).is_ok());
    /// ```
    pub fn open_with(url: &str, timeouts: RedisTimeouts) -> Result<Self> {
        timeouts.check().map_err(Error::Options)?;
        match cluster_seeds(url) {
            Some(seeds) if seeds.is_empty() => Err(Error::Options(format!(
                "{url:?} names no cluster node: list seed addresses after redis+cluster://"
            ))),
            Some(seeds) => Ok(Self {
                pool: Pooled::Cluster(cluster::pool(seeds.clone())?),
                source: Some(Source::Cluster(seeds, timeouts)),
            }),
            None => {
                let manager = Manager::new_with_config(url, timeouts.connection_config())
                    .map_err(|e| Error::Options(format!("bad Redis URL {url:?}: {e}")))?;
                let pool = Pool::builder(manager)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| Error::Options(format!("cannot build the Redis pool: {e}")))?;
                Ok(Self {
                    pool: Pooled::Single(pool),
                    source: redis::Client::open(url)
                        .ok()
                        .map(|c| Source::Single(Box::new(c), timeouts)),
                })
            }
        }
    }

    /// A store over a pool the application already has (one server).
    pub fn from_pool(pool: Pool) -> Self {
        Self {
            pool: Pooled::Single(pool),
            source: None,
        }
    }

    /// A store over a cluster pool the application already has.
    pub fn from_cluster_pool(pool: deadpool_redis::cluster::Pool) -> Self {
        Self {
            pool: Pooled::Cluster(pool),
            source: None,
        }
    }

    /// Whether this is a Redis Cluster (topics are sharded).
    pub fn is_cluster(&self) -> bool {
        matches!(self.pool, Pooled::Cluster(_))
    }

    /// A pooled connection, given back to the pool when dropped.
    pub async fn get(&self) -> Result<Conn> {
        Ok(match &self.pool {
            Pooled::Single(pool) => Connection::Single(pool.get().await?),
            Pooled::Cluster(pool) => Connection::Cluster(pool.get().await?),
        })
    }

    /// A connection of its own, outside the pool, for a task whose commands must go through as
    /// soon as Redis can take them (a node's lease): no pool check at checkout (on a cluster, a
    /// PING to every master, which waits for a failed one), and on a cluster a command fails
    /// within moments while the cluster cannot take it, rather than being retried after a
    /// second or more; the caller retries. A cluster connection repairs itself after a failover
    /// and is kept; a single server's should be opened again after an I/O error. A store built
    /// from an application's pool takes one out of it.
    pub async fn connect_own(&self) -> Result<SharedConn> {
        match &self.source {
            Some(Source::Single(client, timeouts)) => Ok(Connection::Single(
                client
                    .get_multiplexed_async_connection_with_config(&timeouts.connection_config())
                    .await?,
            )),
            Some(Source::Cluster(seeds, timeouts)) => Ok(Connection::Cluster(
                cluster::connect_own(seeds, timeouts).await?,
            )),
            None => Ok(self.get().await?.detach()),
        }
    }

    /// Opens a subscription, or `None` when this store was built from an application's pool
    /// and so does not know where to connect.
    pub async fn subscribe(&self) -> Option<RedisResult<(Subscriber, Messages)>> {
        Some(match self.source.as_ref()? {
            Source::Single(client, _) => match client.get_async_pubsub().await {
                Ok(pubsub) => {
                    let (sink, stream) = pubsub.split();
                    Ok((Subscriber::Single(sink), Messages::Single(stream.boxed())))
                }
                Err(e) => Err(e),
            },
            Source::Cluster(seeds, timeouts) => {
                match cluster::connect_subscription(seeds, timeouts).await {
                    Ok((conn, rx, wanted)) => Ok((
                        Subscriber::Cluster(conn, wanted.clone()),
                        Messages::Cluster(rx, wanted),
                    )),
                    Err(e) => Err(e),
                }
            }
        })
    }

    /// The command that publishes `payload` on `topic`: PUBLISH on one server, SPUBLISH (to the
    /// shard that owns the topic's slot) on a cluster.
    pub fn publish(&self, topic: &str, payload: impl redis::ToRedisArgs) -> Cmd {
        publish(self.is_cluster(), topic, payload)
    }
}

/// PUBLISH, or SPUBLISH when `sharded`.
///
/// ```
/// let cmd = imclient::store::publish(true, "im:broadcast", "hi");
/// assert_eq!(cmd.args_iter().count(), 3);
/// ```
pub fn publish(sharded: bool, topic: &str, payload: impl redis::ToRedisArgs) -> Cmd {
    let mut cmd = redis::cmd(if sharded { "SPUBLISH" } else { "PUBLISH" });
    cmd.arg(topic).arg(payload);
    cmd
}

/// A connection to one server (`S`) or to the whole cluster, routed by key (`C`): pooled as
/// [`Conn`], or taken out of the pool and shared by clones as [`SharedConn`].
///
/// On a cluster, a pipeline whose commands fall into several slots is split into one pipeline
/// per slot, sent concurrently; the replies come back in the order of the commands. Commands of
/// one slot keep their order; commands of different slots have none between them, as two
/// separate servers would give. Every request on a cluster is bounded (see `CLUSTER_TIMEOUT`).
#[derive(Clone)]
pub enum Connection<S, C> {
    /// One Redis server.
    Single(S),
    /// A Redis Cluster.
    Cluster(C),
}

/// A pooled connection from a [`Store`], given back to the pool when dropped.
pub type Conn = Connection<deadpool_redis::Connection, deadpool_redis::cluster::Connection>;

/// A connection taken out of the pool and shared by clones (each clone multiplexes onto it).
pub type SharedConn = Connection<MultiplexedConnection, ClusterConnection>;

impl Conn {
    /// Takes the connection out of its pool, to be shared (cloned) from now on.
    pub fn detach(self) -> SharedConn {
        match self {
            Connection::Single(c) => Connection::Single(deadpool_redis::Connection::take(c)),
            Connection::Cluster(c) => {
                Connection::Cluster(deadpool_redis::cluster::Connection::take(c))
            }
        }
    }
}

impl<S, C> std::fmt::Debug for Connection<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connection::Single(_) => "Connection::Single",
            Connection::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl<S, C> ConnectionLike for Connection<S, C>
where
    S: ConnectionLike + Send,
    C: ClusterLink,
{
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => Box::pin(bounded(c.cluster().req_packed_command(cmd))),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => cluster::pipeline(c.cluster(), pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            // A cluster has database 0 only.
            Connection::Cluster(_) => 0,
        }
    }
}

/// The half of a subscription that changes what it receives.
pub enum Subscriber {
    /// SUBSCRIBE on one server.
    Single(redis::aio::PubSubSink),
    /// SSUBSCRIBE on a cluster, to the shard of each topic.
    Cluster(ClusterConnection, Wanted),
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Subscriber::Single(_) => "Subscriber::Single",
            Subscriber::Cluster(..) => "Subscriber::Cluster",
        })
    }
}

impl Subscriber {
    /// Subscribes to `topics`; returns once Redis has confirmed every one of them.
    pub async fn subscribe(&mut self, topics: &[String]) -> RedisResult<()> {
        if topics.is_empty() {
            return Ok(());
        }
        match self {
            Subscriber::Single(sink) => sink.subscribe(topics).await,
            Subscriber::Cluster(conn, wanted) => cluster::subscribe(conn, wanted, topics).await,
        }
    }

    /// Unsubscribes from `topics`.
    pub async fn unsubscribe(&mut self, topics: &[String]) -> RedisResult<()> {
        if topics.is_empty() {
            return Ok(());
        }
        match self {
            Subscriber::Single(sink) => sink.unsubscribe(topics).await,
            Subscriber::Cluster(conn, wanted) => cluster::unsubscribe(conn, wanted, topics).await,
        }
    }

    /// Whether `topic` has a subscriber anywhere: on a cluster, where a subscription can go
    /// missing without the connection dropping, a node checks its own topic (which only it
    /// subscribes to) with this. Always true on one server, where the connection's health
    /// says it all.
    pub async fn holds(&mut self, topic: &str) -> RedisResult<bool> {
        match self {
            Subscriber::Single(_) => Ok(true),
            Subscriber::Cluster(conn, _) => cluster::holds(conn, topic).await,
        }
    }

    /// Checks that the connection answers.
    pub async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.ping::<Value>().await.map(|_| ()),
            Subscriber::Cluster(conn, _) => redis::cmd("PING")
                .query_async::<Value>(conn)
                .await
                .map(|_| ()),
        }
    }
}

/// The half of a subscription that receives.
pub enum Messages {
    /// From one server.
    Single(BoxStream<'static, Msg>),
    /// Pushed by the cluster's shards.
    Cluster(mpsc::UnboundedReceiver<PushInfo>, Wanted),
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Messages")
    }
}

impl Messages {
    /// The next message; `None` once the subscription is lost. On a cluster, losing the
    /// connection to any shard counts as losing the subscription: what that shard published
    /// meanwhile is gone, and the caller must learn that rather than carry on. So does a shard
    /// unsubscribing us from a topic we still want, which it does when the topic's slot moves
    /// to another master: nothing would subscribe us at the new one.
    pub async fn next(&mut self) -> Option<Msg> {
        match self {
            Messages::Single(stream) => stream.next().await,
            Messages::Cluster(rx, wanted) => cluster::next(rx, wanted).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seeds() {
        assert_eq!(
            cluster_seeds("rediss+cluster://h1:1,h2:2#insecure").unwrap(),
            ["rediss://h1:1#insecure", "rediss://h2:2#insecure"]
        );
        assert_eq!(
            cluster_seeds("redis+cluster://").unwrap(),
            Vec::<String>::new()
        );
        assert!(Store::open("redis+cluster://").is_err());
    }
}
