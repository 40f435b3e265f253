//! Online/offline events: read from the Redis Stream the nodes append to, so a backend that was
//! down reads what it missed. Two ways to read: every reader sees every event
//! ([`ImClient::events`]), or the replicas of a backend share them through a consumer group
//! ([`ImClient::event_group`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::Store;
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::client::ImClient;
use crate::error::{Error, Result};
use crate::ids::{ClientId, NodeId};

/// The stream entry field that holds the event JSON.
pub const EVENT_FIELD: &str = "event";

/// How long one blocking read waits, in milliseconds. Kept below the shortest response timeout
/// allowed ([`crate::store::MIN_REDIS_RESPONSE_TIMEOUT`]) so a pooled connection can block
/// without tripping it.
const BLOCK_MS: usize = 250;
/// Entries fetched per read.
const BATCH: usize = 128;

/// Whether a client came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The client's first connection on its node opened.
    Online,
    /// The client's last connection on its node closed, or its node died.
    Offline,
}

/// An online/offline event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Online or offline.
    pub kind: EventKind,
    /// The client.
    pub client: ClientId,
    /// The node it is (or was) connected to.
    pub node: NodeId,
    /// The metadata of the client's connect token.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
    /// When it happened, milliseconds since the Unix epoch.
    pub at: u64,
    /// Connections the client had on the node when the event was written.
    #[serde(default)]
    pub conns: u32,
}

/// An event with its stream id, as webhooks and the HTTP API's pull route send it. The id is
/// stable: a receiver de-duplicates by it (delivery is at least once).
///
/// ```
/// use imclient::{Event, EventEntry, EventKind, NodeId};
/// let entry = EventEntry {
///     id: "1733350000000-0".into(),
///     event: Event {
///         kind: EventKind::Online,
///         client: imclient::ClientId::new("alice").unwrap(),
///         node: NodeId::new("ws://127.0.0.1:6001").unwrap(),
///         meta: serde_json::Value::Null,
///         at: 1733350000000,
///         conns: 1,
///     },
/// };
/// let json = serde_json::to_string(&entry).unwrap();
/// assert!(json.starts_with(r#"{"id":"1733350000000-0","kind":"online","client":"alice""#));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEntry {
    /// The event's Redis stream id, e.g. `1733350000000-0`.
    pub id: String,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

impl EventEntry {
    /// The entry `id` of the events stream `key`, from its fields.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the entry is not an event (written by something else).
    pub fn from_stream(
        key: &str,
        id: String,
        fields: &HashMap<String, redis::Value>,
    ) -> Result<Self> {
        let event = parse_entry(fields).map_err(|reason| Error::Malformed {
            key: format!("{key} {id}"),
            reason,
        })?;
        Ok(Self { id, event })
    }
}

/// One page of events: see [`ImClient::read_events`].
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// The events, oldest first.
    pub events: Vec<EventEntry>,
    /// Where the next page starts: the last entry read, or where this page started.
    pub last_id: String,
}

/// Where an all-events reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsFrom {
    /// Only events appended after the reader starts.
    Now,
    /// Every event still in the stream (it is capped by the nodes' `events-maxlen`).
    Beginning,
    /// Events after this stream id, e.g. the last one a previous run handled.
    After(String),
}

/// Where a new consumer group starts; ignored when the group exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStart {
    /// Only events appended after the group is created.
    Now,
    /// Every event still in the stream.
    Beginning,
}

enum Mode {
    All {
        last_id: String,
    },
    Group {
        group: String,
        consumer: String,
        /// While this consumer's own unacknowledged entries are read again: the id after which
        /// to go on reading them (each read picks up after the last one, never from the start
        /// again, since the caller may not have acknowledged them yet). `None` once done.
        pending_from: Option<String>,
    },
}

/// Entries a reader may fetch ahead of the caller.
const PREFETCH: usize = BATCH;

/// An async stream of events. Call [`EventStream::next`] in a loop; it is cancel-safe, so it
/// can sit in a `select!`. A background task reads Redis ahead of the caller (at most a batch)
/// and stops when the stream is dropped.
pub struct EventStream {
    key: String,
    rx: mpsc::Receiver<Result<(String, Event)>>,
    /// Group mode: ids the caller is done with, acknowledged by the reader.
    acks: Option<Arc<Mutex<Vec<String>>>>,
    /// Group mode: the id `next` returned last, done once `next` is called again.
    last: Option<String>,
    skipped: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl ImClient {
    /// Reads every event, starting at `from`. Each reader sees all events.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// use imclient::EventsFrom;
    /// let mut events = im.events(EventsFrom::Now).await?;
    /// loop {
    ///     let (id, ev) = events.next().await?;
    ///     tracing::info!("{id}: {} is {:?}", ev.client, ev.kind);
    /// }
    /// # }
    /// ```
    pub async fn events(&self, from: EventsFrom) -> Result<EventStream> {
        let key = self.keys().events();
        let last_id = match from {
            EventsFrom::Beginning => "0-0".to_owned(),
            EventsFrom::After(id) => id,
            EventsFrom::Now => self.last_event_id().await?,
        };
        Ok(EventStream::new(
            self.store().clone(),
            key,
            Mode::All { last_id },
        ))
    }

    /// Reads at most `limit` events after `from`, waiting up to `wait` for the first one when
    /// none is there yet: one page of a long poll. The page's `last_id` is where the next page
    /// starts, also when the page is empty (with [`EventsFrom::Now`], the id "now" was pinned
    /// to, so that nothing between two pages is missed).
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// use std::time::Duration;
    /// use imclient::EventsFrom;
    /// let mut from = EventsFrom::Now;
    /// loop {
    ///     let page = im.read_events(from, 100, Duration::from_secs(25)).await?;
    ///     for entry in &page.events {
    ///         tracing::info!("{}: {} is {:?}", entry.id, entry.event.client, entry.event.kind);
    ///     }
    ///     from = EventsFrom::After(page.last_id);
    /// }
    /// # }
    /// ```
    pub async fn read_events(
        &self,
        from: EventsFrom,
        limit: usize,
        wait: Duration,
    ) -> Result<EventPage> {
        let key = self.keys().events();
        let mut last_id = match from {
            EventsFrom::Beginning => "0-0".to_owned(),
            EventsFrom::After(id) => id,
            EventsFrom::Now => self.last_event_id().await?,
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut opts = StreamReadOptions::default().count(limit.max(1));
            // Blocks in slices below the pooled connection's response timeout; BLOCK 0 would
            // mean forever, so no wait means no BLOCK at all.
            let block = left.as_millis().min(BLOCK_MS as u128) as usize;
            if block > 0 {
                opts = opts.block(block);
            }
            let mut conn = self.store().get().await?;
            let reply: Option<StreamReadReply> = conn
                .xread_options(&[&key], &[last_id.as_str()], &opts)
                .await?;
            let mut events = Vec::new();
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                last_id.clone_from(&entry.id);
                match EventEntry::from_stream(&key, entry.id, &entry.map) {
                    Ok(event) => events.push(event),
                    Err(e) => tracing::warn!(%key, error = %e, "skipping malformed event"),
                }
            }
            if !events.is_empty() || block == 0 {
                return Ok(EventPage { events, last_id });
            }
        }
    }

    /// The id of the stream's last entry, `0-0` when it is empty: "now", pinned, so that events
    /// between this call and the first read are not lost (XREAD with `$` would skip them).
    async fn last_event_id(&self) -> Result<String> {
        let mut conn = self.conn().await?;
        let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(self.keys().events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(last
            .into_iter()
            .next()
            .map(|(id, _)| id)
            .unwrap_or_else(|| "0-0".to_owned()))
    }

    /// Joins consumer group `group` as `consumer`: each event goes to one consumer of the group,
    /// so backend replicas share them. An event is acknowledged when the next one is asked for;
    /// what a crashed consumer had not acknowledged is read again when it returns under the
    /// same name.
    ///
    /// ```no_run
    /// # async fn f(im: imclient::ImClient) -> imclient::Result<()> {
    /// use imclient::GroupStart;
    /// let mut events = im.event_group("presence-workers", "replica-1", GroupStart::Now).await?;
    /// let (_id, ev) = events.next().await?;
    /// # Ok(()) }
    /// ```
    pub async fn event_group(
        &self,
        group: &str,
        consumer: &str,
        start: GroupStart,
    ) -> Result<EventStream> {
        let key = self.keys().events();
        let mut conn = self.conn().await?;
        let start_id = match start {
            GroupStart::Now => "$",
            GroupStart::Beginning => "0",
        };
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(group)
            .arg(start_id)
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            other => other?,
        }
        let mode = Mode::Group {
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            pending_from: Some("0".to_owned()),
        };
        Ok(EventStream::new(self.store().clone(), key, mode))
    }
}

impl EventStream {
    fn new(pool: Store, key: String, mode: Mode) -> Self {
        let (tx, rx) = mpsc::channel(PREFETCH);
        let acks = matches!(mode, Mode::Group { .. }).then(|| Arc::new(Mutex::new(Vec::new())));
        let skipped = Arc::new(AtomicU64::new(0));
        let reader = Reader {
            pool,
            key: key.clone(),
            mode,
            acks: acks.clone(),
            skipped: skipped.clone(),
        };
        let reader = tokio::spawn(reader.run(tx));
        Self {
            key,
            rx,
            acks,
            last: None,
            skipped,
            reader,
        }
    }

    /// Entries skipped because they were not valid events (written by something else).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The next event and its stream id, waiting for one to arrive. Returns an error when Redis
    /// cannot be reached; the reader keeps retrying, so calling again goes on from where it
    /// stopped. Cancel-safe: an event is never lost by dropping this future.
    pub async fn next(&mut self) -> Result<(String, Event)> {
        if let (Some(acks), Some(done)) = (&self.acks, self.last.take()) {
            lock(acks).push(done);
        }
        match self.rx.recv().await {
            Some(Ok(item)) => {
                if self.acks.is_some() {
                    self.last = Some(item.0.clone());
                }
                Ok(item)
            }
            Some(Err(e)) => Err(e),
            None => Err(Error::Options("the event reader stopped".into())),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The background half of an [`EventStream`].
struct Reader {
    pool: Store,
    key: String,
    mode: Mode,
    acks: Option<Arc<Mutex<Vec<String>>>>,
    skipped: Arc<AtomicU64>,
}

impl Reader {
    async fn run(mut self, tx: mpsc::Sender<Result<(String, Event)>>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.read().await {
                Ok(entries) => {
                    backoff = Duration::from_millis(50);
                    for (id, map) in entries {
                        match parse_entry(&map) {
                            Ok(event) => {
                                if tx.send(Ok((id, event))).await.is_err() {
                                    return;
                                }
                            }
                            Err(reason) => {
                                self.skipped.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(key = %self.key, %id, %reason, "skipping malformed event");
                                if let Some(acks) = &self.acks {
                                    lock(acks).push(id);
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One blocking read (after acknowledging what the caller is done with).
    async fn read(&mut self) -> Result<Vec<(String, HashMap<String, redis::Value>)>> {
        let mut conn = self.pool.get().await?;
        let reply: Option<StreamReadReply> = match &mut self.mode {
            Mode::All { last_id } => {
                let opts = StreamReadOptions::default().block(BLOCK_MS).count(BATCH);
                conn.xread_options(&[&self.key], &[last_id.as_str()], &opts)
                    .await?
            }
            Mode::Group {
                group,
                consumer,
                pending_from,
            } => {
                if let Some(acks) = &self.acks {
                    let done: Vec<String> = std::mem::take(&mut *lock(acks));
                    if !done.is_empty()
                        && let Err(e) = conn
                            .xack::<_, _, _, i64>(&self.key, group.as_str(), &done)
                            .await
                    {
                        lock(acks).extend(done);
                        return Err(e.into());
                    }
                }
                // First the entries this consumer was given before and never acknowledged.
                let id = pending_from.clone().unwrap_or_else(|| ">".to_owned());
                let mut opts = StreamReadOptions::default()
                    .group(group.as_str(), consumer.as_str())
                    .count(BATCH);
                if pending_from.is_none() {
                    opts = opts.block(BLOCK_MS);
                }
                let reply: Option<StreamReadReply> = conn
                    .xread_options(&[&self.key], &[id.as_str()], &opts)
                    .await?;
                if pending_from.is_some() {
                    *pending_from = reply
                        .as_ref()
                        .and_then(|r| r.keys.iter().flat_map(|k| k.ids.last()).last())
                        .map(|last| last.id.clone());
                }
                reply
            }
        };
        let mut out = Vec::new();
        for stream in reply.into_iter().flat_map(|r| r.keys) {
            for entry in stream.ids {
                if let Mode::All { last_id } = &mut self.mode {
                    last_id.clone_from(&entry.id);
                }
                out.push((entry.id, entry.map));
            }
        }
        Ok(out)
    }
}

fn parse_entry(map: &HashMap<String, redis::Value>) -> Result<Event, String> {
    let value = map
        .get(EVENT_FIELD)
        .ok_or_else(|| format!("no `{EVENT_FIELD}` field"))?;
    let text: String = redis::from_redis_value_ref(value).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

impl From<&str> for EventsFrom {
    fn from(id: &str) -> Self {
        EventsFrom::After(id.to_owned())
    }
}
