//! The user's `on_hog` callback on the poll path: a panic in it never reaches the watched
//! future, and it is never called while the thread unwinds. (Its own binary: a slow poll here
//! logs through `tracing` with no subscriber, which would race the subscriber-scoped warning
//! tests of `tests/core.rs` for the callsite's interest.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hogwatch::{Detector, HogEvent};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A panicking `on_hog` callback never reaches the watched future: the future blocks 30 ms (a
/// slow poll, so the callback runs on its thread) and still returns its value; the slow poll is
/// counted as usual.
#[test]
fn a_panicking_callback_does_not_panic_the_watched_future() {
    let calls = Arc::new(Mutex::new(0u32));
    let seen = calls.clone();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .on_hog(move |_: &HogEvent| {
            *seen.lock().unwrap() += 1;
            std::panic::resume_unwind(Box::new("the callback is broken"));
        })
        .build()
        .unwrap();
    let answer = current_thread().block_on(detector.watch("blocks", async {
        std::thread::sleep(Duration::from_millis(30));
        42
    }));
    assert_eq!(answer, 42);
    assert_eq!(*calls.lock().unwrap(), 1, "the callback ran once");
    let entry = detector.report().entry("blocks").cloned().unwrap();
    assert_eq!(
        (entry.slow_polls, entry.completed, entry.panicked),
        (1, 1, 0)
    );
}

/// A future that blocks 30 ms and then panics: its slow poll is recorded while the thread
/// unwinds, where a second panic (the callback's) would abort the process. The callback is
/// skipped there; the future's own panic propagates unchanged and is counted.
#[test]
fn a_callback_is_never_called_while_the_thread_unwinds() {
    let calls = Arc::new(Mutex::new(0u32));
    let seen = calls.clone();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .on_hog(move |_: &HogEvent| {
            *seen.lock().unwrap() += 1;
            std::panic::resume_unwind(Box::new("the callback is broken"));
        })
        .build()
        .unwrap();
    let runtime = current_thread();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(detector.watch("boom", async {
            std::thread::sleep(Duration::from_millis(30));
            std::panic::resume_unwind(Box::new("the future's own panic"));
        }))
    }));
    let payload = outcome.expect_err("the future's panic propagates");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"the future's own panic")
    );
    assert_eq!(*calls.lock().unwrap(), 0, "not called during the unwind");
    let entry = detector.report().entry("boom").cloned().unwrap();
    assert_eq!((entry.slow_polls, entry.panicked), (1, 1));
}
