//! The wire contract between imclient, imserver and browsers: the commands a backend publishes
//! to a node, the envelopes a node pushes to a socket, the control frames a socket may send,
//! and the close codes. docs/PROTOCOL.md describes the same, with examples.
//!
//! Its parts follow the two wires: the commands that backends and nodes publish on Redis topics
//! (`command`), what a node and a browser say on the socket (`frame`), recovery on reconnect
//! (`resume`), the close codes (`close`), and what nodes store for backends to read
//! (`presence`). Each part is private and re-exported here: `imclient::contract::X` is the one
//! path of every item.

mod close;
mod command;
mod frame;
mod presence;
mod resume;

pub use close::*;
pub use command::*;
pub use frame::*;
pub use presence::*;
pub use resume::*;
