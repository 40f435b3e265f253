//! A node command read from Redis: any bytes on the node's topic. Parsing must never panic; a
//! command that parses must give envelopes that are valid JSON with the payload unchanged.
//! Seed `corpus/node_commands/huge-exponent` is a payload number past f64's range, which an
//! earlier version of this check took for invalid JSON.
#![no_main]

use imclient::contract::{Envelope, EnvelopeBody, Kind, NodeCommand, envelope_body, frame};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Ok(command) = serde_json::from_slice::<NodeCommand<'_>>(data) else {
        return;
    };
    let (id, kind, from, chan, payload, ts) = match &command {
        NodeCommand::Deliver(d) => (&d.id, d.kind, d.from.as_ref(), None, d.payload, d.ts),
        NodeCommand::Chan(f) => (&f.id, Kind::Channel, f.from.as_ref(), f.chan.as_ref(), f.payload, f.ts),
        NodeCommand::Broadcast(f) => (&f.id, Kind::Broadcast, f.from.as_ref(), None, f.payload, f.ts),
        // What the node accepts of a forwarded envelope (an object) must stay JSON once numbered.
        NodeCommand::Forward(f) if imclient::contract::envelope_id(f.envelope.get()).is_some() => {
            let text = frame(7, f.envelope.get());
            let _: &RawValue = serde_json::from_str(&text).expect("a forwarded frame is JSON");
            return;
        }
        _ => return,
    };
    let body = envelope_body(&EnvelopeBody { id, kind, from, chan, payload, ts });
    let text = frame(7, &body);
    let _: &RawValue = serde_json::from_str(&text).expect("the frame is JSON");
    // A number past f64's range (`1e400`) is valid JSON that serde_json's `Value` cannot hold:
    // the node passes the payload on untouched (a browser reads it as Infinity), so the rest
    // is checked only for payloads a `Value` holds.
    let Ok(sent) = serde_json::from_str::<serde_json::Value>(payload.get()) else {
        return;
    };
    let envelope: Envelope = serde_json::from_str(&text).expect("the frame is an envelope");
    assert_eq!(envelope.payload, sent);
    assert_eq!(envelope.seq, Some(7));
});
