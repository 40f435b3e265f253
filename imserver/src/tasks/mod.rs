//! Background tasks: each runs until the node stops, over the narrow state it uses, given as a
//! struct of the shared parts it needs (built in `server.rs`); none takes the whole node.
//!
//! - [`broker`]: the Redis subscriber, and the publisher of the node's own commands.
//! - [`presence`]: presence, lease, online/offline events and the purge of dead nodes.
//! - [`membership`]: loads the channels of clients new to the node.
//! - [`sweeper`]: ends recovery windows, trims buffers, prunes token ids.
//! - [`follower`]: follows the live node set and moves clients to their new home.
//! - [`webhook`]: posts online/offline events to `--webhook-url` (when set).
//! - [`bad_requests`]: says in the log how many bad HTTP requests came, once per interval.

pub mod bad_requests;
pub mod broker;
pub mod follower;
pub mod membership;
pub mod presence;
pub mod sweeper;
pub mod webhook;
