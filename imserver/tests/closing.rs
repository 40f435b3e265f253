//! Closing: once both Close frames have been exchanged the node ends the TCP connection at once
//! (RFC 6455 §5.5.1), whichever side closed first, and a graceful shutdown with a thousand
//! clients takes a fraction of a second.

#![allow(clippy::unwrap_used)] // test helpers: a panic is a failed test

mod fixture;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fixture::{Cluster, NodeOpts, WAIT, Ws, raw_read_close, raw_upgrade};
use futures_util::StreamExt as _;
use imclient::contract::CloseCode;
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

#[tokio::test]
async fn sigterm_with_a_thousand_clients_finishes_well_under_a_second() -> Result<()> {
    const CLIENTS: usize = 1000;
    let mut c = Cluster::start(1, NodeOpts::default()).await?;
    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let ws = Ws::connect(&c.im.prev_connect_server(&format!("t{i}"), json!(null))?).await?;
        // Each client reads on (answering the Close, as a browser does) until the end.
        readers.push(tokio::spawn(async move {
            let mut stream = ws.stream;
            let mut code = None;
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) => {
                        code = frame.map(|f| u16::from(f.code));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            code
        }));
    }
    c.nodes[0].wait_metric("im_clients", CLIENTS as u64).await?;

    let started = Instant::now();
    c.nodes[0].signal("TERM");
    if !c.nodes[0].wait_exit(WAIT).await? {
        bail!("the node did not exit cleanly");
    }
    let took = started.elapsed();
    let mut going_away = 0;
    for reader in readers {
        if reader.await? == Some(CloseCode::GoingAway.code()) {
            going_away += 1;
        }
    }
    assert_eq!(going_away, CLIENTS, "every client was told 1001");
    assert!(took < Duration::from_millis(800), "shutdown took {took:?}");
    Ok(())
}
