//! A minimal WebSocket client for the load tool: the upgrade handshake, then frames parsed in
//! place from one read buffer, without an allocation per message. Pings are answered; text
//! frames are handed to a callback as bytes. The load tool must cost far less per delivery
//! than the server it measures, which a general-purpose client does not.

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a frame handler wants next.
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading.
    Stop,
    /// Send this text frame, then keep reading.
    Reply(String),
}

/// An upgraded connection.
pub struct Socket {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    start: usize,
    /// The status code of the close frame the server sent, once one came (0 when it had none).
    close_code: Option<u16>,
}

impl Socket {
    /// Sends the upgrade request for `path` on `host` and reads the 101 response.
    pub async fn upgrade(mut tcp: TcpStream, host: &str, path: &str) -> Result<Self> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(2048);
        let header_end = loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed during the handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                bail!("handshake response too long");
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            let status = head.lines().next().unwrap_or_default();
            let body = String::from_utf8_lossy(&buf[header_end..]);
            bail!("upgrade refused: {status} {body}");
        }
        buf.drain(..header_end);
        Ok(Self {
            tcp,
            buf,
            start: 0,
            close_code: None,
        })
    }

    /// Sends a text frame (masked with a zero key, as clients must mask and any key will do).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    /// Sends a close frame with status `code`; read on to get the server's close frame.
    pub async fn send_close(&mut self, code: u16) -> Result<()> {
        self.send_frame(0x8, &code.to_be_bytes()).await
    }

    /// The status code of the server's close frame, if one came (0 when it carried none).
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Ends the connection with a TCP reset instead of a FIN: no close frame, no goodbye.
    pub fn reset(self) {
        let _ = self.tcp.set_zero_linger();
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(payload);
        self.tcp.write_all(&frame).await?;
        Ok(())
    }

    /// Reads frames until `on_text` says stop or the connection ends. Returns whether the
    /// connection is still open.
    pub async fn read(&mut self, mut on_text: impl FnMut(&[u8]) -> Flow) -> Result<bool> {
        loop {
            // Parse every whole frame in the buffer.
            while let Some((opcode, head, len)) = frame_at(&self.buf[self.start..]) {
                let payload_at = self.start + head;
                let end = payload_at + len;
                self.start = end;
                match opcode {
                    0x1 => match on_text(&self.buf[payload_at..end]) {
                        Flow::Continue => {}
                        Flow::Stop => return Ok(true),
                        Flow::Reply(text) => self.send_frame(0x1, text.as_bytes()).await?,
                    },
                    0x8 => {
                        let payload = &self.buf[payload_at..end];
                        self.close_code = Some(match payload {
                            [a, b, ..] => u16::from_be_bytes([*a, *b]),
                            _ => 0,
                        });
                        return Ok(false);
                    }
                    0x9 => {
                        let ping = self.buf[payload_at..end].to_vec();
                        self.send_frame(0xA, &ping).await?;
                    }
                    _ => {}
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // Into the spare capacity: zeroing 8 KiB before every read was 4% of the tool's
            // CPU in a fan-out profile.
            self.buf.reserve(8192);
            let n = self.tcp.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Ok(false);
            }
        }
    }
}

/// The opcode, header length and payload length of a whole unmasked frame at the start of
/// `buf`, or `None` when more bytes are needed.
fn frame_at(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, head) = match buf[1] & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    (buf.len() >= head + len).then_some((opcode, head, len))
}

/// Finds the send timestamp in a frame: the number after `"t":` (or `\"t\":` when the payload
/// sits inside a JSON string, as Pusher servers send it).
pub fn sent_at(text: &[u8]) -> Option<u64> {
    let at = find(text, b"\"t\":")
        .map(|i| i + 4)
        .or_else(|| find(text, b"t\\\":").map(|i| i + 4))?;
    number_at(&text[at..])
}

/// The number after the first `"seq":` in `text`: an envelope's sequence number, or in a
/// welcome the last one given before it.
pub fn seq_of(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"seq\":";
    let at = find(text, KEY)? + KEY.len();
    number_at(&text[at..])
}

/// The unsigned integer at the start of `digits`.
fn number_at(digits: &[u8]) -> Option<u64> {
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Whether `text` contains `needle`.
pub fn find_str(text: &[u8], needle: &str) -> bool {
    find(text, needle.as_bytes()).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_timestamps_are_found() {
        assert_eq!(frame_at(&[0x81, 3, b'a', b'b', b'c']), Some((1, 2, 3)));
        assert_eq!(frame_at(&[0x81, 3, b'a']), None);
        assert_eq!(
            sent_at(br#"{"seq":1,"payload":{"t":12345,"p":"x"}}"#),
            Some(12345)
        );
        assert_eq!(
            sent_at(br#"{"event":"e","data":"{\"t\":678,\"p\":\"x\"}"}"#),
            Some(678)
        );
        assert_eq!(sent_at(b"nothing"), None);
        assert_eq!(
            seq_of(br#"{"seq":41,"id":"x","payload":{"t":1}}"#),
            Some(41)
        );
        assert_eq!(
            seq_of(br#"{"type":"system","payload":{"event":"welcome","conn":3,"seq":0}}"#),
            Some(0)
        );
        assert_eq!(seq_of(br#"{"type":"system"}"#), None);
    }
}
