//! The close codes a node ends a connection with, and whether a client should reconnect after
//! each: one table, documented in docs/PROTOCOL.md.

/// Why a node closes a connection, with the WebSocket close code it sends. A client should
/// reconnect (with a fresh token) unless [`CloseCode::reconnect`] says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal close.
    Normal,
    /// 1001: the node is shutting down and no other node is live to take the client.
    GoingAway,
    /// 1008: the client sent a frame the protocol does not allow.
    PolicyViolation,
    /// 1009: the client sent a frame over the size limit.
    TooBig,
    /// 4000: nothing heard from the client within the heartbeat timeout.
    HeartbeatTimeout,
    /// 4001: the client did not read fast enough and its queue filled.
    SlowConsumer,
    /// 4002: the business disconnected the client (force_offline).
    Kicked,
    /// 4003: the client's home is now another node (one came back or was added, or its node is
    /// stopping and handed it over): reconnect at once, without backoff, with a fresh URL.
    Moved,
}

impl CloseCode {
    /// Every close code, for documentation and tests.
    pub const ALL: [CloseCode; 8] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::PolicyViolation,
        CloseCode::TooBig,
        CloseCode::HeartbeatTimeout,
        CloseCode::SlowConsumer,
        CloseCode::Kicked,
        CloseCode::Moved,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::PolicyViolation => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::HeartbeatTimeout => 4000,
            CloseCode::SlowConsumer => 4001,
            CloseCode::Kicked => 4002,
            CloseCode::Moved => 4003,
        }
    }

    /// Short reason text sent in the close frame and used as a metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "node shutting down",
            CloseCode::PolicyViolation => "unexpected frame: this socket is push-only",
            CloseCode::TooBig => "frame too large",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::SlowConsumer => "slow consumer: queue full",
            CloseCode::Kicked => "disconnected by the application",
            CloseCode::Moved => "moved: reconnect now, to the client's new home node",
        }
    }

    /// Whether a client should reconnect after this close.
    pub fn reconnect(self) -> bool {
        !matches!(
            self,
            CloseCode::Kicked | CloseCode::PolicyViolation | CloseCode::TooBig
        )
    }

    /// The close code for a numeric code, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_distinct() {
        let mut codes: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), CloseCode::ALL.len());
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
    }
}
