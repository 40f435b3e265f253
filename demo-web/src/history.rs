//! What was said: the last [`KEPT`] messages of each conversation, rooms and private ones, in
//! Redis, so that a reload, another device or a restart of demo-web shows them again, and a
//! private message to someone away waits there for their next visit (store and forward).
//! Per user it also keeps who they have private conversations with (`chats:{user}`, by last
//! message) and, per conversation, the newest message their page received and the newest it
//! showed (`marks:{user}`): the first makes a sender's mark "delivered", the second counts
//! unread messages.

use std::collections::HashMap;

use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

use crate::storage::{Storage, StorageError};

/// Messages kept per conversation.
pub const KEPT: usize = 50;
/// Private conversations listed per user, newest first.
pub const CHATS_LISTED: isize = 100;

/// One message, as the page shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    /// Message id (the IM envelope id), for de-duplication with what the socket delivers.
    pub id: String,
    /// Sender's client id.
    pub from: String,
    /// Sender's display name.
    pub from_name: String,
    /// The text.
    pub text: String,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
}

impl Message {
    /// `text` from `from`, under the id the IM gave it, stamped now.
    pub fn sent_now(id: String, from: &crate::users::User, text: &str) -> Self {
        Self {
            id,
            from: from.id.clone(),
            from_name: from.name.clone(),
            text: text.to_owned(),
            ts: imclient::now_ms(),
        }
    }
}

/// A conversation: a room, or two people (in either order).
#[derive(Debug, Clone, Copy)]
pub enum Conversation<'a> {
    /// A room, by name.
    Room(&'a str),
    /// Two people, by client id.
    Private(&'a str, &'a str),
}

impl Conversation<'_> {
    fn name(&self) -> String {
        match self {
            Conversation::Room(room) => format!("room:{room}"),
            Conversation::Private(a, b) => {
                let (a, b) = if a <= b { (a, b) } else { (b, a) };
                format!("chat:{a}:{b}")
            }
        }
    }
}

/// How far a user's page got in a private conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The page received the message (pushed, or loaded).
    Received,
    /// The page showed the conversation up to the message.
    Seen,
}

impl Mark {
    fn field(self, peer: &str) -> String {
        match self {
            Mark::Received => format!("got:{peer}"),
            Mark::Seen => format!("seen:{peer}"),
        }
    }
}

/// One private conversation of a user, for the list of chats.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChatSummary {
    /// The other person's client id.
    pub peer: String,
    /// When its last message was sent.
    pub last_ts: u64,
    /// Messages from the peer the user has not seen.
    pub unread: usize,
}

/// Conversations in Redis.
#[derive(Debug, Clone)]
pub struct History {
    storage: Storage,
}

impl History {
    /// History kept in `storage`.
    pub fn new(storage: Storage) -> Self {
        Self { storage }
    }

    /// Records a message, dropping the oldest past [`KEPT`]; a private one also moves the
    /// conversation to the top of both people's chats.
    pub async fn record(
        &self,
        conversation: Conversation<'_>,
        message: &Message,
    ) -> Result<(), StorageError> {
        let key = self.storage.key(&conversation.name());
        let json = serde_json::to_string(message).map_err(StorageError::Json)?;
        let mut pipe = redis::pipe();
        pipe.rpush(&key, json)
            .ignore()
            .ltrim(&key, -(KEPT as isize), -1)
            .ignore();
        if let Conversation::Private(a, b) = conversation {
            pipe.zadd(self.storage.key(&format!("chats:{a}")), b, message.ts)
                .ignore()
                .zadd(self.storage.key(&format!("chats:{b}")), a, message.ts)
                .ignore();
        }
        let mut conn = self.storage.conn().await?;
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }

    /// The kept messages of a conversation, oldest first, each once (a send retried after a
    /// lost answer may have been recorded twice).
    pub async fn recent(
        &self,
        conversation: Conversation<'_>,
    ) -> Result<Vec<Message>, StorageError> {
        let mut conn = self.storage.conn().await?;
        let raw: Vec<String> = conn
            .lrange(self.storage.key(&conversation.name()), 0, -1)
            .await?;
        Ok(decode(raw))
    }

    /// Moves `user`'s mark in the conversation with `peer` forward to `id` (ids are
    /// time-ordered; a mark never moves back).
    pub async fn mark(
        &self,
        user: &str,
        peer: &str,
        mark: Mark,
        id: &str,
    ) -> Result<(), StorageError> {
        let key = self.storage.key(&format!("marks:{user}"));
        let mut conn = self.storage.conn().await?;
        let mut fields = vec![mark.field(peer)];
        // What was seen was received.
        if mark == Mark::Seen {
            fields.push(Mark::Received.field(peer));
        }
        for field in fields {
            let old: Option<String> = conn.hget(&key, &field).await?;
            if old.is_none_or(|old| old.as_str() < id) {
                let _: i64 = conn.hset(&key, &field, id).await?;
            }
        }
        Ok(())
    }

    /// Where `user`'s mark stands in the conversation with `peer`.
    pub async fn mark_of(
        &self,
        user: &str,
        peer: &str,
        mark: Mark,
    ) -> Result<Option<String>, StorageError> {
        let mut conn = self.storage.conn().await?;
        Ok(conn
            .hget(self.storage.key(&format!("marks:{user}")), mark.field(peer))
            .await?)
    }

    /// `user`'s private conversations, the most recent first, with their unread counts.
    pub async fn chats(&self, user: &str) -> Result<Vec<ChatSummary>, StorageError> {
        let mut conn = self.storage.conn().await?;
        let peers: Vec<(String, f64)> = conn
            .zrevrange_withscores(
                self.storage.key(&format!("chats:{user}")),
                0,
                CHATS_LISTED - 1,
            )
            .await?;
        if peers.is_empty() {
            return Ok(Vec::new());
        }
        let marks: HashMap<String, String> = conn
            .hgetall(self.storage.key(&format!("marks:{user}")))
            .await?;
        let mut pipe = redis::pipe();
        for (peer, _) in &peers {
            pipe.lrange(
                self.storage.key(&Conversation::Private(user, peer).name()),
                0,
                -1,
            );
        }
        let lists: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        Ok(peers
            .into_iter()
            .zip(lists)
            .map(|((peer, ts), raw)| {
                let seen = marks.get(&Mark::Seen.field(&peer)).map(String::as_str);
                let unread = decode(raw)
                    .iter()
                    .filter(|m| m.from == peer && seen.is_none_or(|s| m.id.as_str() > s))
                    .count();
                ChatSummary {
                    peer,
                    // Scores are milliseconds, exact in an f64.
                    last_ts: ts as u64,
                    unread,
                }
            })
            .collect())
    }
}

fn decode(raw: Vec<String>) -> Vec<Message> {
    let mut messages: Vec<Message> = raw
        .iter()
        .filter_map(|json| match serde_json::from_str(json) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "skipping a stored message that does not decode");
                None
            }
        })
        .collect();
    messages.sort_by(|a, b| a.id.cmp(&b.id));
    messages.dedup_by(|a, b| a.id == b.id);
    messages
}
