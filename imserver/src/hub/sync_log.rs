//! A client's subscription log: whether a load of its channels from Redis is under way, and
//! the membership changes that arrived since it began, replayed on top of what the load reads
//! (docs/DESIGN.md "Channels" says why that is enough).

use std::collections::HashSet;

use imclient::ChanName;

/// A membership change, as recorded while a client's channels are being loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChanOp {
    /// The client joined the channel.
    Join(ChanName),
    /// The client left the channel.
    Leave(ChanName),
}

/// A client's channel load: whether one is under way, and the changes that arrived since it
/// began.
#[derive(Debug)]
pub(super) struct SyncLog {
    /// `Some` while a load is under way: the changes recorded since it began.
    log: Option<Vec<ChanOp>>,
    /// Bumped each time a load begins; a load result for an older generation is ignored.
    generation: u64,
}

impl SyncLog {
    /// A log whose first load is due.
    pub(super) fn loading() -> Self {
        Self {
            log: Some(Vec::new()),
            generation: 1,
        }
    }

    /// Whether a load is under way.
    pub(super) fn loading_now(&self) -> bool {
        self.log.is_some()
    }

    /// Begins a new load: an earlier one's result will be ignored.
    pub(super) fn begin(&mut self) {
        self.generation += 1;
        self.log = Some(Vec::new());
    }

    /// Records a change while a load is under way.
    pub(super) fn record(&mut self, op: &ChanOp) {
        if let Some(log) = self.log.as_mut() {
            log.push(op.clone());
        }
    }

    /// The generation of the load under way, if any.
    pub(super) fn ticket(&self) -> Option<u64> {
        self.log.as_ref().map(|_| self.generation)
    }

    /// Ends the load of `generation`, which read `stored`: the channels the client is in,
    /// with the changes recorded since it began applied on top. `None` for a load that is not
    /// the latest (or none is under way).
    pub(super) fn finish(
        &mut self,
        generation: u64,
        stored: Vec<ChanName>,
    ) -> Option<HashSet<ChanName>> {
        if self.generation != generation {
            return None;
        }
        let log = self.log.take()?;
        let mut target: HashSet<ChanName> = stored.into_iter().collect();
        for op in log {
            match op {
                ChanOp::Join(chan) => target.insert(chan),
                ChanOp::Leave(chan) => target.remove(&chan),
            };
        }
        Some(target)
    }
}
