"""Writes README's headline figures from the latest set in docs/BENCHMARKS.md (the tables
bench_report.py generates), or with --check fails when README's differ from them.

Usage: bench_headline.py [--check] [BENCHMARKS.md] [README.md]

The figures live in README between `<!-- bench-headline:begin -->` and
`<!-- bench-headline:end -->`; the date is the one bench_report.py writes into the tables
("Set run on YYYY-MM-DD"), or for tables from before it did, the first YYYY-MM-DD of the "Latest
set" section, which says when that set ran."""
import re
import sys

BEGIN, END = "<!-- bench-headline:begin -->", "<!-- bench-headline:end -->"
TABLE_BEGIN, TABLE_END = "<!-- bench:begin -->", "<!-- bench:end -->"


def tables(doc):
    """Workload name -> metric (without "(lower/higher is better)") -> (imserver, peer, advantage)."""
    if TABLE_BEGIN not in doc or TABLE_END not in doc:
        sys.exit(f"no {TABLE_BEGIN} … {TABLE_END} block: run scripts/bench.sh to generate it")
    block = doc.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0]
    out, current = {}, None
    for line in block.splitlines():
        if line.startswith("### "):
            current = out.setdefault(line[4:].strip(), {})
        elif current is not None and line.startswith("| ") and not line.startswith("| metric"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4:
                metric = re.sub(r"\s*\((lower|higher) is better\)$", "", cells[0])
                current[metric] = tuple(cells[1:])
    return out


def figure(t, workload, metric):
    try:
        return t[workload][metric]
    except KeyError:
        sys.exit(f"docs/BENCHMARKS.md's latest set has no '{metric}' for {workload}: "
                 "update scripts/bench_headline.py to the workloads bench.sh runs")


def run_date(doc):
    stamped = re.search(r"Set run on (\d{4}-\d{2}-\d{2})", doc)
    if stamped:
        return stamped.group(1)
    section = doc.split("## Latest set", 1)[-1].split(TABLE_BEGIN, 1)[0]
    found = re.search(r"\b\d{4}-\d{2}-\d{2}\b", section)
    if not found:
        sys.exit("the 'Latest set' section of docs/BENCHMARKS.md does not say the date of its run "
                 "(YYYY-MM-DD before the generated tables)")
    return found.group(0)


def headline(doc):
    t = tables(doc)
    ours, peer, _ = figure(t, "idle-10k", "node RSS per conn, idle")
    _, _, rate = figure(t, "private-50k", "deliveries/s")
    _, _, cpu = figure(t, "private-50k", "node CPU per delivery")
    _, _, p99 = figure(t, "channel-10k", "p99 latency")
    return (f"In the latest set ({run_date(doc)}): {ours} of memory per idle connection against "
            f"{peer}, {rate} its private-message rate with {cpu} less CPU per delivery, and a p99 "
            f"{p99} lower when fanning one channel out to 10,000 members.")


def main(args):
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    bench_path = paths[0] if paths else "docs/BENCHMARKS.md"
    readme_path = paths[1] if len(paths) > 1 else "README.md"
    want = headline(open(bench_path).read())
    readme = open(readme_path).read()
    if BEGIN not in readme or END not in readme:
        sys.exit(f"{readme_path} has no {BEGIN} … {END} block for the headline figures")
    head, rest = readme.split(BEGIN, 1)
    have, tail = rest.split(END, 1)
    if check:
        if " ".join(have.split()) != " ".join(want.split()):
            sys.exit(f"{readme_path}'s headline figures differ from {bench_path}'s latest set:\n"
                     f"  README:     {' '.join(have.split())}\n  BENCHMARKS: {want}\n"
                     "run python3 scripts/bench_headline.py to write them")
        return
    with open(readme_path, "w") as f:
        f.write(head + BEGIN + "\n" + wrap(want) + "\n" + END + tail)


def wrap(text, width=96):
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join(lines + [line])


if __name__ == "__main__":
    main(sys.argv[1:])
