//! `Pending<T>`: a coalescing set of items that need background work, with a wake-up. Marking
//! twice before the worker runs costs nothing more, so memory is bounded by the number of
//! distinct items, and a producer never waits on the worker.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Items waiting for a worker.
#[derive(Debug)]
pub struct Pending<T> {
    items: Mutex<HashSet<T>>,
    notify: Notify,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self {
            items: Mutex::new(HashSet::new()),
            notify: Notify::new(),
        }
    }
}

impl<T: Eq + Hash + Clone> Pending<T> {
    /// Marks one item and wakes the worker.
    pub fn mark(&self, item: &T) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if items.insert(item.clone()) && items.len() == 1 {
            self.notify.notify_one();
        }
    }

    /// Marks many items and wakes the worker.
    pub fn mark_all(&self, more: impl IntoIterator<Item = T>) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        items.extend(more);
        if !items.is_empty() {
            self.notify.notify_one();
        }
    }

    /// Takes every marked item.
    pub fn take(&self) -> Vec<T> {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        // A fresh set rather than a drained one: after a burst (10,000 clients leaving) a
        // drained set would keep its room for good.
        std::mem::take(&mut *items).into_iter().collect()
    }

    /// Waits until something is marked (returns at once if a mark came since the last wait).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}
