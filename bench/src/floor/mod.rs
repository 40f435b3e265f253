//! The floor: what a delivery and an idle connection cost on this machine with nothing of a
//! node's own work, measured side by side with the node (`scripts/bench-floor.sh`).
//!
//! It accepts WebSocket connections (`/client/<i>`, optionally `?chan=<g>`), answers the
//! upgrade with a correct Sec-WebSocket-Accept and then keeps, per connection, the socket, a
//! sequence number, a channel and a buffer for bytes the socket did not take (none, mostly).
//! imbench's feed (`feed`, one TCP connection) brings each message with the envelope body a
//! node would have serialized; the floor writes the node's frame for it (the same bytes: the
//! same header, `{"seq":N,` spliced in front) with one `write` per delivery, to one client or
//! to every member of a channel; messages to one channel read together go in one write per
//! member, as a node's session writes what queued in its outbox. What it leaves out of a node's job: Redis and its protocol,
//! JSON, tokens, the routing tables' locks and maps, the recovery buffer, the outbox and the
//! session task's wake, heartbeats, reading what clients send, timers and metrics.
//!
//! Threads: `threads` writers (imserver's default is one session thread per core), each a
//! mio poll (epoll) over its share of the connections (client i on thread i % threads); thread
//! 0 also reads the feed. The calling thread accepts and runs the handshakes, as a node's HTTP
//! workers do.

mod conns;
mod error;
pub mod feed;
mod handshake;
mod worker;

use std::io::Write as _;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

pub use error::{FloorError, Result};
use handshake::Request;
use mio::Poll;
use mio::net::TcpStream;
use worker::{Feed, Mailbox, NewConn, Worker};

/// How long a connection may take to send its upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the accept loop waits after running out of file descriptors before accepting
/// again (the connections waiting meanwhile stay in the listen backlog).
const OUT_OF_FILES_PAUSE: Duration = Duration::from_millis(10);

/// Serves on `listener` with `threads` writer threads (at least one); returns only when
/// accepting fails for good.
///
/// # Errors
/// [`FloorError::Io`] when a poll, a thread or the listener cannot be set up or fails.
pub fn run(listener: TcpListener, threads: usize) -> Result<()> {
    let threads = threads.max(1);
    let mut polls = Vec::with_capacity(threads);
    let mut mailboxes = Vec::with_capacity(threads);
    for _ in 0..threads {
        let poll = Poll::new()?;
        mailboxes.push(Mailbox::new(poll.registry())?);
        polls.push(poll);
    }
    let mailboxes: Arc<[Mailbox]> = mailboxes.into();
    for (me, poll) in polls.into_iter().enumerate() {
        let worker = Worker::new(me, poll, mailboxes.clone());
        std::thread::Builder::new()
            .name(format!("imfloor-{me}"))
            .spawn(move || {
                if let Err(e) = worker.run() {
                    tracing::error!(thread = me, error = %e, "a floor thread stopped");
                }
            })?;
    }
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            // EMFILE, ENFILE: the process's or the system's file descriptors.
            Err(e) if matches!(e.raw_os_error(), Some(24 | 23)) => {
                tracing::warn!(error = %e, "out of file descriptors: raise ulimit -n");
                std::thread::sleep(OUT_OF_FILES_PAUSE);
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = admit(stream, &mailboxes) {
            tracing::debug!(%peer, error = %e, "connection refused");
        }
    }
}

/// Reads the upgrade request of a new connection and hands it to the thread that owns it.
fn admit(mut stream: std::net::TcpStream, mailboxes: &[Mailbox]) -> Result<()> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let request = handshake::read_request(&mut stream)?;
    stream.set_read_timeout(None)?;
    stream.set_nodelay(true)?;
    match request {
        Request::Client {
            index,
            chan,
            response,
        } => {
            let threads = mailboxes.len();
            stream.set_nonblocking(true)?;
            let conn = NewConn {
                slot: index / threads as u32,
                chan,
                stream: TcpStream::from_std(stream),
                response,
            };
            mailboxes[index as usize % threads].post(|inbox| inbox.conns.push(conn))?;
        }
        Request::Feed { rest } => {
            stream.write_all(feed::FEED_ACCEPTED)?;
            stream.set_nonblocking(true)?;
            let feed = Feed::new(TcpStream::from_std(stream), &rest);
            mailboxes[0].post(|inbox| inbox.feeds.push(feed))?;
        }
    }
    Ok(())
}
