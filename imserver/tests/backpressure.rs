//! Backpressure: a client that does not read fast enough is closed with 4001 while the others
//! keep receiving everything. In a test binary of its own, so that other tests' load on the
//! machine does not make the fast reader look slow.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::time::{Duration, Instant};

use anyhow::Result;
use imclient::contract::CloseCode;
use imtestkit::{Cluster, NodeOpts};
use serde_json::json;

#[tokio::test]
async fn a_slow_client_is_closed_while_a_fast_one_keeps_receiving() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default().arg("--queue-capacity", 8)).await?;
    let mut slow = c.connect("slow").await?;
    let mut fast = c.connect("fast").await?;
    let metric = "im_slow_consumer_closes_total";
    let chunk = "y".repeat(32 * 1024);

    // The fast reader drains concurrently; the slow one reads nothing until it is cut off.
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let env = fast.next_message().await?;
            if env.payload == json!("end") {
                return anyhow::Ok(n);
            }
            assert_eq!(env.seq, Some(n + 1), "in order, nothing skipped");
            n += 1;
        }
    });
    let mut sent = 0u64;
    let end = Instant::now() + Duration::from_secs(30);
    while c.nodes[0].metric(metric).await? == 0 {
        assert!(
            Instant::now() < end && sent < 20_000,
            "slow client never closed after {sent} messages"
        );
        for _ in 0..50 {
            c.im.send_message("x", ["slow", "fast"], &chunk, false)
                .await?;
            sent += 1;
        }
    }
    c.im.send_message("x", ["fast"], &"end", false).await?;
    assert_eq!(reader.await??, sent, "the fast client got every message");
    // What was already buffered reaches the slow client, then the close frame.
    assert_eq!(slow.closed().await?, Some(CloseCode::SlowConsumer.code()));
    let drops = c.nodes[0]
        .metric(&format!(
            "im_drops_total{{node=\"{}\",reason=\"queue_full\"}}",
            c.nodes[0].id
        ))
        .await?;
    assert!(drops >= 1);
    eprintln!("slow consumer cut after {sent} messages of 32 KiB; {drops} frames dropped for it");
    Ok(())
}
