//! The shared Redis connection of an `ImClient` (and of a node's handshakes): one multiplexed
//! connection taken out of the pool and used by every non-blocking call, so concurrent calls
//! are pipelined on it and no call pays the pool's per-checkout health check (an UNWATCH and a
//! PING round trip). When a command fails in a way that may have broken the connection, it is
//! dropped and the next call takes a fresh one from the pool; a Redis Cluster connection is
//! kept, since it repairs itself. Blocking reads (events) take their own pooled connection.

use std::sync::{Mutex, MutexGuard};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::error::Result;
use crate::store::{Connection, SharedConn, Store};

/// The shared connection and the pool it is replaced from.
///
/// ```no_run
/// # async fn demo() -> imclient::Result<()> {
/// use imclient::{link::Link, store::Store};
/// let link = Link::new(Store::open("redis://127.0.0.1:6379")?);
/// let mut conn = link.get().await?;
/// let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut conn).await?;
/// # Ok(()) }
/// ```
pub struct Link {
    store: Store,
    /// The connection in use; `None` until first use and after a failure.
    current: Mutex<Option<SharedConn>>,
}

impl Link {
    /// A link over `store`'s pool; connects at first use.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            current: Mutex::new(None),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Option<SharedConn>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle on the shared connection, connecting first if needed.
    pub async fn get(&self) -> Result<LinkConn<'_>> {
        if let Some(conn) = self.slot().clone() {
            return Ok(LinkConn { conn, link: self });
        }
        let conn = self.store.get().await?.detach();
        *self.slot() = Some(conn.clone());
        Ok(LinkConn { conn, link: self })
    }

    fn failed(&self, conn: &SharedConn, error: &RedisError) {
        // A cluster connection repairs itself (it reconnects to a node and reads the slot map
        // again); a fresh one from the pool would first be checked with a PING to every
        // master, which waits for a failed master until the failover is over.
        if matches!(conn, Connection::Cluster(_)) {
            return;
        }
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_unrecoverable_error()
            || error.is_timeout()
        {
            self.slot().take();
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("connected", &self.slot().is_some())
            .finish_non_exhaustive()
    }
}

/// A handle on the shared connection that reports failures back to its [`Link`]; see
/// [`Link::get`].
#[derive(Debug)]
pub struct LinkConn<'a> {
    conn: SharedConn,
    link: &'a Link,
}

impl ConnectionLike for LinkConn<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.link.failed(&self.conn, e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.link.failed(&self.conn, e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
