//! Recovery: a client that drops off and comes back with `since=<epoch>:<seq>` gets what it
//! missed, exactly once and in order, or is told plainly why not (`recovered: false` with a
//! reason); receipts say `buffered` meanwhile; buffers stay within their bounds.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use imclient::ImClient;
use imclient::contract::{Kind, ReceiptPayload, ReceiptStatus};
use imtestkit::{Cluster, Frame, NodeOpts, WAIT, Ws, wait_for, with_since};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a client saw: the `n` of every message in arrival order, and where it may resume.
#[derive(Debug, Default)]
struct Seen {
    ns: Vec<u64>,
    epoch: String,
    seq: u64,
}

impl Seen {
    fn welcomed(&mut self, ws: &Ws) {
        self.epoch = ws.epoch();
        if ws.recovered() != Some(true) {
            self.seq = ws.welcome_seq();
        }
    }

    /// Reads one frame; false when nothing came within `quiet`.
    async fn read(&mut self, ws: &mut Ws, quiet: Duration) -> Result<bool> {
        let env = match ws.read(quiet).await {
            Ok(Frame::Envelope(env)) => env,
            Ok(Frame::Closed(code)) => bail!("closed with {code:?}"),
            Err(_) => return Ok(false),
        };
        if env.kind == Kind::System {
            return Ok(true);
        }
        let seq = env.seq.unwrap_or_default();
        ensure!(
            seq == self.seq + 1,
            "seq {seq} after {}: a gap or a duplicate",
            self.seq
        );
        self.seq = seq;
        self.ns.push(env.payload["n"].as_u64().unwrap_or(u64::MAX));
        Ok(true)
    }

    /// Reads for `span`.
    async fn read_for(&mut self, ws: &mut Ws, span: Duration) -> Result<()> {
        let end = tokio::time::Instant::now() + span;
        while tokio::time::Instant::now() < end {
            self.read(ws, Duration::from_millis(50)).await?;
        }
        Ok(())
    }

    /// Reads until every message up to `n` arrived.
    async fn read_until(&mut self, ws: &mut Ws, n: u64) -> Result<()> {
        let end = tokio::time::Instant::now() + WAIT;
        while (0..=n).any(|i| !self.ns.contains(&i)) {
            if tokio::time::Instant::now() > end {
                bail!(
                    "not every message up to {n} arrived; last seen {:?}",
                    self.ns.last()
                );
            }
            self.read(ws, Duration::from_millis(200)).await?;
        }
        Ok(())
    }

    /// Whether each sender's stream came whole, once and in order: the private messages (even
    /// `n`) and the channel messages (odd). Across the two there is no order to hold on a
    /// Redis Cluster: the node's topic and the channel's live on different masters, read over
    /// different connections, so a message published second can be read first.
    fn every_stream_whole_and_in_order(&self, sent: u64) -> bool {
        [0, 1].iter().all(|parity| {
            let got: Vec<u64> = self
                .ns
                .iter()
                .copied()
                .filter(|n| n % 2 == *parity)
                .collect();
            got == (0..sent).filter(|n| n % 2 == *parity).collect::<Vec<_>>()
        })
    }
}

/// Sends 50 messages per second to `client`, alternating private messages and messages to
/// `chan`, payload `{"n": i}`, until `stop`; returns how many it sent.
fn sender(
    im: ImClient,
    client: String,
    chan: String,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Result<u64>> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut n = 0;
        while !*stop.borrow() {
            tick.tick().await;
            let payload = json!({ "n": n });
            if n % 2 == 0 {
                im.send_message("backend", [&client], &payload, false)
                    .await?;
            } else {
                im.send_chan_message("backend", &chan, &payload, false)
                    .await?;
            }
            n += 1;
        }
        Ok(n)
    })
}

/// A client reads for a second under 50 messages per second, drops off (its TCP connection
/// ends without a close frame), stays away for `away`, comes back with `since` and reads on.
/// Returns the welcome of its return, what it saw, and how many messages were sent.
async fn drop_and_return(c: &Cluster, client: &str, away: Duration) -> Result<(Ws, Seen, u64)> {
    let chan = format!("{client}-room");
    c.im.join_chan(client, &chan).await?;
    let mut ws = c.connect(client).await?;
    let mut seen = Seen::default();
    seen.welcomed(&ws);
    let (stop_tx, stop) = watch::channel(false);
    let sending = sender(c.im.clone(), client.to_owned(), chan, stop);
    seen.read_for(&mut ws, Duration::from_secs(1)).await?;
    drop(ws);
    // The drop is the scenario itself, not a wait for something to happen.
    tokio::time::sleep(away).await;
    let url = c.im.prev_connect_server(client, json!(null))?;
    let mut ws = Ws::connect(&with_since(&url, &seen.epoch, seen.seq)).await?;
    seen.welcomed(&ws);
    if ws.recovered() == Some(true) {
        seen.read_for(&mut ws, Duration::from_millis(500)).await?;
    }
    stop_tx.send(true)?;
    let sent = sending.await??;
    if ws.recovered() == Some(true) {
        seen.read_until(&mut ws, sent - 1).await?;
    }
    Ok((ws, seen, sent))
}

async fn exactly_once_in_order_after(away: Duration, client: &str) -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let (ws, seen, sent) = drop_and_return(&c, client, away).await?;
    assert_eq!(ws.recovered(), Some(true), "{:?}", ws.welcome);
    assert!(
        seen.every_stream_whole_and_in_order(sent),
        "every message once, each sender's in order: {:?} of 0..{sent}",
        seen.ns
    );
    assert_eq!(
        c.nodes[0]
            .metric(&format!(
                "im_resumes_total{{node=\"{}\",result=\"recovered\"}}",
                c.nodes[0].id
            ))
            .await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_client_away_for_one_second_misses_nothing() -> Result<()> {
    exactly_once_in_order_after(Duration::from_secs(1), "away1").await
}

#[tokio::test]
async fn a_client_away_for_five_seconds_misses_nothing() -> Result<()> {
    exactly_once_in_order_after(Duration::from_secs(5), "away5").await
}

#[tokio::test]
async fn a_client_away_longer_than_its_window_is_told_too_old() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default().arg("--recovery-window-ms", 1000)).await?;
    let (ws, _, _) = drop_and_return(&c, "gone", Duration::from_secs(3)).await?;
    assert_eq!(ws.recovered(), Some(false));
    assert_eq!(ws.reason().as_deref(), Some("too_old"));
    assert!(c.nodes[0].metric("im_recovery_expired_total").await? >= 1);
    Ok(())
}

#[tokio::test]
async fn a_restarted_node_says_epoch_changed_and_nonsense_says_unknown() -> Result<()> {
    let mut c = Cluster::start(1, NodeOpts::default()).await?;
    let ws = c.connect("phoenix").await?;
    let (epoch, addr) = (ws.epoch(), c.nodes[0].addr);
    drop(ws);
    c.nodes[0].signal("TERM");
    c.nodes[0].wait_exit(WAIT).await?;
    c.nodes[0] =
        imtestkit::Node::start_at(&c.redis, NodeOpts::default(), &addr.to_string()).await?;

    let url = c.im.prev_connect_server("phoenix", json!(null))?;
    let ws = Ws::connect(&with_since(&url, &epoch, 0)).await?;
    assert_eq!(ws.recovered(), Some(false));
    assert_eq!(ws.reason().as_deref(), Some("epoch_changed"));
    assert_ne!(ws.epoch(), epoch);

    // A position the stream never reached, and a `since` that is not one.
    let beyond = with_since(
        &c.im.prev_connect_server("phoenix", json!(null))?,
        &ws.epoch(),
        99,
    );
    let nonsense = format!(
        "{}&since=yesterday",
        c.im.prev_connect_server("phoenix", json!(null))?
    );
    for url in [beyond, nonsense] {
        let ws = Ws::connect(&url).await?;
        assert_eq!(ws.recovered(), Some(false));
        assert_eq!(ws.reason().as_deref(), Some("unknown"));
    }
    // Without `since`, the welcome says nothing about recovery.
    let ws = c.connect("phoenix").await?;
    assert_eq!(ws.recovered(), None);
    Ok(())
}

#[tokio::test]
async fn receipts_say_buffered_while_the_receiver_is_inside_its_window() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default().arg("--recovery-window-ms", 1000)).await?;
    let mut sender = c.connect("sender").await?;
    let ws = c.connect("receiver").await?;
    let (epoch, seq) = (ws.epoch(), ws.welcome_seq());
    // Presence is written after the welcome: seen online first, its "offline" below can only
    // be the close having been handled, not the online record not yet written.
    wait_for("receiver online", WAIT, || async {
        c.im.has_online("receiver").await.ok()?.then_some(())
    })
    .await?;
    drop(ws);
    wait_for("receiver offline", WAIT, || async {
        (!c.im.has_online("receiver").await.ok()?).then_some(())
    })
    .await?;

    let report =
        c.im.send_message("sender", ["receiver"], &"while away", true)
            .await?;
    let receipt: ReceiptPayload = serde_json::from_value(sender.next_message().await?.payload)?;
    assert_eq!(
        (receipt.message_id.as_str(), receipt.status),
        (report.message_id.as_str(), ReceiptStatus::Buffered)
    );
    // Back in time: the message is there.
    let url = c.im.prev_connect_server("receiver", json!(null))?;
    let mut ws = Ws::connect(&with_since(&url, &epoch, seq)).await?;
    assert_eq!(ws.recovered(), Some(true));
    let env = ws.next_message().await?;
    assert_eq!(
        (env.id.as_deref(), env.seq),
        (Some(report.message_id.as_str()), Some(seq + 1))
    );
    drop(ws);

    // Once the window has run out, the receiver is offline. It opens first: right after the
    // drop the count may still be 0 because the close has not been handled yet.
    wait_for("the window opened", WAIT, || async {
        (c.nodes[0].metric("im_recovery_windows").await.ok()? == 1).then_some(())
    })
    .await?;
    wait_for("the window ran out", WAIT, || async {
        (c.nodes[0].metric("im_recovery_windows").await.ok()? == 0).then_some(())
    })
    .await?;
    c.im.send_message("sender", ["receiver"], &"too late", true)
        .await?;
    let receipt: ReceiptPayload = serde_json::from_value(sender.next_message().await?.payload)?;
    assert_eq!(receipt.status, ReceiptStatus::Offline);
    Ok(())
}

/// Ten clients drop off one after the other, each leaving about 2.4 KB in its buffer, on a
/// node that keeps at most 20,000 bytes: the oldest windows end first and the bound holds.
#[tokio::test]
async fn under_memory_pressure_the_oldest_windows_end_first() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default().arg("--recovery-max-bytes", 20_000)).await?;
    let node = &c.nodes[0];
    let text = "x".repeat(400);
    let mut positions = Vec::new();
    for i in 0..10 {
        let client = format!("p{i}");
        let mut ws = c.connect(&client).await?;
        let position = (ws.epoch(), ws.welcome_seq());
        for _ in 0..5 {
            c.im.send_message("backend", [&client], &text, false)
                .await?;
            ws.next_message().await?;
        }
        // Online first (presence is written after the welcome), so that offline below means
        // the close was handled and the window opened, in this order.
        wait_for("online", WAIT, || async {
            c.im.has_online(&client).await.ok()?.then_some(())
        })
        .await?;
        drop(ws);
        wait_for("in its window", WAIT, || async {
            (!c.im.has_online(&client).await.ok()?).then_some(())
        })
        .await?;
        positions.push(position);
    }
    node.wait_metric("im_recovery_evicted_total", 1).await?;
    wait_for("within the bound", WAIT, || async {
        (node.metric("im_recovery_bytes").await.ok()? <= 20_000).then_some(())
    })
    .await?;

    let resume = |i: usize| {
        let (epoch, seq) = positions[i].clone();
        let url =
            c.im.prev_connect_server(&format!("p{i}"), json!(null))
                .unwrap();
        with_since(&url, &epoch, seq)
    };
    let oldest = Ws::connect(&resume(0)).await?;
    assert_eq!(
        (oldest.recovered(), oldest.reason().as_deref()),
        (Some(false), Some("too_old"))
    );
    let mut newest = Ws::connect(&resume(9)).await?;
    assert_eq!(newest.recovered(), Some(true));
    for _ in 0..5 {
        assert_eq!(newest.next_message().await?.payload, json!(text));
    }
    Ok(())
}
