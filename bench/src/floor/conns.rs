//! One floor thread's connections: a slot per client it owns (client i is slot i / threads on
//! thread i % threads), the members of each channel, and writing the node's frame to a socket.
//! Per connection this keeps the socket, its sequence number, its channel and the bytes the
//! socket has not taken yet: what writing the node's frames needs, nothing more.

use std::io::{self, Write as _};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// One client's connection.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// The last sequence number written: the node numbers each client's envelopes from 1.
    seq: u64,
    /// The channel it is a member of.
    chan: Option<u32>,
    /// Bytes of frames the socket did not take yet, written when it is writable again.
    /// Empty, without an allocation, unless the client reads slower than it is written to.
    unsent: Vec<u8>,
}

/// A thread's connections and channels.
#[derive(Debug, Default)]
pub(crate) struct Conns {
    slots: Vec<Option<Conn>>,
    /// Per channel index, the slots of its members.
    chans: Vec<Vec<u32>>,
    /// The frame being written, one buffer reused for every delivery.
    scratch: Vec<u8>,
    /// Slots whose socket failed during a fan-out, removed after it.
    failed: Vec<u32>,
}

impl Conns {
    /// Writes `response` (its 101) to `stream`, then holds it as `slot`, registered for
    /// writability under the slot's token, and adds it to channel `chan`. A connection already
    /// in the slot (the same client connecting again) is closed.
    pub(crate) fn insert(
        &mut self,
        registry: &Registry,
        slot: u32,
        chan: Option<u32>,
        mut stream: TcpStream,
        response: &[u8],
    ) -> io::Result<()> {
        self.remove(registry, slot);
        registry.register(&mut stream, Token(slot as usize), Interest::WRITABLE)?;
        let mut conn = Conn {
            stream,
            seq: 0,
            chan,
            unsent: Vec::new(),
        };
        write_or_keep(&mut conn, response)?;
        let i = slot as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(conn);
        if let Some(g) = chan {
            let g = g as usize;
            if self.chans.len() <= g {
                self.chans.resize_with(g + 1, Vec::new);
            }
            self.chans[g].push(slot);
        }
        Ok(())
    }

    /// Closes the connection in `slot`, if there is one.
    pub(crate) fn remove(&mut self, registry: &Registry, slot: u32) {
        let Some(mut conn) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        // Closing the socket takes it out of the poll anyway; this only says so first.
        let _ = registry.deregister(&mut conn.stream);
        if let Some(members) = conn.chan.and_then(|g| self.chans.get_mut(g as usize)) {
            members.retain(|&s| s != slot);
        }
    }

    /// Writes the frame of envelope `body` to the client in `slot`, if it is connected; closes
    /// the connection if its socket failed.
    pub(crate) fn deliver(&mut self, registry: &Registry, slot: u32, body: &[u8]) {
        if let Some(Some(conn)) = self.slots.get_mut(slot as usize)
            && send(conn, &mut self.scratch, &[body]).is_err()
        {
            self.remove(registry, slot);
        }
    }

    /// Writes the frames of envelope `bodies` (messages to channel `g` read together) to every
    /// member of the channel, each frame with the member's next sequence number as a node
    /// numbers them, and all of a member's frames in one write: as a node's session writes
    /// what queued up in its outbox while it was busy, so that a floor that falls behind
    /// batches as a node does.
    pub(crate) fn fan_out(&mut self, registry: &Registry, g: u32, bodies: &[&[u8]]) {
        let Some(members) = self.chans.get(g as usize) else {
            return;
        };
        for &slot in members {
            if let Some(Some(conn)) = self.slots.get_mut(slot as usize)
                && send(conn, &mut self.scratch, bodies).is_err()
            {
                self.failed.push(slot);
            }
        }
        while let Some(slot) = self.failed.pop() {
            self.remove(registry, slot);
        }
    }

    /// The socket in `slot` can take bytes again: writes what it did not take before. `gone`:
    /// the poll says the socket failed or the client closed it.
    pub(crate) fn writable(&mut self, registry: &Registry, slot: u32, gone: bool) {
        let Some(Some(conn)) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if gone || flush(conn).is_err() {
            self.remove(registry, slot);
        }
    }
}

/// Frames `bodies` with the connection's next sequence numbers and writes them at once.
fn send(conn: &mut Conn, scratch: &mut Vec<u8>, bodies: &[&[u8]]) -> io::Result<()> {
    scratch.clear();
    for body in bodies {
        conn.seq += 1;
        frame_into(scratch, conn.seq, body);
    }
    write_or_keep(conn, scratch)
}

/// Writes `bytes` behind anything unsent; keeps what the socket does not take now. Writes until
/// the socket says it would block, so that the poll reports when it can take more.
fn write_or_keep(conn: &mut Conn, mut bytes: &[u8]) -> io::Result<()> {
    if !conn.unsent.is_empty() {
        conn.unsent.extend_from_slice(bytes);
        return Ok(());
    }
    while !bytes.is_empty() {
        match conn.stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.unsent.extend_from_slice(bytes);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the connection's unsent bytes, as many as the socket takes.
fn flush(conn: &mut Conn) -> io::Result<()> {
    while !conn.unsent.is_empty() {
        match conn.stream.write(&conn.unsent) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.unsent.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Give the room back: a connection that caught up holds no buffer.
    conn.unsent = Vec::new();
    Ok(())
}

/// The frame a node writes to one receiver, appended to `out`: the header of a final, unmasked text
/// frame, then `{"seq":N,` and the envelope body without its `{` (imclient's
/// `contract::frame`), built in place instead of in a new string.
pub(crate) fn frame_into(out: &mut Vec<u8>, seq: u64, body: &[u8]) {
    const SEQ_OPEN: &[u8] = b"{\"seq\":";
    let rest = body.strip_prefix(b"{").unwrap_or(body);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = seq;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = &digits[at..];
    let len = SEQ_OPEN.len() + digits.len() + 1 + rest.len();
    out.push(0x81);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(SEQ_OPEN);
    out.extend_from_slice(digits);
    out.push(b',');
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node's frame: imclient's text, behind the header imserver's outbox writes.
    fn node_frame(seq: u64, body: &str) -> Vec<u8> {
        let text = imclient::contract::frame(seq, body);
        let mut out = vec![0x81];
        match text.len() {
            n if n < 126 => out.push(n as u8),
            n => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(text.as_bytes());
        out
    }

    #[test]
    fn frames_are_byte_for_byte_the_nodes() {
        let mut out = Vec::new();
        let short = r#"{"id":"m1","type":"message","payload":1,"ts":5}"#;
        let long = format!(
            r#"{{"id":"0193","type":"channel","from":"bench","chan":"c","payload":{{"t":1,"p":"{}"}},"ts":5}}"#,
            "x".repeat(200)
        );
        for (seq, body) in [
            (1, short),
            (9, short),
            (10, short),
            (12_345, &long),
            (u64::MAX, &long),
        ] {
            out.clear();
            frame_into(&mut out, seq, body.as_bytes());
            assert_eq!(out, node_frame(seq, body), "seq {seq}");
        }
    }
}
