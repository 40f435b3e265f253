//! What `/metrics` tells an operator beyond counts, on a real node and Redis: the connection
//! cap in force, whether the node holds its lease (and that it stops saying so once Redis is
//! gone), and how long deliveries take inside the node, by kind.

use std::time::Duration;

use anyhow::{Result, anyhow};
use imtestkit::{Cluster, NodeOpts, wait_for};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// The value of the series that starts with `series` (name and labels) in `body`.
fn value(body: &str, series: &str) -> Result<f64> {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no series {series} on /metrics"))
}

#[tokio::test]
async fn the_cap_in_force_and_the_lease_are_on_metrics_and_the_lease_goes_with_redis() -> Result<()>
{
    let mut c = Cluster::start(1, NodeOpts::default().arg("--max-connections", 37)).await?;
    let node = &c.nodes[0];
    assert_eq!(node.metric("im_max_connections").await?, 37);
    node.wait_metric("im_leased", 1).await?;

    c.redis.kill();
    // The testkit's lease is 1.5 s: once it has run out unrenewed the node no longer holds it.
    wait_for("im_leased 0 once Redis is gone", WAIT, || async {
        (c.nodes[0].metric("im_leased").await.ok()? == 0).then_some(())
    })
    .await?;
    c.redis.restart()?;
    c.nodes[0].wait_metric("im_leased", 1).await?;
    Ok(())
}

#[tokio::test]
async fn deliveries_are_timed_by_kind_from_redis_to_the_queue() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let client = c.client_on(0, "timed");
    let mut ws = c.connect(&client).await?;
    c.im.join_chan(&client, "timing").await?;
    for i in 0..5 {
        c.im.send_message("backend", [&client], &json!(i), false)
            .await?;
        assert_eq!(ws.next_message().await?.payload, json!(i));
    }
    c.im.send_chan_message("backend", "timing", &json!("chan"), false)
        .await?;
    assert_eq!(ws.next_message().await?.payload, json!("chan"));
    c.im.broadcast("backend", &json!("all")).await?;
    assert_eq!(ws.next_message().await?.payload, json!("all"));

    let node = &c.nodes[0];
    let id = &node.id;
    // A frame reaches the client only after it was queued: the counts are final by now.
    let (_, body) = node.get("/metrics").await?;
    let series = |kind: &str, part: &str| {
        format!("im_delivery_latency_seconds_{part}{{node=\"{id}\",kind=\"{kind}\"")
    };
    for (kind, sent) in [("direct", 5.0), ("channel", 1.0), ("broadcast", 1.0)] {
        let count = value(&body, &series(kind, "count"))?;
        assert_eq!(count, sent, "{kind} deliveries timed");
        let inf = value(&body, &format!("{},le=\"+Inf\"}}", series(kind, "bucket")))?;
        assert_eq!(
            inf, count,
            "{kind}: the +Inf bucket holds every observation"
        );
        let sum = value(&body, &series(kind, "sum"))?;
        // Inside the node on loopback: more than nothing, less than a second each.
        assert!(
            sum > 0.0 && sum < count,
            "{kind}: sum {sum} s for {count} deliveries"
        );
        // Cumulative buckets never fall.
        let buckets: Vec<f64> = body
            .lines()
            .filter(|l| l.starts_with(&series(kind, "bucket")))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert_eq!(buckets.len(), 15, "{kind}: 14 bounds and +Inf");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "{kind}: {buckets:?}"
        );
    }
    Ok(())
}
