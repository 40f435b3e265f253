"""The server side of a reconnect storm (scripts/chaos.sh drill 6): from the samples the script
took of the surviving nodes and of Redis while the clients of the killed node came back, what
the survivors and Redis did during the storm.

Usage: storm_summary.py SAMPLES KILL_MS STORM_END_MS METRICS_DIR PREFIX OUT.json

SAMPLES has one line per process per tick: `<unix ms> <name> <connections opened> <handshakes
refused> <CPU ticks> <RSS KiB> <peak RSS KiB>` (name: node0, node1, redis; redis has no
counters, 0). The storm is [KILL_MS, STORM_END_MS] (the kill to the last victim's welcome, plus
a second). METRICS_DIR/PREFIX-node<k>.before.metrics and PREFIX-node<k>.metrics are the
survivors' /metrics just before the kill and at the end: the refusals by reason are their
difference. Prints the summary lines and writes the figures the rules check to OUT.json."""
import json
import os
import re
import sys
from collections import defaultdict

# A pause longer than this between two samples in which a node's refusals grew ends a wave,
# as the client side counts them (bench/src/drill/storm.rs, WAVE_GAP_MS).
WAVE_GAP_MS = 1000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REFUSED = re.compile(r'^im_handshakes_refused_total\{.*reason="([^"]+)"\} (\d+)')


def refusals(path):
    """Reason -> count in one /metrics text (empty when the file is missing)."""
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                m = REFUSED.match(line)
                if m:
                    out[m.group(1)] = int(m.group(2))
    return out


def main(samples_path, kill_ms, end_ms, metrics_dir, prefix, out_path):
    kill_ms, end_ms = int(kill_ms), int(end_ms)
    series = defaultdict(list)
    with open(samples_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 7 and all(p.isdigit() for p in parts[2:]):
                series[parts[1]].append((int(parts[0]), *map(int, parts[2:])))
    figures = {"nodes": {}, "refusal_waves": [], "refused_by_reason": {}}
    waves = []  # (first ms, last ms, count) over both survivors, ms after the kill
    refused_at = []
    for name in sorted(series):
        s = sorted(series[name])
        storm = [x for x in s if kill_ms <= x[0] <= end_ms]
        # The samples just before the storm and just after it bound its CPU.
        before = [x for x in s if x[0] <= kill_ms][-1:] or s[:1]
        after = [x for x in s if x[0] >= end_ms][:1] or s[-1:]
        (t0, _, _, cpu0, _, _), (t1, _, _, cpu1, _, _) = before[0], after[0]
        cpu_secs = (cpu1 - cpu0) / CLOCK_TICKS
        peak_cpu = 0.0
        peak_rate = 0.0
        for a, b in zip(s, s[1:]):
            if b[0] <= a[0] or b[0] < kill_ms or a[0] > end_ms:
                continue
            dt = (b[0] - a[0]) / 1000
            peak_cpu = max(peak_cpu, (b[3] - a[3]) / CLOCK_TICKS / dt)
            peak_rate = max(peak_rate, (b[1] - a[1]) / dt)
            if b[2] > a[2]:
                refused_at.append((b[0] - kill_ms, b[2] - a[2]))
        opened = after[0][1] - before[0][1]
        figures["nodes"][name] = {
            "cpu_secs": round(cpu_secs, 2),
            "cpu_percent_mean": round(100 * cpu_secs / max((t1 - t0) / 1000, 1e-3)),
            "cpu_percent_peak": round(100 * peak_cpu),
            "rss_peak_mib": round(max((x[4] for x in storm), default=0) / 1024, 1),
            "rss_hwm_mib": round(max((x[5] for x in s), default=0) / 1024, 1),
            "opened": opened,
            "opened_per_sec_peak": round(peak_rate),
            "opened_per_sec_mean": round(opened / max((t1 - t0) / 1000, 1e-3)),
        }
    for at, n in sorted(refused_at):
        if waves and at - waves[-1][1] <= WAVE_GAP_MS:
            waves[-1][1] = at
            waves[-1][2] += n
        else:
            waves.append([at, at, n])
    figures["refusal_waves"] = [{"from_ms": a, "to_ms": b, "count": n} for a, b, n in waves]
    total = defaultdict(int)
    for k in (0, 1):
        base = os.path.join(metrics_dir, f"{prefix}-node{k}")
        b, a = refusals(base + ".before.metrics"), refusals(base + ".metrics")
        for reason, n in a.items():
            if n - b.get(reason, 0) > 0:
                total[reason] += n - b.get(reason, 0)
    figures["refused_by_reason"] = dict(total)
    with open(out_path, "w") as f:
        json.dump(figures, f)

    nodes = [n for n in figures["nodes"] if n.startswith("node")]
    both = lambda key: sum(figures["nodes"][n][key] for n in nodes)
    print(f"  survivors during the storm ({(end_ms - kill_ms) / 1000:.1f} s from the kill):"
          f" connections opened {both('opened')}, peak {both('opened_per_sec_peak')}/s"
          f" (sum of per-node peaks over a sample), mean {both('opened_per_sec_mean')}/s")
    for n in nodes:
        x = figures["nodes"][n]
        print(f"    {n}: CPU {x['cpu_secs']} s ({x['cpu_percent_mean']} % of a core on average,"
              f" peak {x['cpu_percent_peak']} % over a sample), RSS peak {x['rss_peak_mib']} MiB"
              f" (high-water mark {x['rss_hwm_mib']} MiB), opened {x['opened']}"
              f" (peak {x['opened_per_sec_peak']}/s)")
    r = figures["nodes"].get("redis")
    if r:
        print(f"    redis-server: CPU {r['cpu_secs']} s ({r['cpu_percent_mean']} % of a core on"
              f" average, peak {r['cpu_percent_peak']} %), RSS peak {r['rss_peak_mib']} MiB")
    print(f"  refused by the survivors (their /metrics, kill to end): {dict(total) or 'none'};"
          f" waves (a pause over {WAVE_GAP_MS} ms between samples ends one): "
          + (", ".join(f"{w['count']} at {w['from_ms']}-{w['to_ms']} ms" for w in
                       figures["refusal_waves"]) or "none"))


if __name__ == "__main__":
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    main(*sys.argv[1:])
