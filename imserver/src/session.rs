//! One WebSocket connection, on the TCP stream it owns: a single loop over inbound frames, the
//! outbound queue, the heartbeat tick and close requests, with one exit: unregister, then close
//! once with a reason.
//!
//! Why the session owns the socket rather than going through an HTTP response body: queued
//! frames leave in one vectored write per batch, with one task wake per delivery instead of
//! two, and an idle connection holds no buffers at all (see docs/DESIGN.md, "Owning the
//! socket"). Frame parsing is actix-http's.

use std::collections::VecDeque;
use std::io;

use actix_http::ws::{OpCode, Parser};
use actix_ws::{CloseReason, ProtocolError};
use bytes::BytesMut;
use imclient::ClientId;
use imclient::contract::{ClientFrame, CloseCode, SystemEvent, system_frame};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tracing::Instrument as _;

use crate::hub::Registration;
use crate::ip_limit::IpSlot;
use crate::node::Node;
use crate::outbox::{self, Frame, Outbox};

/// How long closing may take (the close frame, then the client's answer) before the socket is
/// dropped anyway.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Room reserved for a read when the inbound buffer is empty: client frames are small.
const READ_CHUNK: usize = 512;

/// The longest header a client frame can have: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEAD: usize = 14;

/// How the loop ended.
enum Exit {
    /// The node closes the connection with this code.
    Close(CloseCode),
    /// The client sent a close frame (with this reason, if any); answer it.
    ClientClosed(Option<CloseReason>),
    /// The connection is gone; nothing more can be sent.
    Lost,
}

/// Runs the connection until it closes, in a span with the node, client and connection ids.
/// `early` holds bytes the client sent right behind its handshake; `ip_slot` counts the
/// connection against its address's limit until it ends.
pub async fn run(
    node: Node,
    client: ClientId,
    stream: TcpStream,
    early: BytesMut,
    reg: Registration,
    ip_slot: Option<IpSlot>,
) {
    let span =
        tracing::debug_span!("session", node = %node.id(), client = %client, conn = reg.id.0);
    serve(node, client, stream, early, reg)
        .instrument(span)
        .await;
    drop(ip_slot);
}

async fn serve(
    node: Node,
    client: ClientId,
    socket: TcpStream,
    early: BytesMut,
    reg: Registration,
) {
    let limits = node.limits().clone();
    let outbox = &*reg.outbox;
    let mut inbound = Inbound::new(early, limits.max_inbound_frame_bytes);
    // Frames claimed from the outbox and not yet fully written.
    let mut in_flight = VecDeque::new();
    let mut heartbeat = interval_at(
        Instant::now() + limits.heartbeat_interval,
        limits.heartbeat_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();

    let exit = 'session: loop {
        // Messages the client pipelined behind its handshake, or left over from the last read.
        loop {
            match inbound.next_message() {
                Ok(Some(msg)) => {
                    if let Some(exit) = answer(msg, outbox) {
                        break 'session exit;
                    }
                }
                Ok(None) => break,
                Err(code) => break 'session Exit::Close(code),
            }
        }
        if let Some(code) = outbox.close_requested() {
            break Exit::Close(code);
        }
        // Write what is queued. A client that does not read blocks the write; stay
        // responsive to close requests meanwhile, and give up on a client that has not read
        // for as long as a silent one is given.
        while outbox.take_queued(&mut in_flight) {
            let stalled_since = Instant::now();
            loop {
                tokio::select! {
                    biased;
                    _ = outbox.wait() => {
                        if let Some(code) = outbox.close_requested() {
                            break 'session Exit::Close(code);
                        }
                    }
                    _ = heartbeat.tick() => {
                        if stalled_since.elapsed() > limits.heartbeat_timeout {
                            break 'session Exit::Close(CloseCode::HeartbeatTimeout);
                        }
                    }
                    sent = outbox::write_all(&socket, &mut in_flight) => {
                        if sent.is_err() {
                            break 'session Exit::Lost;
                        }
                        break;
                    }
                }
            }
        }

        tokio::select! {
            biased;
            // Frames were queued or a close was requested: both handled above.
            _ = outbox.wait() => {}
            ready = read_ready(&socket) => {
                if ready.is_err() {
                    break Exit::Lost;
                }
                match inbound.fill(&socket) {
                    Ok(0) => break Exit::Lost,
                    Ok(_) => last_heard = Instant::now(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break Exit::Lost,
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > limits.heartbeat_timeout {
                    break Exit::Close(CloseCode::HeartbeatTimeout);
                }
                outbox.queue_control(Frame::ping());
            }
        }
    };

    node.hub().unregister(&client, reg.id);
    // What is left: the rest of a frame being written must go before anything else.
    in_flight.extend(outbox.shut());
    let (reason, answered) = match exit {
        Exit::Close(code) => {
            node.metrics().closed(code);
            tracing::debug!(code = code.code(), reason = code.reason(), "closing");
            let reason = CloseReason {
                code: code.code().into(),
                description: Some(code.reason().to_owned()),
            };
            (Some(reason), false)
        }
        // Echo the client's code, as RFC 6455 asks.
        Exit::ClientClosed(reason) => {
            let reason = reason.map(|r| CloseReason {
                code: r.code,
                description: None,
            });
            (reason, true)
        }
        Exit::Lost => return,
    };
    let _ = timeout(
        CLOSE_TIMEOUT,
        close(&socket, in_flight, reason, answered, inbound),
    )
    .await;
}

/// Waits until the socket has something to read. Through `poll_read_ready` rather than
/// `readable()`: it takes over the socket's reader waker slot, which otherwise keeps the
/// finished handshake task (about 2.4 KiB) alive for as long as the connection lives.
async fn read_ready(socket: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| socket.poll_read_ready(cx)).await
}

/// Answers one client message, queueing any reply; returns how the session ends, if it does.
fn answer(msg: InboundMessage, outbox: &Outbox) -> Option<Exit> {
    match msg {
        InboundMessage::Text(text) => match serde_json::from_slice::<ClientFrame>(&text) {
            Ok(ClientFrame::Ping) => {
                let pong = system_frame(&SystemEvent::Pong);
                outbox.queue_control(Frame::text(pong));
                None
            }
            Err(_) => Some(Exit::Close(CloseCode::PolicyViolation)),
        },
        InboundMessage::Ping(payload) => {
            outbox.queue_control(Frame::pong(payload.freeze()));
            None
        }
        InboundMessage::Pong => None,
        InboundMessage::Close(reason) => Some(Exit::ClientClosed(reason)),
    }
}

/// Writes what is still queued and the close frame. When the client closed first, both Close
/// frames have now been exchanged and the connection ends at once (RFC 6455 §5.5.1). Otherwise
/// the write side is shut (the client reads our Close, then the end of the stream) and the
/// client's Close or hang-up is awaited, so that unread input does not turn our close into a
/// reset that could destroy the Close frame on its way. A client that keeps sending anything
/// else is read and discarded, never buffered, until the caller's deadline.
async fn close(
    socket: &TcpStream,
    mut frames: VecDeque<Frame>,
    reason: Option<CloseReason>,
    answered: bool,
    mut inbound: Inbound,
) {
    frames.push_back(Frame::close(reason));
    if outbox::write_all(socket, &mut frames).await.is_err() || answered {
        return;
    }
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
    // Parse what arrives until the client's Close; once it breaks the rules, just discard.
    let mut parsing = true;
    let mut sink = [0u8; 512];
    loop {
        if parsing {
            loop {
                match inbound.next_message() {
                    Ok(Some(InboundMessage::Close(_))) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        parsing = false;
                        inbound = Inbound::new(BytesMut::new(), 0);
                        break;
                    }
                }
            }
        }
        if read_ready(socket).await.is_err() {
            return;
        }
        let read = if parsing {
            inbound.fill(socket)
        } else {
            socket.try_read(&mut sink)
        };
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
enum InboundMessage {
    Text(BytesMut),
    Ping(BytesMut),
    Pong,
    Close(Option<CloseReason>),
}

/// The inbound half: buffers what was read and cuts it into messages, joining continuation
/// frames and holding every message to the size limit.
struct Inbound {
    buf: BytesMut,
    /// A text message whose continuation frames are still coming.
    partial: Option<BytesMut>,
    max: usize,
}

impl Inbound {
    fn new(early: BytesMut, max: usize) -> Self {
        Self {
            buf: early,
            partial: None,
            max,
        }
    }

    /// Reads what the socket has without waiting; the byte count, 0 at end of stream.
    fn fill(&mut self, stream: &TcpStream) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        stream.try_read_buf(&mut self.buf)
    }

    /// Refuses the frame at the front of the buffer as soon as its header shows it breaks the
    /// rules: a data frame (or the message it continues) over the limit, a control frame that
    /// is fragmented or over 125 bytes.
    fn check_header(&self) -> Result<(), CloseCode> {
        let buf = &self.buf[..];
        let (Some(&first), Some(&second)) = (buf.first(), buf.get(1)) else {
            return Ok(());
        };
        let fin = first & 0x80 != 0;
        let control = first & 0x08 != 0;
        let announced = match second & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => u64::from(u16::from_be_bytes([b[0], b[1]])),
                None => return Ok(()),
            },
            127 => match buf.get(2..10) {
                Some(b) => u64::from_be_bytes(b.try_into().unwrap_or([0xff; 8])),
                None => return Ok(()),
            },
            n => u64::from(n),
        };
        if control {
            // RFC 6455 §5.5: control frames are never fragmented and carry at most 125 bytes.
            return if fin && announced <= 125 {
                Ok(())
            } else {
                Err(CloseCode::PolicyViolation)
            };
        }
        let so_far = self.partial.as_ref().map_or(0, |p| p.len() as u64);
        if so_far.saturating_add(announced) > self.max as u64 {
            return Err(CloseCode::TooBig);
        }
        Ok(())
    }

    /// The next complete message in the buffer, if any; a close code when the client broke
    /// the rules.
    fn next_message(&mut self) -> Result<Option<InboundMessage>, CloseCode> {
        loop {
            if self.buf.is_empty() {
                // Release the buffer: an idle connection should hold none.
                if self.buf.capacity() > 0 {
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            }
            // The parser holds a frame to the size limit only once all of it has arrived; a
            // client announcing a huge frame could make it buffer without end. Judge the
            // frame by its header first.
            self.check_header()?;
            let frame = match Parser::parse(&mut self.buf, true, self.max) {
                Ok(Some(frame)) => frame,
                // An incomplete frame longer than any frame the limit allows: refuse it
                // whatever its header said.
                Ok(None) if self.buf.len() > self.max.max(125) + MAX_HEAD => {
                    return Err(CloseCode::TooBig);
                }
                Ok(None) => return Ok(None),
                Err(ProtocolError::Overflow) => return Err(CloseCode::TooBig),
                Err(e) => {
                    tracing::debug!(error = %e, "protocol error");
                    return Err(CloseCode::PolicyViolation);
                }
            };
            let (fin, opcode, payload) = frame;
            let payload = payload.unwrap_or_default();
            match opcode {
                OpCode::Text if self.partial.is_none() => {
                    if fin {
                        return Ok(Some(InboundMessage::Text(payload)));
                    }
                    self.partial = Some(payload);
                }
                OpCode::Continue => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(CloseCode::PolicyViolation);
                    };
                    if partial.len() + payload.len() > self.max {
                        return Err(CloseCode::TooBig);
                    }
                    partial.extend_from_slice(&payload);
                    if fin {
                        let text = self.partial.take().unwrap_or_default();
                        return Ok(Some(InboundMessage::Text(text)));
                    }
                }
                OpCode::Ping => return Ok(Some(InboundMessage::Ping(payload))),
                OpCode::Pong => return Ok(Some(InboundMessage::Pong)),
                OpCode::Close => {
                    return match Parser::try_parse_close_payload(&payload) {
                        Ok(reason) => Ok(Some(InboundMessage::Close(reason))),
                        Err(_) => Err(CloseCode::PolicyViolation),
                    };
                }
                // Binary frames, a new text message inside another, reserved opcodes.
                _ => return Err(CloseCode::PolicyViolation),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        Parser::write_message(&mut buf, payload, opcode, fin, true);
        buf
    }

    #[test]
    fn continuation_frames_are_joined_and_held_to_the_limit() {
        let mut buf = client_frame(OpCode::Text, false, b"{\"type\":");
        buf.extend_from_slice(&client_frame(OpCode::Continue, true, b"\"ping\"}"));
        let mut inbound = Inbound::new(buf, 64);
        assert_eq!(
            inbound.next_message(),
            Ok(Some(InboundMessage::Text(BytesMut::from(
                &b"{\"type\":\"ping\"}"[..]
            ))))
        );
        assert_eq!(inbound.next_message(), Ok(None));

        let mut buf = client_frame(OpCode::Text, false, &[b'x'; 40]);
        buf.extend_from_slice(&client_frame(OpCode::Continue, true, &[b'x'; 40]));
        let mut inbound = Inbound::new(buf, 64);
        assert_eq!(inbound.next_message(), Err(CloseCode::TooBig));
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        // A text frame announcing 2^40 bytes: header and mask only, no payload yet.
        let mut head = BytesMut::from(&[0x81u8, 0xff][..]);
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            Inbound::new(head, 1024).next_message(),
            Err(CloseCode::TooBig)
        );
        // 16-bit length, just over the limit.
        let mut head = BytesMut::from(&[0x81u8, 0xfe][..]);
        head.extend_from_slice(&1025u16.to_be_bytes());
        assert_eq!(
            Inbound::new(head, 1024).next_message(),
            Err(CloseCode::TooBig)
        );
        // A continuation that would take the message over the limit, before it arrives.
        let mut buf = client_frame(OpCode::Text, false, &[b'x'; 1000]);
        let mut next = BytesMut::from(&[0x80u8, 0xfe][..]);
        next.extend_from_slice(&100u16.to_be_bytes());
        buf.extend_from_slice(&next);
        assert_eq!(
            Inbound::new(buf, 1024).next_message(),
            Err(CloseCode::TooBig)
        );
    }

    #[test]
    fn control_frames_must_be_whole_and_small() {
        let fragmented_ping = client_frame(OpCode::Ping, false, b"x");
        assert_eq!(
            Inbound::new(fragmented_ping, 1024).next_message(),
            Err(CloseCode::PolicyViolation)
        );
        let mut big_ping = BytesMut::from(&[0x89u8, 0xfe][..]);
        big_ping.extend_from_slice(&126u16.to_be_bytes());
        assert_eq!(
            Inbound::new(big_ping, 1024).next_message(),
            Err(CloseCode::PolicyViolation)
        );
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let whole = client_frame(OpCode::Text, true, b"{\"type\":\"ping\"}");
        let mut inbound = Inbound::new(BytesMut::from(&whole[..5]), 64);
        assert_eq!(inbound.next_message(), Ok(None));
        inbound.buf.extend_from_slice(&whole[5..]);
        assert!(matches!(
            inbound.next_message(),
            Ok(Some(InboundMessage::Text(_)))
        ));
    }

    #[test]
    fn unmasked_binary_and_stray_continuations_break_the_rules() {
        let mut unmasked = BytesMut::new();
        Parser::write_message(&mut unmasked, b"hi", OpCode::Text, true, false);
        assert_eq!(
            Inbound::new(unmasked, 64).next_message(),
            Err(CloseCode::PolicyViolation)
        );
        let binary = client_frame(OpCode::Binary, true, b"\x01");
        assert_eq!(
            Inbound::new(binary, 64).next_message(),
            Err(CloseCode::PolicyViolation)
        );
        // A close frame whose payload is one byte: too short to hold a close code.
        let bad_close = client_frame(OpCode::Close, true, b"\x03");
        assert_eq!(
            Inbound::new(bad_close, 64).next_message(),
            Err(CloseCode::PolicyViolation)
        );
        let stray = client_frame(OpCode::Continue, true, b"x");
        assert_eq!(
            Inbound::new(stray, 64).next_message(),
            Err(CloseCode::PolicyViolation)
        );
    }
}
