//! Presence calls: has_online, online (paged), online_count, kick, and the live node set.

use imclient::ImClient;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::params::Params;

/// Default and largest page of `online`.
const ONLINE_PAGE: usize = 1000;
const ONLINE_PAGE_MAX: usize = 10_000;

/// `{client}` → `{online}`.
pub async fn has_online(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["client"])?;
    let client = p.client("client")?;
    Ok(json!({ "online": im.has_online(&client).await? }))
}

/// `{cursor?, limit?}` → `{clients, cursor}`: online clients in id order after `cursor` (the
/// last id of the previous page), `limit` of them; `cursor` is null after the last page.
/// Each page reads the whole online list from Redis (imclient has no paged read yet), so it
/// suits thousands of clients, not millions.
pub async fn online(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["cursor", "limit"])?;
    let after = p.opt_string("cursor")?;
    let limit = p.count_or("limit", ONLINE_PAGE, ONLINE_PAGE_MAX)?;
    let all = im.online_clients().await?;
    let start = match &after {
        Some(after) => all.partition_point(|c| c.as_str() <= after.as_str()),
        None => 0,
    };
    let page = &all[start..(start + limit).min(all.len())];
    let more = start + page.len() < all.len();
    let cursor = page.last().filter(|_| more).map(|c| c.as_str());
    Ok(json!({ "clients": page, "cursor": cursor }))
}

/// `{}` → `{count}`.
pub async fn online_count(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    Params::new(params, &[])?;
    Ok(json!({ "count": im.online_count().await? }))
}

/// `{client}` → `{taken}`: whether the client's home node was running to close its sockets.
pub async fn kick(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["client"])?;
    let client = p.client("client")?;
    Ok(json!({ "taken": im.force_offline(&client).await? }))
}

/// `{}` → `{nodes}`: the configured nodes that hold their lease, as last read.
pub fn nodes(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    Params::new(params, &[])?;
    Ok(json!({ "nodes": im.live_nodes() }))
}
