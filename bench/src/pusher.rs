//! The peer for side-by-side runs: a Pusher-protocol server (Sockudo). The same workloads go
//! through its WebSocket protocol (public channels) and its signed HTTP events API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::wire::{self, Flow, Socket};

/// A publish that takes longer than this has a dead connection behind it; giving up keeps the
/// send loop (which waits for each tick's publishes) from stalling for the rest of the run.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the peer's nodes listen and the app credentials they were configured with.
#[derive(Debug, Clone)]
pub struct Peer {
    /// WebSocket and HTTP address of each node.
    pub addrs: Vec<SocketAddr>,
    /// App id (HTTP API path).
    pub app_id: String,
    /// App key (WebSocket path, HTTP auth).
    pub key: String,
    /// App secret (HTTP signatures).
    pub secret: String,
}

impl Peer {
    /// The node that connection (or publisher slot) `i` uses: round robin, so the load splits
    /// evenly over the nodes as it does over imserver nodes.
    pub fn node(&self, i: usize) -> SocketAddr {
        self.addrs[i % self.addrs.len()]
    }
}

/// Opens a subscriber on `tcp` (connected to `addr`) and subscribes it to `channels`, waiting
/// for each confirmation.
pub async fn subscribe(
    peer: &Peer,
    addr: SocketAddr,
    tcp: TcpStream,
    channels: &[String],
) -> Result<Socket> {
    let path = format!("/app/{}?protocol=7&client=imbench&version=1.0", peer.key);
    let mut ws = Socket::upgrade(tcp, &addr.to_string(), &path).await?;
    let mut first = String::new();
    ws.read(|text| {
        first = String::from_utf8_lossy(text).into_owned();
        Flow::Stop
    })
    .await?;
    if !first.contains("pusher:connection_established") {
        bail!("the peer did not confirm the connection: {first}");
    }
    for channel in channels {
        let frame =
            serde_json::json!({ "event": "pusher:subscribe", "data": { "channel": channel } });
        ws.send_text(&frame.to_string()).await?;
    }
    let mut confirmed = 0;
    let mut refused = None;
    while confirmed < channels.len() {
        let open = ws
            .read(|text| {
                if wire::find_str(text, "subscription_succeeded") {
                    confirmed += 1;
                    return Flow::Stop;
                }
                if wire::find_str(text, "pusher:error")
                    || wire::find_str(text, "subscription_error")
                {
                    refused = Some(String::from_utf8_lossy(text).into_owned());
                    return Flow::Stop;
                }
                // Application pings can come before the confirmation on a busy server.
                pong_or(text, |_| {})
            })
            .await?;
        if let Some(refused) = refused {
            bail!("the peer refused a subscription: {refused}");
        }
        if !open {
            bail!("the peer closed the connection while subscribing");
        }
    }
    Ok(ws)
}

/// Answers the peer's application-level pings (the Pusher protocol's liveness check; a
/// client that does not answer is disconnected); runs `on_event` on every other frame.
pub fn pong_or(text: &[u8], mut on_event: impl FnMut(&[u8])) -> Flow {
    if wire::find_str(text, "\"pusher:ping\"") {
        return Flow::Reply(r#"{"event":"pusher:pong","data":{}}"#.to_owned());
    }
    on_event(text);
    Flow::Continue
}

/// An HTTP connection and the bytes read past the last response (also the api-send
/// workload's connection to the node's API).
pub(crate) struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: Vec::with_capacity(1024),
        }
    }
}

/// Publishes events through the HTTP API over a pool of connections, one request at a time on
/// each (as an HTTP client library's pool would); kept alive when the server allows it.
pub struct Publisher {
    peer: Peer,
    conns: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
}

impl Publisher {
    /// A publisher with `conns` connections (opened on first use), spread over the nodes.
    pub fn new(peer: Peer, conns: usize) -> Self {
        Self {
            peer,
            conns: (0..conns.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The peer it publishes to.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Publishes event `bench` with each `(channel, data)` (data: a JSON text): through the
    /// events API when there is one, else in one request to the batch_events API.
    pub async fn publish(&self, events: &[(String, String)]) -> Result<()> {
        let (path, body) = match events {
            [(channel, data)] => (
                format!("/apps/{}/events", self.peer.app_id),
                serde_json::json!({ "name": "bench", "channels": [channel], "data": data }),
            ),
            _ => (
                format!("/apps/{}/batch_events", self.peer.app_id),
                serde_json::json!({ "batch": events
                    .iter()
                    .map(|(channel, data)| serde_json::json!({
                        "name": "bench", "channel": channel, "data": data
                    }))
                    .collect::<Vec<_>>() }),
            ),
        };
        let body = body.to_string();
        let query = sign(&self.peer, "POST", &path, &body, now_secs());
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let addr = self.peer.node(slot);
        let request = format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut conn = self.conns[slot].lock().await;
        if conn.is_none() {
            // Sockudo closes the connection after every API response, so this runs once per
            // publish: spread over source addresses, as the subscribers are.
            let tcp = crate::open_tcp(addr, slot).await?;
            *conn = Some(Conn::new(tcp));
        }
        let c = conn.as_mut().context("no connection")?;
        let result = tokio::time::timeout(PUBLISH_TIMEOUT, exchange(c, request.as_bytes()))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no response in {PUBLISH_TIMEOUT:?}")));
        match result {
            Ok(keep_alive) => {
                if !keep_alive {
                    *conn = None;
                }
                Ok(())
            }
            Err(e) => {
                // The connection's state is unknown after an error: start over on a new one.
                *conn = None;
                Err(e)
            }
        }
    }
}

/// Writes a request and reads one response. Returns whether the server keeps the connection
/// open; fails on a non-2xx status.
pub(crate) async fn exchange(conn: &mut Conn, request: &[u8]) -> Result<bool> {
    conn.tcp.write_all(request).await?;
    loop {
        if let Some(response) = parse_response(&conn.buf)? {
            if !(200..300).contains(&response.status) {
                let text = String::from_utf8_lossy(&conn.buf[..response.len]);
                bail!("request refused: {}", text.trim_end());
            }
            conn.buf.drain(..response.len);
            return Ok(response.keep_alive);
        }
        if conn.buf.len() > 1 << 20 {
            bail!("HTTP response too long");
        }
        let mut chunk = [0u8; 4096];
        let n = conn.tcp.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the HTTP connection");
        }
        conn.buf.extend_from_slice(&chunk[..n]);
    }
}

/// A whole HTTP/1.1 response at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    /// Bytes of the buffer it takes (head and body).
    len: usize,
    keep_alive: bool,
}

/// The response at the start of `buf`, or `None` when more bytes are needed. Bodies are
/// delimited by Content-Length or chunked encoding; others are refused, since the connection is
/// reused and a body without a length would run into the next response.
fn parse_response(buf: &[u8]) -> Result<Option<Response>> {
    let Some(head_end) = find(buf, b"\r\n\r\n").map(|i| i + 4) else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {status_line:?}"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim() {
            "content-length" => length = Some(value.parse::<usize>().context("content-length")?),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => close = value.contains("close"),
            _ => {}
        }
    }
    let keep_alive = !close;
    let body_end = if chunked {
        match chunked_end(&buf[head_end..])? {
            Some(n) => head_end + n,
            None => return Ok(None),
        }
    } else if let Some(length) = length {
        head_end + length
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        head_end
    } else {
        bail!("HTTP response without a length: {status_line:?}");
    };
    Ok((buf.len() >= body_end).then_some(Response {
        status,
        len: body_end,
        keep_alive,
    }))
}

/// Length of a whole chunked body at the start of `body` (through the last chunk and the
/// trailer's blank line), or `None` when more bytes are needed.
fn chunked_end(body: &[u8]) -> Result<Option<usize>> {
    let mut at = 0;
    loop {
        let Some(line_end) = find(&body[at..], b"\r\n").map(|i| at + i) else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&body[at..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        at = line_end + 2;
        if size == 0 {
            // Trailer fields (usually none), then a blank line.
            loop {
                let Some(end) = find(&body[at..], b"\r\n").map(|i| at + i) else {
                    return Ok(None);
                };
                let blank = end == at;
                at = end + 2;
                if blank {
                    return Ok(Some(at));
                }
            }
        }
        if body.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The signed query string of the Pusher HTTP API: the auth parameters sorted by name, and
/// `auth_signature` = hex HMAC-SHA256(secret, "METHOD\nPATH\nsorted query").
pub fn sign(peer: &Peer, method: &str, path: &str, body: &str, timestamp: u64) -> String {
    let body_md5 = hex::encode(Md5::digest(body.as_bytes()));
    let query = format!(
        "auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={body_md5}",
        peer.key
    );
    let mut mac = match Hmac::<Sha256>::new_from_slice(peer.secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this cannot happen, and an unsigned request is
        // refused by the server, which the report then shows.
        Err(_) => return query,
    };
    mac.update(format!("{method}\n{path}\n{query}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    format!("{query}&auth_signature={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the Pusher HTTP API documentation's signing steps, recomputed.
    #[test]
    fn signature_is_hmac_of_method_path_and_sorted_query() {
        let peer = Peer {
            addrs: vec!["127.0.0.1:1".parse().expect("addr")],
            app_id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let query = sign(&peer, "POST", "/apps/3/events", body, 1353088179);
        assert!(
            query.starts_with("auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"),
            "{query}"
        );
        assert!(
            query.ends_with(
                "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
            ),
            "{query}"
        );
    }

    #[test]
    fn responses_are_delimited_by_length_or_chunks() -> Result<()> {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1";
        assert_eq!(
            parse_response(plain)?,
            Some(Response {
                status: 200,
                len: plain.len() - 8,
                keep_alive: true
            })
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{")?,
            None
        );
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Len")?, None);

        let chunked = b"HTTP/1.1 429 Too Many\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked)?,
            Some(Response {
                status: 429,
                len: chunked.len(),
                keep_alive: false
            })
        );
        assert_eq!(parse_response(&chunked[..chunked.len() - 2])?, None);

        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        Ok(())
    }
}
