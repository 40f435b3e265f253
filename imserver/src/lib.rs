//! # imserver
//!
//! The push node. Browsers hold a WebSocket to it; it checks their connect token, keeps the
//! socket alive and pushes whatever Redis delivers for them. It holds no business logic.
//!
//! `main` parses [`Config`], binds, and calls [`server::run`]; tests do the same on port 0.
//! The parts: [`route`] (plain HTTP), [`handshake`] (the WebSocket upgrade), [`session`]
//! (one connection's loop, on the socket it owns), [`inbound`] (what a client sends), [`hub`]
//! (the local connection registry), [`broker`] (the Redis subscriber), [`presence`] (presence,
//! lease and events in Redis), [`recovery`] (what a client that comes back missed),
//! [`admission`] (token checks), [`metrics`]. [`api`] is the HTTP API for backends, on a
//! listener of its own.

pub mod admission;
pub mod api;
pub mod broker;
pub mod config;
pub mod early_answer;
mod error;
pub mod handshake;
pub mod hub;
pub mod inbound;
pub mod ip_limit;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod nodeset;
pub mod outbox;
pub mod pending;
pub mod presence;
pub mod recovery;
pub mod route;
pub mod server;
pub mod session;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use error::{Error, Result};
pub use node::Node;
