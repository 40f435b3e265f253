//! What a node and a browser say on the socket: the envelopes a node pushes (a body
//! serialized once per node, framed per client with its `seq`), the system frames (welcome,
//! pong, missed), receipt payloads, and the only frame a browser may send.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::resume::RecoveryRefusal;
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

impl Kind {
    /// The name an envelope's `type` carries.
    ///
    /// ```
    /// assert_eq!(imclient::contract::Kind::Channel.as_str(), "channel");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Channel => "channel",
            Kind::Broadcast => "broadcast",
            Kind::Receipt => "receipt",
            Kind::Event => "event",
            Kind::System => "system",
        }
    }
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

/// Serializes the shared part of an envelope: the same text as serde_json's serialization of
/// [`EnvelopeBody`], field for field, written out by hand.
///
/// Why by hand: the node builds one per message, and serde_json's string escaping, run over
/// ids that need none, was about 7% of a private delivery's instructions in the node.
///
/// ```
/// use imclient::contract::{EnvelopeBody, Kind, envelope_body};
/// let payload = serde_json::value::RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap();
/// let body = EnvelopeBody { id: "m1", kind: Kind::Message, from: None, chan: None, payload: &payload, ts: 5 };
/// assert_eq!(envelope_body(&body), r#"{"id":"m1","type":"message","payload":{"text":"hi"},"ts":5}"#);
/// ```
pub fn envelope_body(body: &EnvelopeBody<'_>) -> String {
    let payload = body.payload.get();
    let mut out = String::with_capacity(payload.len() + body.id.len() + 96);
    out.push_str("{\"id\":");
    push_json_str(&mut out, body.id);
    out.push_str(",\"type\":\"");
    out.push_str(body.kind.as_str());
    out.push('"');
    if let Some(from) = body.from {
        out.push_str(",\"from\":");
        push_json_str(&mut out, from.as_str());
    }
    if let Some(chan) = body.chan {
        out.push_str(",\"chan\":");
        push_json_str(&mut out, chan.as_str());
    }
    out.push_str(",\"payload\":");
    out.push_str(payload);
    out.push_str(",\"ts\":");
    out.push_str(itoa::Buffer::new().format(body.ts));
    out.push('}');
    out
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it: only when it has a
/// quote, a backslash or a control character, which ids rarely do.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // A string always serializes.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
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
    out.push_str(itoa::Buffer::new().format(seq));
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The hand-written body is serde_json's serialization of the struct, byte for byte,
    /// whatever its strings hold.
    #[test]
    fn envelope_bodies_are_what_serde_json_writes() {
        let payloads = [r#"{"t":1,"p":"x\"y"}"#, "null", r#""é\u0001""#, "[1,2]"];
        let ids = [
            "m1",
            "",
            "with \"quote\"",
            "back\\slash",
            "tab\there",
            "ü-ß",
            "\u{1}\u{1f}",
        ];
        let from = ClientId::new("alice").expect("id");
        let chan = ChanName::new("room-1").expect("chan");
        for (i, id) in ids.iter().enumerate() {
            for payload in payloads {
                let payload = RawValue::from_string(payload.into()).expect("json");
                let kinds = [
                    Kind::Message,
                    Kind::Channel,
                    Kind::Broadcast,
                    Kind::Receipt,
                    Kind::Event,
                    Kind::System,
                ];
                let body = EnvelopeBody {
                    id,
                    kind: kinds[i % kinds.len()],
                    from: (i % 2 == 0).then_some(&from),
                    chan: (i % 3 == 0).then_some(&chan),
                    payload: &payload,
                    ts: u64::MAX >> (i * 7),
                };
                let expected = serde_json::to_string(&body).expect("serializes");
                assert_eq!(envelope_body(&body), expected);
            }
        }
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
}
