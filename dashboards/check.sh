#!/usr/bin/env bash
# Keeps dashboards and alerts honest: checks and unit-tests the rules with promtool, runs the stack (`dev`) under
# a short load, scrapes it with a real Prometheus, and evaluates every panel and rule expression (check.py).
# Usage, from the repository root: bash dashboards/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/createimage2-target}"

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing Debian's prometheus package"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

promtool check rules dashboards/alerts.yml
promtool test rules dashboards/alerts.test.yml
python3 dashboards/check_runbooks.py

cargo build -q
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
site=$(free_port); metrics=$(free_port); console=$(free_port); prom=$(free_port)
cleanup() {
  [ -n "${prom_pid:-}" ] && kill "$prom_pid" 2>/dev/null || true
  [ -n "${dev_pid:-}" ] && kill -INT "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The stack, with a quick kie.ai stand-in. Its files go to a temporary directory.
DEV_KIE_LATENCY_MS=200-400 CARGO_TARGET_DIR="$work/dev" LOG_FORMAT=json \
  "$CARGO_TARGET_DIR/debug/createimage2" dev --listen "127.0.0.1:$site" --metrics-listen "127.0.0.1:$metrics" \
  --console-listen "127.0.0.1:$console" >"$work/dev.out" 2>"$work/dev.err" &
dev_pid=$!
for _ in $(seq 1 120); do grep -q "demo API key" "$work/dev.out" 2>/dev/null && break; sleep 0.5; done
key=$(awk '/demo API key/ {print $NF}' "$work/dev.out")
[ -n "$key" ] || { cat "$work/dev.err"; echo "dev did not start"; exit 1; }

cat >"$work/prometheus.yml" <<YAML
global: { scrape_interval: 1s, evaluation_interval: 1s }
rule_files: [ "$(pwd)/dashboards/alerts.yml" ]
scrape_configs:
  - job_name: createimage2
    static_configs: [ { targets: [ "127.0.0.1:$metrics" ] } ]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom" >"$work/prometheus.log" 2>&1 &
prom_pid=$!

# A short load: generations that succeed and one refused by the content policy, an unauthorized call.
api="http://127.0.0.1:$site"
for prompt in "a lighthouse at dawn" "a red fox" "a paper boat" "[refuse] forbidden" "a quiet street"; do
  curl -fsS -H "Authorization: Bearer $key" -H 'content-type: application/json' \
    -d "{\"prompt\": \"$prompt\", \"aspect_ratio\": \"16:9\"}" "$api/api/v1/generations" >/dev/null
done
curl -s -o /dev/null "$api/api/v1/me"
curl -fsS -o /dev/null "$api/"
sleep 2
for _ in $(seq 1 10); do
  curl -fsS -o /dev/null -H "Authorization: Bearer $key" "$api/api/v1/generations?limit=5"
  sleep 1
done
# Let Prometheus collect enough samples for rates over the finished work.
sleep 8
python3 dashboards/check.py "http://127.0.0.1:$prom"
