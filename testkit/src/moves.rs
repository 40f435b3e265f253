//! A client followed across its moves between nodes: its socket read until the test says
//! stop, a new socket taken (resuming from the last seq seen) whenever one is closed, and
//! everything it got recorded, so a test can check that nothing was lost, repeated or
//! reordered by a handover, a planned stop or a restart.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::watch;

use crate::ws::{Frame, Ws};

/// What one client's sockets received, across its reconnects. Envelopes are told apart by
/// their payload: `{"n": …}` for a private message, `{"k": …}` for a channel message.
#[derive(Debug, Default)]
pub struct Received {
    /// Private messages, by their `n`, in arrival order.
    pub private: Vec<u64>,
    /// Channel messages, by their `k`, in arrival order.
    pub chan: Vec<u64>,
    /// Every envelope's seq, in arrival order.
    pub seqs: Vec<u64>,
    /// Each reconnect, in order.
    pub resumes: Vec<Resume>,
    /// Close codes seen.
    pub closes: Vec<Option<u16>>,
}

impl Received {
    /// How far this falls short of `sent` private and `chan` channel messages, with its
    /// resumes and closes, for a failure message.
    pub fn shortfall(&self, sent: &[u64], chan: &[u64]) -> String {
        let missing: Vec<&u64> = sent.iter().filter(|n| !self.private.contains(n)).collect();
        format!(
            "private {}/{} (missing {missing:?}) chan {}/{} resumes {:?} closes {:?}",
            self.private.len(),
            sent.len(),
            self.chan.len(),
            chan.len(),
            self.resumes,
            self.closes
        )
    }
}

/// One reconnect of a followed client.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The node whose welcome it got.
    pub node: String,
    /// The welcome's `recovered`.
    pub recovered: Option<bool>,
    /// From the close to the new socket's welcome.
    pub after: Duration,
}

/// What every followed client received, by client id.
pub type Log = Arc<Mutex<HashMap<String, Received>>>;

/// The log, locked (a panic in another reader does not hide what was recorded).
pub fn received(log: &Log) -> MutexGuard<'_, HashMap<String, Received>> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Envelopes received so far by every followed client.
pub fn delivered(log: &Log) -> usize {
    received(log).values().map(|r| r.seqs.len()).sum()
}

/// Reads `client`'s socket until `stop` changes, recording into `log`. When the socket is
/// closed, `reconnect(close code, epoch, last seq)` gives the next one; it decides whether
/// that close was expected (an error ends the reader) and where to go.
pub async fn follow<F, Fut>(
    client: String,
    mut ws: Ws,
    log: Log,
    mut stop: watch::Receiver<bool>,
    mut reconnect: F,
) -> Result<()>
where
    F: FnMut(Option<u16>, String, u64) -> Fut,
    Fut: Future<Output = Result<Ws>>,
{
    let mut last_seq = ws.welcome_seq();
    loop {
        let frame = tokio::select! {
            f = ws.read(Duration::from_secs(30)) => f?,
            _ = stop.changed() => return Ok(()),
        };
        match frame {
            Frame::Envelope(env) => {
                let Some(seq) = env.seq else { continue };
                last_seq = seq;
                let mut log = received(&log);
                let got = log.entry(client.clone()).or_default();
                got.seqs.push(seq);
                if let Some(n) = env.payload["n"].as_u64() {
                    got.private.push(n);
                } else if let Some(k) = env.payload["k"].as_u64() {
                    got.chan.push(k);
                }
            }
            Frame::Closed(code) => {
                let closed_at = Instant::now();
                received(&log)
                    .entry(client.clone())
                    .or_default()
                    .closes
                    .push(code);
                ws = reconnect(code, ws.epoch(), last_seq).await?;
                let node = ws.welcome.payload["node"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                received(&log)
                    .entry(client.clone())
                    .or_default()
                    .resumes
                    .push(Resume {
                        node,
                        recovered: ws.recovered(),
                        after: closed_at.elapsed(),
                    });
            }
        }
    }
}

/// What `got` lacks, repeats or has out of order against `sent`, for a failure message.
pub fn differences(got: &[u64], sent: &[u64]) -> String {
    let missing: Vec<&u64> = sent.iter().filter(|n| !got.contains(n)).collect();
    let mut seen = std::collections::HashSet::new();
    let repeated: Vec<&u64> = got.iter().filter(|n| !seen.insert(**n)).collect();
    let out_of_order: Vec<(u64, u64)> = got
        .windows(2)
        .filter(|w| w[1] < w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    format!("missing {missing:?}, repeated {repeated:?}, out of order {out_of_order:?}")
}
