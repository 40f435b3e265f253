//! `send`, `send_chan`, `broadcast`: pushes, answered with what imclient's reports say.

use imclient::ImClient;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::params::Params;

/// `{sender, receivers, payload, receipt?, message_id?}` →
/// `{message_id, nodes: [{node, receivers, taken}], unreachable}`.
pub async fn send(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(
        params,
        &["sender", "receivers", "payload", "receipt", "message_id"],
    )?;
    let sender = p.client("sender")?;
    let receivers = p.clients("receivers")?;
    let payload = p.payload("payload")?;
    let receipt = p.bool_or("receipt", false)?;
    let id = p.message_id()?;
    let report = im
        .send_message_with_id(&id, &sender, &receivers, payload, receipt)
        .await?;
    let nodes: Vec<Value> = report
        .nodes
        .iter()
        .map(|n| json!({ "node": n.node, "receivers": n.receivers, "taken": n.taken }))
        .collect();
    let unreachable: Vec<_> = report.unreachable().collect();
    Ok(json!({
        "message_id": report.message_id,
        "nodes": nodes,
        "unreachable": unreachable,
    }))
}

/// `{sender, chan, payload, exclude_sender?, message_id?}` → `{message_id, nodes}`.
pub async fn send_chan(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(
        params,
        &["sender", "chan", "payload", "exclude_sender", "message_id"],
    )?;
    let sender = p.client("sender")?;
    let chan = p.chan("chan")?;
    let payload = p.payload("payload")?;
    let exclude_sender = p.bool_or("exclude_sender", false)?;
    let id = p.message_id()?;
    let report = im
        .send_chan_message_with_id(&id, &sender, &chan, payload, exclude_sender)
        .await?;
    Ok(json!({ "message_id": report.message_id, "nodes": report.nodes }))
}

/// `{sender, payload, message_id?}` → `{message_id, nodes}`.
pub async fn broadcast(im: &ImClient, params: Value) -> Result<Value, ApiError> {
    let p = Params::new(params, &["sender", "payload", "message_id"])?;
    let sender = p.client("sender")?;
    let payload = p.payload("payload")?;
    let id = p.message_id()?;
    let report = im.broadcast_with_id(&id, &sender, payload).await?;
    Ok(json!({ "message_id": report.message_id, "nodes": report.nodes }))
}
