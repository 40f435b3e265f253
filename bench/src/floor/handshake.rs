//! The floor's side of an upgrade: read one HTTP/1.1 request and say who connects. The path
//! names it: `/client/<index>` (a WebSocket client; `?chan=<index>` makes it a member of that
//! channel) or `/feed` (imbench's feed). A client is answered with the 101 RFC 6455 asks for
//! (with its Sec-WebSocket-Accept) once its thread holds it, so that a client that has its
//! 101 is ready for messages, as a node's welcome says.

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use super::error::{FloorError, Result};
use super::feed::FEED_PATH;

/// The longest request head the floor reads.
const MAX_HEAD: usize = 8 * 1024;

/// RFC 6455's key suffix for Sec-WebSocket-Accept.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Who sent the request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// A WebSocket client.
    Client {
        /// Its index (client i of the run).
        index: u32,
        /// The channel it is a member of.
        chan: Option<u32>,
        /// The 101 response to write once its thread holds it.
        response: Vec<u8>,
    },
    /// imbench's feed; the bytes read past the request head are its first records.
    Feed {
        /// Bytes after the head.
        rest: Vec<u8>,
    },
}

/// Reads a request head from `stream` (blocking; the caller sets a read timeout) and parses it.
pub(crate) fn read_request(stream: &mut impl std::io::Read) -> Result<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(FloorError::BadRequest("closed before the request ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(FloorError::BadRequest("request head too long"));
        }
    };
    let rest = buf.split_off(head_end);
    parse(&buf, rest)
}

fn parse(head: &[u8], rest: Vec<u8>) -> Result<Request> {
    let head = std::str::from_utf8(head).map_err(|_| FloorError::BadRequest("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|line| line.strip_suffix(" HTTP/1.1"))
        .ok_or(FloorError::BadRequest("not a GET of HTTP/1.1"))?;
    if path == FEED_PATH {
        return Ok(Request::Feed { rest });
    }
    let target = path
        .strip_prefix("/client/")
        .ok_or(FloorError::BadRequest("unknown path"))?;
    let (index, query) = match target.split_once('?') {
        Some((index, query)) => (index, Some(query)),
        None => (target, None),
    };
    let index = index
        .parse()
        .map_err(|_| FloorError::BadRequest("client index not a number"))?;
    let chan = query
        .map(|q| {
            q.strip_prefix("chan=")
                .and_then(|g| g.parse().ok())
                .ok_or(FloorError::BadRequest("query other than chan=<index>"))
        })
        .transpose()?;
    if !rest.is_empty() {
        return Err(FloorError::BadRequest("bytes after the upgrade request"));
    }
    let key = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-key"))
        .map(|(_, value)| value.trim())
        .ok_or(FloorError::BadRequest("no Sec-WebSocket-Key"))?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    Ok(Request::Client {
        index,
        chan,
        response: response.into_bytes(),
    })
}

/// Sec-WebSocket-Accept for a Sec-WebSocket-Key.
fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example of RFC 6455, section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn requests_name_the_client_and_its_channel_or_the_feed() -> Result<()> {
        let req = |s: &str| read_request(&mut s.as_bytes());
        let upgrade =
            "Host: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let Request::Client {
            index,
            chan,
            response,
        } = req(&format!("GET /client/42?chan=3 HTTP/1.1\r\n{upgrade}"))?
        else {
            panic!("not a client");
        };
        assert_eq!((index, chan), (42, Some(3)));
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
        assert!(
            response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{response}"
        );
        assert!(matches!(
            req(&format!("GET /client/7 HTTP/1.1\r\n{upgrade}"))?,
            Request::Client {
                index: 7,
                chan: None,
                ..
            }
        ));
        assert_eq!(
            req("GET /feed HTTP/1.1\r\n\r\nabc")?,
            Request::Feed {
                rest: b"abc".to_vec()
            }
        );
        assert!(req("GET /client/x HTTP/1.1\r\n\r\n").is_err());
        assert!(req("GET /client/1 HTTP/1.1\r\n\r\n").is_err());
        assert!(req("POST /feed HTTP/1.1\r\n\r\n").is_err());
        assert!(req("GET /feed HTTP/1.1\r\n").is_err());
        Ok(())
    }
}
