//! The wire contract between imclient, imserver and browsers: the commands a backend publishes
//! to a node, the envelopes a node pushes to a socket, the control frames a socket may send,
//! and the close codes. docs/PROTOCOL.md describes the same, with examples.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{ChanName, ClientId, NodeId};

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A private message from a backend.
    Message,
    /// A message to a channel's members.
    Channel,
    /// A message to every online client.
    Broadcast,
    /// Whether a message reached a receiver.
    Receipt,
    /// A business event pushed by a backend.
    Event,
    /// A frame from the node itself (welcome, pong).
    System,
}

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

/// The envelope id at the start of an envelope body (`{"id":"…",…}`) or of a frame
/// (`{"seq":N,"id":"…",…}`), as this crate writes them.
pub fn envelope_id(text: &str) -> Option<&str> {
    let rest = match text.strip_prefix("{\"seq\":") {
        Some(rest) => rest.split_once(',')?.1,
        None => text.strip_prefix('{')?,
    };
    let rest = rest.strip_prefix("\"id\":\"")?;
    rest.split_once('"').map(|(id, _)| id)
}

/// The envelope body of a frame: the frame without its `seq`.
pub fn unframe(frame: &str) -> Option<String> {
    let rest = frame.strip_prefix("{\"seq\":")?.split_once(',')?.1;
    Some(format!("{{{rest}"))
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

/// Delivery status of a message for one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    /// Queued to at least one open connection of the receiver.
    Delivered,
    /// The receiver had no open connection but is inside its recovery window: it gets the
    /// message if it comes back in time.
    Buffered,
    /// The receiver had no open connection.
    Offline,
}

/// The payload of a receipt envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptPayload {
    /// The message the receipt is about.
    pub message_id: String,
    /// The receiver.
    pub receiver: ClientId,
    /// What happened.
    pub status: ReceiptStatus,
}

/// Close every connection of a client, e.g. when the business signs it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kick {
    /// The client to disconnect.
    pub client: ClientId,
}

/// The common part of an envelope, serialized once per node and shared by every receiver. The
/// frame a socket receives is this with the per-client `seq` spliced in front: see [`frame`].
#[derive(Debug, Serialize)]
pub struct EnvelopeBody<'a> {
    /// Unique message id: the client de-duplicates on it.
    pub id: &'a str,
    /// What the envelope carries.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The sender, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a ClientId>,
    /// The channel, for channel messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chan: Option<&'a ChanName>,
    /// The business payload.
    pub payload: &'a RawValue,
    /// Send time, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// Serializes the shared part of an envelope.
pub fn envelope_body(body: &EnvelopeBody<'_>) -> String {
    // A struct of strings, numbers and raw JSON always serializes.
    serde_json::to_string(body).unwrap_or_else(|_| String::from("{}"))
}

/// The text frame for one receiver: `{"seq":N,` followed by the shared body without its `{`.
///
/// ```
/// let frame = imclient::contract::frame(7, r#"{"id":"m1","type":"message","payload":1,"ts":5}"#);
/// assert_eq!(frame, r#"{"seq":7,"id":"m1","type":"message","payload":1,"ts":5}"#);
/// ```
pub fn frame(seq: u64, body: &str) -> String {
    let rest = body.strip_prefix('{').unwrap_or(body);
    let mut out = String::with_capacity(rest.len() + 24);
    out.push_str("{\"seq\":");
    out.push_str(&seq.to_string());
    out.push(',');
    out.push_str(rest);
    out
}

/// An envelope as a socket client reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Per-client sequence number assigned by the home node (absent on system frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Unique message id (absent on system frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What it carries.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ClientId>,
    /// The channel, on channel messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chan: Option<ChanName>,
    /// The payload.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// Send time, milliseconds since the Unix epoch.
    #[serde(default)]
    pub ts: u64,
}

/// The payload of the `system` frames a node sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SystemEvent {
    /// First frame on every connection: the node has registered it and will push to it.
    Welcome {
        /// The client the token named.
        client: ClientId,
        /// The node that holds the connection.
        node: NodeId,
        /// Node-local connection id.
        conn: u64,
        /// Names the client's sequence stream on this node: it changes when the node restarts
        /// or when the client's recovery window ran out. Resume with `since=<epoch>:<seq>`.
        epoch: String,
        /// The last sequence number given to the client before this connection: live
        /// envelopes continue from here (after the replay, when one follows).
        #[serde(default)]
        seq: u64,
        /// How often the node pings, in milliseconds.
        heartbeat_ms: u64,
        /// Present when the connect URL asked to resume (`since`): whether every envelope
        /// after `since` follows this frame, in order, before any live one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Why the gap could not be filled, when `recovered` is false.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<RecoveryRefusal>,
    },
    /// Answer to a client's [`ClientFrame::Ping`].
    Pong,
    /// Envelopes meant for this client may never have reached the node (`reason`): the app
    /// must reload what it shows, as after a welcome with `recovered: false`. Sent to every
    /// connection when the node's Redis subscription comes back after it was lost, since what
    /// was published meanwhile went to no one.
    Missed {
        /// Why.
        reason: RecoveryRefusal,
    },
}

/// Why a resume could not be served: the app must reload what it shows from its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryRefusal {
    /// The node restarted since: its sequence streams are gone.
    EpochChanged,
    /// The client was away longer than its recovery window, or its buffer no longer holds
    /// everything it missed.
    TooOld,
    /// `since` is malformed, or names a position the node never reached.
    Unknown,
    /// The node lost its Redis subscription since: what was published meanwhile never
    /// reached it.
    RedisOutage,
}

impl RecoveryRefusal {
    /// Every refusal, for metrics and tests.
    pub const ALL: [RecoveryRefusal; 4] = [
        RecoveryRefusal::EpochChanged,
        RecoveryRefusal::TooOld,
        RecoveryRefusal::Unknown,
        RecoveryRefusal::RedisOutage,
    ];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryRefusal::EpochChanged => "epoch_changed",
            RecoveryRefusal::TooOld => "too_old",
            RecoveryRefusal::Unknown => "unknown",
            RecoveryRefusal::RedisOutage => "redis_outage",
        }
    }
}

/// Where a client resumes from: the `epoch` of its last welcome and the last `seq` it
/// processed, written `<epoch>:<seq>` in the connect URL's `since` parameter.
///
/// ```
/// use imclient::contract::ResumeFrom;
/// let from = ResumeFrom::parse("d8d815bb-3:41").unwrap();
/// assert_eq!((from.epoch.as_str(), from.seq), ("d8d815bb-3", 41));
/// assert_eq!(from.to_string(), "d8d815bb-3:41");
/// assert!(ResumeFrom::parse("no-seq").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeFrom {
    /// The epoch of the last welcome.
    pub epoch: String,
    /// The last sequence number processed.
    pub seq: u64,
}

impl ResumeFrom {
    /// Parses `<epoch>:<seq>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (epoch, seq) = text.rsplit_once(':')?;
        if epoch.is_empty() {
            return None;
        }
        Some(Self {
            epoch: epoch.to_owned(),
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for ResumeFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

/// A system frame as sent on the socket.
pub fn system_frame(event: &SystemEvent) -> String {
    let env = serde_json::json!({ "type": Kind::System, "payload": event });
    env.to_string()
}

/// The only text frames a client may send. Browsers cannot send WebSocket pings, so this is
/// how they check that the node is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Asks for a `pong` system frame.
    Ping,
}

/// Why a node closes a connection, with the WebSocket close code it sends. A client should
/// reconnect (with a fresh token) unless [`CloseCode::reconnect`] says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal close.
    Normal,
    /// 1001: the node is shutting down.
    GoingAway,
    /// 1008: the client sent a frame the protocol does not allow.
    PolicyViolation,
    /// 1009: the client sent a frame over the size limit.
    TooBig,
    /// 4000: nothing heard from the client within the heartbeat timeout.
    HeartbeatTimeout,
    /// 4001: the client did not read fast enough and its queue filled.
    SlowConsumer,
    /// 4002: the business disconnected the client (force_offline).
    Kicked,
    /// 4003: the client's home is now another node (one came back or was added): reconnect at
    /// once, without backoff, with a fresh URL.
    Moved,
}

impl CloseCode {
    /// Every close code, for documentation and tests.
    pub const ALL: [CloseCode; 8] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::PolicyViolation,
        CloseCode::TooBig,
        CloseCode::HeartbeatTimeout,
        CloseCode::SlowConsumer,
        CloseCode::Kicked,
        CloseCode::Moved,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::PolicyViolation => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::HeartbeatTimeout => 4000,
            CloseCode::SlowConsumer => 4001,
            CloseCode::Kicked => 4002,
            CloseCode::Moved => 4003,
        }
    }

    /// Short reason text sent in the close frame and used as a metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "node shutting down",
            CloseCode::PolicyViolation => "unexpected frame: this socket is push-only",
            CloseCode::TooBig => "frame too large",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::SlowConsumer => "slow consumer: queue full",
            CloseCode::Kicked => "disconnected by the application",
            CloseCode::Moved => "moved: reconnect now, to the client's new home node",
        }
    }

    /// Whether a client should reconnect after this close.
    pub fn reconnect(self) -> bool {
        !matches!(
            self,
            CloseCode::Kicked | CloseCode::PolicyViolation | CloseCode::TooBig
        )
    }

    /// The close code for a numeric code, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// What a node stores per online client in its presence hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// Open connections of the client on the node.
    pub conns: u32,
    /// Metadata from the token of its first connection.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
    /// When it came online, milliseconds since the Unix epoch.
    pub since: u64,
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

    #[test]
    fn envelope_ids_are_read_from_bodies_and_frames_and_frames_unframe_to_bodies() {
        let payload = RawValue::from_string(r#""x""#.into()).expect("json");
        let body = envelope_body(&EnvelopeBody {
            id: "m-7",
            kind: Kind::Message,
            from: None,
            chan: None,
            payload: &payload,
            ts: 1,
        });
        let framed = frame(42, &body);
        assert_eq!(envelope_id(&body), Some("m-7"));
        assert_eq!(envelope_id(&framed), Some("m-7"));
        assert_eq!(unframe(&framed).as_deref(), Some(body.as_str()));
        assert_eq!(envelope_id("{}"), None);
    }

    #[test]
    fn frame_is_valid_json_envelope() {
        let payload = RawValue::from_string("\"x\"".into()).expect("json");
        let from = ClientId::new("a").expect("id");
        let body = envelope_body(&EnvelopeBody {
            id: "m1",
            kind: Kind::Message,
            from: Some(&from),
            chan: None,
            payload: &payload,
            ts: 3,
        });
        let env: Envelope = serde_json::from_str(&frame(42, &body)).expect("parse");
        assert_eq!(env.seq, Some(42));
        assert_eq!(env.payload, serde_json::json!("x"));
        assert_eq!(env.from, Some(from));
    }

    #[test]
    fn close_codes_are_distinct() {
        let mut codes: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), CloseCode::ALL.len());
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
    }
}
