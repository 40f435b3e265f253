//! `welcome` means ready: a channel message sent the moment a client has its welcome reaches
//! it, and so does one sent the moment `join_chan` returns for an online client.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::time::Duration;

use anyhow::{Result, bail};
use imclient::contract::Kind;
use imtestkit::{Cluster, Frame, NodeOpts};
use serde_json::json;

/// How long a message may take before it counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(3);

/// The next channel message on `ws`, or an error naming what was lost.
async fn next_chan_message(ws: &mut imtestkit::Ws, what: &str) -> Result<serde_json::Value> {
    loop {
        match ws.read(LOST_AFTER).await {
            Ok(Frame::Envelope(env)) if env.kind == Kind::Channel => return Ok(env.payload),
            Ok(Frame::Envelope(_)) => {}
            Ok(Frame::Closed(code)) => bail!("closed with {code:?} before {what}"),
            Err(e) => bail!("{what} was lost: {e}"),
        }
    }
}

/// 500 rounds: a client that joined a channel while offline connects, and the backend sends to
/// the channel as soon as the welcome arrives. Every message must arrive. Each round has a
/// channel of its own, so each connect needs a fresh topic subscription.
#[tokio::test]
async fn a_member_that_joined_offline_gets_what_is_sent_the_moment_it_is_welcomed() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    for round in 0..500 {
        let (client, chan) = (format!("offline{round}"), format!("room{round}"));
        c.im.join_chan(&client, &chan).await?;
        let mut ws = c.connect(&client).await?;
        c.im.send_chan_message("backend", &chan, &json!(round), false)
            .await?;
        let got = next_chan_message(&mut ws, &format!("the message of round {round}")).await?;
        assert_eq!(got, json!(round));
    }
    Ok(())
}

/// 500 rounds: an online client joins a new channel and the backend sends to it the moment
/// `join_chan` returns. Every message must arrive. Two nodes, the client on the second, so the
/// join travels to another node than the one the test happens to talk to first.
#[tokio::test]
async fn an_online_client_gets_what_is_sent_the_moment_its_join_returns() -> Result<()> {
    let c = Cluster::start(2, NodeOpts::default()).await?;
    let client = c.client_on(1, "live");
    let mut ws = c.connect(&client).await?;
    for round in 0..500 {
        let chan = format!("live{round}");
        c.im.join_chan(&client, &chan).await?;
        c.im.send_chan_message("backend", &chan, &json!(round), false)
            .await?;
        let got = next_chan_message(&mut ws, &format!("the message of round {round}")).await?;
        assert_eq!(got, json!(round));
    }
    Ok(())
}

/// A join of a client whose home node is not running does not wait for an acknowledgement
/// that cannot come, and a join of an offline client on a running node returns at once too.
#[tokio::test]
async fn joins_that_no_node_acknowledges_do_not_hang() -> Result<()> {
    let mut c = Cluster::start(2, NodeOpts::default()).await?;
    let on_dead = c.client_on(1, "ghost");
    let offline = c.client_on(0, "away");
    c.nodes.truncate(1);
    let started = std::time::Instant::now();
    c.im.join_chan(&on_dead, "room").await?;
    c.im.join_chan(&offline, "room").await?;
    c.im.join_chan_many([&on_dead, &offline], "hall").await?;
    assert!(
        started.elapsed() < imclient::DEFAULT_JOIN_ACK_TIMEOUT,
        "joins waited {:?}",
        started.elapsed()
    );
    assert_eq!(c.im.chan_member_count("room").await?, 2);
    Ok(())
}

/// The harness finds the node binary by itself; here it must be the one cargo built for these
/// tests, or every test above would run some other build of the node.
#[test]
fn the_harness_runs_the_node_cargo_built_for_these_tests() -> Result<()> {
    assert_eq!(
        imtestkit::imserver_bin()?,
        std::path::Path::new(env!("CARGO_BIN_EXE_imserver"))
    );
    Ok(())
}
