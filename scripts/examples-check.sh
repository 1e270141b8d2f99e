#!/usr/bin/env bash
# The classic experiments at small sizes, with the watchdog on (their default), as a user runs
# them: the verdict, culprit and cause columns the README shows, and the canary. Verdicts and
# ratios far apart, not timings: /blocking's canary p99 is hundreds of milliseconds, the
# passthrough's a few.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example json_service --example scoring

# A row of the results table: the line that starts with the variant's name.
row() { printf '%s\n' "$1" | awk -v variant="$2" '$1 == variant'; }
# A duration column ("569 ms", "6.22 ms", "840 µs", "1.64 s") in milliseconds: field N and N+1.
millis() {
  printf '%s\n' "$1" | awk -v n="$2" '{
    v = $n; u = $(n + 1);
    if (u == "s") v *= 1000; else if (u == "µs") v /= 1000;
    print v }'
}
fail() { echo "examples-check: $*" >&2; exit 1; }
expect() { # row, pattern, what
  printf '%s\n' "$1" | grep -Eq -- "$2" || fail "$3: $1"
}

json=$(timeout 300 target/release/examples/json_service --requests 40)
printf '%s\n' "$json" | sed -n '/^variant/,/^$/p'
blocking=$(row "$json" blocking)
expect "$blocking" 'BLOCKS .*(serde_json|json_app).* cpu *$' "/blocking: verdict BLOCKS, a serde_json or handler culprit, cause cpu"
expect "$(row "$json" simd)" 'BLOCKS .* cpu *$' "/simd: verdict BLOCKS, cause cpu"
expect "$(row "$json" offload)" ' ok +- +- *$' "/offload: ok, no culprit"
expect "$(row "$json" passthrough)" ' ok +- +- *$' "/passthrough: ok, no culprit"
# The canary (/health, p99) behind /blocking waits far longer than behind /passthrough.
behind_blocking=$(millis "$blocking" 8)
behind_passthrough=$(millis "$(row "$json" passthrough)" 8)
awk -v b="$behind_blocking" -v p="$behind_passthrough" 'BEGIN { exit !(b >= 5 * p) }' ||
  fail "canary p99 behind /blocking ($behind_blocking ms) not 5x that behind /passthrough ($behind_passthrough ms)"

scoring=$(timeout 300 target/release/examples/scoring --requests 40)
printf '%s\n' "$scoring" | sed -n '/^variant/,/^$/p'
expect "$(row "$scoring" sync)" 'BLOCKS .* io \(recvfrom\) +BLOCKS .* sleep \(clock_nanosleep\) *$' \
  "sync: BLOCKS in io (recvfrom), the model route BLOCKS in sleep"
expect "$(row "$scoring" async)" ' ok +- +- +ok +- +- *$' "async: ok, and the model route ok"
expect "$(row "$scoring" fixed-sync)" ' ok +- +- +BLOCKS .* sleep' "fixed-sync: ok, the model route BLOCKS in sleep"
echo "examples-check: ok"
