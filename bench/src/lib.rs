//! What the load tool's binaries share: the floor (`imfloor`), the leanest server that accepts
//! the node's WebSocket connections and writes the node's frames, and the feed format imbench
//! drives it with (`imbench --floor-addr`). See `floor` for what it does and does not do.

pub mod floor;
