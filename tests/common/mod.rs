//! Helpers shared by the integration tests.

// Each test binary that includes this module uses only some of the helpers.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

/// Checks `metrics` with Prometheus' own parser, `promtool check metrics`.
///
/// Without `promtool` on the PATH the check is skipped with a message, unless
/// `HOGWATCH_REQUIRE_PROMTOOL` is set (CI sets it after installing the Debian package
/// `prometheus`), in which case its absence fails the test.
pub fn assert_promtool_accepts(metrics: &str) {
    let promtool = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|candidate| candidate.is_file())
    });
    let Some(promtool) = promtool else {
        assert!(
            std::env::var_os("HOGWATCH_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here but not installed (Debian package `prometheus`)"
        );
        eprintln!("promtool not found: install the Debian package `prometheus` to run this check");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(metrics.as_bytes())
        .expect("promtool reads the metrics");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Sleeps in small steps (letting the runtime's other tasks run) until `done` holds; panics
/// naming `what` after 10 s, far longer than any loaded machine needs. Tests wait for what they
/// check rather than for a fixed time: on a loaded CI machine a task may run late.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Spins for `duration` doing arithmetic: the function the watchdog must catch and name as the
/// culprit (never inlined, so it is a frame of its own in any build).
#[inline(never)]
pub fn crunch_numbers(duration: std::time::Duration) -> u64 {
    let start = std::time::Instant::now();
    let mut acc = 0u64;
    while start.elapsed() < duration {
        for i in 0..100_000u64 {
            acc = std::hint::black_box(acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
    }
    acc
}

/// The process's resident memory, in bytes (0 where `/proc/self/statm` cannot be read).
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A future that spins for its microseconds on its one poll: a poll of a chosen length.
pub struct Spin(pub u64);

impl std::future::Future for Spin {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let until = std::time::Instant::now() + std::time::Duration::from_micros(self.0);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        std::task::Poll::Ready(())
    }
}

/// `label`'s report entry once the watchdog's naming thread has named its stacks (10 s at most:
/// the first names wait for the program's debug information).
#[cfg(feature = "watchdog")]
pub fn named_entry(detector: &hogwatch::Detector, label: &str) -> hogwatch::Entry {
    let start = std::time::Instant::now();
    loop {
        let entry = detector.report().entry(label).cloned();
        if let Some(entry) = entry.filter(|entry| !entry.top_stacks.is_empty()) {
            return entry;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no named stack for {label} within 10 s: {:?}",
            detector.watchdog_stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
