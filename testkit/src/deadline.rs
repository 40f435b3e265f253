//! Waiting on a condition with a deadline: tests poll what a user would notice instead of
//! sleeping for a guessed time.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Default deadline for a condition.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
