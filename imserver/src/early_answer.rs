//! The answers actix-http writes by itself, before any handler sees a request: 400 for a
//! request it cannot parse, 408 for a request head that does not arrive in time, 431 for one
//! that is too large. It writes them with an empty body; a client of this node is promised a
//! JSON body with a stable code on every refusal, so the connection's byte stream is wrapped
//! while it speaks HTTP and those answers are swapped for documented ones on the way out. An
//! upgraded connection leaves the wrapper behind (see `handshake`), so sessions never pay for it.
//! Each answer swapped is counted (`im_http_bad_requests_total`): actix-http's own log line for
//! it is silenced, and the count is what the log says instead (`tasks::bad_requests`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};

use actix_tls::accept::rustls_0_23::TlsStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::Metrics;
use crate::wire::Wire;

/// A connection in its HTTP phase, whose dispatcher-made error answers get JSON bodies.
#[derive(Debug)]
pub struct Answering<T> {
    io: T,
    /// The replacement answer still to be written, from `pending.1` on.
    pending: Option<(Vec<u8>, usize)>,
    /// Where the answers swapped are counted.
    metrics: Arc<Metrics>,
}

impl<T> Answering<T> {
    /// Wraps a connection that has not sent anything yet, counting its bad requests in
    /// `metrics`.
    pub fn new(io: T, metrics: Arc<Metrics>) -> Self {
        Self {
            io,
            pending: None,
            metrics,
        }
    }

    /// The connection itself. Only called at an upgrade, before any answer was written.
    pub fn into_inner(self) -> T {
        self.io
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

/// The JSON answer for an answer actix-http made itself, if `head` is one: it starts the
/// buffer, has one of the three statuses and an empty body (every answer of the node's own
/// handlers has a body, so they are never touched).
pub fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let (status, reason, code, message) = match head.get(..13)? {
        b"HTTP/1.1 400 " => (
            400,
            "Bad Request",
            "bad_request",
            "the request is not valid HTTP/1.1",
        ),
        b"HTTP/1.1 408 " => (
            408,
            "Request Timeout",
            "request_timeout",
            "the request head did not arrive in time; send it at once after connecting",
        ),
        b"HTTP/1.1 431 " => (
            431,
            "Request Header Fields Too Large",
            "headers_too_large",
            "the request head is too large; send fewer or shorter headers (cookies) or pass the token in the query",
        ),
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let lower = head[..end].to_ascii_lowercase();
    if !lower
        .windows(b"\r\ncontent-length: 0\r\n".len())
        .any(|w| w == b"\r\ncontent-length: 0\r\n")
        && !lower.ends_with(b"\r\ncontent-length: 0")
    {
        return None;
    }
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncWrite + Unpin> Answering<T> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, at)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
            if *at == bytes.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Answering<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Answering<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(answer) = replacement(buf) {
            // The dispatcher's answer counts as written; ours goes out in its place.
            this.pending = Some((answer, 0));
            this.metrics.bad_requests.fetch_add(1, Relaxed);
            let _ = this.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl From<Answering<TcpStream>> for Wire {
    fn from(io: Answering<TcpStream>) -> Self {
        io.into_inner().into()
    }
}

impl From<Answering<TlsStream<TcpStream>>> for Wire {
    fn from(io: Answering<TlsStream<TcpStream>>) -> Self {
        io.into_inner().into()
    }
}

#[cfg(test)]
mod tests {
    use super::replacement;

    #[test]
    fn only_empty_dispatcher_answers_are_replaced() {
        let timeout = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n";
        let answer =
            String::from_utf8(replacement(timeout).unwrap_or_default()).unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
        let handler = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 52\r\ncontent-type: application/json\r\n\r\n{}";
        assert!(replacement(handler).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(ok).is_none());
    }
}
