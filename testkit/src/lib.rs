//! The workspace's test harness (a dev-dependency only): a private redis-server or Redis Cluster
//! on free ports, real imserver processes on port 0, real WebSocket clients, and waiting on
//! conditions with deadlines, never bare sleeps.
//!
//! Errors are `anyhow` on purpose: every caller is a test that reports them and fails.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use imtestkit::{Cluster, NodeOpts};
//! let c = Cluster::start(1, NodeOpts::default()).await?;
//! let mut bob = c.connect("bob").await?;
//! c.im.send_message("alice", ["bob"], &serde_json::json!({ "text": "hi" }), false)
//!     .await?;
//! let got = bob.next_message().await?;
//! # Ok(()) }
//! ```

mod cluster;
mod cluster_view;
mod deadline;
mod events;
mod http;
mod metrics;
pub mod moves;
mod node;
mod port;
pub mod redis_cluster;
mod redis_server;
mod resp;
mod ws;

pub use cluster::{Cluster, Listed, client_for};
pub use deadline::{WAIT, wait_for};
pub use events::next_event_for;
pub use http::{HttpAnswer, http_get, http_request, http_request_text, http_request_within};
pub use node::{Node, NodeOpts, imserver_bin, rss_kib};
pub use port::free_port;
pub use redis_server::{Redis, cluster_wanted};
pub use ws::{Frame, Ws, raw_read_close, raw_upgrade, with_since};

/// The token secret every test node and test imclient share.
pub const SECRET: &str = "fixture-secret-0123456789abcdef";
/// The key prefix of every test node and test imclient.
pub const PREFIX: &str = "imtest";
