//! # imclient
//!
//! The business-side SDK of the imserver push cluster, and the wire contract both sides share.
//!
//! A business backend embeds an [`ImClient`]. It hands each browser a connect URL
//! ([`ImClient::prev_connect_server`]) naming the client's home node, pushes messages
//! ([`ImClient::send_message`]) through Redis to that node, asks who is online
//! ([`ImClient::has_online`]) and reads online/offline events ([`ImClient::events`]).
//! Channels (rooms, group chats) have durable membership ([`ImClient::join_chan`]) and cost one
//! publish per message whatever their size ([`ImClient::send_chan_message`]);
//! [`ImClient::broadcast`] reaches every online client.
//! Browsers never send business data over their socket: they call the backend over HTTP.
//!
//! Redis names are built in [`keys`]; the wire format is in [`contract`]; the home-node rule
//! is in [`node`]; connect tokens in [`token`]. docs/PROTOCOL.md documents all of it.
//!
//! ## Quick start
//!
//! ```no_run
//! # async fn f() -> imclient::Result<()> {
//! use imclient::{EventsFrom, ImClient, ImClientOptions};
//! let im = ImClient::new(ImClientOptions::new(
//!     "redis://127.0.0.1:6379",                         // the Redis the nodes use
//!     ["ws://127.0.0.1:6001", "ws://127.0.0.1:6002"],   // the nodes, as browsers reach them
//!     std::env::var("IM_TOKEN_SECRET").unwrap_or_default(), // shared with the nodes
//! ))?;
//! // Your "connect" endpoint answers this URL to a signed-in user's browser:
//! let url = im.prev_connect_server("alice", serde_json::json!({ "name": "Alice" }))?;
//! // Anywhere in your backend: push to users, with a receipt for the sender.
//! im.send_message("alice", ["bob"], &serde_json::json!({ "text": "hi" }), true).await?;
//! // Rooms: durable membership, one publish per message.
//! im.join_chan("bob", "room:lobby").await?;
//! im.send_chan_message("alice", "room:lobby", &"hello room", true).await?;
//! // Online/offline events, also those that happened while the backend was down.
//! let mut events = im.events(EventsFrom::Now).await?;
//! let (_id, event) = events.next().await?;
//! # Ok(()) }
//! ```
//!
//! A complete backend with actix-web is `examples/quickstart.rs`; the test suite runs it against
//! a real Redis and node.

#[cfg(feature = "clap")]
mod args;
mod channels;
mod client;
pub mod contract;
mod error;
mod events;
mod ids;
pub mod keys;
pub mod link;
pub mod node;
mod nodeset;
mod options;
mod presence;
mod sending;
pub mod store;
pub mod token;

#[cfg(feature = "clap")]
pub use args::ImClientArgs;
pub use channels::ChanInfo;
pub use client::ImClient;
pub use error::{Error, Result};
pub use events::{
    EVENT_FIELD, Event, EventEntry, EventKind, EventPage, EventStream, EventsFrom, GroupStart,
};
pub use ids::{ChanName, ClientId, MAX_CHAN_BYTES, MAX_CLIENT_ID_BYTES, MAX_NODE_ID_BYTES, NodeId};
pub use options::{
    DEFAULT_JOIN_ACK_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_TOKEN_TTL,
    ImClientOptions, RedisSource,
};
pub use sending::{FanoutReport, NodeReport, SendReport, new_message_id, now_ms};

/// The redis crate imclient is built on, for callers that build their own pool or commands.
pub use deadpool_redis;
pub use redis;
