//! Sending: a message to some clients (one publish per home node), a channel message (one
//! publish to the channel's topic) and a broadcast (one publish to every node), with the
//! reports of who took them. Message ids and send times are made here, and every payload is
//! held to the size limit before it goes out.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::client::ImClient;
use crate::contract::{Deliver, Fanout, Kind, NodeCommand, ReceiptResult, ReceiptStatus, Receipts};
use crate::error::{Error, Result};
use crate::ids::{ChanName, ClientId, NodeId};

/// What happened to a message, per home node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// The message id every receiver sees.
    pub message_id: String,
    /// One entry per home node the receivers live on.
    pub nodes: Vec<NodeReport>,
}

impl SendReport {
    /// Receivers whose home node was not running (nobody subscribed to its topic).
    pub fn unreachable(&self) -> impl Iterator<Item = &ClientId> {
        self.nodes
            .iter()
            .filter(|n| !n.taken)
            .flat_map(|n| n.receivers.iter())
    }
}

/// One node's share of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The node.
    pub node: NodeId,
    /// The receivers whose home it is.
    pub receivers: Vec<ClientId>,
    /// Whether a running node took the message (its topic had a subscriber).
    pub taken: bool,
}

/// What happened to a channel message or broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutReport {
    /// The message id every receiver sees.
    pub message_id: String,
    /// Nodes that took it (nodes with at least one online member, for a channel).
    pub nodes: u64,
}

impl ImClient {
    /// Pushes `payload` to every connection of each receiver. One PUBLISH per home node,
    /// pipelined, whatever the number of receivers. With `receipt`, the sender (if online) is
    /// pushed one receipt per receiver: delivered or offline.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let report = im.send_message("system", ["alice", "bob"], &"hello", false).await?;
    /// for node in &report.nodes {
    ///     tracing::info!("{}: {} receivers, taken: {}", node.node, node.receivers.len(), node.taken);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send_message<I, S, P>(
        &self,
        sender: &str,
        receivers: I,
        payload: &P,
        receipt: bool,
    ) -> Result<SendReport>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        P: Serialize + ?Sized,
    {
        self.send_message_with_id(&new_message_id(), sender, receivers, payload, receipt)
            .await
    }

    /// [`ImClient::send_message`] under a message id the caller chose. A send that failed may
    /// still have gone out (Redis ran the PUBLISH, its answer was lost): sent again under the
    /// same id, receivers drop the second copy, as clients de-duplicate on the id. Take the id
    /// from [`new_message_id`] at the first attempt and keep it with the request's retry key:
    /// ids from it are time-ordered, and pages may sort messages by id.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let id = imclient::new_message_id(); // kept for every retry of this send
    /// im.send_message_with_id(&id, "alice", ["bob"], &"hello", false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_message_with_id<I, S, P>(
        &self,
        message_id: &str,
        sender: &str,
        receivers: I,
        payload: &P,
        receipt: bool,
    ) -> Result<SendReport>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        P: Serialize + ?Sized,
    {
        let message_id = checked_message_id(message_id)?;
        let sender = ClientId::new(sender)?;
        let payload = self.encode_payload(payload)?;
        let mut by_node: BTreeMap<NodeId, Vec<ClientId>> = BTreeMap::new();
        for receiver in receivers {
            let client = ClientId::new(receiver.as_ref())?;
            let node = self.home_of(&client)?;
            let list = by_node.entry(node).or_default();
            if !list.contains(&client) {
                list.push(client);
            }
        }
        if by_node.is_empty() {
            return Err(Error::NoReceivers);
        }
        let receipt_node = if receipt {
            Some(self.home_node(sender.as_str())?)
        } else {
            None
        };
        let ts = now_ms();

        let mut pipe = redis::pipe();
        let mut nodes = Vec::with_capacity(by_node.len());
        for (node, to) in by_node {
            let cmd = NodeCommand::Deliver(Deliver {
                id: message_id.clone(),
                kind: Kind::Message,
                from: Some(sender.clone()),
                to,
                payload: &payload,
                ts,
                receipt_node: receipt_node.clone(),
            });
            pipe.add_command(
                self.keys()
                    .publish(&self.keys().node_topic(&node), serde_json::to_string(&cmd)?),
            );
            let NodeCommand::Deliver(d) = cmd else {
                unreachable!("built as Deliver")
            };
            nodes.push(NodeReport {
                node: node.clone(),
                receivers: d.to,
                taken: false,
            });
        }
        let mut conn = self.conn().await?;
        let counts: Vec<i64> = pipe.query_async(&mut conn).await?;
        for (report, subscribers) in nodes.iter_mut().zip(counts) {
            report.taken = subscribers > 0;
        }
        let report = SendReport { message_id, nodes };

        // Receivers on a node that is not running cannot be delivered; no node will say so,
        // so the sender's receipts for them come from here.
        if let Some(sender_node) = &receipt_node {
            let results: Vec<ReceiptResult> = report
                .unreachable()
                .map(|client| ReceiptResult {
                    client: client.clone(),
                    status: ReceiptStatus::Offline,
                })
                .collect();
            if !results.is_empty() {
                let cmd = NodeCommand::Receipts(Receipts {
                    to: sender,
                    message_id: report.message_id.clone(),
                    results,
                });
                let _: i64 = self
                    .keys()
                    .publish(
                        &self.keys().node_topic(sender_node),
                        serde_json::to_string(&cmd)?,
                    )
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(report)
    }

    /// Pushes `payload` to every online member of `chan` (leaving the sender out when
    /// `exclude_sender`). One PUBLISH to the channel's topic, whatever the member count.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let report = im.send_chan_message("alice", "room:lobby", &serde_json::json!({"text": "hi all"}), true).await?;
    /// tracing::info!("{} nodes have online members", report.nodes);
    /// # Ok(()) }
    /// ```
    pub async fn send_chan_message<P: Serialize + ?Sized>(
        &self,
        sender: &str,
        chan: &str,
        payload: &P,
        exclude_sender: bool,
    ) -> Result<FanoutReport> {
        self.send_chan_message_with_id(&new_message_id(), sender, chan, payload, exclude_sender)
            .await
    }

    /// [`ImClient::send_chan_message`] under a message id the caller chose, so that a retry of
    /// a send whose outcome is unknown shows once (see [`ImClient::send_message_with_id`]).
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let id = imclient::new_message_id(); // kept for every retry of this send
    /// im.send_chan_message_with_id(&id, "alice", "room:lobby", &"hi all", false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_chan_message_with_id<P: Serialize + ?Sized>(
        &self,
        message_id: &str,
        sender: &str,
        chan: &str,
        payload: &P,
        exclude_sender: bool,
    ) -> Result<FanoutReport> {
        let message_id = checked_message_id(message_id)?;
        let chan = ChanName::new(chan)?;
        let topic = self.keys().chan_topic(&chan);
        self.fanout(
            message_id,
            sender,
            Some(chan),
            topic,
            payload,
            exclude_sender,
        )
        .await
    }

    /// Pushes `payload` to every online client of every node: one PUBLISH (the original
    /// ImHelper's SendBroadcastMessage).
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// im.broadcast("system", &serde_json::json!({"text": "maintenance at 22:00"})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn broadcast<P: Serialize + ?Sized>(
        &self,
        sender: &str,
        payload: &P,
    ) -> Result<FanoutReport> {
        self.broadcast_with_id(&new_message_id(), sender, payload)
            .await
    }

    /// [`ImClient::broadcast`] under a message id the caller chose, so that a retry of a
    /// broadcast whose outcome is unknown shows once (see [`ImClient::send_message_with_id`]).
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// let id = imclient::new_message_id(); // kept for every retry of this broadcast
    /// im.broadcast_with_id(&id, "system", &"maintenance at 22:00").await?;
    /// # Ok(()) }
    /// ```
    pub async fn broadcast_with_id<P: Serialize + ?Sized>(
        &self,
        message_id: &str,
        sender: &str,
        payload: &P,
    ) -> Result<FanoutReport> {
        let message_id = checked_message_id(message_id)?;
        let topic = self.keys().broadcast_topic();
        self.fanout(message_id, sender, None, topic, payload, false)
            .await
    }

    async fn fanout<P: Serialize + ?Sized>(
        &self,
        message_id: String,
        sender: &str,
        chan: Option<ChanName>,
        topic: String,
        payload: &P,
        exclude_sender: bool,
    ) -> Result<FanoutReport> {
        let sender = ClientId::new(sender)?;
        let payload = self.encode_payload(payload)?;
        let fanout = Fanout {
            id: message_id.clone(),
            chan: chan.clone(),
            from: Some(sender),
            exclude_sender,
            payload: &payload,
            ts: now_ms(),
        };
        let cmd = if chan.is_some() {
            NodeCommand::Chan(fanout)
        } else {
            NodeCommand::Broadcast(fanout)
        };
        let mut conn = self.conn().await?;
        let nodes: u64 = self
            .keys()
            .publish(&topic, serde_json::to_string(&cmd)?)
            .query_async(&mut conn)
            .await?;
        Ok(FanoutReport { message_id, nodes })
    }

    /// `payload` as raw JSON, refused when it is over the size limit.
    fn encode_payload<P: Serialize + ?Sized>(&self, payload: &P) -> Result<Box<RawValue>> {
        let raw = serde_json::value::to_raw_value(payload)?;
        let size = raw.get().len();
        if size > self.max_payload_bytes() {
            return Err(Error::PayloadTooLarge {
                size,
                limit: self.max_payload_bytes(),
            });
        }
        Ok(raw)
    }
}

/// A new unique, time-ordered message id (UUIDv7, 32 hex digits).
pub fn new_message_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// `id` if it can serve as a message id: it goes into envelopes and clients compare it.
fn checked_message_id(id: &str) -> Result<String> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id.to_owned())
    } else {
        Err(Error::InvalidMessageId(id.to_owned()))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
