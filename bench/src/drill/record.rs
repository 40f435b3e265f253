//! What one drill client lived through: its welcomes, closes, failed attempts and `missed`
//! frames with their wall-clock times, its deliveries and its `seq` check.

/// What a welcome said.
#[derive(Debug, Clone)]
pub struct Welcome {
    /// Index into the node list (its length: a node not in the list).
    pub node: usize,
    pub epoch: String,
    pub seq: u64,
    pub recovered: Option<bool>,
    pub reason: Option<String>,
}

/// Something a client lived through, at a wall-clock time in ms.
#[derive(Debug)]
pub enum Event {
    Welcome {
        at: u64,
        welcome: Welcome,
    },
    /// The connection ended: the server's close code, `None` without a close frame.
    Closed {
        at: u64,
        code: Option<u16>,
    },
    /// An attempt that did not end in a welcome.
    Failed {
        at: u64,
        /// What went wrong (`failure_kind`): an HTTP refusal, a dead address, a timeout.
        kind: String,
    },
    /// A `missed` system frame: the node lost its Redis subscription for a while and what was
    /// published meanwhile may not have reached it.
    Missed {
        at: u64,
        reason: Option<String>,
    },
}

/// One client's record.
#[derive(Debug, Default)]
pub struct Log {
    /// The node of its first welcome: its delivery group.
    pub start_node: Option<usize>,
    pub events: Vec<Event>,
    pub deliveries: u64,
    /// Of the deliveries, the private messages (the rest went to channels).
    pub deliveries_private: u64,
    /// The send time (`t`, ns) of each private message delivered: it names the message.
    pub private_sent: Vec<u64>,
    pub gaps: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Welcomes that said `recovered: true` under another epoch than the one resumed.
    pub epoch_mismatch: u64,
}

impl Log {
    pub fn welcomes(&self) -> impl Iterator<Item = (u64, &Welcome)> {
        self.events.iter().filter_map(|e| match e {
            Event::Welcome { at, welcome } => Some((*at, welcome)),
            _ => None,
        })
    }

    /// The node of the last welcome at or before `t`.
    pub fn node_at(&self, t: u64) -> Option<usize> {
        self.welcomes()
            .take_while(|(at, _)| *at <= t)
            .last()
            .map(|(_, w)| w.node)
    }

    pub fn first_welcome_after(&self, t: u64) -> Option<(u64, &Welcome)> {
        self.welcomes().find(|(at, _)| *at > t)
    }

    pub fn closes_from(&self, t: u64) -> impl Iterator<Item = (u64, Option<u16>)> {
        self.events.iter().filter_map(move |e| match e {
            Event::Closed { at, code } if *at >= t => Some((*at, *code)),
            _ => None,
        })
    }

    /// The `missed` frames, with their time and reason.
    pub fn missed(&self) -> impl Iterator<Item = (u64, Option<&str>)> {
        self.events.iter().filter_map(|e| match e {
            Event::Missed { at, reason } => Some((*at, reason.as_deref())),
            _ => None,
        })
    }
}
