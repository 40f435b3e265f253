//! The figures of a storm of reconnects (drill 6, and drill 1 on a smaller scale): from the
//! times the clients of the node that died were welcomed elsewhere, how quickly they came back
//! (percentiles) and at what rate the live nodes took them (welcomes per second, the peak over
//! a sliding second and the mean); from the attempts that failed meanwhile, the refusals by
//! kind and in waves. A wave is a run of refused attempts without a pause of `WAVE_GAP_MS`;
//! a second wave is a herd coming back after the first was turned away.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// A pause between refusals longer than this ends a wave.
pub const WAVE_GAP_MS: u64 = 1_000;
/// The welcome rate is counted in buckets of this many ms, its peak over `PEAK_WINDOW_MS`.
const RATE_BUCKET_MS: u64 = 100;
const PEAK_WINDOW_MS: u64 = 1_000;

/// Whether a failed attempt's kind (see `failure_kind`) is a node refusing the upgrade (an HTTP
/// status), as opposed to a dead address or a timeout.
pub fn is_refusal(kind: &str) -> bool {
    kind.starts_with("http ")
}

/// The value at quantile `q` of the sorted `v`.
pub fn quantile(v: &[u64], q: f64) -> Option<u64> {
    (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q).round() as usize])
}

/// The storm's figures. `back`: ms after the action at which each client of the node it hit
/// was welcomed elsewhere; `failed`: ms after the action and kind of every failed attempt.
pub fn figures(back: &[u64], failed: &[(u64, String)]) -> Value {
    let mut back = back.to_vec();
    back.sort_unstable();
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for at in &back {
        *buckets.entry(at / RATE_BUCKET_MS).or_default() += 1;
    }
    let per_window = PEAK_WINDOW_MS / RATE_BUCKET_MS;
    let peak = buckets
        .keys()
        .map(|&start| {
            buckets
                .range(start..start + per_window)
                .map(|(_, n)| n)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    let span_ms = match (back.first(), back.last()) {
        (Some(a), Some(b)) if b > a => Some(b - a),
        _ => None,
    };
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut refusals: Vec<(u64, &str)> = Vec::new();
    for (at, kind) in failed {
        *kinds.entry(kind.clone()).or_default() += 1;
        if is_refusal(kind) {
            refusals.push((*at, kind));
        }
    }
    refusals.sort_unstable();
    json!({
        "back": back.len(),
        "back_ms_p50": quantile(&back, 0.5),
        "back_ms_p90": quantile(&back, 0.9),
        "back_ms_p99": quantile(&back, 0.99),
        "back_ms_first": back.first(),
        "back_ms_max": back.last(),
        "welcomes_per_sec_peak": peak,
        "welcomes_per_sec_mean": span_ms.map(|s| back.len() as f64 * 1000.0 / s as f64),
        "failed_attempts": kinds,
        "refusals": refusals.len(),
        "refusal_waves": waves(&refusals),
    })
}

/// The refusals (sorted by time) in waves: each wave's first and last time, count and kinds.
fn waves(refusals: &[(u64, &str)]) -> Vec<Value> {
    let mut out: Vec<(u64, u64, BTreeMap<String, u64>)> = Vec::new();
    for &(at, kind) in refusals {
        match out.last_mut() {
            Some((_, last, kinds)) if at - *last <= WAVE_GAP_MS => {
                *last = at;
                *kinds.entry(kind.to_owned()).or_default() += 1;
            }
            _ => out.push((at, at, BTreeMap::from([(kind.to_owned(), 1)]))),
        }
    }
    out.into_iter()
        .map(|(from, to, kinds)| {
            json!({ "from_ms": from, "to_ms": to, "count": kinds.values().sum::<u64>(),
                    "kinds": kinds })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_after_a_pause_make_a_second_wave() {
        let failed: Vec<(u64, String)> = [
            (100, "http 421 client_moved"),
            (600, "tcp refused"),
            (900, "http 503 node_full"),
            (3_000, "http 503 node_full"),
        ]
        .iter()
        .map(|(t, k)| (*t, (*k).to_owned()))
        .collect();
        let f = figures(&[50, 150, 160, 1_950], &failed);
        assert_eq!(f["refusals"], 3);
        let waves = f["refusal_waves"].as_array().unwrap();
        assert_eq!(waves.len(), 2);
        assert_eq!(waves[0]["count"], 2);
        assert_eq!(waves[1]["from_ms"], 3_000);
        // Three welcomes within one second, the fourth later.
        assert_eq!(f["welcomes_per_sec_peak"], 3);
        assert_eq!(f["back_ms_max"], 1_950);
    }

    #[test]
    fn refusals_close_together_are_one_wave() {
        let failed: Vec<(u64, String)> = (0..50u64)
            .map(|i| (i * 900, "http 421 client_moved".to_owned()))
            .collect();
        assert_eq!(
            figures(&[], &failed)["refusal_waves"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
