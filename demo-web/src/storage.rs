//! Where demo-web keeps what must outlive a page or a process: the deployment's Redis (the one
//! imclient talks to, single server or cluster), under `{prefix}:demo:`. Every key is used
//! alone (no multi-key command), so a Redis Cluster needs nothing more.

use imclient::ImClient;
use imclient::store::Conn;

/// Why the storage could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No connection to Redis.
    #[error("cannot reach Redis: {0}")]
    Connect(#[from] imclient::Error),
    /// Redis refused or failed a command.
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
    /// A stored value that does not read back (written by another version).
    #[error("a stored value does not decode: {0}")]
    Json(serde_json::Error),
}

/// The demo's keys in the IM's Redis.
#[derive(Debug, Clone)]
pub struct Storage {
    im: ImClient,
}

impl From<&ImClient> for Storage {
    fn from(im: &ImClient) -> Self {
        Self { im: im.clone() }
    }
}

impl Storage {
    /// A pooled connection.
    pub async fn conn(&self) -> Result<Conn, StorageError> {
        Ok(self.im.store().get().await?)
    }

    /// The full name of the demo's key `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:demo:{name}", self.im.keys().prefix())
    }
}
