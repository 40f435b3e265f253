//! A connection's outgoing frames: queued as header and payload (the payload shared, never
//! copied), written by the session in one write per batch. Lighter than a channel (an idle
//! connection's queue holds no allocation), and it carries the node's close request, which
//! must get through even when the queue is full.
//!
//! Writing straight to the socket from the broker was tried and measured worse: every write
//! on loopback runs the receiver's side too, and one broker thread doing them all serially
//! fell behind where the worker threads share them (docs/DESIGN.md, "Owning the socket").

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::Poll;

use actix_ws::CloseReason;
use bytes::{Buf as _, Bytes};
use futures_util::task::AtomicWaker;
use imclient::contract::CloseCode;
use tokio::net::TcpStream;

/// Why a frame was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds its limit of frames: the client does not read fast enough.
    Full,
    /// The connection is closing.
    Closed,
}

/// One outgoing WebSocket frame (final, unmasked): its header and its payload, written side
/// by side so the payload is never copied.
#[derive(Debug, Clone)]
pub struct Frame {
    head: [u8; 10],
    head_len: u8,
    /// How much of the header has been written.
    head_sent: u8,
    body: Bytes,
}

impl Frame {
    const TEXT: u8 = 0x1;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;

    fn new(opcode: u8, body: Bytes) -> Self {
        let mut head = [0u8; 10];
        head[0] = 0x80 | opcode;
        let len = body.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Self {
            head,
            head_len,
            head_sent: 0,
            body,
        }
    }

    /// A text frame.
    pub fn text(body: impl Into<Bytes>) -> Self {
        Self::new(Self::TEXT, body.into())
    }

    /// A ping with an empty payload.
    pub fn ping() -> Self {
        Self::new(Self::PING, Bytes::new())
    }

    /// A pong echoing `payload`.
    pub fn pong(payload: Bytes) -> Self {
        Self::new(Self::PONG, payload)
    }

    /// A close frame.
    pub fn close(reason: Option<CloseReason>) -> Self {
        let mut payload = Vec::new();
        if let Some(reason) = reason {
            payload.extend_from_slice(&u16::from(reason.code).to_be_bytes());
            if let Some(description) = reason.description {
                payload.extend_from_slice(description.as_bytes());
            }
        }
        Self::new(Self::CLOSE, payload.into())
    }

    /// The payload.
    #[cfg(test)]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.body
    }

    fn unsent_head(&self) -> &[u8] {
        &self.head[usize::from(self.head_sent)..usize::from(self.head_len)]
    }

    fn remaining(&self) -> usize {
        self.unsent_head().len() + self.body.len()
    }

    /// Marks `n` more bytes (at most `remaining()`) as written.
    fn advance(&mut self, n: usize) {
        let from_head = n.min(self.unsent_head().len());
        self.head_sent += from_head as u8;
        self.body.advance(n - from_head);
    }
}

/// A wake-up for the one task that waits, the session: a flag and its waker. A wake-up that
/// finds no waiter is kept for the next wait, as `tokio::sync::Notify`'s permit is.
///
/// Why not `Notify`: it keeps a list of waiters behind a lock, and registering in it and leaving
/// it at every wait was about 1.7% of a private delivery's instructions in the node
/// (docs/DESIGN.md, "Counting instructions"), for a list that never holds more than one.
#[derive(Debug, Default)]
struct Wake {
    woken: AtomicBool,
    waker: AtomicWaker,
}

impl Wake {
    fn notify(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Cancel-safe: a wake-up is taken only by the poll that returns ready.
    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.woken.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Checked again: a notify between the first check and the registration woke no one.
            if self.woken.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// The shared outgoing side of one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the session: frames were queued, or a close was requested.
    wake: Wake,
    /// The close the node asked for; the first request wins.
    close: OnceLock<CloseCode>,
    capacity: usize,
}

#[derive(Debug)]
struct State {
    /// Frames waiting for the session to write them.
    queue: VecDeque<Frame>,
    closed: bool,
    /// The welcome, while the connection waits for it: nothing is written until it is
    /// released, then it goes first.
    held: Option<Frame>,
}

impl Outbox {
    /// An outbox that queues at most `capacity` frames (plus the first one, the welcome).
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                held: None,
            }),
            wake: Wake::default(),
            close: OnceLock::new(),
            capacity: capacity + 1,
        }
    }

    /// Holds everything queued until [`Outbox::release`], which puts `welcome` first.
    pub fn hold(&self, welcome: Frame) {
        self.lock().held = Some(welcome);
    }

    /// Lets the held welcome go, ahead of what was queued meanwhile. Idempotent.
    pub fn release(&self) {
        let mut state = self.lock();
        if let Some(welcome) = state.held.take() {
            state.queue.push_front(welcome);
            drop(state);
            self.wake.notify();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame and wakes the session.
    pub fn send(&self, frame: Frame) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.queue.len() >= self.capacity {
            return Err(Refused::Full);
        }
        state.queue.push_back(frame);
        drop(state);
        self.wake.notify();
        Ok(())
    }

    /// Queues a frame the session itself sends (pong, ping), ahead of no limit.
    pub fn queue_control(&self, frame: Frame) {
        self.lock().queue.push_back(frame);
    }

    /// Asks the session to close with `code`, even when its queue is full.
    pub fn request_close(&self, code: CloseCode) {
        if self.close.set(code).is_ok() {
            self.wake.notify();
        }
    }

    /// The close requested, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.close.get().copied()
    }

    /// Waits until frames are queued or a close is requested. Cancel-safe.
    pub async fn wait(&self) {
        self.wake.wait().await;
    }

    /// Moves what is queued into `batch` (which must be empty), swapping buffers so neither
    /// side allocates again; false when nothing was queued.
    pub(crate) fn take_queued(&self, batch: &mut VecDeque<Frame>) -> bool {
        let mut state = self.lock();
        if state.queue.is_empty() || state.held.is_some() {
            return false;
        }
        std::mem::swap(&mut state.queue, batch);
        true
    }

    /// Refuses every later frame; returns what was still queued (nothing before the welcome:
    /// a client that never got one gets no envelope either).
    pub(crate) fn shut(&self) -> VecDeque<Frame> {
        let mut state = self.lock();
        state.closed = true;
        let queued = std::mem::take(&mut state.queue);
        if state.held.take().is_some() {
            return VecDeque::new();
        }
        queued
    }
}

/// Fills `slices` with the unsent parts of the first frames (header and payload side by side);
/// returns how many slices it filled.
pub(crate) fn slices<'a>(frames: &'a VecDeque<Frame>, slices: &mut [IoSlice<'a>]) -> usize {
    let mut n = 0;
    for frame in frames.iter().take(slices.len() / 2) {
        slices[n] = IoSlice::new(frame.unsent_head());
        slices[n + 1] = IoSlice::new(&frame.body);
        n += 2;
    }
    n
}

/// Takes `written` bytes off the front of `frames`.
pub(crate) fn advance(frames: &mut VecDeque<Frame>, mut written: usize) {
    while written > 0 {
        let Some(front) = frames.front_mut() else {
            break;
        };
        let remaining = front.remaining();
        if remaining <= written {
            written -= remaining;
            frames.pop_front();
        } else {
            front.advance(written);
            written = 0;
        }
    }
}

/// Writes `frames` in order, waiting for the socket as needed. Cancel-safe: what was written
/// is taken off `frames` as it goes.
pub(crate) async fn write_all(socket: &TcpStream, frames: &mut VecDeque<Frame>) -> io::Result<()> {
    const SLICES: usize = 64;
    const SMALL: usize = 1024;
    while !frames.is_empty() {
        let lone = frames
            .front()
            .filter(|f| frames.len() == 1 && f.remaining() <= SMALL);
        let written = if let Some(frame) = lone {
            // One small frame, the usual case in a fan-out: a plain write of one buffer is
            // cheaper in the kernel than a `writev` of two.
            let mut buf = [0u8; SMALL];
            let head = frame.unsent_head();
            buf[..head.len()].copy_from_slice(head);
            buf[head.len()..frame.remaining()].copy_from_slice(&frame.body);
            socket.try_write(&buf[..frame.remaining()])
        } else {
            let mut io = [IoSlice::new(&[]); SLICES];
            let n = slices(frames, &mut io);
            socket.try_write_vectored(&io[..n])
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => advance(frames, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The writer waker slot, not `writable()`: see `Wire::read_into`.
                std::future::poll_fn(|cx| socket.poll_write_ready(cx)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::{OpCode, Parser};
    use bytes::BytesMut;

    fn bytes_of(frame: &Frame) -> Vec<u8> {
        let mut out = frame.unsent_head().to_vec();
        out.extend_from_slice(&frame.body);
        out
    }

    #[test]
    fn frames_match_actix_http_encoding() {
        for len in [0, 125, 126, 65535, 65536] {
            let text = vec![b'x'; len];
            let mut theirs = BytesMut::new();
            Parser::write_message(&mut theirs, &text, OpCode::Text, true, false);
            assert_eq!(
                bytes_of(&Frame::text(text)),
                theirs.to_vec(),
                "length {len}"
            );
        }
        let reason = CloseReason {
            code: actix_ws::CloseCode::Away,
            description: Some("bye".into()),
        };
        let mut theirs = BytesMut::new();
        Parser::write_close(&mut theirs, Some(reason.clone()), false);
        assert_eq!(bytes_of(&Frame::close(Some(reason))), theirs.to_vec());
    }

    #[test]
    fn a_partly_written_frame_resumes_where_it_stopped() {
        let mut frame = Frame::text("hello");
        let whole = bytes_of(&frame);
        frame.advance(1);
        assert_eq!(bytes_of(&frame), whole[1..]);
        frame.advance(3);
        assert_eq!(bytes_of(&frame), whole[4..]);
        assert_eq!(frame.remaining(), 3);
    }

    #[test]
    fn frames_queue_up_to_the_limit_and_not_after_shut() {
        let outbox = Outbox::new(2);
        for _ in 0..3 {
            assert_eq!(outbox.send(Frame::text("x")), Ok(()));
        }
        assert_eq!(outbox.send(Frame::text("x")), Err(Refused::Full));
        let mut batch = VecDeque::new();
        assert!(outbox.take_queued(&mut batch));
        assert_eq!(batch.len(), 3);
        batch.clear();
        assert!(!outbox.take_queued(&mut batch));
        outbox.shut();
        assert_eq!(outbox.send(Frame::text("x")), Err(Refused::Closed));
    }

    #[test]
    fn a_held_outbox_writes_nothing_until_released_then_the_welcome_first() {
        let outbox = Outbox::new(4);
        outbox.hold(Frame::text("welcome"));
        assert_eq!(outbox.send(Frame::text("m1")), Ok(()));
        let mut batch = VecDeque::new();
        assert!(!outbox.take_queued(&mut batch));
        outbox.release();
        outbox.release();
        assert!(outbox.take_queued(&mut batch));
        let bodies: Vec<_> = batch.iter().map(|f| f.body.clone()).collect();
        assert_eq!(bodies, [Bytes::from("welcome"), Bytes::from("m1")]);
    }
}
