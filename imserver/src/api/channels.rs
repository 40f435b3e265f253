//! Channel calls: join, leave, members (paged), counts, a client's channels, the channel
//! list, delete.

use imclient::ImClient;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::params::Params;

/// `{chan, client}` or `{chan, clients}` → `{chan, clients}` (how many joined).
pub async fn join(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["chan", "client", "clients"])?;
    let chan = p.chan("chan")?;
    let clients = p.client_or_clients("client", "clients")?;
    match clients.as_slice() {
        [one] => im.join_chan(one, &chan).await?,
        many => im.join_chan_many(many, &chan).await?,
    }
    Ok(json!({ "chan": chan, "clients": clients.len() }))
}

/// `{chan, client}` or `{chan, clients}` → `{chan, clients}`. Leaving is idempotent, so a call
/// that failed half-way can be repeated whole.
pub async fn leave(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["chan", "client", "clients"])?;
    let chan = p.chan("chan")?;
    let clients = p.client_or_clients("client", "clients")?;
    match clients.as_slice() {
        [one] => im.leave_chan(one, &chan).await?,
        many => im.leave_chan_many(many, &chan).await?,
    }
    Ok(json!({ "chan": chan, "clients": clients.len() }))
}

/// `{chan, cursor?}` → `{members, cursor}`: one page; `cursor` is null after the last page.
/// A page may be empty while the cursor is not null.
pub async fn chan_members(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["chan", "cursor"])?;
    let chan = p.chan("chan")?;
    let cursor = match p.opt_string("cursor")? {
        None => 0,
        Some(c) => c.parse::<u64>().map_err(|_| {
            ApiError::bad_field(
                "invalid_cursor",
                "cursor",
                "cursor must be a cursor string from the previous page, or absent for the first",
            )
        })?,
    };
    let (next, members) = im.chan_clients_page(&chan, cursor).await?;
    let next = (next != 0).then(|| next.to_string());
    Ok(json!({ "members": members, "cursor": next }))
}

/// `{chan}` → `{members}`: how many, online or not.
pub async fn chan_member_count(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["chan"])?;
    let chan = p.chan("chan")?;
    Ok(json!({ "members": im.chan_member_count(&chan).await? }))
}

/// `{chan}` → `{online}`: how many members are online.
pub async fn chan_online(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["chan"])?;
    let chan = p.chan("chan")?;
    Ok(json!({ "online": im.chan_online(&chan).await? }))
}

/// `{client}` → `{chans}`, sorted.
pub async fn client_chans(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["client"])?;
    let client = p.client("client")?;
    Ok(json!({ "chans": im.client_chans(&client).await? }))
}

/// `{}` → `{chans: [{chan, members, online}]}`, sorted by name.
pub async fn chans(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    Params::new(params, &[])?;
    let chans: Vec<Value> = im
        .chans()
        .await?
        .into_iter()
        .map(|c| json!({ "chan": c.chan, "members": c.members, "online": c.online }))
        .collect();
    Ok(json!({ "chans": chans }))
}

/// `{chan}` → `{members}`: how many members it had.
pub async fn delete_chan(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["chan"])?;
    let chan = p.chan("chan")?;
    Ok(json!({ "members": im.delete_chan(&chan).await? }))
}
