//! The heartbeat under traffic: a client that never sends anything of its own and only
//! answers the node's pings (as a WebSocket library does while it reads) must not be closed as
//! silent while deliveries keep its session busy writing.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt as _;
use imtestkit::{Cluster, NodeOpts};
use serde_json::json;

/// Clients on the channel: every channel message wakes all of their sessions at once.
const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_answers_pings_stays_connected_under_deliveries() -> Result<()> {
    // Timeout twice the interval, as the defaults (15 s, 30 s): one ping not sent is a silence
    // as long as the timeout. Not shorter, so that a loaded machine's scheduling delays do not
    // count against the client.
    let opts = NodeOpts::default()
        .arg("--heartbeat-interval-ms", 250)
        .arg("--heartbeat-timeout-ms", 500);
    let c = Cluster::start(1, opts).await?;
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("reader{i}")).collect();
    c.im.join_chan_many(&names, "busy").await?;
    let run_for = Duration::from_secs(5);
    let end = Instant::now() + run_for;
    let mut readers = Vec::new();
    for name in &names {
        let mut ws = c.connect(name).await?;
        // Reads (and so answers pings) until the end; returns how the stream ended, if it did.
        readers.push(tokio::spawn(async move {
            loop {
                let left = end.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, ws.stream.next()).await {
                    Err(_) => return None,
                    Ok(Some(Ok(_))) => {}
                    Ok(other) => return Some(format!("{other:?}")),
                }
            }
        }));
    }
    // A steady stream of channel messages for the whole time.
    let mut sent = 0u64;
    while Instant::now() < end {
        c.im.send_chan_message("x", "busy", &json!({ "n": sent }), false)
            .await?;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut ended = Vec::new();
    for (name, r) in names.iter().zip(readers) {
        if let Some(how) = r.await? {
            ended.push(format!("{name}: {how}"));
        }
    }
    let metric = format!(
        "im_closes_total{{node=\"{}\",code=\"4000\"}}",
        c.nodes[0].id
    );
    assert_eq!(
        c.nodes[0].metric(&metric).await?,
        0,
        "clients closed as silent after {sent} messages: {ended:?}"
    );
    assert!(ended.is_empty(), "connections ended: {ended:?}");
    Ok(())
}
