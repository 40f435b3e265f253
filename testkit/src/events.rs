//! Reading online/offline events the way a backend does, for tests that wait on one client's.

use anyhow::Result;
use imclient::{Event, EventStream};
use tokio::time::Instant;

use crate::deadline::WAIT;

/// The next event of `client` on `events`, skipping other clients' (within [`WAIT`]).
pub async fn next_event_for(events: &mut EventStream, client: &str) -> Result<Event> {
    let end = Instant::now() + WAIT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let (_, ev) = tokio::time::timeout(left, events.next()).await??;
        if ev.client.as_str() == client {
            return Ok(ev);
        }
    }
}
