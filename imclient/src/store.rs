//! The Redis that backends and nodes share: one server, or a Redis Cluster. [`Store`] hands out
//! connections that speak to either, and [`Subscription`] receives the topics a node or a
//! backend listens to: plain pub/sub on one server, sharded pub/sub (SSUBSCRIBE/SPUBLISH) on a
//! cluster, so that messages spread over the shards instead of being copied to every one.
//!
//! A cluster is named by a URL with the scheme `redis+cluster://` (or `rediss+cluster://`)
//! and a comma-separated list of seed addresses; credentials and options apply to every seed:
//! `redis+cluster://:secret@10.0.0.1:7000,10.0.0.2:7000`. Anything else is one server's URL.

use std::collections::BTreeMap;

use deadpool_redis::{Config, Pool, Runtime, cluster};
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Msg, Pipeline, PushKind, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Longest a command on a cluster may take, retries and redirections included. redis-rs
/// retries a command to a failed master for minutes by default; a caller must rather learn
/// within seconds that its send failed. Blocking reads here block for at most half a second.
const CLUSTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Bounds a cluster request by [`CLUSTER_TIMEOUT`].
async fn bounded<T>(request: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
    match tokio::time::timeout(CLUSTER_TIMEOUT, request).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the Redis Cluster did not answer in time (a failover under way?)",
        ))),
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
    Cluster(cluster::Pool),
}

#[derive(Clone)]
enum Source {
    Single(Box<redis::Client>),
    Cluster(Vec<String>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("cluster", &self.is_cluster())
            .finish_non_exhaustive()
    }
}

/// The seed URLs of a `redis+cluster://` URL, or `None` for one server's URL.
///
/// ```
/// use imclient::store::cluster_seeds;
/// assert_eq!(
///     cluster_seeds("redis+cluster://u:p@h1:7000,h2:7001/?protocol=3").unwrap(),
///     ["redis://u:p@h1:7000/?protocol=3", "redis://u:p@h2:7001/?protocol=3"],
/// );
/// assert_eq!(cluster_seeds("redis://h1:6379"), None);
/// ```
pub fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return None;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    Some(
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
            .collect(),
    )
}

impl Store {
    /// A store for one server's URL (`redis://`, `rediss://`) or a cluster's
    /// (`redis+cluster://seed1,seed2`). Does not connect yet.
    pub fn open(url: &str) -> Result<Self> {
        match cluster_seeds(url) {
            Some(seeds) if seeds.is_empty() => Err(Error::Options(format!(
                "{url:?} names no cluster node: list seed addresses after redis+cluster://"
            ))),
            Some(seeds) => {
                let mut config = cluster::Config::from_urls(seeds.clone());
                // Taking a connection creates one (connecting to every master) or checks one
                // with a PING: during a failover either can wait on the failed master.
                config.pool = Some(deadpool_redis::PoolConfig {
                    timeouts: deadpool_redis::Timeouts {
                        wait: Some(CLUSTER_TIMEOUT),
                        create: Some(CLUSTER_TIMEOUT),
                        recycle: Some(CLUSTER_TIMEOUT),
                    },
                    ..Default::default()
                });
                let pool = config
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(|e| Error::Options(format!("cannot build the cluster pool: {e}")))?;
                Ok(Self {
                    pool: Pooled::Cluster(pool),
                    source: Some(Source::Cluster(seeds)),
                })
            }
            None => Ok(Self {
                pool: Pooled::Single(Config::from_url(url).create_pool(Some(Runtime::Tokio1))?),
                source: redis::Client::open(url)
                    .ok()
                    .map(|c| Source::Single(Box::new(c))),
            }),
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
    pub fn from_cluster_pool(pool: cluster::Pool) -> Self {
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

    /// Opens a subscription, or `None` when this store was built from an application's pool
    /// and so does not know where to connect.
    pub async fn subscribe(&self) -> Option<RedisResult<(Subscriber, Messages)>> {
        Some(match self.source.as_ref()? {
            Source::Single(client) => match client.get_async_pubsub().await {
                Ok(pubsub) => {
                    let (sink, stream) = pubsub.split();
                    Ok((Subscriber::Single(sink), Messages::Single(stream.boxed())))
                }
                Err(e) => Err(e),
            },
            Source::Cluster(seeds) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build();
                let wanted = Wanted::default();
                match client {
                    Ok(client) => match bounded(client.get_async_connection()).await {
                        Ok(conn) => Ok((
                            Subscriber::Cluster(conn, wanted.clone()),
                            Messages::Cluster(rx, wanted),
                        )),
                        Err(e) => Err(e),
                    },
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
pub type Conn = Connection<deadpool_redis::Connection, cluster::Connection>;

/// A connection taken out of the pool and shared by clones (each clone multiplexes onto it).
pub type SharedConn = Connection<MultiplexedConnection, ClusterConnection>;

impl Conn {
    /// Takes the connection out of its pool, to be shared (cloned) from now on.
    pub fn detach(self) -> SharedConn {
        match self {
            Connection::Single(c) => Connection::Single(deadpool_redis::Connection::take(c)),
            Connection::Cluster(c) => Connection::Cluster(cluster::Connection::take(c)),
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

/// A redis-rs cluster connection, pooled or not.
pub trait ClusterLink: Send {
    /// The connection itself.
    fn cluster(&mut self) -> &mut ClusterConnection;
}

impl ClusterLink for ClusterConnection {
    fn cluster(&mut self) -> &mut ClusterConnection {
        self
    }
}

impl ClusterLink for cluster::Connection {
    fn cluster(&mut self) -> &mut ClusterConnection {
        self
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
            Connection::Cluster(c) => cluster_pipeline(c.cluster(), pipeline, offset, count),
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

/// Sends a pipeline on a cluster, split by slot when it spans several.
fn cluster_pipeline<'a>(
    conn: &'a mut ClusterConnection,
    pipeline: &'a Pipeline,
    offset: usize,
    count: usize,
) -> RedisFuture<'a, Vec<Value>> {
    let groups = by_slot(pipeline);
    if groups.len() <= 1 {
        return Box::pin(bounded(conn.req_packed_commands(pipeline, offset, count)));
    }
    let conn = conn.clone();
    Box::pin(async move {
        let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
        let sent = groups.into_values().map(|indexes| {
            let mut conn = conn.clone();
            let mut part = redis::pipe();
            for &i in &indexes {
                part.add_command(commands[i].clone());
            }
            async move {
                let n = part.len();
                let replies = bounded(conn.req_packed_commands(&part, 0, n)).await?;
                RedisResult::Ok(indexes.into_iter().zip(replies).collect::<Vec<_>>())
            }
        });
        let mut out = vec![Value::Nil; pipeline.len()];
        for part in futures_util::future::join_all(sent).await {
            for (i, reply) in part? {
                out[i] = reply;
            }
        }
        Ok(out)
    })
}

/// The commands of `pipeline` grouped by the slot of their key, in order; commands without a
/// key join the first group.
fn by_slot(pipeline: &Pipeline) -> BTreeMap<u16, Vec<usize>> {
    let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    let mut keyless = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        match key_of(cmd) {
            Some(key) => groups.entry(slot(&key)).or_default().push(i),
            None => keyless.push(i),
        }
    }
    if !keyless.is_empty() {
        match groups.values_mut().next() {
            Some(first) => {
                first.extend(keyless);
                first.sort_unstable();
            }
            None => {
                groups.insert(0, keyless);
            }
        }
    }
    groups
}

/// The key (or shard channel) a command is routed by: the first argument, or for a script the
/// first of its keys.
fn key_of(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(a) => Some(a),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    if matches!(name.as_slice(), b"EVAL" | b"EVALSHA" | b"FCALL") {
        let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
        return (numkeys > 0).then(|| args.get(3).map(|k| k.to_vec()))?;
    }
    args.get(1).map(|k| k.to_vec())
}

/// The cluster hash slot of a key: CRC16 of the key, or of its `{hash tag}` when it has one.
///
/// ```
/// use imclient::store::slot;
/// assert_eq!(slot(b"foo"), 12182);
/// assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
/// ```
pub fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    crc16(hashed) % 16384
}

/// CRC16-CCITT (XMODEM), as Redis Cluster hashes keys.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The topics a cluster subscription should hold, shared by its two halves: a shard that
/// unsubscribes us from one of them by itself (its slot moved to another master) has lost it.
type Wanted = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

fn lock_wanted(wanted: &Wanted) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    wanted.lock().unwrap_or_else(|p| p.into_inner())
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
            Subscriber::Cluster(conn, wanted) => {
                lock_wanted(wanted).extend(topics.iter().cloned());
                // One SSUBSCRIBE per slot (a shard refuses topics of several slots at once),
                // one after the other: sent concurrently through clones of the connection
                // while it was repairing itself after a failover, about one in four runs lost
                // a subscription that Redis had confirmed.
                for group in group_by_slot(topics).into_values() {
                    bounded(conn.ssubscribe(group)).await?;
                }
                Ok(())
            }
        }
    }

    /// Unsubscribes from `topics`.
    pub async fn unsubscribe(&mut self, topics: &[String]) -> RedisResult<()> {
        if topics.is_empty() {
            return Ok(());
        }
        match self {
            Subscriber::Single(sink) => sink.unsubscribe(topics).await,
            Subscriber::Cluster(conn, wanted) => {
                {
                    let mut held = lock_wanted(wanted);
                    for topic in topics {
                        held.remove(topic);
                    }
                }
                for group in group_by_slot(topics).into_values() {
                    bounded(conn.sunsubscribe(group)).await?;
                }
                Ok(())
            }
        }
    }

    /// Whether `topic` has a subscriber anywhere: on a cluster, where a subscription can go
    /// missing without the connection dropping, a node checks its own topic (which only it
    /// subscribes to) with this. Always true on one server, where the connection's health
    /// says it all.
    pub async fn holds(&mut self, topic: &str) -> RedisResult<bool> {
        match self {
            Subscriber::Single(_) => Ok(true),
            Subscriber::Cluster(conn, _) => {
                let counts: std::collections::HashMap<String, u64> = bounded(
                    redis::cmd("PUBSUB")
                        .arg("SHARDNUMSUB")
                        .arg(topic)
                        .query_async(conn),
                )
                .await?;
                Ok(counts.get(topic).is_some_and(|n| *n > 0))
            }
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

fn group_by_slot(topics: &[String]) -> BTreeMap<u16, Vec<&str>> {
    let mut groups: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for topic in topics {
        groups
            .entry(slot(topic.as_bytes()))
            .or_default()
            .push(topic);
    }
    groups
}

/// The half of a subscription that receives.
pub enum Messages {
    /// From one server.
    Single(BoxStream<'static, Msg>),
    /// Pushed by the cluster's shards.
    Cluster(mpsc::UnboundedReceiver<redis::PushInfo>, Wanted),
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
            Messages::Cluster(rx, wanted) => loop {
                let push = rx.recv().await?;
                match push.kind {
                    PushKind::SUnsubscribe => {
                        let topic = push.data.first().and_then(|t| match t {
                            Value::BulkString(b) => std::str::from_utf8(b).ok(),
                            _ => None,
                        });
                        if topic.is_some_and(|t| lock_wanted(wanted).contains(t)) {
                            return None;
                        }
                    }
                    PushKind::SMessage | PushKind::Message => {
                        if let Some(msg) = Msg::from_push_info(push) {
                            return Some(msg);
                        }
                    }
                    PushKind::Disconnection => return None,
                    _ => {}
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{im}:members:a"), slot(b"im"));
        assert_eq!(slot(b"a{}b"), slot(b"a{}b"));
        assert_eq!(slot(b"{}x"), crc16(b"{}x") % 16384);
    }

    #[test]
    fn a_pipeline_is_split_by_slot_keeping_order() {
        let mut pipe = redis::pipe();
        pipe.cmd("SPUBLISH").arg("foo").arg("1");
        pipe.cmd("SPUBLISH").arg("bar").arg("2");
        pipe.cmd("SPUBLISH").arg("foo").arg("3");
        pipe.cmd("EVAL").arg("return 1").arg(1).arg("bar").arg("x");
        pipe.cmd("PING");
        let groups = by_slot(&pipe);
        assert_eq!(groups[&slot(b"foo")], vec![0, 2]);
        assert_eq!(groups[&slot(b"bar")], vec![1, 3, 4]);
    }

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
