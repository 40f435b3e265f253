//! Channel membership (group chat, rooms): durable in Redis, independent of being online.
//! Messages to a channel go out through `sending`, once to the channel's own topic whatever the
//! member count; how many members are online is a question for `presence`.
//!
//! A join or leave writes the durable sets and publishes a control message to the client's home
//! node in one Lua script, so control messages reach a node in the same order as the durable
//! writes happened. docs/DESIGN.md explains why that order makes connect/join races safe. On a
//! Redis Cluster a script may not publish to another slot's shard channel, so the control
//! message is published right after the script has written, from the same caller.

use redis::AsyncCommands;

use crate::client::ImClient;
use crate::contract::{ChanDeleted, Membership, NodeCommand};
use crate::error::Result;
use crate::ids::{ChanName, ClientId};
use crate::sending::new_message_id;

/// Members handled per pipeline or SSCAN page.
const PAGE: usize = 1000;
/// Longest single wait for join acknowledgements.
const ACK_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// KEYS: members, client-chans, chans, and on one server the home node topic. ARGV: client,
/// chan, control JSON. Returns how many nodes took the control message (0 when the home node
/// is not running, or when it is left to the caller to publish).
const JOIN_SCRIPT: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
if KEYS[4] then return redis.call('PUBLISH', KEYS[4], ARGV[3]) end
return 0
";

/// KEYS and ARGV as for the join script.
const LEAVE_SCRIPT: &str = r"
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
if KEYS[4] then return redis.call('PUBLISH', KEYS[4], ARGV[3]) end
return 0
";

/// A membership change: the script that stores it, and on a cluster the publish that follows.
struct MembershipChange {
    script: redis::Cmd,
    publish: Option<redis::Cmd>,
}

/// A channel with its member and online counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChanInfo {
    /// The channel.
    pub chan: ChanName,
    /// Members, online or not.
    pub members: u64,
    /// Members online now.
    pub online: u64,
}

impl ImClient {
    fn membership_change(
        &self,
        script: &str,
        client: &ClientId,
        chan: &ChanName,
        join: bool,
        ack: Option<&str>,
    ) -> Result<MembershipChange> {
        let home = self.home_node(client.as_str())?;
        let m = Membership {
            client: client.clone(),
            chan: chan.clone(),
            ack: ack.map(str::to_owned),
        };
        let control = if join {
            NodeCommand::Join(m)
        } else {
            NodeCommand::Leave(m)
        };
        let control = serde_json::to_string(&control)?;
        let topic = self.keys().node_topic(&home);
        let sharded = self.keys().is_sharded();
        let mut script_cmd = redis::cmd("EVAL");
        script_cmd
            .arg(script)
            .arg(if sharded { 3 } else { 4 })
            .arg(self.keys().members(chan))
            .arg(self.keys().client_chans(client))
            .arg(self.keys().chans());
        if !sharded {
            script_cmd.arg(&topic);
        }
        script_cmd
            .arg(client.as_str())
            .arg(chan.as_str())
            .arg(&control);
        Ok(MembershipChange {
            script: script_cmd,
            publish: sharded.then(|| self.keys().publish(&topic, &control)),
        })
    }

    /// Stores membership changes, then (on a cluster) publishes their control messages;
    /// returns, per change, how many nodes took its control message.
    async fn apply(&self, changes: Vec<MembershipChange>) -> Result<Vec<i64>> {
        let mut conn = self.conn().await?;
        let mut scripts = redis::pipe();
        let mut publishes = redis::pipe();
        for change in changes {
            scripts.add_command(change.script);
            if let Some(publish) = change.publish {
                publishes.add_command(publish);
            }
        }
        let taken: Vec<i64> = scripts.query_async(&mut conn).await?;
        if publishes.is_empty() {
            return Ok(taken);
        }
        Ok(publishes.query_async(&mut conn).await?)
    }

    /// Makes `client_id` a member of `chan`, online or not. Joining twice is not an error.
    /// When the client is online, this returns once its home node has subscribed to the
    /// channel, so a channel message sent after it returns reaches the client (waiting at
    /// most [`ImClientOptions::join_ack_timeout`](crate::ImClientOptions)).
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// im.join_chan("alice", "room:lobby").await?;
    /// # Ok(()) }
    /// ```
    pub async fn join_chan(&self, client_id: &str, chan: &str) -> Result<()> {
        let (client, chan) = (ClientId::new(client_id)?, ChanName::new(chan)?);
        let ack = new_message_id();
        let change = self.membership_change(JOIN_SCRIPT, &client, &chan, true, Some(&ack))?;
        let taken = self.apply(vec![change]).await?;
        self.await_join_acks(&ack, taken.iter().filter(|t| **t > 0).count())
            .await
    }

    /// Makes many clients members of `chan`, pipelined a thousand at a time; returns once
    /// the online ones receive the channel, as [`ImClient::join_chan`] does.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// im.join_chan_many(["alice", "bob", "carol"], "room:lobby").await?;
    /// # Ok(()) }
    /// ```
    pub async fn join_chan_many<I, S>(&self, client_ids: I, chan: &str) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let chan = ChanName::new(chan)?;
        let ack = new_message_id();
        let expected = self
            .change_many(JOIN_SCRIPT, client_ids, &chan, true, Some(&ack))
            .await?;
        self.await_join_acks(&ack, expected).await
    }

    /// Waits until `expected` home nodes have acknowledged joins sent with `ack`, or the ack
    /// timeout passes. On a blocking connection of its own: the shared one must not block.
    async fn await_join_acks(&self, ack: &str, expected: usize) -> Result<()> {
        if expected == 0 {
            return Ok(());
        }
        let key = self.keys().ack(ack);
        let deadline = tokio::time::Instant::now() + self.join_ack_timeout();
        let mut conn = self.store().get().await?;
        let mut got = 0;
        while got < expected {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(%key, got, expected, "home nodes did not acknowledge every join in time");
                break;
            }
            // Short waits: a blocking command must answer within the connection's response
            // timeout (half a second at the least, see `store::MIN_REDIS_RESPONSE_TIMEOUT`).
            let wait = left.min(ACK_POLL).as_secs_f64().max(0.001);
            let popped: Option<(String, String)> = conn.blpop(&key, wait).await?;
            if popped.is_none() {
                continue;
            }
            got += 1;
            if got < expected {
                let rest: Vec<String> = conn
                    .lpop(&key, std::num::NonZeroUsize::new(expected - got))
                    .await?;
                got += rest.len();
            }
        }
        let _: i64 = conn.del(&key).await?;
        Ok(())
    }

    /// Removes `client_id` from `chan`. Leaving a channel one is not in is not an error.
    /// Delivery to an online client stops within a round trip.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// im.leave_chan("alice", "room:lobby").await?;
    /// # Ok(()) }
    /// ```
    pub async fn leave_chan(&self, client_id: &str, chan: &str) -> Result<()> {
        let (client, chan) = (ClientId::new(client_id)?, ChanName::new(chan)?);
        // On a cluster the leave and a later channel message travel through two masters, so
        // the message could overtake it: wait until the node has applied the leave.
        let ack = self.keys().is_sharded().then(new_message_id);
        let change = self.membership_change(LEAVE_SCRIPT, &client, &chan, false, ack.as_deref())?;
        let taken = self.apply(vec![change]).await?;
        if let Some(ack) = ack {
            self.await_join_acks(&ack, taken.iter().filter(|t| **t > 0).count())
                .await?;
        }
        Ok(())
    }

    /// Removes many clients from `chan`, pipelined a thousand at a time; returns when
    /// [`ImClient::leave_chan`] would for each of them.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// im.leave_chan_many(["alice", "bob"], "room:lobby").await?;
    /// # Ok(()) }
    /// ```
    pub async fn leave_chan_many<I, S>(&self, client_ids: I, chan: &str) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let chan = ChanName::new(chan)?;
        // As in leave_chan: on a cluster, wait until the nodes have applied the leaves.
        let ack = self.keys().is_sharded().then(new_message_id);
        let expected = self
            .change_many(LEAVE_SCRIPT, client_ids, &chan, false, ack.as_deref())
            .await?;
        if let Some(ack) = ack {
            self.await_join_acks(&ack, expected).await?;
        }
        Ok(())
    }

    /// Runs `script` (a join or a leave) for every client, pipelined a page at a time; returns
    /// how many changed something (each of those is acknowledged by its node to `ack`). Every
    /// id is checked before anything is sent.
    async fn change_many<I, S>(
        &self,
        script: &str,
        client_ids: I,
        chan: &ChanName,
        join: bool,
        ack: Option<&str>,
    ) -> Result<usize>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let clients = client_ids
            .into_iter()
            .map(|c| ClientId::new(c.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let mut changed = 0;
        for page in clients.chunks(PAGE) {
            let changes = page
                .iter()
                .map(|client| self.membership_change(script, client, chan, join, ack))
                .collect::<Result<Vec<_>>>()?;
            let taken = self.apply(changes).await?;
            changed += taken.iter().filter(|t| **t > 0).count();
        }
        Ok(changed)
    }

    /// One page of a channel's members: pass cursor 0 first, then the returned cursor until it
    /// is 0 again. For member lists too large to hold at once.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let mut cursor = 0;
    /// loop {
    ///     let (next, page) = im.chan_clients_page("room:lobby", cursor).await?;
    ///     for member in page { tracing::info!("{member}"); }
    ///     if next == 0 { break; }
    ///     cursor = next;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn chan_clients_page(&self, chan: &str, cursor: u64) -> Result<(u64, Vec<ClientId>)> {
        let chan = ChanName::new(chan)?;
        let mut conn = self.conn().await?;
        let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(self.keys().members(&chan))
            .arg(cursor)
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut conn)
            .await?;
        Ok((
            next,
            ids.into_iter()
                .filter_map(|id| ClientId::new(id).ok())
                .collect(),
        ))
    }

    /// Every member of `chan`, online or not, sorted.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let members = im.chan_clients("room:lobby").await?;
    /// # Ok(()) }
    /// ```
    pub async fn chan_clients(&self, chan: &str) -> Result<Vec<ClientId>> {
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            let (next, page) = self.chan_clients_page(chan, cursor).await?;
            out.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// How many members `chan` has, online or not (one SCARD).
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// tracing::info!("{} members", im.chan_member_count("room:lobby").await?);
    /// # Ok(()) }
    /// ```
    pub async fn chan_member_count(&self, chan: &str) -> Result<u64> {
        let chan = ChanName::new(chan)?;
        let mut conn = self.conn().await?;
        Ok(conn.scard(self.keys().members(&chan)).await?)
    }

    /// Every channel that has members, with its member and online counts, sorted by name.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// for info in im.chans().await? {
    ///     tracing::info!("{}: {} online of {}", info.chan, info.online, info.members);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn chans(&self) -> Result<Vec<ChanInfo>> {
        let online = self.online_by_chan().await?;
        let mut conn = self.conn().await?;
        let names: Vec<String> = conn.smembers(self.keys().chans()).await?;
        let chans: Vec<ChanName> = names
            .into_iter()
            .filter_map(|n| ChanName::new(n).ok())
            .collect();
        let mut out = Vec::with_capacity(chans.len());
        for page in chans.chunks(PAGE) {
            let mut pipe = redis::pipe();
            for chan in page {
                pipe.scard(self.keys().members(chan));
            }
            let members: Vec<u64> = pipe.query_async(&mut conn).await?;
            for (chan, members) in page.iter().zip(members) {
                let online = online.get(chan.as_str()).copied().unwrap_or(0);
                out.push(ChanInfo {
                    chan: chan.clone(),
                    members,
                    online,
                });
            }
        }
        out.sort_by(|a, b| a.chan.cmp(&b.chan));
        Ok(out)
    }

    /// The channels `client_id` is a member of, sorted.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let mine = im.client_chans("alice").await?;
    /// # Ok(()) }
    /// ```
    pub async fn client_chans(&self, client_id: &str) -> Result<Vec<ChanName>> {
        let client = ClientId::new(client_id)?;
        let mut conn = self.conn().await?;
        let names: Vec<String> = conn.smembers(self.keys().client_chans(&client)).await?;
        let mut out: Vec<ChanName> = names
            .into_iter()
            .filter_map(|n| ChanName::new(n).ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes `chan` and every membership in it, a page of members at a time; nodes drop the
    /// channel for their online members. Returns how many members it had.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// im.delete_chan("room:old").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_chan(&self, chan: &str) -> Result<u64> {
        let chan = ChanName::new(chan)?;
        let members_key = self.keys().members(&chan);
        let mut conn = self.conn().await?;
        let mut removed = 0u64;
        loop {
            let page: Vec<String> = redis::cmd("SPOP")
                .arg(&members_key)
                .arg(PAGE)
                .query_async(&mut conn)
                .await?;
            if page.is_empty() {
                break;
            }
            removed += page.len() as u64;
            let mut pipe = redis::pipe();
            for member in page.iter().filter_map(|m| ClientId::new(m.as_str()).ok()) {
                pipe.srem(self.keys().client_chans(&member), chan.as_str())
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        let deleted = NodeCommand::ChanDeleted(ChanDeleted { chan: chan.clone() });
        let _: () = conn.srem(self.keys().chans(), chan.as_str()).await?;
        let _: i64 = self
            .keys()
            .publish(
                &self.keys().chan_topic(&chan),
                serde_json::to_string(&deleted)?,
            )
            .query_async(&mut conn)
            .await?;
        Ok(removed)
    }
}
