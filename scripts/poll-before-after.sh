#!/usr/bin/env bash
# What one poll costs before and after a change, in ONE criterion run: hogwatch at REV (default
# 7c4a2e1, before the inflicted delay of issue 27) and the working tree, each as its own crate
# in a scratch bench, measured in turn twice, with and without the lag probe, beside
# quanta's raw clock read. Compare the medians of one run (BENCHMARKS.md says why).
#
#   scripts/poll-before-after.sh [REV]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-7c4a2e1}
here=$(pwd)
scratch=$(mktemp -d /tmp/hogwatch-poll-XXXXXX)
trap 'git worktree remove --force "$scratch/before" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
git worktree add --detach "$scratch/before" "$rev" >/dev/null
# Two packages named hogwatch in one graph need different semver-incompatible versions.
sed -i 's/^version = "0.1.0"/version = "0.0.1"/' "$scratch/before/Cargo.toml"
mkdir -p "$scratch/bench/src" "$scratch/bench/benches"
: > "$scratch/bench/src/lib.rs"
cp Cargo.lock "$scratch/bench/"
cat > "$scratch/bench/Cargo.toml" <<TOML
[package]
name = "poll-before-after"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
hw_before = { package = "hogwatch", path = "$scratch/before" }
hw_after = { package = "hogwatch", path = "$here" }
criterion = "0.7"
quanta = "0.13"
tokio = { version = "1.47", features = ["full"] }

[[bench]]
name = "poll"
harness = false

[workspace]
TOML
cat > "$scratch/bench/benches/poll.rs" <<'RUST'
use std::future::Future;
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

/// Never ready, does almost nothing: only the instrumentation around a poll is measured.
struct Pending(u64);

impl Future for Pending {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        self.0 = self.0.wrapping_add(1);
        black_box(self.0);
        Poll::Pending
    }
}

fn poll_once<F: Future>(future: Pin<&mut F>) {
    let mut cx = Context::from_waker(Waker::noop());
    black_box(future.poll(&mut cx).is_pending());
}

macro_rules! watched {
    ($group:expr, $name:expr, $krate:ident, $probe:expr) => {
        $group.bench_function($name, |b| {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let _entered = runtime.enter();
            let builder = $krate::Detector::builder().threshold(Duration::from_millis(10));
            let builder = match $probe {
                true => builder.lag_probe(Duration::from_millis(10)),
                false => builder,
            };
            let detector = builder.build().unwrap();
            let mut future = pin!(detector.watch("bench", Pending(0)));
            b.iter(|| poll_once(future.as_mut()));
        });
    };
}

fn per_poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("poll");
    for round in ["a", "b"] {
        watched!(group, format!("hogwatch_before/{round}"), hw_before, false);
        watched!(group, format!("hogwatch_after/{round}"), hw_after, false);
        watched!(group, format!("hogwatch_before_probe/{round}"), hw_before, true);
        watched!(group, format!("hogwatch_after_probe/{round}"), hw_after, true);
    }
    group.bench_function("quanta_raw_read", |b| {
        let clock = quanta::Clock::new();
        b.iter(|| black_box(clock.raw()));
    });
    group.finish();
}

criterion_group!(benches, per_poll);
criterion_main!(benches);
RUST
cd "$scratch/bench"
CARGO_TARGET_DIR="$here/target/poll-before-after" cargo bench --bench poll 2>&1 | grep -E "^poll/|time:"
