//! Identifier newtypes: who a client is and which node it lives on.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest client id accepted, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 128;
/// Longest node address accepted, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 256;
/// Longest channel name accepted, in bytes.
pub const MAX_CHAN_BYTES: usize = 128;

/// A business-side identity: usually the user id of the web backend.
///
/// ```
/// use imclient::ClientId;
/// let id = ClientId::new("alice").unwrap();
/// assert_eq!(id.as_str(), "alice");
/// assert!(ClientId::new("").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(String);

impl ClientId {
    /// Validates and wraps a client id: 1 to 128 bytes, no control characters.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("it is empty")
        } else if id.len() > MAX_CLIENT_ID_BYTES {
            Some("it is longer than 128 bytes")
        } else if id.chars().any(char::is_control) {
            Some("it holds control characters")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::ClientId { id, reason }),
            None => Ok(Self(id)),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ClientId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A node's address as browsers reach it, e.g. `ws://127.0.0.1:6001`. It is also the node's
/// identity: the same text appears in the node list, in connect tokens and in Redis key names.
///
/// ```
/// use imclient::NodeId;
/// let node = NodeId::new("ws://127.0.0.1:6001").unwrap();
/// assert_eq!(node.connect_url("tok"), "ws://127.0.0.1:6001/ws?token=tok");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    /// Validates and wraps a node address (1 to 256 bytes, no whitespace). A trailing `/` is
    /// dropped so that `ws://h:1/` and `ws://h:1` are the same node.
    pub fn new(addr: impl Into<String>) -> Result<Self> {
        let addr = addr.into();
        let trimmed = addr.trim_end_matches('/');
        if trimmed.is_empty()
            || trimmed.len() > MAX_NODE_ID_BYTES
            || trimmed.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::NodeId(addr));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL a browser opens to connect with `token`.
    pub fn connect_url(&self, token: &str) -> String {
        format!("{}/ws?token={}", self.0, token)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A channel (group chat, room) name: 1 to 128 bytes, no whitespace, control characters or
/// braces (braces are Redis Cluster hash-tag syntax).
///
/// ```
/// use imclient::ChanName;
/// assert!(ChanName::new("room:lobby").is_ok());
/// assert!(ChanName::new("two words").is_err());
/// assert!(ChanName::new("").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChanName(String);

impl ChanName {
    /// Validates and wraps a channel name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_CHAN_BYTES {
            Some("it is longer than 128 bytes")
        } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("it holds whitespace or control characters")
        } else if name.contains(['{', '}']) {
            Some("it holds { or }")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::ChanName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ChanName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
