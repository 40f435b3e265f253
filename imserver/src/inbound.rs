//! The inbound half of a connection: buffers what the client sent and cuts it into messages,
//! joining continuation frames and holding every message to the size limit from its header
//! on, before any of it is buffered. Frame parsing is actix-http's; the limits are ours,
//! because its parser only applies the limit once a whole frame has arrived.

use std::io;

use actix_http::ws::{OpCode, Parser};
use actix_ws::{CloseReason, ProtocolError};
use bytes::BytesMut;
use imclient::contract::CloseCode;
use tokio::net::TcpStream;

/// Room reserved for a read when the inbound buffer is empty: client frames are small.
const READ_CHUNK: usize = 512;

/// The longest header a client frame can have: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEAD: usize = 14;

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum InboundMessage {
    /// A text message, continuation frames joined.
    Text(BytesMut),
    /// A ping, with its payload to echo.
    Ping(BytesMut),
    /// A pong.
    Pong,
    /// A close frame, with its reason if it carried one.
    Close(Option<CloseReason>),
}

/// What a client sent, buffered and cut into messages.
#[derive(Debug)]
pub struct Inbound {
    buf: BytesMut,
    /// A text message whose continuation frames are still coming.
    partial: Option<BytesMut>,
    max: usize,
}

impl Inbound {
    /// Starts with `early` (bytes already read) and holds every message to `max` bytes.
    pub fn new(early: BytesMut, max: usize) -> Self {
        Self {
            buf: early,
            partial: None,
            max,
        }
    }

    /// The buffer to read into, with room reserved for a read.
    pub fn spare(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        &mut self.buf
    }

    /// Reads what the socket has without waiting; the byte count, 0 at end of stream.
    pub fn fill(&mut self, stream: &TcpStream) -> io::Result<usize> {
        stream.try_read_buf(self.spare())
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
    pub fn next_message(&mut self) -> Result<Option<InboundMessage>, CloseCode> {
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
                    // Held to the limit by `check_header`, which counts what came before.
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(CloseCode::PolicyViolation);
                    };
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

/// Runs `bytes`, as if a client sent them, through the inbound half with a limit of `max`
/// bytes until it needs more input or refuses them; returns the close code of a refusal.
/// Asserts what must hold whatever the input: the buffer never holds more than a frame the
/// limit allows plus what one read adds. For the fuzzer and tests.
pub fn check_bytes(bytes: &[u8], max: usize) -> Option<CloseCode> {
    let mut inbound = Inbound::new(BytesMut::new(), max);
    // Fed in reads of up to 512 bytes, as a socket would.
    for chunk in bytes.chunks(READ_CHUNK) {
        inbound.buf.extend_from_slice(chunk);
        loop {
            match inbound.next_message() {
                Ok(Some(InboundMessage::Text(text))) => assert!(text.len() <= max),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(code) => return Some(code),
            }
        }
        assert!(
            inbound.buf.len() <= max.max(125) + MAX_HEAD,
            "{} bytes buffered with a limit of {max}",
            inbound.buf.len()
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::OpCode;

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
