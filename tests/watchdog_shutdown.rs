//! Dropping the last `Detector` stops its watchdog thread promptly, even while watched futures
//! live on. (Its own test binary: it counts the process's watchdog threads.)
#![cfg(all(feature = "watchdog", target_os = "linux"))]

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The tests count the process's watchdog threads: one at a time.
static THREAD_COUNT: Mutex<()> = Mutex::new(());

/// What a drop may take: a user dropping a detector on an executor worker must not notice.
const DROP_BOUND: Duration = Duration::from_millis(100);

/// The `/proc` directories of this process's threads named `hogwatch-watchdog` (the kernel keeps
/// 15 bytes of a name).
fn watchdog_tasks() -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| Some(task.ok()?.path()))
        .filter(|task| {
            std::fs::read_to_string(task.join("comm"))
                .is_ok_and(|name| name.trim_end() == "hogwatch-watchd")
        })
        .collect()
}

fn watchdog_threads() -> usize {
    watchdog_tasks().len()
}

/// Whether the watchdog threads all sleep (state `S` in their `stat`).
fn watchdogs_sleep() -> bool {
    watchdog_tasks().iter().all(|task| {
        std::fs::read_to_string(task.join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, fields)| fields.starts_with('S'))
        })
    })
}

/// Waits (up to 30 s) until the watchdog threads sleep: asleep twice, 10 ms apart (a new thread
/// parks until its next check as soon as it has started).
fn wait_until_watchdogs_sleep() {
    let start = Instant::now();
    loop {
        if watchdogs_sleep() {
            std::thread::sleep(Duration::from_millis(10));
            if watchdogs_sleep() {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the watchdog thread never sleeps"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (up to 30 s) for the count to become `expected`: a new thread names itself once it
/// runs.
fn wait_for_watchdog_threads(expected: usize) -> usize {
    let start = Instant::now();
    while watchdog_threads() != expected && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    watchdog_threads()
}

#[test]
fn dropping_the_last_detector_stops_the_watchdog_promptly() {
    let _serial = THREAD_COUNT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    assert_eq!(watchdog_threads(), 0);
    // A long threshold: the thread checks every 150 s, so only a prompt wake-up stops it within
    // the 100 ms allowed below.
    let detector = hogwatch::Detector::builder()
        .watchdog(Duration::from_secs(600))
        .build()
        .unwrap();
    assert_eq!(wait_for_watchdog_threads(1), 1);
    // Parked for its check, so that only being woken stops it now.
    wait_until_watchdogs_sleep();
    let clone = detector.clone();
    let pending = clone.watch("outlives-the-detector", std::future::pending::<()>());
    drop(detector);
    assert_eq!(watchdog_threads(), 1, "a clone is still alive");

    let start = Instant::now();
    drop(clone);
    let took = start.elapsed();
    assert!(took < DROP_BOUND, "drop took {took:?}");
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

#[test]
fn a_detector_dropped_on_a_runtime_worker_right_after_build_drops_at_once() {
    let _serial = THREAD_COUNT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    // Built and dropped by a task, on a worker: the drop joins the watchdog thread, which has
    // just started (and may be setting up its naming thread), and holds the worker meanwhile.
    let took = runtime
        .block_on(runtime.spawn(async {
            let detector = hogwatch::Detector::builder()
                .watchdog(Duration::from_millis(50))
                .build()
                .unwrap();
            let start = Instant::now();
            drop(detector);
            start.elapsed()
        }))
        .unwrap();
    eprintln!("dropped on a worker {took:?} after build");
    assert!(took < DROP_BOUND, "drop took {took:?}");
    assert_eq!(wait_for_watchdog_threads(0), 0, "the thread was joined");
}

#[test]
fn a_detector_dropped_right_after_build_does_not_wait_for_the_symbols() {
    let _serial = THREAD_COUNT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let detector = hogwatch::Detector::builder()
        .watchdog(Duration::from_millis(50))
        .build()
        .unwrap();
    let start = Instant::now();
    drop(detector);
    let took = start.elapsed();
    eprintln!("dropped {took:?} after build");
    assert!(took < DROP_BOUND, "drop took {took:?}");
    assert_eq!(wait_for_watchdog_threads(0), 0, "the thread was joined");
}
