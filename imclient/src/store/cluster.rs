//! The Redis Cluster side of the store: seed URLs, the pool with its bounded waits, pipelines
//! split by hash slot, and sharded subscriptions (SSUBSCRIBE per slot, and a subscription that
//! counts as lost when a shard drops a topic we still want). Every request is bounded by
//! `CLUSTER_TIMEOUT`.

use std::collections::BTreeMap;

use deadpool_redis::{Runtime, cluster};
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Msg, Pipeline, PushInfo, PushKind, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Longest a command on a cluster may take, retries and redirections included. redis-rs
/// retries a command to a failed master for minutes by default; a caller must rather learn
/// within seconds that its send failed. Blocking reads here block for at most half a second.
const CLUSTER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Bounds a cluster request by [`CLUSTER_TIMEOUT`].
pub(super) async fn bounded<T>(
    request: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match tokio::time::timeout(CLUSTER_TIMEOUT, request).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the Redis Cluster did not answer in time (a failover under way?)",
        ))),
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

/// The connection pool of a cluster named by `seeds` (at least one). Does not connect yet.
pub(super) fn pool(seeds: Vec<String>) -> Result<cluster::Pool> {
    let mut config = cluster::Config::from_urls(seeds);
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
    config
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|e| Error::Options(format!("cannot build the cluster pool: {e}")))
}

/// A connection for a subscription to the cluster named by `seeds`: the connection that sends
/// SSUBSCRIBE, the channel its shards push messages to, and the topics it should hold.
pub(super) async fn connect_subscription(
    seeds: &[String],
    timeouts: &super::RedisTimeouts,
) -> RedisResult<(ClusterConnection, mpsc::UnboundedReceiver<PushInfo>, Wanted)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(timeouts.connect)
        .push_sender(tx)
        .build()?;
    let conn = bounded(client.get_async_connection()).await?;
    Ok((conn, rx, Wanted::default()))
}

/// How often a connection of its own ([`connect_own`]) tries a command before failing it.
const OWN_RETRIES: u32 = 2;
/// Its wait between two tries, in ms: from, up to.
const OWN_RETRY_WAIT_MS: (u64, u64) = (10, 50);

/// A cluster connection outside the pool that fails a command within moments instead of
/// retrying it: redis-rs by default waits 1.28 s or more before it tries a command again (after
/// a CLUSTERDOWN, or a master that cannot be reached), so a command sent during a failover
/// goes through a second or more after the cluster could take it. Its caller retries.
pub(super) async fn connect_own(
    seeds: &[String],
    timeouts: &super::RedisTimeouts,
) -> RedisResult<ClusterConnection> {
    let client = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(timeouts.connect)
        .response_timeout(timeouts.response)
        .retries(OWN_RETRIES)
        .min_retry_wait(OWN_RETRY_WAIT_MS.0)
        .max_retry_wait(OWN_RETRY_WAIT_MS.1)
        .build()?;
    bounded(client.get_async_connection()).await
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

/// Sends a pipeline on a cluster, split by slot when it spans several.
pub(super) fn pipeline<'a>(
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
pub(super) type Wanted = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

fn lock_wanted(wanted: &Wanted) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    wanted.lock().unwrap_or_else(|p| p.into_inner())
}

/// Subscribes to `topics`; returns once their shards have confirmed every one of them.
pub(super) async fn subscribe(
    conn: &mut ClusterConnection,
    wanted: &Wanted,
    topics: &[String],
) -> RedisResult<()> {
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

/// Unsubscribes from `topics`.
pub(super) async fn unsubscribe(
    conn: &mut ClusterConnection,
    wanted: &Wanted,
    topics: &[String],
) -> RedisResult<()> {
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

/// Whether `topic` has a subscriber on its shard.
pub(super) async fn holds(conn: &mut ClusterConnection, topic: &str) -> RedisResult<bool> {
    let counts: std::collections::HashMap<String, u64> = bounded(
        redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(topic)
            .query_async(conn),
    )
    .await?;
    Ok(counts.get(topic).is_some_and(|n| *n > 0))
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

/// The next message the shards pushed; `None` once the subscription is lost: a shard's
/// connection dropped, or a shard unsubscribed us from a topic we still want.
pub(super) async fn next(
    rx: &mut mpsc::UnboundedReceiver<PushInfo>,
    wanted: &Wanted,
) -> Option<Msg> {
    loop {
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
}
