//! Redis with credentials and TLS: nodes and imclient work with a password (`requirepass`),
//! with an ACL user, and over `rediss://`, from the Redis URL alone: connect, private and
//! channel messages, presence and events, on every connection each side opens (pool,
//! subscriber, watchers).

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use anyhow::Result;
use imclient::{EventKind, EventsFrom};
use imtestkit::{Cluster, NodeOpts, Redis, WAIT, wait_for};
use serde_json::json;

async fn the_core_works(redis: Redis) -> Result<()> {
    let c = Cluster::start_on(redis, 2, NodeOpts::default()).await?;
    let mut events = c.im.events(EventsFrom::Beginning).await?;
    let (a, b) = (c.client_on(0, "a"), c.client_on(1, "b"));
    c.im.join_chan_many([&a, &b], "room").await?;
    let mut wa = c.connect(&a).await?;
    let mut wb = c.connect(&b).await?;
    c.im.send_message(&a, [&b], &"private", false).await?;
    assert_eq!(wb.next_message().await?.payload, json!("private"));
    c.im.send_chan_message(&b, "room", &"to the room", false)
        .await?;
    assert_eq!(wa.next_message().await?.payload, json!("to the room"));
    assert_eq!(wb.next_message().await?.payload, json!("to the room"));
    wait_for("both online", WAIT, || async {
        (c.im.online_count().await.ok()? == 2).then_some(())
    })
    .await?;
    let (_, first) = tokio::time::timeout(WAIT, events.next()).await??;
    assert_eq!(first.kind, EventKind::Online);
    c.im.refresh_nodes().await?;
    assert_eq!(c.im.live_nodes().len(), 2);
    Ok(())
}

#[tokio::test]
async fn with_a_password() -> Result<()> {
    the_core_works(Redis::start_with_auth(None, "s3cret-pass")?).await
}

#[tokio::test]
async fn with_an_acl_user() -> Result<()> {
    the_core_works(Redis::start_with_auth(Some("imuser"), "acl-pass-123")?).await
}

#[tokio::test]
async fn over_tls() -> Result<()> {
    the_core_works(Redis::start_tls()?).await
}
