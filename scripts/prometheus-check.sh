#!/usr/bin/env bash
# The shipped Prometheus rules against a real Prometheus over two instances.
#
#   scripts/prometheus-check.sh
#
# Starts two `json_service serve` instances on loopback, loads both (instance A also on
# /blocking/big, whose 2 MB JSON round-trip blocks a worker for ~25 ms per request), starts the
# Debian `prometheus` server with prometheus/hogwatch.rules.yml scraping both every second, and
# checks through its HTTP API: both targets up, every rule evaluates without error, the
# recording rule's per-route p99 across the instances is over the threshold for
# GET /blocking/{key} and under it for every other route, and HogwatchBlockingPolls fires for
# GET /blocking/{key} and for no other route. The rules are the shipped ones except `for: 5m`,
# shortened to 10 s so the check ends in time. Everything listens on 127.0.0.1, everything is
# stopped on exit, and the checks give up after CHECK_SECONDS (default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
check_seconds=${CHECK_SECONDS:-100}

if ! command -v prometheus >/dev/null; then
  echo "prometheus is missing: install the Prometheus server with 'apt-get install prometheus'" \
    "(Debian package prometheus; .ci/run installs it)" >&2
  exit 1
fi
for tool in curl python3 timeout; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --example json_service -q

# Port 0: each instance picks a free port and prints it. Sets $base (not a $(...) subshell:
# the instance's pid must reach the cleanup's list).
start_instance() {
  local name=$1
  target/release/examples/json_service serve --port 0 >"$work/$name.log" 2>&1 &
  pids+=($!)
  base=
  for _ in $(seq 1 100); do
    base=$(grep -o 'serving on http://[0-9.:]*' "$work/$name.log" | head -1 | cut -d' ' -f3 || true)
    [ -n "$base" ] && curl -fs --max-time 5 "$base/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  if [ -z "$base" ] || ! curl -fs --max-time 5 "$base/health" >/dev/null 2>&1; then
    cat "$work/$name.log" >&2
    echo "prometheus check FAILED: json_service instance $name did not come up" >&2
    exit 1
  fi
}
start_instance a
a=$base
start_instance b
b=$base
echo "instances: A $a, B $b" >&2

# Load, bounded: curl requests a URL glob one after another on one connection, and timeout ends
# it after the check's time in any case.
load() {
  local seconds=$((check_seconds + 20))
  timeout "$seconds" curl -s --max-time "$seconds" "${@:2}" "$1?[1-1000000]" >/dev/null 2>&1 &
  pids+=($!)
}
load "$a/blocking/big"
for base in "$a" "$b"; do
  load "$base/passthrough/small" --rate 100/s
  load "$base/offload/small" --rate 20/s
  load "$base/health" --rate 100/s
done

sed 's/for: 5m/for: 10s/' prometheus/hogwatch.rules.yml >"$work/rules.yml"
cat >"$work/prometheus.yml" <<CONFIG
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - rules.yml
scrape_configs:
  - job_name: json_service
    metrics_path: /debug/hogs/metrics
    static_configs:
      - targets: ["${a#http://}", "${b#http://}"]
CONFIG
# A loopback port for Prometheus: below the kernel's ephemeral range (the load's client sockets
# take ports there), and free of listeners. Another process may still take it between the probe
# and Prometheus' bind: then try another, three times at most.
free_port() {
  local candidate
  for candidate in $(shuf -i 20000-32000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}
started=
for attempt in 1 2 3; do
  port=$(free_port) || { echo "prometheus check FAILED: no free port" >&2; exit 1; }
  rm -rf "$work/data"
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn >"$work/prometheus.log" 2>&1 &
  pids+=($!)
  api="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    curl -fs --max-time 2 "$api/-/ready" >/dev/null 2>&1 && break
    grep -q "address already in use" "$work/prometheus.log" && break
    sleep 0.1
  done
  if curl -fs --max-time 2 "$api/-/ready" >/dev/null 2>&1; then
    started=1
    break
  fi
  grep -q "address already in use" "$work/prometheus.log" || break
  echo "port $port was taken before prometheus bound it (attempt $attempt); trying another" >&2
done
if [ -z "$started" ]; then
  cat "$work/prometheus.log" >&2
  echo "prometheus check FAILED: prometheus did not come up on 127.0.0.1:$port" >&2
  exit 1
fi
echo "prometheus on $api, checking for up to ${check_seconds}s" >&2

if ! python3 - "$api" "$check_seconds" <<'PY'; then
import json, sys, time, urllib.parse, urllib.request

api, budget = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + budget
BLOCKING = "GET /blocking/{key}"
OTHERS = {"GET /passthrough/{key}", "GET /offload/{key}", "GET /health"}


def get(path, **params):
    url = f"{api}{path}?{urllib.parse.urlencode(params)}" if params else f"{api}{path}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.load(answer)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def query(expr):
    return get("/api/v1/query", query=expr)["result"]


def state():
    """What the checks look at, and the list of what is not (yet) as expected."""
    problems = []
    targets = get("/api/v1/targets")["activeTargets"]
    health = {t["scrapeUrl"]: t["health"] for t in targets}
    if len(health) != 2 or set(health.values()) != {"up"}:
        problems.append(f"targets not both up: {health}")
    rule_errors = [
        f"{rule['name']}: {rule.get('lastError')}"
        for group in get("/api/v1/rules")["groups"]
        for rule in group["rules"]
        if rule["health"] not in ("ok", "unknown")
    ]
    if rule_errors:
        problems.append(f"rules in error: {rule_errors}")
    threshold = max((float(s["value"][1]) for s in query("hogwatch_threshold_seconds")), default=None)
    p99 = {
        s["metric"]["label"]: float(s["value"][1])
        for s in query("job_label:hogwatch_poll_duration_seconds:p99_rate5m")
    }
    if threshold is None:
        problems.append("no hogwatch_threshold_seconds")
    else:
        if not p99.get(BLOCKING, 0) > threshold:
            problems.append(f"p99 of {BLOCKING} not over the threshold {threshold}: {p99}")
        for label in OTHERS:
            if label not in p99:
                problems.append(f"no p99 for {label}: {p99}")
            elif not p99[label] < threshold:
                problems.append(f"p99 of {label} not under the threshold {threshold}: {p99}")
    alerts = [
        (a["labels"].get("alertname"), a["labels"].get("label"), a["state"])
        for a in get("/api/v1/alerts")["alerts"]
    ]
    if ("HogwatchBlockingPolls", BLOCKING, "firing") not in alerts:
        problems.append(f"HogwatchBlockingPolls not firing for {BLOCKING}: {alerts}")
    wrong = [a for a in alerts if a[2] == "firing" and a[1] != BLOCKING]
    if wrong:
        problems.append(f"alerts firing for other labels: {wrong}")
    return threshold, p99, alerts, problems


started = time.monotonic()
while True:
    try:
        threshold, p99, alerts, problems = state()
    except Exception as error:  # Prometheus still starting, a slow answer: try again.
        threshold, p99, alerts, problems = None, {}, [], [f"API: {error}"]
    if not problems or time.monotonic() > deadline:
        break
    time.sleep(1)

print(f"threshold: {threshold}")
for label, value in sorted(p99.items(), key=lambda item: -item[1]):
    print(f"p99 across instances: {value * 1000:8.2f} ms  {label}")
print(f"alerts: {alerts}")
if problems:
    print(f"prometheus check FAILED after {time.monotonic() - started:.0f}s:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"prometheus check passed in {time.monotonic() - started:.0f}s: both targets up, no rule in "
      f"error, {BLOCKING} over the threshold and firing, every other route under it and quiet")
PY
  echo "--- prometheus log" >&2
  tail -n 20 "$work/prometheus.log" >&2
  exit 1
fi
