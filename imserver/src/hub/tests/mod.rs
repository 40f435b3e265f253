//! The hub's behaviour without Redis: the client entry's states and their transitions
//! (including the races a node meets: a delivery during a handover, a resume against a
//! window's expiry, a kick during a hold), delivery and sequence numbers, recovery, the channel
//! index and its subscription log, sweeping under memory pressure. What the hub asks of Redis
//! shows up in its work queues, which the tests read instead.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use imclient::contract::{CloseCode, Handover, RecoveryRefusal};
use imclient::token::ConnectClaims;
use imclient::{ChanName, ClientId, NodeId};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::*;
use crate::outbox::Outbox;
use crate::recovery::RecoveryLimits;

pub(super) fn recovery() -> RecoveryLimits {
    RecoveryLimits {
        window: Duration::from_secs(60),
        max_envelopes: 100,
        max_age: Duration::from_secs(600),
        online_max_age: Duration::from_secs(600),
        client_max_bytes: 1 << 20,
        node_max_bytes: 1 << 30,
    }
}

pub(super) fn limits() -> HubLimits {
    HubLimits {
        max_per_client: 3,
        max_total: 100,
        queue_capacity: 16,
        recovery: recovery(),
    }
}

/// A hub of the node run "run", with its metrics and work queues.
pub(super) fn hub_with(limits: HubLimits) -> (Hub, Arc<Metrics>, Arc<HubWork>) {
    let metrics = Arc::new(Metrics::default());
    let work = Arc::new(HubWork::default());
    let hub = Hub::new(limits, "run".into(), metrics.clone(), work.clone());
    hub.set_base_subscribed(true);
    (hub, metrics, work)
}

pub(super) fn hub() -> (Hub, Arc<Metrics>, Arc<HubWork>) {
    hub_with(limits())
}

pub(super) fn client(name: &str) -> ClientId {
    ClientId::new(name).expect("client id")
}

pub(super) fn chan(name: &str) -> ChanName {
    ChanName::new(name).expect("channel name")
}

pub(super) fn claims(name: &str) -> ConnectClaims {
    ConnectClaims::new(
        client(name),
        NodeId::new("ws://127.0.0.1:1").expect("node id"),
        Value::Null,
        Duration::from_secs(60),
    )
}

/// The welcome as the tests read it: the stream, the last seq and what the resume came to.
pub(super) fn welcome(info: &WelcomeInfo) -> String {
    serde_json::json!({
        "welcome": info.epoch,
        "seq": info.seq,
        "recovered": info.recovered,
        "reason": info.reason.map(|r| format!("{r:?}")),
    })
    .to_string()
}

pub(super) fn connect(hub: &Hub, name: &str, since: Option<&str>) -> Registration {
    hub.register(&claims(name), since, welcome)
        .expect("registered")
}

/// Finishes the load of `name`'s channels as if Redis held `stored`.
pub(super) fn load(hub: &Hub, name: &str, stored: &[&str]) {
    let (entry, generation) = hub.sync_ticket(&client(name)).expect("a load is due");
    hub.finish_sync(&entry, generation, stored.iter().map(|c| chan(c)).collect());
}

/// A connected client whose channels are loaded (none): live.
pub(super) fn live(hub: &Hub, name: &str) -> Registration {
    let reg = connect(hub, name, None);
    load(hub, name, &[]);
    reg
}

pub(super) fn body(id: &str) -> String {
    format!(r#"{{"id":"{id}","type":"message","payload":"{id}"}}"#)
}

pub(super) fn send(hub: &Hub, name: &str, id: &str) -> Reach {
    let mut reach = None;
    hub.deliver(
        &[client(name)],
        &body(id),
        |_| false,
        |_, r| reach = Some(r),
    );
    reach.expect("a result per receiver")
}

/// What the connection has been sent, as JSON, and takes it.
pub(super) fn frames(outbox: &Outbox) -> Vec<Value> {
    let mut batch = VecDeque::new();
    if !outbox.take_queued(&mut batch) {
        return Vec::new();
    }
    batch
        .iter()
        .map(|f| serde_json::from_slice(f.payload()).expect("JSON frame"))
        .collect()
}

/// (seq, id) of the envelopes among `frames`.
pub(super) fn envelopes(frames: &[Value]) -> Vec<(u64, String)> {
    frames
        .iter()
        .filter_map(|f| Some((f["seq"].as_u64()?, f["id"].as_str()?.to_owned())))
        .collect()
}

/// The stream a welcome among `frames` names.
pub(super) fn stream(frames: &[Value]) -> String {
    frames
        .iter()
        .find_map(|f| f["welcome"].as_str())
        .expect("a welcome")
        .to_owned()
}

/// (topic, payload) of every publish the hub queued, and takes them.
pub(super) fn published(work: &HubWork) -> Vec<(String, Value)> {
    work.outgoing
        .take()
        .iter()
        .filter_map(|cmd| {
            let args: Vec<&[u8]> = cmd
                .args_iter()
                .filter_map(|a| match a {
                    redis::Arg::Simple(b) => Some(b),
                    _ => None,
                })
                .collect();
            let topic = String::from_utf8_lossy(args.get(1)?).into_owned();
            Some((topic, serde_json::from_slice(args.get(2)?).ok()?))
        })
        .collect()
}

mod channels;
mod handover;
mod states;
mod sweep;
