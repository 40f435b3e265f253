//! Every Redis key and pub/sub topic name, built from the app's key prefix. Nothing else in
//! the workspace spells a Redis name; grep this file to find them all.
//!
//! | name | type | holds |
//! |---|---|---|
//! | `{prefix}:node:{node}` | pub/sub topic | [`crate::contract::NodeCommand`]s for that node |
//! | `{prefix}:presence:{node}` | hash | client id → [`crate::contract::PresenceRecord`] JSON |
//! | `{prefix}:lease:{node}` | string with TTL | the live instance id of that node |
//! | `{prefix}:nodes` | set | node ids that hold, or held, presence |
//! | `{prefix}:events` | stream | online/offline [`crate::Event`]s, field `event` |

use crate::ids::NodeId;

/// Builds Redis names for one key prefix.
///
/// ```
/// use imclient::{keys::Keys, NodeId};
/// let keys = Keys::new("chat");
/// let node = NodeId::new("ws://127.0.0.1:6001").unwrap();
/// assert_eq!(keys.node_topic(&node), "chat:node:ws://127.0.0.1:6001");
/// assert_eq!(keys.events(), "chat:events");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (no trailing colon).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
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
        format!("{}:presence:{}", self.prefix, node)
    }

    /// The lease key that says `node` is alive.
    pub fn lease(&self, node: &NodeId) -> String {
        format!("{}:lease:{}", self.prefix, node)
    }

    /// The set of nodes that hold presence.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The stream of online/offline events.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
}
