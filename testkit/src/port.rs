//! Free loopback ports, for servers that must be told their port before they start (a
//! redis-server, nodes listed up front) or that a test restarts on their address (every node
//! the harness starts).
//!
//! The ports come from below the kernel's ephemeral range. A port the kernel picks for a bind to
//! port 0 and that is then let go lies inside that range, and the kernel may give it next as the
//! local port of an outgoing connection (a test's WebSocket client, a node's Redis connection):
//! the server it was meant for then fails with "Address already in use". Below the range only
//! another listener can take a port, and the bind that checks it would have seen that listener.
//! A port is handed out once per process, so a node that is down (killed, about to restart on
//! its address) keeps its port against the other tests of its binary.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::Mutex;

/// The lowest port handed out: clear of the well-known and most registered service ports.
const LOWEST: u16 = 10_000;

/// Where the range starts that the kernel takes local ports of outgoing connections (and
/// port-0 binds) from.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A port nothing listens on right now, below the ephemeral range, not handed out before by
/// this process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let (from, to) = (LOWEST, ephemeral_start());
    if to <= from + 1_000 {
        // No room below the range (a machine that gives the kernel nearly every port).
        return kernel_pick();
    }
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let random = RandomState::new();
    for attempt in 0u32..10_000 {
        let port = from + (random.hash_one(attempt) % u64::from(to - from)) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free loopback port between {from} and {to} after 10,000 tries")
}

fn kernel_pick() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the kernel hands out an ephemeral loopback port")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel gives outgoing connections their local port from the ephemeral range, so a
    /// port from there can be gone before the node it was picked for binds it.
    #[test]
    fn ports_lie_below_the_ephemeral_range_and_are_handed_out_once() {
        let low = ephemeral_start();
        let ports: Vec<u16> = (0..300).map(|_| free_port()).collect();
        let inside: Vec<&u16> = ports.iter().filter(|p| **p >= low).collect();
        assert!(inside.is_empty(), "in the ephemeral range: {inside:?}");
        let distinct: BTreeSet<&u16> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
    }
}
