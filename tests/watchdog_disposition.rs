//! A profiler that takes the watchdog's signal, or gives it back to its default action, never
//! makes a capture end the process. (Its own test binary: it changes `SIGPROF`'s disposition,
//! which would race with the watchdogs of other tests.)
#![cfg(all(feature = "watchdog", target_os = "linux"))]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hogwatch::Detector;

fn stall(detector: &Detector, label: &str, duration: Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let value =
        runtime.block_on(detector.watch(label, async move { common::crunch_numbers(duration) }));
    std::hint::black_box(value);
}

/// Counts the `SIGPROF`s the "profiler" gets.
static PROFILER_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn profiler(_signal: libc::c_int) {
    PROFILER_SIGNALS.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn a_profiler_restoring_or_taking_sigprof_does_not_end_the_process() {
    let detector = Detector::builder()
        .threshold(Duration::from_millis(1))
        .watchdog(Duration::from_millis(50))
        .build()
        .unwrap();
    assert_eq!(detector.watchdog_stats().unwrap().signal, libc::SIGPROF);
    // One stall with the handler in place: the watchdog captures as usual.
    stall(&detector, "before", Duration::from_millis(400));

    // A profiler stops and puts back the default action (which ends the process).
    // SAFETY: setting SIGPROF's disposition; no handler of ours is running on this thread.
    unsafe { libc::signal(libc::SIGPROF, libc::SIG_DFL) };
    let completed_before = detector.watchdog_stats().unwrap().captures_completed;
    stall(&detector, "after-default", Duration::from_millis(400));
    let stats = detector.watchdog_stats().unwrap();
    assert_eq!(detector.report().entry("after-default").unwrap().stalls, 1);
    assert!(
        stats.captures_completed > completed_before,
        "the handler was installed again and captured: {stats:?}"
    );

    // A profiler installs its own handler: the watchdog leaves the signal to it.
    // SAFETY: `profiler` is a valid one-argument handler for the rest of the process.
    unsafe {
        libc::signal(
            libc::SIGPROF,
            profiler as extern "C" fn(libc::c_int) as usize,
        )
    };
    let failed_before = detector.watchdog_stats().unwrap().captures_failed;
    stall(&detector, "profiled", Duration::from_millis(400));
    let stats = detector.watchdog_stats().unwrap();
    assert_eq!(detector.report().entry("profiled").unwrap().stalls, 1);
    assert!(stats.captures_failed > failed_before, "{stats:?}");
    assert_eq!(
        PROFILER_SIGNALS.load(Ordering::Relaxed),
        0,
        "no signal sent to the profiler's handler"
    );
}
