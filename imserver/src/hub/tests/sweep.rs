//! Sweeping: windows that ran out, memory pressure, envelopes past their age.

use super::*;

#[test]
fn under_memory_pressure_the_oldest_windows_end_first() {
    let mut limits = limits();
    limits.recovery.node_max_bytes = 1;
    let (hub, metrics, _) = hub_with(limits);
    let start = Instant::now();
    for name in ["old", "young"] {
        let reg = live(&hub, name);
        send(&hub, name, "m1");
        hub.unregister(&client(name), reg.id);
    }
    let swept = hub.sweep(start);
    assert_eq!(swept.evicted, 2, "both, oldest first, while over the bound");
    assert_eq!(metrics.recovery_bytes.load(Relaxed), 0);
    assert_eq!(metrics.recovery_windows.load(Relaxed), 0);
}

#[test]
fn online_buffers_are_halved_as_a_last_resort() {
    let mut limits = limits();
    limits.recovery.node_max_bytes = 1;
    let (hub, _, _) = hub_with(limits);
    let reg = live(&hub, "ann");
    for id in ["m1", "m2", "m3", "m4"] {
        send(&hub, "ann", id);
    }
    let swept = hub.sweep(Instant::now());
    assert!(swept.trimmed >= 1);
    assert_eq!(
        hub.state_of(&client("ann")),
        Some(State::Live),
        "still connected"
    );
    drop(reg);
}

#[test]
fn envelopes_past_their_age_are_trimmed() {
    let (hub, metrics, _) = hub();
    let _reg = live(&hub, "ann");
    send(&hub, "ann", "m1");
    assert!(metrics.recovery_bytes.load(Relaxed) > 0);
    hub.sweep(Instant::now() + recovery().max_age + Duration::from_secs(1));
    assert_eq!(metrics.recovery_bytes.load(Relaxed), 0);
}
