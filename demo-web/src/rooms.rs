//! The demo's rooms: a fixed list (the business decides which rooms exist and who may join),
//! each with the last few messages in memory so a reloaded page can show them.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// The rooms that exist.
pub const ROOMS: [&str; 3] = ["lobby", "rust", "random"];
/// Messages kept per room.
pub const HISTORY: usize = 50;

/// One room message, as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoomMessage {
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

/// The last messages of each room.
#[derive(Debug)]
pub struct Rooms {
    history: Mutex<HashMap<&'static str, VecDeque<RoomMessage>>>,
}

impl Default for Rooms {
    fn default() -> Self {
        Self {
            history: Mutex::new(ROOMS.iter().map(|r| (*r, VecDeque::new())).collect()),
        }
    }
}

impl Rooms {
    /// The room called `name`, if it exists.
    pub fn find(name: &str) -> Option<&'static str> {
        ROOMS.iter().copied().find(|r| *r == name)
    }

    /// Records a message, dropping the oldest past [`HISTORY`].
    pub fn record(&self, room: &'static str, message: RoomMessage) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let list = history.entry(room).or_default();
        list.push_back(message);
        while list.len() > HISTORY {
            list.pop_front();
        }
    }

    /// The recent messages of a room, oldest first.
    pub fn recent(&self, room: &'static str) -> Vec<RoomMessage> {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history
            .get(room)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}
