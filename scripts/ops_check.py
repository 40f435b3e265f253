#!/usr/bin/env python3
"""Checks the Grafana dashboard and the alert rules against a running Prometheus that scrapes
real nodes: every panel's query and every alert's metric selectors must return series, with
the labels their legends and groupings name. Run by scripts/test-ops.sh; standard library only.

Usage: ops_check.py PROMETHEUS_URL DASHBOARD_JSON

The alert rules are read back from Prometheus (/api/v1/rules), so they are checked as
Prometheus loaded them. An alert's expression is checked whole (it must evaluate without an
error) and then operand by operand: split at its comparisons and at and/or/unless, each
operand that is not a number must return series (the condition itself usually returns none,
as nothing is wrong). Prints one line per check and `ops: N passed, M failed, K skipped`;
exits 1 when one failed.
"""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request


# Grafana's built-in variables, as a dashboard on a 1 s scrape would see them.
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__range": "1m"}

# Words of PromQL that look like metric names in an expression.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}


class Prometheus:
    """A Prometheus HTTP API to query."""

    def __init__(self, url):
        self.url = url.rstrip("/")

    def get(self, path, **params):
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr):
        """The series an instant query returns (a scalar counts as one, without labels)."""
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]


class QueryError(Exception):
    """Prometheus refused a query."""


def grouping_labels(expr):
    """Labels named in `by (...)`: every series the expression returns must have them, but
    `le` under histogram_quantile, which takes the buckets' bounds away."""
    labels = set()
    for m in re.finditer(r"\bby\s*\(([^)]*)\)", expr):
        labels.update(l.strip() for l in m.group(1).split(",") if l.strip())
    if re.search(r"\bhistogram_quantile\s*\(", expr):
        labels.discard("le")
    return labels


def operands(expr):
    """The expression split at its top-level comparisons and set operators, without bool and
    vector-matching modifiers; number literals and arithmetic on them are left out."""
    parts, depth, start, i, quote = [], 0, 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            m = re.match(r"==|!=|>=|<=|>|<|\b(?:and|or|unless)\b", expr[i:])
            if m and (m.group(0)[0] in "=!<>" or (i == 0 or not expr[i - 1].isalnum())):
                parts.append(expr[start:i])
                i += len(m.group(0))
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    modifiers = r"^\s*(bool\s+)?((on|ignoring)\s*\([^)]*\)\s*)?((group_left|group_right)\s*(\([^)]*\))?\s*)?"
    out = []
    for p in parts:
        p = re.sub(modifiers, "", p).strip()
        if p and not re.fullmatch(r"[\d\s.eE+\-*/()]+", p):
            out.append(p)
    return out


def legend_labels(legend):
    return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", legend or ""))


class Checker:
    def __init__(self, prom):
        self.prom = prom
        self.passed = self.failed = self.skipped = 0

    def ok(self, what, detail=""):
        self.passed += 1
        print(f"ok    {what}{': ' + detail if detail else ''}")

    def fail(self, what, why):
        self.failed += 1
        print(f"FAIL  {what}: {why}")

    def skip(self, what, why):
        self.skipped += 1
        print(f"skip  {what}: {why}")

    def series(self, what, expr, labels=()):
        """Checks that `expr` returns series, each with `labels`. Returns them (None on failure)."""
        try:
            result = self.prom.query(expr)
        except (QueryError, urllib.error.URLError) as e:
            self.fail(what, f"{e} in {expr}")
            return None
        if not result:
            self.fail(what, f"no series (a misspelt metric or label value?): {expr}")
            return None
        for s in result:
            absent = sorted(l for l in labels if l not in s["metric"])
            if absent:
                self.fail(what, f"series without label(s) {', '.join(absent)}: {s['metric']} from {expr}")
                return None
        self.ok(what, f"{len(result)} series")
        return result


def substitute(expr, values):
    """Replaces $name, ${name} and ${name:format} as Grafana would."""

    def value(m):
        name = m.group(1) or m.group(3)
        if name not in values:
            raise KeyError(name)
        return values[name]

    return re.sub(r"\$\{(\w+)(:\w+)?\}|\$(\w+)", value, expr)


def regex_escaped(value):
    """A label value as a regex inside a PromQL string, as Grafana escapes multi-values."""
    return re.sub(r"([\\.^$*+?()\[\]{}|])", r"\\\\\1", value)


def check_dashboard(checker, dashboard):
    values = dict(BUILTINS)
    variables = dashboard.get("templating", {}).get("list", [])
    for var in variables:
        name = var["name"]
        # Matches everything unless the variable's own query works: a broken variable fails
        # once, and the panels are still checked.
        values[name] = ".*"
        if var["type"] == "datasource":
            values[name] = "prometheus"
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query or "")
        if var["type"] != "query" or not m:
            checker.fail(f"variable {name}", f"not a label_values() query: {query!r}")
            continue
        selector, label = m.group(1), m.group(2)
        try:
            selector = substitute(selector, values)
        except KeyError as e:
            checker.fail(f"variable {name}", f"uses ${e.args[0]}, defined after it or not at all")
            continue
        result = checker.series(f"variable {name}", f"count by ({label}) ({selector})", [label])
        if result:
            found = sorted(s["metric"][label] for s in result)
            values[name] = "|".join(regex_escaped(v) for v in found)

    ids = set()
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            checker.fail(f"panel {title}", f"id {panel.get('id')} used twice")
        ids.add(panel.get("id"))
        if panel.get("type") in ("row", "text"):
            continue
        targets = panel.get("targets") or []
        if not targets:
            checker.fail(f"panel {title}", "no query")
        for target in targets:
            what = f"panel {title} [{target.get('refId', '?')}]"
            try:
                expr = substitute(target["expr"], values)
            except KeyError as e:
                checker.fail(what, f"uses ${e.args[0]}, which the dashboard does not define")
                continue
            labels = grouping_labels(expr) | legend_labels(target.get("legendFormat"))
            checker.series(what, expr, labels)


def check_alerts(checker, prom):
    alerts = [
        rule
        for group in prom.get("/api/v1/rules")["groups"]
        for rule in group["rules"]
        if rule["type"] == "alerting"
    ]
    if not alerts:
        checker.fail("alert rules", "Prometheus loaded none")
    for rule in alerts:
        name = rule["name"]
        if rule.get("health") == "err":
            checker.fail(f"alert {name}", f"evaluation failed: {rule.get('lastError')}")
            continue
        try:
            prom.query(rule["query"])
        except QueryError as e:
            checker.fail(f"alert {name}", f"{e} in {rule['query']}")
            continue
        for i, part in enumerate(operands(rule["query"])):
            checker.series(f"alert {name} operand {i + 1}", part)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    prom = Prometheus(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        dashboard = json.load(f)
    checker = Checker(prom)
    # The load must have reached the nodes, or "returns data" would prove little.
    for what, expr in [
        ("load: connections accepted", "sum(im_connections_opened_total) > 0"),
        ("load: frames delivered", "sum(im_deliveries_total) > 0"),
    ]:
        checker.series(what, expr)
    check_dashboard(checker, dashboard)
    check_alerts(checker, prom)
    print(f"ops: {checker.passed} passed, {checker.failed} failed, {checker.skipped} skipped")
    sys.exit(1 if checker.failed else 0)


if __name__ == "__main__":
    main()
