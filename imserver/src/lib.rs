//! # imserver
//!
//! The push node. Browsers hold a WebSocket to it; it checks their connect token, keeps the
//! socket alive and pushes whatever Redis delivers for them. It holds no business logic.
//!
//! `main` parses [`Config`], binds, and calls [`server::run`]; tests do the same on port 0.
//! The modules, in layers: each imports only from the layers below it.
//!
//! ```text
//! server   server  api  route  handshake  session  inbound  early_answer  tls  wire
//!   |
//! tasks    tasks::{broker, presence, membership, sweeper, follower}
//!   |
//! node     node
//!   |
//! state    hub  recovery  nodeset  admission  ip_limit  outbox  work  pending
//!          health  metrics  config  memory  error
//! ```
//!
//! - State: [`hub`] (the local clients and channels), [`recovery`] (buffers and resume
//!   decisions), [`nodeset`] (the live node set), [`admission`] (token checks), [`ip_limit`]
//!   (per-address limits), [`outbox`] (a connection's outgoing frames), [`work`] (background
//!   work the hub asks for), [`pending`], [`health`], [`metrics`], [`config`], [`memory`].
//! - [`node`]: one handle to all of it.
//! - [`tasks`]: the background tasks.
//! - Serving: [`server`] (start and stop), [`api`] (the HTTP API for backends, on a listener
//!   of its own), [`route`] (plain HTTP), [`handshake`] (the WebSocket upgrade), [`session`]
//!   (one connection's loop), [`inbound`] (what a client sends), [`early_answer`], [`tls`],
//!   [`wire`].

// State.
pub mod admission;
pub mod config;
mod error;
pub mod health;
pub mod hub;
pub mod ip_limit;
pub mod memory;
pub mod metrics;
pub mod nodeset;
pub mod outbox;
pub mod pending;
pub mod recovery;
pub mod work;

// The node.
pub mod node;

// Background tasks.
pub mod tasks;

// Serving.
pub mod api;
pub mod early_answer;
pub mod handshake;
pub mod heartbeat;
pub mod inbound;
pub mod route;
pub mod server;
pub mod session;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use error::{Error, Result};
pub use node::Node;
