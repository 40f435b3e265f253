//! The feed: the messages imbench sends the floor over one TCP connection, standing in for
//! what a node reads from its Redis subscription (already batched on one connection). A record
//! is a kind byte (a client or a channel), the receiver's index and the body's length (both u32,
//! little-endian), then the body: the envelope body a node would have serialized for the
//! message, which the floor frames per receiver. No JSON is parsed on either side of it.

use super::error::{FloorError, Result};

/// The path of the request that opens the feed.
pub const FEED_PATH: &str = "/feed";

/// What the floor answers a feed request with before the records flow.
pub const FEED_ACCEPTED: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

/// The longest body a record may carry, in bytes.
pub const MAX_BODY: usize = 1 << 20;

/// Record header: kind, receiver, body length.
pub(crate) const HEAD: usize = 9;

const CLIENT: u8 = 0;
const CHAN: u8 = 1;

/// Who a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// One client (a private message): the index in its connect path.
    Client(u32),
    /// Every member of a channel (a fan-out): the channel's index in its members' paths.
    Chan(u32),
}

/// One record, borrowed from the buffer it was read into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The receiver.
    pub to: To,
    /// The envelope body (`{"id":…,"type":…,…}`).
    pub body: &'a [u8],
}

/// Appends a record to `out`.
///
/// # Errors
/// [`FloorError::TooLong`] when `body` is over [`MAX_BODY`].
pub fn encode(out: &mut Vec<u8>, to: To, body: &[u8]) -> Result<()> {
    if body.len() > MAX_BODY {
        return Err(FloorError::TooLong {
            len: body.len(),
            max: MAX_BODY,
        });
    }
    let (kind, index) = match to {
        To::Client(i) => (CLIENT, i),
        To::Chan(g) => (CHAN, g),
    };
    out.push(kind);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// The whole record at the start of `buf` and its length in bytes, or `None` when more bytes
/// are needed.
///
/// # Errors
/// [`FloorError::UnknownKind`] or [`FloorError::TooLong`]: the feed cannot be read on.
pub fn decode(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>> {
    let Some(head) = buf.get(..HEAD) else {
        return Ok(None);
    };
    let index = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
    let to = match head[0] {
        CLIENT => To::Client(index),
        CHAN => To::Chan(index),
        other => return Err(FloorError::UnknownKind(other)),
    };
    if len > MAX_BODY {
        return Err(FloorError::TooLong { len, max: MAX_BODY });
    }
    Ok(buf
        .get(HEAD..HEAD + len)
        .map(|body| (Record { to, body }, HEAD + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_as_they_were_encoded_and_only_when_whole() -> Result<()> {
        let mut buf = Vec::new();
        encode(&mut buf, To::Client(7), b"{\"id\":\"a\"}")?;
        encode(&mut buf, To::Chan(70_000), b"{}")?;
        let (first, n) = decode(&buf)?.expect("a whole record");
        assert_eq!(first.to, To::Client(7));
        assert_eq!(first.body, b"{\"id\":\"a\"}");
        let (second, m) = decode(&buf[n..])?.expect("a whole record");
        assert_eq!(second.to, To::Chan(70_000));
        assert_eq!(second.body, b"{}");
        assert_eq!(n + m, buf.len());
        assert_eq!(decode(&buf[..n - 1])?, None);
        assert_eq!(decode(&buf[..3])?, None);
        buf[0] = 9;
        assert!(matches!(decode(&buf), Err(FloorError::UnknownKind(9))));
        Ok(())
    }

    #[test]
    fn a_record_over_the_limit_is_refused_both_ways_saying_the_limit() {
        let body = vec![b'x'; MAX_BODY + 1];
        let refused = encode(&mut Vec::new(), To::Client(1), &body).expect_err("too long");
        assert!(
            refused
                .to_string()
                .contains(&format!("limit of {MAX_BODY}")),
            "{refused}"
        );
        // A header that claims more than the limit is refused before any body is awaited.
        let mut head = vec![CLIENT];
        head.extend_from_slice(&1u32.to_le_bytes());
        head.extend_from_slice(&((MAX_BODY + 1) as u32).to_le_bytes());
        assert!(matches!(
            decode(&head),
            Err(FloorError::TooLong { len, max: MAX_BODY }) if len == MAX_BODY + 1
        ));
    }
}
