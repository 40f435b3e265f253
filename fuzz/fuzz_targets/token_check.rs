//! The token in a connect URL: any string, checked against a shared secret and a public key.
//! Checking must never panic, and nothing but a token signed with a held key may pass.
#![no_main]

use imclient::NodeId;
use imclient::token::TokenVerifier;
use libfuzzer_sys::fuzz_target;

const ED_PUB: &[u8] = include_bytes!("../../imclient/tests/keys/ed1.pub.pem");

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let node = NodeId::new("ws://127.0.0.1:6001").expect("node id");
    let verifier = TokenVerifier::new(b"fuzz-secret-0123456789abcdef")
        .and_then(|v| v.with_public_pem(Some("k1"), ED_PUB))
        .expect("keys");
    assert!(
        verifier.verify(&token, &node).is_err(),
        "a token nobody signed passed: {token}"
    );
});
