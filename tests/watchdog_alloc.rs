//! The signal handler never allocates: a counting global allocator sees no allocation on a
//! thread while the watchdog interrupts it again and again for its stack.
#![cfg(all(feature = "watchdog", target_os = "linux"))]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hogwatch::{HogEvent, HogKind};

/// Counts allocations per thread, then lets the system allocator do the work.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_on_this_thread() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_signal_handler_does_not_allocate() {
    // 50 ms: three thresholds leave the busy machine time to run the watchdog and the handler.
    let threshold = Duration::from_millis(50);
    let reported: Arc<Mutex<Option<(Instant, Duration)>>> = Arc::default();
    let sink = reported.clone();
    let detector = hogwatch::Detector::builder()
        .watchdog(threshold)
        .on_hog(move |event: &HogEvent| {
            if event.kind == HogKind::Stall {
                // The first report only (this runs on the watchdog thread: its allocations are
                // not the spinning thread's).
                sink.lock()
                    .unwrap()
                    .get_or_insert((Instant::now(), event.duration));
            }
        })
        .build()
        .unwrap();
    let waiting = common::CpuWaitSince::here();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // The first watched poll registers the thread (that allocates, once).
    runtime.block_on(detector.watch("warm-up", async {}));
    let (started, allocated_while_captured) = runtime.block_on(detector.watch("spin", async {
        let before = allocations_on_this_thread();
        // Reports at 50, 100, 200, 400 and 800 ms, each with a capture of this thread (the
        // stacks are named on another thread, so none waits for the debug information).
        let start = Instant::now();
        let mut acc = 0u64;
        while start.elapsed() < Duration::from_millis(1_500) {
            for i in 0..10_000u64 {
                acc = black_box(acc.wrapping_mul(31).wrapping_add(i));
            }
        }
        black_box(acc);
        (start, allocations_on_this_thread() - before)
    }));
    let stats = detector.watchdog_stats().unwrap();
    assert!(
        stats.captures_completed >= 2,
        "two captures while the thread spun: {stats:?}"
    );
    assert_eq!(
        allocated_while_captured, 0,
        "no allocation on the captured thread ({stats:?})"
    );
    common::assert_captures(&detector, &waiting);
    // Reported (and counted) while it spun, within three thresholds of its start.
    let (at, duration) = reported.lock().unwrap().expect("the stall was reported");
    let bound = 3 * threshold;
    assert!(
        duration <= bound,
        "first reported {duration:?} into the poll"
    );
    let latency = at.duration_since(started);
    assert!(
        latency <= bound,
        "on_hog got it {latency:?} after the start"
    );
    assert_eq!(detector.report().entry("spin").unwrap().stalls, 1);
}
