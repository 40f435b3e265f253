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

#[cfg(feature = "clap")]
mod args;
mod channels;
mod client;
pub mod contract;
mod error;
mod events;
mod ids;
pub mod keys;
mod link;
pub mod node;
mod nodeset;
mod presence;
pub mod token;

#[cfg(feature = "clap")]
pub use args::ImClientArgs;
pub use channels::{ChanInfo, FanoutReport};
pub use client::{
    DEFAULT_JOIN_ACK_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_TOKEN_TTL,
    ImClient, ImClientOptions, NodeReport, RedisSource, SendReport, new_message_id, now_ms,
};
pub use error::{Error, Result};
pub use events::{EVENT_FIELD, Event, EventKind, EventStream, EventsFrom, GroupStart};
pub use ids::{ChanName, ClientId, MAX_CHAN_BYTES, MAX_CLIENT_ID_BYTES, MAX_NODE_ID_BYTES, NodeId};

/// The redis crate imclient is built on, for callers that build their own pool or commands.
pub use deadpool_redis;
pub use redis;
