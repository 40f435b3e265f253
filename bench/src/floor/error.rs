//! Why the floor refused a connection or a feed record, or could not run.

/// An error of the floor.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// The socket failed (accepting, reading a handshake, polling).
    #[error("floor I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The connection's first bytes were not an upgrade the floor understands.
    #[error(
        "bad request: {0} (the floor takes `GET /client/<index>[?chan=<index>]` with a \
         Sec-WebSocket-Key, or `GET /feed`)"
    )]
    BadRequest(&'static str),
    /// A feed record of a kind this floor does not know: the feed is out of step.
    #[error("feed record of unknown kind {0}: imbench and imfloor must be the same build")]
    UnknownKind(u8),
    /// A feed record too long to be a message.
    #[error("feed record body of {len} bytes, over the floor's limit of {max}")]
    TooLong {
        /// The record's length.
        len: usize,
        /// The floor's limit.
        max: usize,
    },
}

/// Result of the floor's operations.
pub type Result<T, E = FloorError> = std::result::Result<T, E>;
