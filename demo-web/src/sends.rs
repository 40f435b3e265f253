//! Sends the page may retry. A page whose send got no answer (the network dropped) cannot tell
//! whether the message went out, so it sends again with the same `retry_key`; a key seen before
//! gets the first send's message id back instead of sending a second message. Keys are per
//! user; the last [`KEPT`] are remembered. A send that failed here may have gone out all the
//! same (Redis ran the PUBLISH and its answer was lost), so every attempt under a key uses the
//! message id given to the key's first attempt: a second copy is dropped by receivers, which
//! de-duplicate on the id. The id is a fresh time-ordered one (pages sort messages by id), so
//! it is remembered with the key rather than derived from it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// Keys remembered, all users together.
pub const KEPT: usize = 10_000;
/// Longest key, in characters.
pub const MAX_KEY_CHARS: usize = 64;

type Key = (String, String);

/// What a successful send answered: its id, and for a private message whether it was stored
/// for later (no running node could take it). A repeat under the same key gets the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message id.
    pub id: String,
    /// Kept in the history only: the receiver gets it on their next visit.
    pub stored: bool,
}

/// Recent sends by (user, retry key), with what each answered (`T`).
#[derive(Debug)]
pub struct Sends<T = String> {
    /// std Mutex: never held across an await (the cells are awaited outside it).
    inner: Mutex<Inner<T>>,
}

impl<T> Default for Sends<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                ids: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }
}

#[derive(Debug)]
struct Inner<T> {
    /// Per key: the id every attempt sends under, and the answer once one attempt succeeded.
    ids: HashMap<Key, (String, Arc<OnceCell<T>>)>,
    order: VecDeque<Key>,
}

impl<T: Clone> Sends<T> {
    /// Runs `send` (given the message id to send under; it returns the answer) at most once
    /// per `(user, key)` that succeeds: a repeat gets the first answer, a repeat arriving
    /// while the first is under way waits for it, and a failed send may be tried again, under
    /// the same id. Without a key, just sends under a new id.
    pub async fn once<E, F, Fut>(&self, user: &str, key: Option<&str>, send: F) -> Result<T, E>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let Some(key) = key else {
            return send(imclient::new_message_id()).await;
        };
        let (id, cell) = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let k = (user.to_owned(), key.to_owned());
            match inner.ids.get(&k) {
                Some(known) => known.clone(),
                None => {
                    let known = (imclient::new_message_id(), Arc::new(OnceCell::new()));
                    inner.ids.insert(k.clone(), known.clone());
                    inner.order.push_back(k);
                    while inner.order.len() > KEPT {
                        if let Some(old) = inner.order.pop_front() {
                            inner.ids.remove(&old);
                        }
                    }
                    known
                }
            }
        };
        cell.get_or_try_init(|| send(id)).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_key_sends_once_per_user_and_a_failure_may_be_retried() {
        let sends = Sends::<String>::default();
        let calls = AtomicUsize::new(0);
        let send = |ok: bool| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if ok {
                    Ok(format!("id{n}"))
                } else {
                    Err("down")
                }
            }
        };
        assert_eq!(
            sends.once("ann", Some("k1"), |_| send(false)).await,
            Err("down")
        );
        assert_eq!(
            sends.once("ann", Some("k1"), |_| send(true)).await,
            Ok("id1".to_owned())
        );
        assert_eq!(
            sends.once("ann", Some("k1"), |_| send(true)).await,
            Ok("id1".to_owned())
        );
        assert_eq!(
            sends.once("ben", Some("k1"), |_| send(true)).await,
            Ok("id2".to_owned())
        );
        assert_eq!(
            sends.once("ann", None, |_| send(true)).await,
            Ok("id3".to_owned())
        );
        assert_eq!(
            sends.once("ann", None, |_| send(true)).await,
            Ok("id4".to_owned())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_repeat_during_the_first_send_waits_for_its_id() {
        let sends = Sends::<String>::default();
        let calls = AtomicUsize::new(0);
        let slow = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok::<_, ()>("first".to_owned())
        };
        let (a, b) = tokio::join!(
            sends.once("ann", Some("k"), |_| slow()),
            sends.once("ann", Some("k"), |_| slow())
        );
        assert_eq!((a, b), (Ok("first".to_owned()), Ok("first".to_owned())));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn every_attempt_under_a_key_sends_under_the_same_id() {
        let sends = Sends::<String>::default();
        let tried = Mutex::new(Vec::new());
        let attempt = |ok: bool| {
            let tried = &tried;
            move |id: String| async move {
                tried
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(id.clone());
                if ok { Ok(id) } else { Err("timed out") }
            }
        };
        assert_eq!(
            sends.once("ann", Some("k1"), attempt(false)).await,
            Err("timed out")
        );
        let sent = sends.once("ann", Some("k1"), attempt(true)).await;
        let tried = tried.into_inner().unwrap_or_else(|p| p.into_inner());
        assert_eq!(tried.len(), 2);
        assert_eq!(
            tried[0], tried[1],
            "a retry after a failure must reuse the id"
        );
        assert_eq!(sent, Ok(tried[0].clone()));
        assert_ne!(
            sends
                .once("ben", Some("k1"), |id| async move { Ok::<_, ()>(id) })
                .await,
            Ok(tried[0].clone())
        );
    }

    #[tokio::test]
    async fn old_keys_are_forgotten() {
        let sends = Sends::<String>::default();
        for i in 0..=KEPT {
            let key = format!("k{i}");
            let _ = sends
                .once("ann", Some(&key), |_| async { Ok::<_, ()>(key.clone()) })
                .await;
        }
        let kept = sends
            .once("ann", Some("k1"), |_| async {
                Ok::<_, ()>("new".to_owned())
            })
            .await;
        assert_eq!(kept, Ok("k1".to_owned()));
        let again = sends
            .once("ann", Some("k0"), |_| async {
                Ok::<_, ()>("new".to_owned())
            })
            .await;
        assert_eq!(again, Ok("new".to_owned()));
    }
}
