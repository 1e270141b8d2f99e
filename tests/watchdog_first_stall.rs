//! The first stall of a fresh process is caught as fast as any later one. (Its own test binary,
//! and its only test: nothing else in the process has loaded debug information or captured a
//! stack before, and no other detector's naming thread loads debug information beside it. The
//! drop right after `build()` is timed in `tests/watchdog_shutdown.rs`.)
#![cfg(all(feature = "watchdog", target_os = "linux"))]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hogwatch::{Detector, HogEvent, HogKind};

/// Waits (up to 10 s) for `label`'s entry to have a symbolised stack: stacks are named after the
/// stall is counted, once the symbols are loaded.
fn symbolised_stack(detector: &Detector, label: &str) -> String {
    let start = Instant::now();
    loop {
        let report = detector.report();
        let entry = report.entry(label).expect("the label has an entry");
        if let Some(top) = entry.top_stacks.first() {
            return top.stack.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no stack for {label} within 10 s: {:?}",
            report.watchdog
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_first_stall_of_a_process_is_reported_within_twice_the_threshold() {
    let threshold = Duration::from_millis(50);
    let seen: Arc<Mutex<Vec<(Instant, HogEvent)>>> = Arc::default();
    let sink = seen.clone();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(1))
        .on_hog(move |event: &HogEvent| {
            if event.kind == HogKind::Stall {
                sink.lock().unwrap().push((Instant::now(), event.clone()));
            }
        })
        .watchdog(threshold)
        .build()
        .unwrap();
    let waiting = common::CpuWaitSince::here();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Right after `build()`: a fixed 300 ms spin, started inside the watched poll.
    let started = runtime.block_on(detector.watch("first", async {
        let started = Instant::now();
        std::hint::black_box(common::crunch_numbers(Duration::from_millis(300)));
        started
    }));
    let report = detector.report();
    assert_eq!(
        report.entry("first").unwrap().stalls,
        1,
        "the stall is counted: {:?}",
        report.watchdog
    );
    let events = seen.lock().unwrap().clone();
    let (at, event) = events.first().expect("the stall was reported");
    let latency = at.duration_since(started);
    eprintln!("first stall of the process reported {latency:?} after the poll started");
    assert_eq!(&*event.label, "first");
    assert!(
        latency <= 2 * threshold,
        "reported {latency:?} after the poll started (threshold {threshold:?})"
    );
    // The report taken right after the stall (above) already names it: no wait for the debug
    // information, which a debug build takes hundreds of milliseconds to load.
    let entry = report.entry("first").unwrap();
    let stack = &entry
        .top_stacks
        .first()
        .expect("a stack right after the stall")
        .stack;
    assert!(stack.contains("crunch_numbers"), "{stack}");
    let culprit = &entry
        .top_culprits
        .first()
        .expect("a culprit right after")
        .culprit;
    assert!(culprit.ends_with("crunch_numbers"), "{culprit}");
    assert!(!entry.functions.is_empty(), "a function table right after");
    // Later samples' names come with their inlined frames once the debug information is in.
    let stack = symbolised_stack(&detector, "first");
    assert!(stack.contains("crunch_numbers"), "{stack}");
    common::assert_captures(&detector, &waiting);
}
