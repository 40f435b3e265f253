//! The byte stream a session runs on: a plain TCP socket, or TLS over one when the node serves
//! `wss://` itself. The plain path keeps what the socket rewrite measured: it waits for
//! readiness through the socket's waker slots and reads only then, so an idle connection holds
//! no read buffer, and it writes queued frames with one vectored write. TLS goes through
//! rustls's buffers, as TLS must.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;

use actix_tls::accept::rustls_0_23::TlsStream;
use tokio::io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::inbound::Inbound;
use crate::outbox::{self, Frame};

/// A client's connection.
pub enum Wire {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`, served by the node.
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wire::Plain(tcp) => f.debug_tuple("Plain").field(tcp).finish(),
            Wire::Tls(tls) => f.debug_tuple("Tls").field(tls.get_ref().0).finish(),
        }
    }
}

impl Wire {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Wire::Plain(tcp) => tcp,
            Wire::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Waits until the client sent something and adds it to `inbound`; the byte count, 0 at
    /// the end of the stream. Cancel-safe.
    pub async fn read_into(&mut self, inbound: &mut Inbound) -> io::Result<usize> {
        match self {
            Wire::Plain(tcp) => loop {
                // Through `poll_read_ready` rather than `readable()`: it takes over the
                // socket's reader waker slot, which otherwise keeps the finished handshake task
                // (about 2.4 KiB) alive for as long as the connection lives.
                std::future::poll_fn(|cx| tcp.poll_read_ready(cx)).await?;
                match inbound.fill(tcp) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    read => return read,
                }
            },
            Wire::Tls(tls) => tls.read_buf(inbound.spare()).await,
        }
    }

    /// Writes `frames` in order. Cancel-safe: what was written is taken off `frames`.
    pub async fn write_frames(&mut self, frames: &mut VecDeque<Frame>) -> io::Result<()> {
        match self {
            Wire::Plain(tcp) => outbox::write_all(tcp, frames).await,
            Wire::Tls(tls) => {
                const SLICES: usize = 64;
                while !frames.is_empty() {
                    // The slices (1 KiB) are laid out inside each poll, not held across the
                    // wait: this future is part of every session's task, TLS or not, and
                    // would make each idle connection hold them.
                    let written = std::future::poll_fn(|cx| {
                        let mut slices = [IoSlice::new(&[]); SLICES];
                        let n = outbox::slices(frames, &mut slices);
                        Pin::new(&mut **tls).poll_write_vectored(cx, &slices[..n])
                    })
                    .await?;
                    if written == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    outbox::advance(frames, written);
                }
                tls.flush().await
            }
        }
    }

    /// Writes `bytes` (an HTTP answer) and flushes them.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Wire::Plain(tcp) => tcp.write_all(bytes).await,
            Wire::Tls(tls) => {
                tls.write_all(bytes).await?;
                tls.flush().await
            }
        }
    }

    /// Ends the sending side: the client reads what was written, then the end of the stream.
    pub async fn shutdown_write(&mut self) {
        match self {
            Wire::Plain(tcp) => {
                let _ = socket2::SockRef::from(&*tcp).shutdown(std::net::Shutdown::Write);
            }
            // close_notify, then the TCP write side.
            Wire::Tls(tls) => {
                let _ = tls.shutdown().await;
            }
        }
    }
}

impl From<TcpStream> for Wire {
    fn from(tcp: TcpStream) -> Self {
        Wire::Plain(tcp)
    }
}

impl From<TlsStream<TcpStream>> for Wire {
    fn from(tls: TlsStream<TcpStream>) -> Self {
        Wire::Tls(Box::new(tls))
    }
}
