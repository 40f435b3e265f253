//! WebSocket clients as a browser holds them (welcome first, then envelopes), and raw sockets
//! for clients that break the rules.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use imclient::contract::{Envelope, Kind};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::deadline::WAIT;

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client, as a browser would hold one.
#[derive(Debug)]
pub struct Ws {
    pub stream: Stream,
    pub welcome: Envelope,
}

/// What reading a socket produced.
#[derive(Debug)]
pub enum Frame {
    Envelope(Envelope),
    Closed(Option<u16>),
}

impl Ws {
    /// Connects and reads the welcome frame: after it, the node pushes to this socket.
    pub async fn connect(url: &str) -> Result<Self> {
        let (stream, _) = tokio_tungstenite::connect_async(url).await?;
        let mut ws = Self {
            stream,
            welcome: Envelope {
                seq: None,
                id: None,
                kind: Kind::System,
                from: None,
                chan: None,
                payload: serde_json::Value::Null,
                ts: 0,
            },
        };
        match ws.read(WAIT).await? {
            Frame::Envelope(env)
                if env.kind == Kind::System && env.payload["event"] == "welcome" =>
            {
                ws.welcome = env
            }
            other => bail!("expected welcome, got {other:?}"),
        }
        Ok(ws)
    }

    /// The welcome's `epoch`: the client's sequence stream.
    pub fn epoch(&self) -> String {
        self.welcome.payload["epoch"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The welcome's `seq`: the last sequence number given out before this connection.
    pub fn welcome_seq(&self) -> u64 {
        self.welcome.payload["seq"].as_u64().unwrap_or_default()
    }

    /// The welcome's `recovered`, when the connect asked to resume.
    pub fn recovered(&self) -> Option<bool> {
        self.welcome.payload["recovered"].as_bool()
    }

    /// The welcome's `reason`, when a resume was refused.
    pub fn reason(&self) -> Option<String> {
        self.welcome.payload["reason"].as_str().map(str::to_owned)
    }

    /// Tries to connect, returning the HTTP refusal status and body.
    pub async fn refused(url: &str) -> Result<(u16, String)> {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => bail!("connection was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Ok((resp.status().as_u16(), body))
            }
            Err(e) => bail!("unexpected error {e}"),
        }
    }

    /// Next envelope or close, skipping pings.
    pub async fn read(&mut self, deadline: Duration) -> Result<Frame> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let msg = tokio::time::timeout_at(end, self.stream.next())
                .await
                .map_err(|_| anyhow!("nothing received within {deadline:?}"))?;
            match msg {
                None => return Ok(Frame::Closed(None)),
                Some(Err(e)) => return Err(anyhow!("socket error: {e}")),
                Some(Ok(Message::Text(t))) => {
                    return Ok(Frame::Envelope(serde_json::from_str(&t)?));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Frame::Closed(frame.map(|f: CloseFrame| u16::from(f.code))));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Next envelope that is not a system frame.
    pub async fn next_message(&mut self) -> Result<Envelope> {
        loop {
            match self.read(WAIT).await? {
                Frame::Envelope(env) if env.kind == Kind::System => {}
                Frame::Envelope(env) => return Ok(env),
                Frame::Closed(code) => bail!("closed with {code:?} while waiting for a message"),
            }
        }
    }

    /// Reads until the socket closes, returning the close code.
    pub async fn closed(&mut self) -> Result<Option<u16>> {
        loop {
            if let Frame::Closed(code) = self.read(WAIT).await? {
                return Ok(code);
            }
        }
    }

    /// Reads raw frames off the TCP stream, bypassing the client library (which would answer
    /// queued pings first), until a close frame; returns its code. For a client that has been
    /// deliberately silent.
    pub async fn raw_close_code(&mut self) -> Result<u16> {
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = self.stream.get_mut() else {
            bail!("not plain TCP")
        };
        raw_read_close(tcp, WAIT).await
    }

    pub async fn send(&mut self, msg: Message) -> Result<()> {
        Ok(self.stream.send(msg).await?)
    }

    /// Whether nothing arrives within `quiet` (used only to assert absence).
    pub async fn silent_for(&mut self, quiet: Duration) -> bool {
        loop {
            match tokio::time::timeout(quiet, self.stream.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(_) => return false,
            }
        }
    }
}

/// Opens a WebSocket by hand on a plain TCP stream (for clients that break the rules): sends
/// the handshake for `url`, reads the 101 answer and returns the stream, positioned after it.
pub async fn raw_upgrade(addr: SocketAddr, url: &str) -> Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let path = &url[url.find("/ws").ok_or_else(|| anyhow!("no /ws in {url}"))?..];
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    // Byte by byte, so nothing after the answer's head is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = tokio::time::timeout(WAIT, tcp.read_u8()).await??;
        head.push(b);
    }
    let text = String::from_utf8_lossy(&head);
    anyhow::ensure!(text.starts_with("HTTP/1.1 101 "), "not upgraded: {text}");
    Ok(tcp)
}

/// Reads server frames off a raw stream until a close frame; returns its code.
pub async fn raw_read_close(
    tcp: &mut (impl tokio::io::AsyncRead + Unpin),
    deadline: Duration,
) -> Result<u16> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    loop {
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => (
                    usize::try_from(u64::from_be_bytes(buf[2..10].try_into()?))?,
                    10,
                ),
                126 | 127 => break,
                n => (usize::from(n), 2),
            };
            if buf.len() < head + len {
                break;
            }
            if opcode == 0x8 {
                anyhow::ensure!(len >= 2, "close frame without a code");
                return Ok(u16::from_be_bytes([buf[head], buf[head + 1]]));
            }
            buf.drain(..head + len);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(end, tcp.read(&mut chunk))
            .await
            .map_err(|_| anyhow!("no close frame within {deadline:?}"))??;
        if n == 0 {
            bail!("connection ended without a close frame");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `url` asking to resume after `seq` of stream `epoch`.
pub fn with_since(url: &str, epoch: &str, seq: u64) -> String {
    format!("{url}&since={epoch}%3A{seq}")
}
