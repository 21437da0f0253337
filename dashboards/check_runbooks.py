#!/usr/bin/env python3
"""Keeps alerts and runbooks in step (run by check.sh, needs nothing but Python): every alert in alerts.yml has a
`severity` of page or ticket and a `runbook_url` naming docs/runbooks/<alert>.md, which exists and has the four
sections; every runbook there belongs to an alert and is listed in docs/runbooks/README.md; every alert has a
case in alerts.test.yml. Usage, from anywhere: python3 dashboards/check_runbooks.py"""
import pathlib, re, sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNBOOKS = ROOT / "docs" / "runbooks"
PREFIX = "https://github.com/createimage2/createimage2/blob/main/docs/runbooks/"
SECTIONS = ("## What it means", "## How to confirm", "## What to do", "## How to undo")


def alerts():
    """alert name -> {"severity": ..., "runbook_url": ...}, read line by line (no YAML library needed)."""
    found, current = {}, None
    for line in (ROOT / "dashboards" / "alerts.yml").read_text().splitlines():
        if re.match(r"^\s*-\s*(record|alert):", line):
            match = re.match(r"^\s*-\s*alert:\s*(\S+)\s*$", line)
            current = match.group(1) if match else None
            if current:
                if current in found:
                    failures.append(f"alerts.yml: alert {current} is defined twice")
                found[current] = {}
            continue
        if current is None:
            continue
        match = re.search(r"\bseverity:\s*([a-z]+)", line)
        if match:
            found[current]["severity"] = match.group(1)
        match = re.match(r"^\s*runbook_url:\s*\"?([^\"]+?)\"?\s*$", line)
        if match:
            found[current]["runbook_url"] = match.group(1)
    return found


failures = []
defined = alerts()
for name, fields in sorted(defined.items()):
    if fields.get("severity") not in ("page", "ticket"):
        failures.append(f"alerts.yml: {name} has severity {fields.get('severity')!r}, not page or ticket")
    url = fields.get("runbook_url")
    if url != f"{PREFIX}{name}.md":
        failures.append(f"alerts.yml: {name} has runbook_url {url!r}, expected {PREFIX}{name}.md")
    path = RUNBOOKS / f"{name}.md"
    if not path.is_file():
        failures.append(f"docs/runbooks/{name}.md is missing (runbook of alert {name})")
        continue
    text = path.read_text()
    for section in SECTIONS:
        if section not in text:
            failures.append(f"docs/runbooks/{name}.md has no '{section}' section")

for path in sorted(RUNBOOKS.glob("*.md")):
    if path.name != "README.md" and path.stem not in defined:
        failures.append(f"docs/runbooks/{path.name} belongs to no alert in alerts.yml")

index = (RUNBOOKS / "README.md").read_text() if (RUNBOOKS / "README.md").is_file() else ""
for name in sorted(defined):
    if f"({name}.md)" not in index:
        failures.append(f"docs/runbooks/README.md does not link {name}.md")

# Each alert needs a case where it fires (`exp_alerts:` with a list below) and one where it must not (`[]`).
tests = (ROOT / "dashboards" / "alerts.test.yml").read_text()
cases = re.findall(r"^\s*alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", tests, re.M)
fires = {name for name, empty in cases if not empty}
silent = {name for name, empty in cases if empty}
for name in sorted(defined):
    if name not in fires:
        failures.append(f"alerts.test.yml has no case where {name} fires")
    if name not in silent:
        failures.append(f"alerts.test.yml has no case where {name} must not fire")
for name in sorted((fires | silent) - set(defined)):
    failures.append(f"alerts.test.yml tests {name}, which alerts.yml does not define")

for failure in failures:
    print("FAIL", failure)
print(f"runbooks: {len(defined)} alerts checked, {len(failures)} problems")
sys.exit(1 if failures else 0)
