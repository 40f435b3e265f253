//! A node command read from Redis: any bytes on the node's topic. Parsing must never panic; a
//! command that parses must give envelopes that are valid JSON with the payload unchanged.
#![no_main]

use imclient::contract::{Envelope, EnvelopeBody, Kind, NodeCommand, envelope_body, frame};
use libfuzzer_sys::fuzz_target;

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
            let _: serde_json::Value = serde_json::from_str(&text).expect("a forwarded frame is JSON");
            return;
        }
        _ => return,
    };
    let body = envelope_body(&EnvelopeBody { id, kind, from, chan, payload, ts });
    let text = frame(7, &body);
    let envelope: Envelope = serde_json::from_str(&text).expect("the frame is an envelope");
    let sent: serde_json::Value = serde_json::from_str(payload.get()).expect("raw payload is JSON");
    assert_eq!(envelope.payload, sent);
    assert_eq!(envelope.seq, Some(7));
});
