//! The commands that travel between backends and nodes on Redis topics: what a backend
//! publishes to a node (deliver, receipts, kick, join, leave), to a channel's or the broadcast
//! topic (fan-outs, a deleted channel), and what one node passes to another when a client moves
//! (handover, forward), and what a node announces on the node-set topic when it starts or
//! stops. The node never parses a payload: it stays raw JSON.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::frame::{Kind, ReceiptStatus};
use crate::ids::{ChanName, ClientId, NodeId};

/// A command published by a backend on a node's topic. Externally tagged (`{"deliver":{…}}`)
/// so that the payload can stay raw JSON: the node never parses it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeCommand<'a> {
    /// Push one message to local receivers.
    #[serde(borrow)]
    Deliver(Deliver<'a>),
    /// Tell a sender whether its message reached each receiver.
    Receipts(Receipts),
    /// Close every connection of a client.
    Kick(Kick),
    /// A message to the local members of a channel (on the channel's topic).
    #[serde(borrow)]
    Chan(Fanout<'a>),
    /// A message to every local client (on the broadcast topic).
    #[serde(borrow)]
    Broadcast(Fanout<'a>),
    /// A client joined a channel; sent to its home node after the durable write.
    Join(Membership),
    /// A client left a channel; sent to its home node after the durable write.
    Leave(Membership),
    /// A channel was deleted (on the channel's topic): drop every local membership.
    ChanDeleted(ChanDeleted),
    /// A client's sequence stream and recent envelopes, sent by the node it is moving away
    /// from to its new home (on the new home's topic), so that its resume works there.
    Handover(Handover),
    /// An envelope for a client that moved away, passed on by the node it left to its new
    /// home, which numbers and pushes it.
    #[serde(borrow)]
    Forward(Forward<'a>),
}

/// One message for many receivers that the node finds itself: a channel's local members, or
/// every local client.
#[derive(Debug, Serialize, Deserialize)]
pub struct Fanout<'a> {
    /// Unique message id.
    pub id: String,
    /// The channel, for channel messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chan: Option<ChanName>,
    /// Who sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ClientId>,
    /// Leave the sender out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_sender: bool,
    /// The business payload.
    #[serde(borrow)]
    pub payload: &'a RawValue,
    /// When the backend sent it, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// A membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The client.
    pub client: ClientId,
    /// The channel.
    pub chan: ChanName,
    /// On a join: the list ([`crate::keys::Keys::ack`]) the node pushes the client id to once
    /// a channel message published from then on reaches the client (the channel's topic is
    /// subscribed), or at once when the client is not on the node. On a leave (sent with one
    /// on a Redis Cluster only): pushed once the leave is applied, so that a channel message
    /// published from then on, through another master, cannot overtake it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
}

/// A moving client's stream, for its new home.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    /// The client.
    pub client: ClientId,
    /// Its sequence stream (the `epoch` of its welcomes).
    pub stream: String,
    /// The last sequence number given out in the stream.
    pub seq: u64,
    /// The sequence number of the first of `frames`; the others follow one by one.
    pub first: u64,
    /// The frames kept for recovery, oldest first, exactly as pushed.
    pub frames: Vec<Box<RawValue>>,
}

/// An envelope passed on to a moved client's new home.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forward<'a> {
    /// The client.
    pub client: ClientId,
    /// The envelope body, without `seq`.
    #[serde(borrow)]
    pub envelope: &'a RawValue,
}

/// A deleted channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChanDeleted {
    /// The channel.
    pub chan: ChanName,
}

/// One message for some receivers on one node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Deliver<'a> {
    /// Unique message id, shared by every receiver's copy.
    pub id: String,
    /// Envelope kind.
    pub kind: Kind,
    /// Who sent it, if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ClientId>,
    /// The receivers whose home is this node.
    pub to: Vec<ClientId>,
    /// The business payload, any JSON.
    #[serde(borrow)]
    pub payload: &'a RawValue,
    /// When the backend sent it, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Where the sender lives, when it asked for receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_node: Option<NodeId>,
}

/// Delivery results for one message, sent to the sender's home node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipts {
    /// The sender that asked for receipts.
    pub to: ClientId,
    /// The message they are about.
    pub message_id: String,
    /// One result per receiver.
    pub results: Vec<ReceiptResult>,
}

/// Whether one receiver got a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptResult {
    /// The receiver.
    pub client: ClientId,
    /// What happened.
    pub status: ReceiptStatus,
}

/// Close every connection of a client, e.g. when the business signs it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kick {
    /// The client to disconnect.
    pub client: ClientId,
}

/// What a node announces on the node-set topic (`p:nodeset`) when it starts, stops or purges
/// a dead peer: whoever follows the live set reads the leases again at once.
///
/// ```
/// use imclient::{NodeId, contract::NodeAnnouncement};
/// let leaving = NodeAnnouncement {
///     node: NodeId::new("ws://127.0.0.1:6001").unwrap(),
///     live: false,
///     handing_over: Some("0193a1b2c3".into()),
/// };
/// let text = serde_json::to_string(&leaving).unwrap();
/// assert_eq!(text, r#"{"node":"ws://127.0.0.1:6001","live":false,"handing_over":"0193a1b2c3"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnnouncement {
    /// The node that came or went.
    pub node: NodeId,
    /// Whether it holds its lease now.
    pub live: bool,
    /// Set by a node that stops on purpose: the epoch (run id) of the node, whose clients'
    /// streams it is handing to the nodes that win them now. Those nodes keep what arrives
    /// for such a client until its stream does, and a client resuming a stream of that run
    /// waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handing_over: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_round_trips_with_raw_payload() {
        let payload = RawValue::from_string(r#"{"text":"hi","n":[1,2]}"#.into()).expect("json");
        let cmd = NodeCommand::Deliver(Deliver {
            id: "m1".into(),
            kind: Kind::Message,
            from: Some(ClientId::new("a").expect("id")),
            to: vec![ClientId::new("b").expect("id")],
            payload: &payload,
            ts: 9,
            receipt_node: None,
        });
        let text = serde_json::to_string(&cmd).expect("serialize");
        let back: NodeCommand<'_> = serde_json::from_str(&text).expect("parse");
        match back {
            NodeCommand::Deliver(d) => assert_eq!(d.payload.get(), r#"{"text":"hi","n":[1,2]}"#),
            other => panic!("unexpected {other:?}"),
        }
    }
}
