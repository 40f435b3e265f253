//! Every Redis key and pub/sub topic name, built from the app's key prefix. Nothing else in
//! the workspace spells a Redis name; grep this file to find them all.
//!
//! Keys carry the prefix as a hash tag (`{prefix}:…`), so that on a Redis Cluster every key of
//! an app lives in one slot and any script or pipeline may use any of them together. The one
//! exception is the used-token marker, only ever written alone and once per connect: it
//! spreads over the shards. Topics do
//! not: each topic hashes to a slot of its own, so that on a cluster the message traffic, which
//! is what needs spreading, spreads over the shards (sharded pub/sub).
//!
//! `P` is the key prefix; `{P}` is the prefix in braces, the hash tag.
//!
//! | name | type | holds |
//! |---|---|---|
//! | `P:node:{node}` | pub/sub topic | [`crate::contract::NodeCommand`]s for that node |
//! | `{P}:presence:{node}` | hash | client id → [`crate::contract::PresenceRecord`] JSON |
//! | `{P}:lease:{node}` | string with TTL | the live instance id of that node |
//! | `{P}:nodes` | set | node ids that hold, or held, presence |
//! | `{P}:events` | stream | online/offline [`crate::Event`]s, field `event` |
//! | `{P}:webhook-dead` | stream | webhook batches given up on after the last attempt |
//! | `P:chan:{chan}` | pub/sub topic | channel messages and deletion, for nodes with members |
//! | `P:broadcast` | pub/sub topic | messages for every online client, all nodes subscribe |
//! | `P:token:{jti}` | string with TTL | a connect token that was used, until it expires; no hash tag, so that these spread over a cluster's shards |
//! | `{P}:members:{chan}` | set | the channel's member client ids (durable) |
//! | `{P}:client-chans:{client}` | set | the client's channels (durable) |
//! | `{P}:chans` | set | channels with at least one member |
//! | `{P}:chan-online:{node}` | hash | channel → members online on that node |
//! | `{P}:moving:{client}` | string, TTL 20 s | the node that moved the client away |
//! | `P:nodeset` | pub/sub topic | announcements: a node started, stopped or was purged |
//! | `{P}:ack:{id}` | list, short TTL | client ids whose live join took effect (one call) |

use crate::ids::{ChanName, ClientId, NodeId};

/// Builds Redis names for one key prefix.
///
/// ```
/// use imclient::{keys::Keys, NodeId};
/// let keys = Keys::new("chat");
/// let node = NodeId::new("ws://127.0.0.1:6001").unwrap();
/// assert_eq!(keys.node_topic(&node), "chat:node:ws://127.0.0.1:6001");
/// assert_eq!(keys.events(), "{chat}:events");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// Whether topics are shard channels (a Redis Cluster).
    sharded: bool,
}

/// Longest key prefix.
pub const MAX_PREFIX_BYTES: usize = 64;

/// Checks a key prefix: 1 to 64 ASCII letters, digits, `_`, `-` or `.`. A `:` (or anything
/// else that can appear after a prefix) is refused because two prefixes must never produce the
/// same name: with `appA` and `appA:chan` allowed, app A's channel `node:x` and app B's node
/// topic would both be `appA:chan:node:x`.
///
/// ```
/// use imclient::keys::check_prefix;
/// assert!(check_prefix("chat").is_ok());
/// assert!(check_prefix("app-a.v2").is_ok());
/// assert!(check_prefix("appA:chan").is_err());
/// assert!(check_prefix("").is_err());
/// ```
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_BYTES {
        return Err(format!(
            "key prefix {prefix:?} must be 1 to {MAX_PREFIX_BYTES} bytes"
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "key prefix {prefix:?} holds {bad:?}: use letters, digits, '_', '-' or '.' only, \
             so that no two prefixes can name the same Redis key"
        ));
    }
    Ok(())
}

impl Keys {
    /// Names under `prefix` (no trailing colon).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            sharded: false,
        }
    }

    /// The same names for a Redis Cluster, where topics are shard channels: published with
    /// SPUBLISH and subscribed with SSUBSCRIBE.
    pub fn sharded(mut self, sharded: bool) -> Self {
        self.sharded = sharded;
        self
    }

    /// Whether topics are shard channels.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// The command that publishes `payload` on `topic`: PUBLISH, or SPUBLISH when sharded.
    ///
    /// ```
    /// use imclient::keys::Keys;
    /// let cmd = Keys::new("chat").sharded(true).publish("chat:broadcast", "hi");
    /// assert_eq!(cmd.args_iter().count(), 3);
    /// ```
    pub fn publish(&self, topic: &str, payload: impl redis::ToRedisArgs) -> redis::Cmd {
        crate::store::publish(self.sharded, topic, payload)
    }

    /// The prefix these names are built from.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub topic a node subscribes to for its commands.
    pub fn node_topic(&self, node: &NodeId) -> String {
        format!("{}:node:{}", self.prefix, node)
    }

    /// The hash of clients online on `node`.
    pub fn presence(&self, node: &NodeId) -> String {
        format!("{{{}}}:presence:{}", self.prefix, node)
    }

    /// The lease key that says `node` is alive.
    pub fn lease(&self, node: &NodeId) -> String {
        format!("{{{}}}:lease:{}", self.prefix, node)
    }

    /// The set of nodes that hold presence.
    pub fn nodes(&self) -> String {
        format!("{{{}}}:nodes", self.prefix)
    }

    /// The pub/sub topic of a channel's messages.
    pub fn chan_topic(&self, chan: &ChanName) -> String {
        format!("{}:chan:{}", self.prefix, chan)
    }

    /// The channel name of a channel topic, if `topic` is one.
    pub fn chan_of_topic<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":chan:")
    }

    /// The pub/sub topic every node subscribes to for broadcasts.
    pub fn broadcast_topic(&self) -> String {
        format!("{}:broadcast", self.prefix)
    }

    /// The durable member set of a channel.
    pub fn members(&self, chan: &ChanName) -> String {
        format!("{{{}}}:members:{}", self.prefix, chan)
    }

    /// The durable set of a client's channels.
    pub fn client_chans(&self, client: &ClientId) -> String {
        format!("{{{}}}:client-chans:{}", self.prefix, client)
    }

    /// The set of channels with at least one member.
    pub fn chans(&self) -> String {
        format!("{{{}}}:chans", self.prefix)
    }

    /// The hash of per-channel online member counts kept by `node`.
    pub fn chan_online(&self, node: &NodeId) -> String {
        format!("{{{}}}:chan-online:{}", self.prefix, node)
    }

    /// The list a node pushes join acknowledgements to, for the call that named `id`.
    pub fn ack(&self, id: &str) -> String {
        format!("{{{}}}:ack:{}", self.prefix, id)
    }

    /// The pub/sub topic on which nodes announce that they started, stopped or purged a
    /// dead peer: whoever follows the live node set reads it again.
    pub fn nodeset_topic(&self) -> String {
        format!("{}:nodeset", self.prefix)
    }

    /// The marker a node leaves when it moves `client` to its new home, which the new home
    /// takes when the client arrives: a move is not reported as offline and online.
    pub fn moving(&self, client: &ClientId) -> String {
        format!("{{{}}}:moving:{}", self.prefix, client)
    }

    /// The marker of a used connect token (by its `jti`), kept until the token expires: a node
    /// sets it once, so a token is used once across restarts and nodes.
    ///
    /// ```
    /// use imclient::keys::Keys;
    /// assert_eq!(Keys::new("chat").used_token("abc"), "chat:token:abc");
    /// ```
    pub fn used_token(&self, jti: &str) -> String {
        format!("{}:token:{}", self.prefix, jti)
    }

    /// The stream of online/offline events.
    pub fn events(&self) -> String {
        format!("{{{}}}:events", self.prefix)
    }

    /// The dead-letter stream of webhook batches: those the receiver did not acknowledge
    /// within the last attempt, kept for an operator to replay.
    ///
    /// ```
    /// use imclient::keys::Keys;
    /// assert_eq!(Keys::new("chat").webhook_dead_letters(), "{chat}:webhook-dead");
    /// ```
    pub fn webhook_dead_letters(&self) -> String {
        format!("{{{}}}:webhook-dead", self.prefix)
    }
}
