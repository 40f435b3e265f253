//! Tells every signed-in user who came and went: reads the online/offline event stream as a
//! consumer group and pushes each event to everyone through the IM itself (one broadcast).

use std::time::Duration;

use imclient::{EventKind, GroupStart, ImClient};
use serde_json::json;

use crate::users::Users;

/// Consumer group of the demo; several demo-web replicas would share its events.
const GROUP: &str = "demo-web";

/// Runs until the process ends, retrying when Redis is away.
pub async fn run(im: ImClient, users: Users, consumer: String) {
    loop {
        let mut events = match im.event_group(GROUP, &consumer, GroupStart::Now).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read presence events; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let (_, event) = match events.next().await {
                Ok(item) => item,
                // Only a stream whose reader is gone needs building again.
                Err(e @ imclient::Error::Options(_)) => {
                    tracing::warn!(error = %e, "presence event stream stopped; starting over");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
                // Redis failed a read: the stream's reader retries by itself, with backoff, and
                // goes on where it stopped. Building a new stream here (as before) added a
                // second's delay to every presence change behind it and read the unacknowledged
                // events again.
                Err(e) => {
                    tracing::warn!(error = %e, "presence event read failed; the stream retries");
                    continue;
                }
            };
            let known = match users.by_id(event.client.as_str()).await {
                Ok(user) => user,
                Err(e) => {
                    tracing::warn!(error = %e, client = %event.client, "cannot look the user up; using the name from the event");
                    None
                }
            };
            let name = known
                .map(|u| u.name)
                .or_else(|| {
                    event
                        .meta
                        .get("name")
                        .and_then(|n| n.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| event.client.to_string());
            let payload = json!({
                "kind": "presence",
                "user": event.client,
                "name": name,
                "online": event.kind == EventKind::Online,
            });
            if let Err(e) = im.broadcast("demo-web", &payload).await {
                tracing::warn!(error = %e, "cannot broadcast a presence change");
            }
        }
    }
}
