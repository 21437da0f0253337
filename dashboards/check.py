#!/usr/bin/env python3
"""Evaluates every dashboard panel expression and every alert-rule expression against a Prometheus that has
scraped the running stack (dashboards/check.sh starts both). A panel must parse and return data; a rule must
parse, and every metric it names must have data (its expression is empty by design unless it fires). A
dashboard or rule that names a metric the code no longer emits fails. Recording rules (`createimage2:…`, in
alerts.yml) are evaluated by the same Prometheus, so a name they record counts like an emitted metric.
Usage: check.py PROMETHEUS_URL"""
import json, pathlib, re, sys, urllib.parse, urllib.request

ROOT = pathlib.Path(__file__).parent
PROM = sys.argv[1].rstrip("/")
# Metric names: the application's, the process collector's, `up`, and recorded `createimage2:…` series. Quoted
# strings (label values such as outcome="http_error") are blanked first, so they are not taken for metrics.
METRIC = re.compile(r"(?<![\w:])((?:createimage2|http|process)[_:][a-zA-Z0-9_:]+|up)(?![\w:])")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`')


def query(expr):
    url = f"{PROM}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        body = json.load(error)
    if body.get("status") != "success":
        return None, body.get("error", "query failed")
    return body["data"]["result"], None


def rule_exprs():
    """The `expr:` values of alerts.yml (single-line or `|` blocks), without a YAML library."""
    lines = (ROOT / "alerts.yml").read_text().splitlines()
    exprs, i = [], 0
    while i < len(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        if match:
            indent, value = len(match.group(1)), match.group(2).strip()
            if value in ("|", ">"):
                block, i = [], i + 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                exprs.append(" ".join(block))
                continue
            exprs.append(value)
        i += 1
    return exprs


checked, failures = 0, []
for path in sorted((ROOT / "grafana").glob("*.json")):
    dashboard = json.loads(path.read_text())
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m")
            checked += 1
            result, error = query(expr)
            if error or not result:
                failures.append(f"{path.name} / {panel['title']}: {error or 'no data'}: {expr}")

for expr in rule_exprs():
    checked += 1
    _, error = query(expr)
    if error:
        failures.append(f"alerts.yml: does not parse ({error}): {expr}")
    for metric in sorted(set(METRIC.findall(STRING.sub('""', expr)))):
        result, error = query(f"count({metric})")
        if error or not result:
            failures.append(f"alerts.yml: metric {metric} has no data: {expr}")

for failure in failures:
    print("FAIL", failure)
print(f"dashboards: {checked} expressions checked, {len(failures)} failed")
sys.exit(1 if failures else 0)
