//! Removing a node's presence — this node's own at start and at shutdown, a dead peer's when
//! its lease expired — with the offline event each of its clients leaves, and announcing that a
//! node came or went. Also the event and stream helpers the writer shares.

use imclient::contract::{NodeAnnouncement, PresenceRecord};
use imclient::keys::Keys;
use imclient::store::Store;
use imclient::{ClientId, EVENT_FIELD, Event, EventKind, NodeId, now_ms};

use super::{BATCH, Presence};

/// Atomically takes a node's presence hash: refuses while the node's lease is alive (unless
/// forced), else returns its entries and deletes it and the node's channel counts.
/// KEYS: presence, lease, nodes, chan-online. ARGV: node id, "force" or "".
const PURGE_SCRIPT: &str = r"
if ARGV[2] ~= 'force' and redis.call('EXISTS', KEYS[2]) == 1 then return false end
local entries = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[4])
if ARGV[2] ~= 'force' then redis.call('SREM', KEYS[3], ARGV[1]) end
return entries
";

/// Removes this node's presence at shutdown, with an offline event per client, and gives up
/// the lease so no peer purges it again.
pub async fn clear(presence: &Presence, store: &Store) -> redis::RedisResult<usize> {
    let mut conn = store.get().await.map_err(pool_error)?;
    let entries = purge(&mut conn, &presence.keys, presence.id(), true).await?;
    let n = entries.as_ref().map_or(0, Vec::len);
    emit_offline(
        &mut conn,
        &presence.keys,
        presence.id(),
        entries,
        presence.events_maxlen,
    )
    .await?;
    let _: () = redis::pipe()
        .del(presence.keys.lease(presence.id()))
        .ignore()
        .srem(presence.keys.nodes(), presence.id().as_str())
        .ignore()
        .query_async(&mut conn)
        .await?;
    presence.health.lease_released();
    announce(&mut conn, &presence.keys, presence.id(), false).await?;
    Ok(n)
}

/// Gives up the lease of a node that stops on purpose, and announces in the same pipeline that
/// it is handing its clients over (see [`NodeAnnouncement`]): backends route to the nodes that
/// win its clients from now on, and those nodes keep what arrives for them until their streams
/// do. Its presence stays until its clients have moved.
pub(super) async fn release(
    conn: &mut imclient::store::Conn,
    keys: &Keys,
    node: &NodeId,
    run: &str,
) -> redis::RedisResult<()> {
    let announcement = NodeAnnouncement {
        node: node.clone(),
        live: false,
        handing_over: Some(run.to_owned()),
    };
    let mut pipe = redis::pipe();
    pipe.del(keys.lease(node))
        .ignore()
        .srem(keys.nodes(), node.as_str())
        .ignore();
    pipe.add_command(keys.publish(&keys.nodeset_topic(), json(&announcement)))
        .ignore();
    pipe.query_async::<()>(conn).await
}

/// Tells whoever follows the live node set (imclient, the other nodes) that `node` came or
/// went, so they read the set again now rather than at their next refresh.
pub(super) async fn announce(
    conn: &mut imclient::store::Conn,
    keys: &Keys,
    node: &NodeId,
    live: bool,
) -> redis::RedisResult<()> {
    let announcement = NodeAnnouncement {
        node: node.clone(),
        live,
        handing_over: None,
    };
    let _: i64 = keys
        .publish(&keys.nodeset_topic(), json(&announcement))
        .query_async(conn)
        .await?;
    Ok(())
}

pub(super) async fn purge(
    conn: &mut imclient::store::Conn,
    keys: &Keys,
    node: &NodeId,
    force: bool,
) -> redis::RedisResult<Option<Vec<(ClientId, PresenceRecord)>>> {
    let entries: Option<Vec<(String, String)>> = redis::Script::new(PURGE_SCRIPT)
        .key(keys.presence(node))
        .key(keys.lease(node))
        .key(keys.nodes())
        .key(keys.chan_online(node))
        .arg(node.as_str())
        .arg(if force { "force" } else { "" })
        .invoke_async(conn)
        .await?;
    Ok(entries.map(|list| {
        list.into_iter()
            .filter_map(|(k, v)| {
                let record = serde_json::from_str(&v).unwrap_or(PresenceRecord {
                    conns: 0,
                    meta: serde_json::Value::Null,
                    since: 0,
                });
                Some((ClientId::new(k).ok()?, record))
            })
            .collect()
    }))
}

pub(super) async fn emit_offline(
    conn: &mut imclient::store::Conn,
    keys: &Keys,
    node: &NodeId,
    entries: Option<Vec<(ClientId, PresenceRecord)>>,
    maxlen: u64,
) -> redis::RedisResult<()> {
    let Some(entries) = entries.filter(|e| !e.is_empty()) else {
        return Ok(());
    };
    for chunk in entries.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for (client, record) in chunk {
            let mut gone = record.clone();
            gone.conns = 0;
            xadd(
                &mut pipe,
                keys,
                &event(EventKind::Offline, client, node, &gone),
                maxlen,
            );
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(())
}

pub(super) fn event(
    kind: EventKind,
    client: &ClientId,
    node: &NodeId,
    record: &PresenceRecord,
) -> Event {
    Event {
        kind,
        client: client.clone(),
        node: node.clone(),
        meta: record.meta.clone(),
        at: now_ms(),
        conns: record.conns,
    }
}

pub(super) fn xadd(pipe: &mut redis::Pipeline, keys: &Keys, event: &Event, maxlen: u64) {
    pipe.cmd("XADD")
        .arg(keys.events())
        .arg("MAXLEN")
        .arg("~")
        .arg(maxlen)
        .arg("*")
        .arg(EVENT_FIELD)
        .arg(json(event))
        .ignore();
}

pub(super) fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

pub(super) fn pool_error(e: imclient::Error) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(e.to_string()))
}
