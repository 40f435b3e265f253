//! Recovery on reconnect: where a client asks to resume from (`since` in its connect URL) and
//! why a node may refuse to fill the gap.

use serde::{Deserialize, Serialize};

/// Why a resume could not be served: the app must reload what it shows from its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryRefusal {
    /// The node restarted since: its sequence streams are gone.
    EpochChanged,
    /// The client was away longer than its recovery window, or its buffer no longer holds
    /// everything it missed.
    TooOld,
    /// `since` is malformed, or names a position the node never reached.
    Unknown,
    /// The node lost its Redis subscription since: what was published meanwhile never
    /// reached it.
    RedisOutage,
}

impl RecoveryRefusal {
    /// Every refusal, for metrics and tests.
    pub const ALL: [RecoveryRefusal; 4] = [
        RecoveryRefusal::EpochChanged,
        RecoveryRefusal::TooOld,
        RecoveryRefusal::Unknown,
        RecoveryRefusal::RedisOutage,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryRefusal::EpochChanged => "epoch_changed",
            RecoveryRefusal::TooOld => "too_old",
            RecoveryRefusal::Unknown => "unknown",
            RecoveryRefusal::RedisOutage => "redis_outage",
        }
    }
}

/// Where a client resumes from: the `epoch` of its last welcome and the last `seq` it
/// processed, written `<epoch>:<seq>` in the connect URL's `since` parameter.
///
/// ```
/// use imclient::contract::ResumeFrom;
/// let from = ResumeFrom::parse("d8d815bb-3:41").unwrap();
/// assert_eq!((from.epoch.as_str(), from.seq), ("d8d815bb-3", 41));
/// assert_eq!(from.to_string(), "d8d815bb-3:41");
/// assert!(ResumeFrom::parse("no-seq").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFrom {
    /// The epoch of the last welcome.
    pub epoch: String,
    /// The last sequence number processed.
    pub seq: u64,
}

impl ResumeFrom {
    /// Parses `<epoch>:<seq>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, seq) = text.rsplit_once(':')?;
        if epoch.is_empty() {
            return None;
        }
        Some(Self {
            epoch: epoch.to_owned(),
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for ResumeFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}
