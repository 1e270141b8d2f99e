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

/// `label`'s report entry once the watchdog's naming thread has named its stacks and culprits;
/// panics with the report if it has not within 10 s (the first names wait for the program's
/// debug information, a second or so in a debug build).
#[cfg(feature = "watchdog")]
pub fn named_entry(detector: &hogwatch::Detector, label: &str) -> hogwatch::Entry {
    let start = std::time::Instant::now();
    loop {
        let entry = detector.report().entry(label).cloned();
        let named = |entry: &hogwatch::Entry| {
            !entry.top_stacks.is_empty() && !entry.top_culprits.is_empty()
        };
        if let Some(entry) = entry.as_ref().filter(|entry| named(entry)) {
            return entry.clone();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no named stack and culprit for {label} within 10 s: {entry:#?}\n{:?}",
            detector.watchdog_stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The stall events an `on_hog` callback got, each with the time it arrived.
#[derive(Clone, Default)]
pub struct StallLog(
    std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, hogwatch::HogEvent)>>>,
);

impl StallLog {
    /// An `on_hog` callback that records every stall event (and nothing else).
    pub fn on_hog(&self) -> impl Fn(&hogwatch::HogEvent) + Send + Sync + 'static {
        let sink = self.0.clone();
        move |event: &hogwatch::HogEvent| {
            if event.kind == hogwatch::HogKind::Stall {
                let mut events = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                events.push((std::time::Instant::now(), event.clone()));
            }
        }
    }

    /// The stall events so far, in the order they came.
    pub fn events(&self) -> Vec<(std::time::Instant, hogwatch::HogEvent)> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Asserts that `label`'s stall, whose block started at `started`, was first reported within
    /// `bound` of that start, both by the duration the event states (how long the poll had run
    /// when the watchdog saw it) and by the clock when `on_hog` got it; returns that event.
    /// Panics with every event if there was none.
    pub fn assert_first_within(
        &self,
        label: &str,
        started: std::time::Instant,
        bound: std::time::Duration,
    ) -> hogwatch::HogEvent {
        let events = self.events();
        let (at, event) = events
            .iter()
            .find(|(_, event)| &*event.label == label)
            .unwrap_or_else(|| panic!("no stall of {label} reported: {events:#?}"));
        let latency = at
            .checked_duration_since(started)
            .unwrap_or_else(|| panic!("{label}: reported before its block started: {events:#?}"));
        assert!(
            event.duration >= event.threshold && event.duration <= bound,
            "{label}: first reported {:?} into the poll (threshold {:?}, bound {bound:?})",
            event.duration,
            event.threshold
        );
        assert!(
            latency <= bound,
            "{label}: on_hog got the stall {latency:?} after the block started (the event says \
             {:?} into the poll; bound {bound:?})",
            event.duration
        );
        event.clone()
    }
}

/// This thread's kernel id.
pub fn this_tid() -> String {
    let path = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// The kernel ids of this process's threads named `name` (`comm`, cut to 15 bytes).
pub fn tids_named(name: &str) -> Vec<String> {
    let mut tids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            tids.push(task.file_name().to_string_lossy().into_owned());
        }
    }
    tids
}

/// How long the threads `tids` of this process have waited for a CPU while runnable, so far
/// (the second field of `/proc/self/task/<tid>/schedstat`), summed; a thread gone counts 0.
pub fn cpu_wait(tids: &[String]) -> std::time::Duration {
    let ns: u64 = tids
        .iter()
        .map(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
                .unwrap_or_default()
                .split_whitespace()
                .nth(1)
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    std::time::Duration::from_nanos(ns)
}

/// Asserts that no stack capture failed: see [`assert_capture_failures`], with no time waited
/// for a CPU allowed.
pub fn assert_no_failed_captures(stats: &hogwatch::WatchdogStats) {
    assert_capture_failures(stats, std::time::Duration::ZERO, std::time::Duration::MAX);
}

/// Asserts each failure kind of the watchdog's captures:
/// - `busy`: the watchdog captures one thread at a time, so a capture overlapping another is a
///   bug whenever seen: 0;
/// - `displaced` and `unsent` need another handler on the watchdog's signal, or a thread gone
///   before it was signalled; no test but `watchdog_disposition` installs one, and a watched
///   thread outlives its polls: 0;
/// - `timeout` and `stuck`: a signalled thread that runs its own code answers within
///   microseconds if it is on a CPU, and its handler only walks its stack, so a capture left
///   unanswered for its timeout (`timeout`: the shortest capture timeout of the test, a quarter
///   of the watchdog threshold for a sample, 250 ms for a report), or answered but unfinished
///   after four times it (`stuck`), means the thread waited that long for a CPU: together no
///   more than `waited`, how long the signalled threads waited for a CPU during the test
///   ([`cpu_wait`]). None on an idle machine. (A handler that never finishes hangs its thread,
///   and the test with it.)
pub fn assert_capture_failures(
    stats: &hogwatch::WatchdogStats,
    waited: std::time::Duration,
    timeout: std::time::Duration,
) {
    assert_eq!(stats.captures_busy, 0, "overlapping captures: {stats:?}");
    assert_eq!(
        (stats.captures_displaced, stats.captures_unsent),
        (0, 0),
        "displaced or unsent captures: {stats:?}"
    );
    let unanswered = timeout
        .saturating_mul(stats.captures_timeout as u32)
        .saturating_add(timeout.saturating_mul(4 * stats.captures_stuck as u32));
    assert!(
        unanswered <= waited,
        "{} captures timed out and {} got stuck ({unanswered:?} at {timeout:?} each, four times \
         that for a stuck one), but the signalled threads waited only {waited:?} for a CPU: \
         {stats:?}",
        stats.captures_timeout,
        stats.captures_stuck
    );
    assert_eq!(
        stats.captures_failed,
        stats.captures_timeout
            + stats.captures_busy
            + stats.captures_stuck
            + stats.captures_displaced
            + stats.captures_unsent,
        "{stats:?}"
    );
}

/// The time some threads of this process waited for a CPU from now on ([`cpu_wait`]).
pub struct CpuWaitSince {
    /// The threads' ids, and names of threads counted too (from their start if they start
    /// later: tokio starts its blocking threads on demand).
    tids: Vec<String>,
    names: Vec<String>,
    before: Vec<(String, std::time::Duration)>,
}

impl CpuWaitSince {
    /// From now on, for the calling thread.
    pub fn here() -> Self {
        Self::of(vec![this_tid()], &[])
    }

    /// From now on, for the threads `tids` and every thread named one of `names` (`comm`).
    pub fn of(tids: Vec<String>, names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut since = Self {
            tids,
            names,
            before: Vec::new(),
        };
        since.before = since
            .threads()
            .into_iter()
            .map(|tid| {
                let waited = cpu_wait(std::slice::from_ref(&tid));
                (tid, waited)
            })
            .collect();
        since
    }

    fn threads(&self) -> Vec<String> {
        let mut tids = self.tids.clone();
        for name in &self.names {
            tids.extend(tids_named(name));
        }
        tids.sort();
        tids.dedup();
        tids
    }

    /// How long they waited for a CPU since (a thread gone by now counts nothing: call this
    /// while the signalled threads live).
    pub fn waited(&self) -> std::time::Duration {
        self.threads()
            .into_iter()
            .map(|tid| {
                let before = self
                    .before
                    .iter()
                    .find(|(old, _)| *old == tid)
                    .map_or(std::time::Duration::ZERO, |(_, waited)| *waited);
                cpu_wait(std::slice::from_ref(&tid)).saturating_sub(before)
            })
            .sum()
    }
}

/// The labels a stall of a task may have whose future is `async fn function` and which blocks in
/// `inner` (both `crate::name`): `task function`, and in a release build with tokio_unstable also
/// `task inner`. That build's task harness (with its hooks) inlines a small future's poll, and
/// without debug information nothing names the inlined function: the label is then the first
/// function of ours it calls, as the watchdog guide says.
pub fn task_labels(function: &str, inner: &str) -> Vec<String> {
    let mut labels = vec![format!("task {function}")];
    if cfg!(all(tokio_unstable, not(debug_assertions))) {
        labels.push(format!("task {inner}"));
    }
    labels
}

/// The threads a watched runtime's poll may run on from now on: tokio's workers and blocking
/// threads, and this one (a current-thread runtime's, or `block_on`'s), for
/// [`assert_captures`].
pub fn runtime_threads() -> CpuWaitSince {
    CpuWaitSince::of(vec![this_tid()], &["tokio-rt-worker"])
}

/// Checks every failure kind of `detector`'s captures once none is in flight
/// ([`assert_capture_failures`]): a timeout only as far as the threads of `waiting` waited for a
/// CPU a quarter of the threshold (a sample's capture timeout) for it. Call it before the
/// runtime is dropped (its threads' waits go with them).
#[cfg(feature = "watchdog")]
pub fn assert_captures(detector: &hogwatch::Detector, waiting: &CpuWaitSince) {
    let stats = settled_watchdog_stats(detector);
    let timeout = std::time::Duration::from_micros(stats.threshold_us) / 4;
    assert_capture_failures(&stats, waiting.waited(), timeout);
}

/// The watchdog's figures once no capture is in flight: a capture is counted as requested when
/// its signal goes, and by its outcome only once the watchdog thread is done waiting for it, so
/// a reading taken right as a stall ends (the watchdog thread preempted on a busy machine) can
/// have one requested and not yet anything else. Re-reads until every request has its outcome,
/// for at most two seconds (then returns what it has, and the caller's checks show it).
#[cfg(feature = "watchdog")]
pub fn settled_watchdog_stats(detector: &hogwatch::Detector) -> hogwatch::WatchdogStats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let stats = detector.watchdog_stats().expect("a watchdog");
        let outcomes = stats.captures_completed
            + stats.captures_timeout
            + stats.captures_busy
            + stats.captures_stuck
            + stats.captures_displaced
            + stats.captures_unsent;
        if outcomes >= stats.captures_requested || std::time::Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
