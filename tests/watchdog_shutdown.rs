//! Dropping the last `Detector` stops its watchdog thread promptly, even while watched futures
//! live on. (Its own test binary: it counts the process's watchdog threads.)
#![cfg(all(feature = "watchdog", target_os = "linux"))]

use std::time::{Duration, Instant};

/// Threads of this process named `hogwatch-watchdog` (the kernel keeps 15 bytes of a name).
fn watchdog_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "hogwatch-watchd")
        .count()
}

/// Waits (up to 10 s) for the count to become `expected`: a new thread names itself once it
/// runs.
fn wait_for_watchdog_threads(expected: usize) -> usize {
    let start = Instant::now();
    while watchdog_threads() != expected && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    watchdog_threads()
}

#[test]
fn dropping_the_last_detector_stops_the_watchdog_promptly() {
    assert_eq!(watchdog_threads(), 0);
    // A long threshold: the thread checks every 15 s, so only a prompt wake-up stops it fast.
    let detector = hogwatch::Detector::builder()
        .watchdog(Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(wait_for_watchdog_threads(1), 1);
    let clone = detector.clone();
    let pending = clone.watch("outlives-the-detector", std::future::pending::<()>());
    drop(detector);
    assert_eq!(watchdog_threads(), 1, "a clone is still alive");

    let start = Instant::now();
    drop(clone);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "drop took {took:?}");
    assert_eq!(wait_for_watchdog_threads(0), 0, "the thread was joined");
    drop(pending);

    // And again, with a detector that never ran a poll.
    let detector = hogwatch::Detector::builder()
        .watchdog(Duration::from_millis(5))
        .build()
        .unwrap();
    assert_eq!(wait_for_watchdog_threads(1), 1);
    drop(detector);
    assert_eq!(wait_for_watchdog_threads(0), 0);
}
