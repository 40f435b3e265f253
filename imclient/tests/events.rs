//! Reading the event stream: a consumer group shares events between a backend's replicas, a
//! replica that comes back gets what it had not acknowledged, and entries that are not events
//! are skipped and counted.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::time::{Duration, Instant};

use anyhow::Result;
use imclient::{EventKind, EventsFrom, GroupStart};
use imtestkit::{Cluster, NodeOpts, WAIT, next_event_for};

#[tokio::test]
async fn a_consumer_group_shares_events_between_replicas() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut r1 = c.im.event_group("backend", "r1", GroupStart::Now).await?;
    let mut r2 = c.im.event_group("backend", "r2", GroupStart::Now).await?;
    let mut sockets = Vec::new();
    for i in 0..6 {
        sockets.push(c.connect(&format!("g{i}")).await?);
    }
    // Read from both replicas together until all six online events have arrived.
    let mut seen = std::collections::HashMap::new();
    let end = Instant::now() + WAIT;
    while seen.len() < 6 && Instant::now() < end {
        tokio::select! {
            r = r1.next() => { let (_, e) = r?; *seen.entry(e.client.to_string()).or_insert(0) += 1; }
            r = r2.next() => { let (_, e) = r?; *seen.entry(e.client.to_string()).or_insert(0) += 1; }
        }
    }
    assert_eq!(seen.len(), 6, "every event reaches the group: {seen:?}");
    assert!(
        seen.values().all(|n| *n == 1),
        "each event goes to one replica: {seen:?}"
    );
    Ok(())
}

/// A replica that stops before acknowledging gets those events again when it comes back under
/// the same consumer name: each once, in order, then the new ones.
#[tokio::test]
async fn a_returning_consumer_gets_its_unacknowledged_events_once_each() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut crashed = c.im.event_group("backend", "r1", GroupStart::Now).await?;
    let mut sockets = Vec::new();
    for i in 0..3 {
        sockets.push(c.connect(&format!("p{i}")).await?);
    }
    for _ in 0..3 {
        tokio::time::timeout(WAIT, crashed.next()).await??;
    }
    // Gone without acknowledging (the last event is never acknowledged; the others may not
    // have been either).
    drop(crashed);
    let mut back = c.im.event_group("backend", "r1", GroupStart::Now).await?;
    sockets.push(c.connect("p3").await?);
    let mut got = Vec::new();
    while !got.contains(&"p3".to_owned()) {
        let (_, e) = tokio::time::timeout(WAIT, back.next()).await??;
        got.push(e.client.to_string());
        // A caller that takes its time over each event (the reader reads ahead meanwhile).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more: every redelivered event came once.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), back.next())
            .await
            .is_err(),
        "more events after p3: {got:?}"
    );
    let redelivered: Vec<&String> = got.iter().filter(|c| *c != "p3").collect();
    let mut in_order = redelivered.clone();
    in_order.sort();
    in_order.dedup();
    assert_eq!(
        in_order, redelivered,
        "each event at most once, in order: {got:?}"
    );
    assert!(
        redelivered.contains(&&"p2".to_owned()),
        "the unacknowledged one came back: {got:?}"
    );
    Ok(())
}

#[tokio::test]
async fn malformed_entries_in_the_event_stream_are_skipped() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut events = c.im.events(EventsFrom::Now).await?;
    let mut redis = c.redis.conn().await?;
    let key = c.im.keys().events();
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("event")
        .arg("{not json")
        .query_async(&mut redis)
        .await?;
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("other")
        .arg("1")
        .query_async(&mut redis)
        .await?;
    let _ws = c.connect("after-garbage").await?;
    let ev = next_event_for(&mut events, "after-garbage").await?;
    assert_eq!(ev.kind, EventKind::Online);
    assert_eq!(events.skipped(), 2);
    Ok(())
}
