#!/usr/bin/env bash
# The classic experiments at small sizes, with the watchdog on (their default), as a user runs
# them: the verdict, culprit and cause columns the README shows, the canary, and the delay each
# route inflicted. Verdicts and ratios far apart, not timings: /blocking's canary p99 is hundreds
# of milliseconds, the passthrough's a few; /blocking inflicts seconds, the fixes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example json_service --example scoring

# A row of the results table: the line that starts with the variant's name.
row() { printf '%s\n' "$1" | awk -v variant="$2" '$1 == variant'; }
# A duration column ("569 ms", "6.22 ms", "840 µs", "1.64 s") in milliseconds: field N and N+1
# (N = 0: the last two fields).
millis() {
  printf '%s\n' "$1" | awk -v n="$2" '{
    if (n == 0) n = NF - 1;
    v = $n; u = $(n + 1);
    if (u == "s") v *= 1000; else if (u == "µs") v /= 1000;
    print v }'
}
fail() { echo "examples-check: $*" >&2; exit 1; }
# The inflicted column (fields 10 and 11) of the culprit's row is at least the floor (ms) and at
# least 10 times that of each innocent's row: 10 times nothing is nothing.
inflicted_far_more() { # table, culprit, floor, innocents...
  local table=$1 culprit=$2 floor=$3 charged innocent other
  shift 3
  charged=$(millis "$(row "$table" "$culprit")" 10)
  awk -v c="$charged" -v f="$floor" 'BEGIN { exit !(c >= f) }' ||
    fail "$culprit inflicted $charged ms, under $floor ms"
  for innocent in "$@"; do
    other=$(millis "$(row "$table" "$innocent")" 10)
    awk -v c="$charged" -v o="$other" 'BEGIN { exit !(c >= 10 * o) }' ||
      fail "$culprit inflicted $charged ms, under 10 times $innocent's $other ms"
  done
}
# The line under the table: the lag probe's delay, and what the canary's route inflicted.
summary() { printf '%s\n' "$1" | grep '^lag probe:'; }
expect() { # row, pattern, what
  printf '%s\n' "$1" | grep -Eq -- "$2" || fail "$3: $1"
}
# Slow polls a route that does not block may still show, as tests/examples.rs allows them
# (PREEMPTED_POLLS): the machine can hold a worker mid-poll past the threshold. Seen once in CI:
# /async/score, 2 slow polls of 250 at 22.5 ms, caught in `socket2::Socket::new` with cause cpu.
# hogwatch does not yet tell such a poll from the code's own; a route that blocks has a slow
# poll in every request (40 here).
PREEMPTED_POLLS=2
# hogwatch's columns on a route that does not block: `ok`, or `BLOCKS` from those few polls,
# none of which the watchdog caught in a blocking call (no culprit, or cause cpu or preempted:
# never io, sleep, lock or wait).
SPARED='(ok +- +-|BLOCKS +(- +-|.* (cpu|preempted)))'
spared() { # row, pattern of the columns after the route's, what
  local slow
  slow=$(printf '%s\n' "$1" | awk '{ split($12, polls, "/"); print polls[1] }')
  [ "$slow" -le "$PREEMPTED_POLLS" ] || fail "$3: $slow slow polls: $1"
  expect "$1" " $SPARED$2" "$3"
  [ "$slow" -eq 0 ] || echo "examples-check: $slow slow polls allowed (the machine's): $1"
}

json=$(timeout 300 target/release/examples/json_service --requests 40)
printf '%s\n' "$json" | sed -n '/^variant/,/^$/p'
blocking=$(row "$json" blocking)
# The culprit is the most frequent sample's: a serde_json function, the handler's round-trip, or
# serde_json's ValueVisitor, whose name the column cuts to "…ze::ValueVisitor as
# serde_core::de::Visitor>::visit_map" (seen once in a CI-sized run).
expect "$blocking" 'BLOCKS .*(serde_json|json_app|ValueVisitor as serde_core).* cpu *$' "/blocking: verdict BLOCKS, a serde_json or handler culprit, cause cpu"
expect "$(row "$json" simd)" 'BLOCKS .* cpu *$' "/simd: verdict BLOCKS, cause cpu"
spared "$(row "$json" offload)" ' *$' "/offload: ok, no culprit"
spared "$(row "$json" passthrough)" ' *$' "/passthrough: ok, no culprit"
# The canary (/health, p99) behind /blocking waits far longer than behind /passthrough.
behind_blocking=$(millis "$blocking" 8)
behind_passthrough=$(millis "$(row "$json" passthrough)" 8)
awk -v b="$behind_blocking" -v p="$behind_passthrough" 'BEGIN { exit !(b >= 5 * p) }' ||
  fail "canary p99 behind /blocking ($behind_blocking ms) not 5x that behind /passthrough ($behind_passthrough ms)"
# Production's view of the same: the routes that round-trip on the executor inflicted the
# delay, the fixes did not, and the canary's route, the victim, under 1 % of /blocking's.
inflicted_far_more "$json" blocking 100 offload passthrough
inflicted_far_more "$json" simd 100 offload passthrough
summary "$json"
health=$(millis "$(summary "$json")" 0)
awk -v h="$health" -v b="$(millis "$blocking" 10)" 'BEGIN { exit !(h * 100 < b) }' ||
  fail "/health inflicted $health ms, 1 % of /blocking's or more"

scoring=$(timeout 300 target/release/examples/scoring --requests 40)
printf '%s\n' "$scoring" | sed -n '/^variant/,/^$/p'
expect "$(row "$scoring" sync)" 'BLOCKS .* io \(recvfrom\) +BLOCKS .* sleep \(clock_nanosleep\) *$' \
  "sync: BLOCKS in io (recvfrom), the model route BLOCKS in sleep"
spared "$(row "$scoring" async)" ' +ok +- +- *$' "async: ok, and the model route ok"
spared "$(row "$scoring" fixed-sync)" ' +BLOCKS .* sleep' "fixed-sync: ok, the model route BLOCKS in sleep"
summary "$scoring"
inflicted_far_more "$scoring" sync 100 async fixed-sync
echo "examples-check: ok"
