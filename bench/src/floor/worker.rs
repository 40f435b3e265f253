//! One floor thread: a mio poll (epoll, no runtime) over its connections, its mailbox and, on
//! thread 0, the feed. Reading the feed, thread 0 first posts every other thread the records
//! it has receivers for (one copy and at most one wake per thread per read), then writes its
//! own share, so the threads write side by side as a node's session threads do.
//!
//! Lock order: a thread holds at most one lock, a mailbox's, and never while writing a socket.

use std::io::{self, Read as _};
use std::sync::{Arc, Mutex, MutexGuard};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::conns::Conns;
use super::error::Result;
use super::feed::{self, To};

/// The token of a thread's mailbox waker.
const WAKE: Token = Token(usize::MAX);
/// Feed `k` is registered as `FEEDS + k`; connections use their slot, far below.
const FEEDS: usize = usize::MAX / 2;
/// The feed's read buffer, grown only for a record longer than it.
const FEED_BUF: usize = 256 * 1024;
/// Poll events taken at once.
const EVENTS: usize = 1024;

/// A connection accepted and upgraded, for the thread that owns its client.
#[derive(Debug)]
pub(crate) struct NewConn {
    /// Its slot on that thread.
    pub(crate) slot: u32,
    /// The channel it is a member of.
    pub(crate) chan: Option<u32>,
    /// The socket, non-blocking.
    pub(crate) stream: TcpStream,
    /// The 101 to write once the thread holds it.
    pub(crate) response: Vec<u8>,
}

/// What others leave for a thread.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// Connections to hold.
    pub(crate) conns: Vec<NewConn>,
    /// Feeds to read (thread 0 only).
    pub(crate) feeds: Vec<Feed>,
    /// Feed records whose receivers are on this thread, as read from the feed.
    records: Vec<u8>,
}

impl Inbox {
    fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.feeds.is_empty() && self.records.is_empty()
    }
}

/// A thread's inbox and the waker of its poll.
#[derive(Debug)]
pub(crate) struct Mailbox {
    inbox: Mutex<Inbox>,
    waker: Waker,
}

impl Mailbox {
    /// A mailbox whose posts wake `registry`'s poll.
    pub(crate) fn new(registry: &Registry) -> io::Result<Self> {
        Ok(Self {
            inbox: Mutex::new(Inbox::default()),
            waker: Waker::new(registry, WAKE)?,
        })
    }

    /// Leaves something in the inbox; wakes the thread unless the inbox held something
    /// already (then a wake is on its way, and the thread takes everything at once).
    pub(crate) fn post(&self, leave: impl FnOnce(&mut Inbox)) -> io::Result<()> {
        let was_empty = {
            let mut inbox = lock(&self.inbox);
            let was_empty = inbox.is_empty();
            leave(&mut inbox);
            was_empty
        };
        if was_empty {
            self.waker.wake()?;
        }
        Ok(())
    }
}

/// imbench's feed connection and what was read from it but not yet handled.
#[derive(Debug)]
pub(crate) struct Feed {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` read.
    filled: usize,
}

impl Feed {
    /// A feed on `stream` (non-blocking), `first` read with its request.
    pub(crate) fn new(stream: TcpStream, first: &[u8]) -> Self {
        let mut buf = vec![0; FEED_BUF.max(first.len())];
        buf[..first.len()].copy_from_slice(first);
        Self {
            stream,
            buf,
            filled: first.len(),
        }
    }
}

/// One thread of the floor.
#[derive(Debug)]
pub(crate) struct Worker {
    me: usize,
    poll: Poll,
    mailboxes: Arc<[Mailbox]>,
    conns: Conns,
    feeds: Vec<Option<Feed>>,
    /// Per thread, the records read for it from the current feed read, posted after it.
    outgoing: Vec<Vec<u8>>,
    /// The records taken from the inbox, written outside its lock. Swapped with the inbox's
    /// buffer so that both keep their room: a steady feed allocates nothing.
    taken: Vec<u8>,
}

impl Worker {
    /// Thread `me` of `mailboxes.len()`, polling `poll` (whose registry `mailboxes[me]` wakes).
    pub(crate) fn new(me: usize, poll: Poll, mailboxes: Arc<[Mailbox]>) -> Self {
        Self {
            me,
            poll,
            outgoing: vec![Vec::new(); mailboxes.len()],
            mailboxes,
            conns: Conns::default(),
            feeds: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// Serves until the poll fails.
    pub(crate) fn run(mut self) -> Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for event in &events {
                match event.token() {
                    WAKE => self.take_inbox(),
                    Token(t) if t >= FEEDS => self.read_feed(t - FEEDS),
                    Token(slot) => self.conns.writable(
                        self.poll.registry(),
                        slot as u32,
                        event.is_error() || event.is_write_closed(),
                    ),
                }
            }
        }
    }

    /// Holds the new connections and feeds, and writes the records left for this thread.
    fn take_inbox(&mut self) {
        let mut records = std::mem::take(&mut self.taken);
        let (conns, feeds) = {
            let mut inbox = lock(&self.mailboxes[self.me].inbox);
            std::mem::swap(&mut inbox.records, &mut records);
            (
                std::mem::take(&mut inbox.conns),
                std::mem::take(&mut inbox.feeds),
            )
        };
        for c in conns {
            if let Err(e) =
                self.conns
                    .insert(self.poll.registry(), c.slot, c.chan, c.stream, &c.response)
            {
                tracing::debug!(slot = c.slot, error = %e, "a connection failed before its 101");
            }
        }
        for feed in feeds {
            self.add_feed(feed);
        }
        // Thread 0 checked them as it read them, and left only this thread's.
        let _ = self.write_records(&records, |_| true);
        records.clear();
        self.taken = records;
    }

    fn add_feed(&mut self, mut feed: Feed) {
        let k = self.feeds.len();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut feed.stream, Token(FEEDS + k), Interest::READABLE)
        {
            tracing::warn!(error = %e, "cannot poll the feed");
            return;
        }
        tracing::info!(feed = k, "feed connected");
        // What came with the request, if anything.
        match self.handle(&mut feed) {
            Ok(()) => self.feeds.push(Some(feed)),
            Err(e) => tracing::warn!(feed = k, error = %e, "feed out of step, closed"),
        }
    }

    /// Reads feed `k` until it would block, handling the records of each read as it comes.
    fn read_feed(&mut self, k: usize) {
        let Some(mut feed) = self.feeds.get_mut(k).and_then(Option::take) else {
            return;
        };
        loop {
            if feed.filled == feed.buf.len() {
                // A record longer than the buffer: `decode` bounds it.
                let len = feed.buf.len();
                feed.buf.resize(len * 2, 0);
            }
            match feed.stream.read(&mut feed.buf[feed.filled..]) {
                Ok(0) => {
                    tracing::info!(feed = k, "feed closed");
                    return;
                }
                Ok(n) => {
                    feed.filled += n;
                    if let Err(e) = self.handle(&mut feed) {
                        tracing::warn!(feed = k, error = %e, "feed out of step, closed");
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(feed = k, error = %e, "feed failed");
                    return;
                }
            }
        }
        self.feeds[k] = Some(feed);
    }

    /// Hands out the whole records read so far and keeps the partial one at the front.
    fn handle(&mut self, feed: &mut Feed) -> Result<()> {
        let used = self.dispatch(&feed.buf[..feed.filled])?;
        feed.buf.copy_within(used..feed.filled, 0);
        feed.filled -= used;
        Ok(())
    }

    /// Posts every other thread its records among the whole ones in `bytes`, then writes this
    /// thread's. Returns the bytes of the whole records.
    fn dispatch(&mut self, bytes: &[u8]) -> Result<usize> {
        let threads = self.mailboxes.len();
        let mut end = 0;
        while let Some((record, n)) = feed::decode(&bytes[end..])? {
            let raw = &bytes[end..end + n];
            match record.to {
                To::Client(i) => {
                    let t = i as usize % threads;
                    if t != self.me {
                        self.outgoing[t].extend_from_slice(raw);
                    }
                }
                To::Chan(_) => {
                    for (t, out) in self.outgoing.iter_mut().enumerate() {
                        if t != self.me {
                            out.extend_from_slice(raw);
                        }
                    }
                }
            }
            end += n;
        }
        for (t, out) in self.outgoing.iter_mut().enumerate() {
            if !out.is_empty() {
                self.mailboxes[t].post(|inbox| {
                    if inbox.records.is_empty() {
                        std::mem::swap(&mut inbox.records, out);
                    } else {
                        inbox.records.extend_from_slice(out);
                    }
                })?;
                out.clear();
            }
        }
        let me = self.me;
        self.write_records(&bytes[..end], |to| match to {
            To::Client(i) => i as usize % threads == me,
            To::Chan(_) => true,
        })?;
        Ok(end)
    }

    /// Writes the records in `bytes` whose receivers `mine` says are on this thread (some of
    /// them, for a channel). Messages in a row to one channel go out together: one write per
    /// member for all of them.
    fn write_records(&mut self, bytes: &[u8], mine: impl Fn(To) -> bool) -> Result<()> {
        let registry = self.poll.registry();
        let threads = self.mailboxes.len() as u32;
        let mut run: Option<(u32, Vec<&[u8]>)> = None;
        let mut at = 0;
        while let Some((record, n)) = feed::decode(&bytes[at..])? {
            at += n;
            if !mine(record.to) {
                continue;
            }
            match (record.to, &mut run) {
                (To::Chan(g), Some((h, bodies))) if g == *h => bodies.push(record.body),
                (To::Chan(g), _) => {
                    if let Some((h, bodies)) = run.replace((g, vec![record.body])) {
                        self.conns.fan_out(registry, h, &bodies);
                    }
                }
                (To::Client(i), _) => {
                    if let Some((h, bodies)) = run.take() {
                        self.conns.fan_out(registry, h, &bodies);
                    }
                    self.conns.deliver(registry, i / threads, record.body);
                }
            }
        }
        if let Some((h, bodies)) = run {
            self.conns.fan_out(registry, h, &bodies);
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
