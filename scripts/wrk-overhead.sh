#!/usr/bin/env bash
# What watching costs end to end: an axum hello-world and a JSON-passthrough route on loopback
# under wrk, in each configuration, a few alternating rounds each, on the release build.
#
#   scripts/wrk-overhead.sh [rounds=3] [seconds=10]
#
# Prints requests/s and p99 latency per configuration and route (median over rounds), with the
# ratio to the bare server.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
connections=${CONNECTIONS:-32}
port=${PORT:-3917}

if ! command -v wrk >/dev/null; then
  echo "wrk is missing: install it with 'apt-get install wrk' (Debian package wrk)" >&2
  exit 1
fi

echo "building (release; console mode with --cfg tokio_unstable)..." >&2
cargo build --release --example overhead_server -q
RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target/unstable \
  cargo build --release --example overhead_server -q
stable=target/release/examples/overhead_server
unstable=target/unstable/release/examples/overhead_server

# On a small machine, give the server (one tokio worker) and wrk a core each, so they do not
# fight over the same one; with more cores, set SERVER_CPUS / CLIENT_CPUS / TOKIO_WORKER_THREADS.
export TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-1}
server_cpus=${SERVER_CPUS:-0}
client_cpus=${CLIENT_CPUS:-1}
# exec: in the background, `pin ... &` must leave the server itself as `$!`, for `kill`.
pin() { if command -v taskset >/dev/null; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }

modes=(bare hogwatch tokio-metrics console hogwatch-watchdog)
routes=(/hello /passthrough)
results=$(mktemp)
trap 'rm -f "$results"; kill "${server:-}" 2>/dev/null || true' EXIT

for round in $(seq 1 "$rounds"); do
  for mode in "${modes[@]}"; do
    binary=$stable
    [ "$mode" = console ] && binary=$unstable
    pin "$server_cpus" "$binary" --mode "$mode" --port "$port" 2>/dev/null &
    server=$!
    for _ in $(seq 1 50); do
      curl -fs "http://127.0.0.1:$port/hello" >/dev/null 2>&1 && break
      sleep 0.1
    done
    for route in "${routes[@]}"; do
      out=$(pin "$client_cpus" wrk -t1 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$port$route")
      rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
      echo "$mode $route $rps $p99" >>"$results"
      echo "round $round: $mode $route $rps req/s, p99 $p99" >&2
    done
    kill "$server"
    wait "$server" 2>/dev/null || true
  done
done

python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict

def to_ms(text):
    for suffix, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)

runs = defaultdict(list)
for line in open(sys.argv[1]):
    mode, route, rps, p99 = line.split()
    runs[(mode, route)].append((float(rps), to_ms(p99)))
routes = sorted({route for _, route in runs})
modes = []
for mode, _ in runs:
    if mode not in modes:
        modes.append(mode)
print(f"{'configuration':<15} {'route':<13} {'req/s':>10} {'vs bare':>8} {'p99 ms':>8} {'vs bare':>8}")
for route in routes:
    bare_rps = statistics.median(r for r, _ in runs[("bare", route)])
    bare_p99 = statistics.median(p for _, p in runs[("bare", route)])
    for mode in modes:
        rps = statistics.median(r for r, _ in runs[(mode, route)])
        p99 = statistics.median(p for _, p in runs[(mode, route)])
        print(f"{mode:<15} {route:<13} {rps:>10.0f} {rps / bare_rps:>8.3f} {p99:>8.2f} {p99 / bare_p99:>8.3f}")
PY
