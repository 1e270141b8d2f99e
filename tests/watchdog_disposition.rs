//! A profiler that takes the watchdog's signal, or gives it back to its default action, never
//! makes a capture end the process. (Its own test binary: it changes `SIGPROF`'s disposition,
//! which would race with the watchdogs of other tests.)
#![cfg(all(feature = "watchdog", target_os = "linux"))]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hogwatch::{Detector, WatchdogStats};

const THRESHOLD: Duration = Duration::from_millis(50);

/// Blocks one watched poll labelled `label` for `duration` and checks that its stall was
/// first reported within twice the threshold of the block's start (alone in its binary).
fn stall(detector: &Detector, log: &common::StallLog, label: &str, duration: Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (started, value) = runtime.block_on(detector.watch(label, async move {
        let started = std::time::Instant::now();
        (started, common::crunch_numbers(duration))
    }));
    std::hint::black_box(value);
    log.assert_first_within(label, started, 2 * THRESHOLD);
    assert_eq!(detector.report().entry(label).unwrap().stalls, 1);
}

/// The watchdog's capture figures gained since `before`.
fn gained(before: &WatchdogStats, after: &WatchdogStats) -> [u64; 7] {
    [
        after.captures_requested - before.captures_requested,
        after.captures_completed - before.captures_completed,
        after.captures_timeout - before.captures_timeout,
        after.captures_busy - before.captures_busy,
        after.captures_stuck - before.captures_stuck,
        after.captures_displaced - before.captures_displaced,
        after.captures_unsent - before.captures_unsent,
    ]
}

/// Counts the `SIGPROF`s the "profiler" gets.
static PROFILER_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn profiler(_signal: libc::c_int) {
    PROFILER_SIGNALS.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn a_profiler_restoring_or_taking_sigprof_does_not_end_the_process() {
    let log = common::StallLog::default();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(1))
        .watchdog(THRESHOLD)
        .on_hog(log.on_hog())
        .build()
        .unwrap();
    assert_eq!(detector.watchdog_stats().unwrap().signal, libc::SIGPROF);
    let waiting = common::CpuWaitSince::here();
    // One stall with the handler in place: the watchdog captures as usual.
    stall(&detector, &log, "before", Duration::from_millis(400));
    let stats = common::settled_watchdog_stats(&detector);
    assert!(stats.captures_completed > 0, "{stats:?}");
    common::assert_capture_failures(&stats, waiting.waited(), THRESHOLD / 4);

    // A profiler stops and puts back the default action (which ends the process).
    // SAFETY: setting SIGPROF's disposition; no handler of ours is running on this thread.
    unsafe { libc::signal(libc::SIGPROF, libc::SIG_DFL) };
    let waiting = common::CpuWaitSince::here();
    let before = detector.watchdog_stats().unwrap();
    stall(&detector, &log, "after-default", Duration::from_millis(400));
    let stats = common::settled_watchdog_stats(&detector);
    let [requested, completed, timeouts, busy, stuck, displaced, unsent] = gained(&before, &stats);
    assert!(
        completed > 0,
        "the handler was installed again and captured: {stats:?}"
    );
    // Every capture after the reinstall completed (timeouts only as the thread's waits for a
    // CPU explain): none found the default action in place.
    let allowed = (waiting.waited().as_nanos() / (THRESHOLD / 4).as_nanos()) as u64;
    assert_eq!((busy, stuck, displaced, unsent), (0, 0, 0, 0), "{stats:?}");
    assert!(timeouts <= allowed, "{timeouts} timeouts: {stats:?}");
    assert_eq!(requested, completed + timeouts, "{stats:?}");

    // A profiler installs its own handler: the watchdog leaves the signal to it.
    // SAFETY: `profiler` is a valid one-argument handler for the rest of the process.
    unsafe {
        libc::signal(
            libc::SIGPROF,
            profiler as extern "C" fn(libc::c_int) as usize,
        )
    };
    let before = detector.watchdog_stats().unwrap();
    stall(&detector, &log, "profiled", Duration::from_millis(400));
    let stats = common::settled_watchdog_stats(&detector);
    // Every capture of the stall was left undone because the signal is the profiler's: each
    // one `displaced` (none sent, so none timed out, and nothing captured).
    let [requested, completed, timeouts, busy, stuck, displaced, unsent] = gained(&before, &stats);
    assert!(displaced > 0, "{stats:?}");
    assert_eq!(
        (requested, completed, timeouts, busy, stuck, unsent),
        (displaced, 0, 0, 0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(
        PROFILER_SIGNALS.load(Ordering::Relaxed),
        0,
        "no signal sent to the profiler's handler"
    );
    // The control: the profiler's handler is in place and counts the signals it gets.
    // SAFETY: raising a signal whose handler only increments an atomic.
    assert_eq!(unsafe { libc::raise(libc::SIGPROF) }, 0);
    assert_eq!(PROFILER_SIGNALS.load(Ordering::Relaxed), 1);
}
