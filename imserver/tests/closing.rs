//! Closing: once both Close frames have been exchanged the node ends the TCP connection at once
//! (RFC 6455 §5.5.1), whichever side closed first. (Shutdown with a thousand clients is in
//! shutdown.rs, a binary of its own, so that its load does not slow these timings.)

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

use std::time::{Duration, Instant};

use anyhow::Result;
use imclient::contract::CloseCode;
use imtestkit::{Cluster, NodeOpts, WAIT, raw_read_close, raw_upgrade};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How soon after the client's Close the connection must end.
const PROMPT: Duration = Duration::from_millis(50);

/// A masked client Close frame with `code`.
fn client_close(code: u16) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let payload = code.to_be_bytes();
    let mut frame = vec![0x88, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads until the node ends the connection; how long that took.
async fn until_end(tcp: &mut TcpStream) -> Result<Duration> {
    let start = Instant::now();
    let mut sink = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut sink)).await? {
            Ok(0) | Err(_) => return Ok(start.elapsed()),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn the_connection_ends_at_once_when_the_client_closes_first() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let url = c.im.prev_connect_server("leaver", json!(null))?;
    let mut tcp = raw_upgrade(c.nodes[0].addr, &url).await?;
    tcp.write_all(&client_close(1000)).await?;
    let sent = Instant::now();
    // The welcome, then the echo of our Close, then the end of the stream.
    assert_eq!(raw_read_close(&mut tcp, WAIT).await?, 1000);
    until_end(&mut tcp).await?;
    let took = sent.elapsed();
    assert!(
        took < PROMPT,
        "the node held the connection {took:?} after both Close frames"
    );
    Ok(())
}

#[tokio::test]
async fn the_connection_ends_at_once_when_the_client_answers_the_nodes_close() -> Result<()> {
    let c = Cluster::start(1, NodeOpts::default()).await?;
    let url = c.im.prev_connect_server("kicked", json!(null))?;
    let mut tcp = raw_upgrade(c.nodes[0].addr, &url).await?;
    c.im.force_offline("kicked").await?;
    assert_eq!(
        raw_read_close(&mut tcp, WAIT).await?,
        CloseCode::Kicked.code()
    );
    // A client answers the node's Close and then waits for the node to end the connection.
    tcp.write_all(&client_close(CloseCode::Kicked.code()))
        .await?;
    let answered = Instant::now();
    until_end(&mut tcp).await?;
    let took = answered.elapsed();
    assert!(
        took < PROMPT,
        "the node held the connection {took:?} after the client's Close"
    );
    Ok(())
}
