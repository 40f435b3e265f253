//! A connection's outgoing frames: encoded once when queued, written by the session in one
//! vectored write per batch. Lighter than a channel (an idle connection's queue holds no
//! allocation) and it carries the node's close request, which must get through even when the
//! queue is full.
//!
//! Writing straight to the socket from the broker was tried and measured worse: every write
//! on loopback runs the receiver's side too, and one broker thread doing them all serially
//! fell behind where the worker threads share them (docs/DESIGN.md, "Owning the socket").

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Mutex, MutexGuard, OnceLock};

use actix_http::ws::{OpCode, Parser};
use bytes::{Buf as _, Bytes, BytesMut};
use imclient::contract::CloseCode;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Why a frame was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its limit of frames: the client does not read fast enough.
    Full,
    /// The connection is closing.
    Closed,
}

/// The shared outgoing side of one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the session: frames were queued, or a close was requested.
    wake: Notify,
    /// The close the node asked for; the first request wins.
    close: OnceLock<CloseCode>,
    capacity: usize,
}

#[derive(Debug)]
struct State {
    /// Encoded frames waiting for the session to write them.
    queue: VecDeque<Bytes>,
    closed: bool,
}

impl Outbox {
    /// An outbox that queues at most `capacity` frames (plus the first one, the welcome).
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
            }),
            wake: Notify::new(),
            close: OnceLock::new(),
            capacity: capacity + 1,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a text frame and wakes the session.
    pub fn send_text(&self, text: &str) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.queue.len() >= self.capacity {
            return Err(Refused::Full);
        }
        state.queue.push_back(encode(text.as_bytes()));
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Queues a frame the session itself sends (pong, ping), ahead of no limit.
    pub fn queue_control(&self, frame: Bytes) {
        self.lock().queue.push_back(frame);
    }

    /// Asks the session to close with `code`, even when its queue is full.
    pub fn request_close(&self, code: CloseCode) {
        if self.close.set(code).is_ok() {
            self.wake.notify_one();
        }
    }

    /// The close requested, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.close.get().copied()
    }

    /// Waits until frames are queued or a close is requested. Cancel-safe.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// Takes what is queued, if anything is.
    pub(crate) fn take_queued(&self) -> Option<VecDeque<Bytes>> {
        let mut state = self.lock();
        if state.queue.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut state.queue))
    }

    /// Refuses every later frame; returns what was still queued.
    pub(crate) fn shut(&self) -> VecDeque<Bytes> {
        let mut state = self.lock();
        state.closed = true;
        std::mem::take(&mut state.queue)
    }
}

/// A whole text frame.
fn encode(text: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(text.len() + 10);
    Parser::write_message(&mut buf, text, OpCode::Text, true, false);
    buf.freeze()
}

/// Writes `frames` in order, waiting for the socket as needed.
pub(crate) async fn write_all(socket: &TcpStream, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !frames.is_empty() {
        let slices: Vec<IoSlice<'_>> = frames.iter().take(64).map(|f| IoSlice::new(f)).collect();
        let written = match socket.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The writer waker slot, not `writable()`: see `session::read_ready`.
                std::future::poll_fn(|cx| socket.poll_write_ready(cx)).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        drop(slices);
        let mut left = written;
        while left > 0 {
            let Some(front) = frames.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                frames.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_queue_up_to_the_limit_and_not_after_shut() {
        let outbox = Outbox::new(2);
        for _ in 0..3 {
            assert_eq!(outbox.send_text("x"), Ok(()));
        }
        assert_eq!(outbox.send_text("x"), Err(Refused::Full));
        let queued = outbox.take_queued().map(|q| q.len());
        assert_eq!(queued, Some(3));
        assert!(outbox.take_queued().is_none());
        outbox.shut();
        assert_eq!(outbox.send_text("x"), Err(Refused::Closed));
    }
}
