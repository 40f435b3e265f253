//! What a node keeps in Redis about its online clients, for backends and other nodes to read.

use serde::{Deserialize, Serialize};

/// What a node stores per online client in its presence hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// Open connections of the client on the node.
    pub conns: u32,
    /// Metadata from the token of its first connection.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
    /// When it came online, milliseconds since the Unix epoch.
    pub since: u64,
}
