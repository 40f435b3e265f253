//! Pulling events: `events` answers the online/offline events after a stream id, waiting (a
//! long poll) for the first one when none is there yet, for backends that cannot receive
//! webhooks. The events are the webhook body's, with the same ids.

use std::time::Duration;

use imclient::{EventsFrom, ImClient};
use serde_json::{Value, json};

use super::errors::ApiError;
use super::params::Params;

/// Default and largest page.
const PAGE: usize = 100;
const PAGE_MAX: usize = 1000;
/// Longest wait for a first event, in milliseconds.
pub const MAX_WAIT_MS: u64 = 30_000;

/// `{after?, limit?, wait_ms?}` → `{events, last_id}`: at most `limit` events after stream id
/// `after` (null: from now on), waiting up to `wait_ms` (default 0) for one; `last_id` is the
/// last event's id, or where the read started when there was none: the next call's `after`.
pub async fn events(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["after", "limit", "wait_ms"])?;
    let from = match p.opt_string("after")? {
        Some(after) if is_stream_id(&after) => EventsFrom::After(after),
        Some(_) => {
            return Err(ApiError::bad_field(
                "invalid_after",
                "after",
                "after must be a stream id (like 1733350000000-0), the last_id of a previous \
                 answer, or null for events from now on",
            ));
        }
        None => EventsFrom::Now,
    };
    let limit = p.count_or("limit", PAGE, PAGE_MAX)?;
    let wait = Duration::from_millis(p.millis_or("wait_ms", 0, MAX_WAIT_MS)?);
    let page = im.read_events(from, limit, wait).await?;
    Ok(json!({ "events": page.events, "last_id": page.last_id }))
}

/// `<ms>-<seq>` or `<ms>`, digits only.
fn is_stream_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match id.split_once('-') {
        Some((ms, seq)) => digits(ms) && digits(seq),
        None => digits(id),
    }
}

#[cfg(test)]
mod tests {
    use super::is_stream_id;

    #[test]
    fn only_stream_ids_are_taken_as_after() {
        for ok in ["0", "0-0", "1733350000000-0", "1733350000000-12"] {
            assert!(is_stream_id(ok), "{ok}");
        }
        for bad in ["", "-", "1-", "-1", "1-2-3", "$", ">", "+", "abc", "1 -0"] {
            assert!(!is_stream_id(bad), "{bad}");
        }
    }
}
