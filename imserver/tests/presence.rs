//! Presence and online/offline events through connect, disconnect, force_offline, a node
//! killed with SIGKILL, and a graceful shutdown.

use std::time::{Duration, Instant};

use anyhow::Result;
use imclient::contract::CloseCode;
use imclient::{EventKind, EventsFrom, ImClient};
use imtestkit::{Cluster, NodeOpts, WAIT, next_event_for, wait_for};
use serde_json::json;

async fn online(im: &ImClient, client: &str, want: bool) -> Result<()> {
    wait_for(&format!("has_online({client}) == {want}"), WAIT, || async {
        (im.has_online(client).await.ok()? == want).then_some(())
    })
    .await
}

#[tokio::test]
async fn has_online_and_online_clients_follow_connect_and_disconnect() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    let (a, b) = (c.client_on(0, "a"), c.client_on(1, "b"));
    assert!(!c.im.has_online(&a).await?);
    assert_eq!(c.im.online_count().await?, 0);

    let ws_a = c.connect(&a).await?;
    let ws_b1 = c.connect(&b).await?;
    let ws_b2 = c.connect(&b).await?;
    online(&c.im, &a, true).await?;
    online(&c.im, &b, true).await?;
    let mut all: Vec<String> =
        c.im.online_clients()
            .await?
            .into_iter()
            .map(|c| c.to_string())
            .collect();
    all.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(all, want);
    assert_eq!(
        c.im.online_count().await?,
        2,
        "two connections of b count once"
    );

    drop(ws_b1);
    drop(ws_a);
    online(&c.im, &a, false).await?;
    // b still has a connection.
    assert!(c.im.has_online(&b).await?);
    drop(ws_b2);
    online(&c.im, &b, false).await?;
    assert_eq!(c.im.online_count().await?, 0);
    Ok(())
}

#[tokio::test]
async fn events_carry_metadata_and_a_late_reader_sees_what_it_missed() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut live = c.im.events(EventsFrom::Now).await?;
    let url =
        c.im.prev_connect_server("erin", json!({"name": "Erin", "plan": "pro"}))?;
    let ws = imtestkit::Ws::connect(&url).await?;
    let ev = next_event_for(&mut live, "erin").await?;
    assert_eq!(ev.kind, EventKind::Online);
    assert_eq!(ev.meta, json!({"name": "Erin", "plan": "pro"}));
    assert_eq!(ev.node.as_str(), c.nodes[0].id);
    drop(ws);
    let ev = next_event_for(&mut live, "erin").await?;
    assert_eq!(ev.kind, EventKind::Offline);
    assert_eq!(ev.meta["name"], "Erin");

    // A backend that starts now still reads both, from the beginning of the stream.
    let mut late = c.im.events(EventsFrom::Beginning).await?;
    let kinds = [
        next_event_for(&mut late, "erin").await?.kind,
        next_event_for(&mut late, "erin").await?.kind,
    ];
    assert_eq!(kinds, [EventKind::Online, EventKind::Offline]);
    Ok(())
}

#[tokio::test]
async fn force_offline_closes_every_connection_with_kicked() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut one = c.connect("mallory").await?;
    let mut two = c.connect("mallory").await?;
    let mut bystander = c.connect("trent").await?;
    assert!(c.im.force_offline("mallory").await?);
    assert_eq!(one.closed().await?, Some(CloseCode::Kicked.code()));
    assert_eq!(two.closed().await?, Some(CloseCode::Kicked.code()));
    online(&c.im, "mallory", false).await?;
    c.im.send_message("x", ["trent"], &"unaffected", false)
        .await?;
    assert_eq!(bystander.next_message().await?.payload, json!("unaffected"));
    Ok(())
}

#[tokio::test]
async fn a_node_killed_with_sigkill_has_its_clients_reported_offline_within_the_lease() -> Result<()>
{
    let mut c = Cluster::start(2, NodeOpts::default()).await?;
    let doomed = c.client_on(0, "doomed");
    let survivor = c.client_on(1, "fine");
    let _ws = c.connect(&doomed).await?;
    let _ws2 = c.connect(&survivor).await?;
    online(&c.im, &doomed, true).await?;
    let mut events = c.im.events(EventsFrom::Now).await?;

    c.nodes[0].signal("KILL");
    c.nodes[0].wait_exit(WAIT).await.ok();
    let killed = Instant::now();
    let ev = next_event_for(&mut events, &doomed).await?;
    let took = killed.elapsed();
    assert_eq!(ev.kind, EventKind::Offline);
    assert_eq!(ev.node.as_str(), c.nodes[0].id);
    assert!(!c.im.has_online(&doomed).await?);
    assert!(
        c.im.has_online(&survivor).await?,
        "the survivor's own clients stay online"
    );
    // Lease 1.5 s, checked every 0.5 s: reported within lease + one check period + slack.
    assert!(
        took < Duration::from_millis(1500 + 500 + 1000),
        "took {took:?}"
    );
    eprintln!("offline reported {took:?} after SIGKILL (lease 1500 ms)");
    Ok(())
}

#[tokio::test]
async fn graceful_shutdown_closes_with_1001_and_clears_presence() -> Result<()> {
    let mut c = Cluster::start(1, NodeOpts::default()).await?;
    let mut a = c.connect("ann").await?;
    let mut b = c.connect("ben").await?;
    online(&c.im, "ann", true).await?;
    online(&c.im, "ben", true).await?;
    let mut events = c.im.events(EventsFrom::Now).await?;

    c.nodes[0].signal("TERM");
    assert_eq!(a.closed().await?, Some(CloseCode::GoingAway.code()));
    assert_eq!(b.closed().await?, Some(CloseCode::GoingAway.code()));
    assert!(c.nodes[0].wait_exit(WAIT).await?, "exits with success");
    // Presence is cleared by the node itself, not left for the lease to expire.
    assert!(!c.im.has_online("ann").await?);
    assert_eq!(c.im.online_count().await?, 0);
    // Both go offline, in whatever order the node wrote them.
    let mut gone = Vec::new();
    while gone.len() < 2 {
        let (_, ev) = tokio::time::timeout(WAIT, events.next()).await??;
        assert_eq!(ev.kind, EventKind::Offline);
        gone.push(ev.client.to_string());
    }
    gone.sort();
    assert_eq!(gone, ["ann", "ben"]);
    Ok(())
}

#[tokio::test]
async fn a_restarted_node_purges_its_stale_presence() -> Result<()> {
    let mut c = Cluster::start(1, NodeOpts::default()).await?;
    let _ws = c.connect("ghost").await?;
    online(&c.im, "ghost", true).await?;
    let addr = c.nodes[0].addr;
    c.nodes[0].signal("KILL");
    c.nodes[0].wait_exit(WAIT).await.ok();
    let mut events = c.im.events(EventsFrom::Now).await?;
    // Restart on the same address before any lease could expire.
    let node = imtestkit::Node::start_at(&c.redis, NodeOpts::default(), &addr.to_string()).await?;
    c.nodes[0] = node;
    let ev = next_event_for(&mut events, "ghost").await?;
    assert_eq!(ev.kind, EventKind::Offline);
    online(&c.im, "ghost", false).await?;
    Ok(())
}

/// While a node's lease is gone (Redis was unreachable longer than the lease, or a peer purged
/// it), backends route its clients' messages to other nodes, which do not have them: once the
/// node holds its lease again, its clients are told that something may be missing.
#[tokio::test]
async fn a_lapsed_lease_tells_the_nodes_clients_they_may_have_missed_messages() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let mut ws = c.connect("alice").await?;
    let lease = c.im.keys().lease(&c.im.home_node("alice")?);
    let mut redis = c.redis.conn().await?;
    let _: i64 = redis::cmd("DEL")
        .arg(&lease)
        .query_async(&mut redis)
        .await?;
    match ws.read(WAIT).await? {
        imtestkit::Frame::Envelope(env) => {
            assert_eq!(env.payload["event"], "missed", "{env:?}");
            assert_eq!(env.payload["reason"], "redis_outage", "{env:?}");
        }
        other => panic!("expected the missed event, got {other:?}"),
    }
    let url = c.im.prev_connect_server("alice", json!(null))?;
    let w =
        imtestkit::Ws::connect(&imtestkit::with_since(&url, &ws.epoch(), ws.welcome_seq())).await?;
    assert_eq!(
        w.recovered(),
        Some(false),
        "a resume from before the lapse is refused"
    );
    Ok(())
}
