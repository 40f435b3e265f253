//! What a client sends over its socket: any bytes, cut into frames under the size limit. The
//! parser must never panic and never buffer more than one allowed frame (asserted inside).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a limit, so small and default limits both get exercised.
    let (max, bytes) = match data.split_first() {
        Some((first, rest)) if first % 2 == 0 => (usize::from(*first) * 8 + 1, rest),
        _ => (1024, data),
    };
    let _ = imserver::inbound::check_bytes(bytes, max);
});
