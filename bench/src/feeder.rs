//! imbench's floor mode (`--floor-addr`): the clients connect to imfloor, each naming its index
//! and channel in its path, and the messages go to it as feed records on one TCP connection
//! (`imbench::floor::feed`), each carrying the envelope body a node would have built for it
//! (imclient's `envelope_body`, the same id, type, sender, channel, payload and time), so the
//! floor writes frames of the node's sizes and the latency is measured as against a node.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use imbench::floor::feed::{self, FEED_ACCEPTED, FEED_PATH, To};
use imclient::contract::{EnvelopeBody, Kind, envelope_body};
use imclient::{ChanName, ClientId};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::{Stats, Workload, chan_name, open_tcp, read_deliveries, wire};

/// The connection messages go to the floor on.
pub struct Feed {
    addr: SocketAddr,
    /// One writer at a time: records must not interleave.
    stream: Mutex<TcpStream>,
    /// The sender named in every envelope, as imbench names itself to imclient.
    sender: ClientId,
}

impl Feed {
    /// Opens the feed to the floor at `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot reach the floor at {addr}"))?;
        stream.set_nodelay(true)?;
        stream
            .write_all(format!("GET {FEED_PATH} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut answer = vec![0u8; FEED_ACCEPTED.len()];
        stream
            .read_exact(&mut answer)
            .await
            .context("the floor closed the feed")?;
        if answer != FEED_ACCEPTED {
            bail!(
                "the floor refused the feed: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(Self {
            addr,
            stream: Mutex::new(stream),
            sender: ClientId::new("bench")?,
        })
    }

    /// The floor's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `messages` (receiver: a client index or a channel; deliveries expected; payload)
    /// in one write.
    pub async fn send(
        &self,
        workload: Workload,
        messages: Vec<(u64, u64, serde_json::Value)>,
    ) -> Result<()> {
        let mut out = Vec::with_capacity(messages.len() * 256);
        for (to, _, payload) in messages {
            let index = u32::try_from(to).context("receiver index past u32")?;
            let (to, kind, chan) = match workload {
                Workload::Private => (To::Client(index), Kind::Message, None),
                _ => (
                    To::Chan(index),
                    Kind::Channel,
                    Some(ChanName::new(chan_name(to as usize))?),
                ),
            };
            let payload = RawValue::from_string(payload.to_string())?;
            let body = envelope_body(&EnvelopeBody {
                id: &imclient::new_message_id(),
                kind,
                from: Some(&self.sender),
                chan: chan.as_ref(),
                payload: &payload,
                ts: imclient::now_ms(),
            });
            feed::encode(&mut out, to, body.as_bytes())?;
        }
        self.stream.lock().await.write_all(&out).await?;
        Ok(())
    }
}

/// Connects client `i` to the floor at `addr`, a member of channel `chan`, and starts reading;
/// returns the floor's address. The floor answers the upgrade once the client is held, so it is
/// ready for messages when this returns.
pub async fn connect(
    addr: SocketAddr,
    i: usize,
    chan: Option<usize>,
    stats: Arc<Stats>,
) -> Result<String> {
    let path = match chan {
        Some(g) => format!("/client/{i}?chan={g}"),
        None => format!("/client/{i}"),
    };
    let ws = wire::Socket::upgrade(open_tcp(addr, i).await?, &addr.to_string(), &path).await?;
    read_deliveries(ws, i, stats);
    Ok(addr.to_string())
}
