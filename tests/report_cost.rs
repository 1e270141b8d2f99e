//! What a report costs at `max_labels`, alone in its own test binary: a counting global
//! allocator measures what `report()` allocates, and a second detector watches the debug
//! endpoint itself to show that serving it never holds an executor worker.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use hogwatch::Detector;

mod common;
use common::Spin;

/// Counts the bytes the thread that turned `COUNTING` on allocates (the other test of this
/// binary runs beside it).
struct Counting;

static ALLOCATED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A detector whose 1,024 labels (its `max_labels`) all have polls from two threads, spread
/// from under 1 µs to 300 µs.
fn loaded() -> Detector {
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .max_labels(1_024)
        .build()
        .unwrap();
    let labels: Vec<String> = (0..1_024).map(|i| format!("GET /route/{i}")).collect();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut cx = Context::from_waker(Waker::noop());
                for (i, label) in labels.iter().enumerate() {
                    for poll in 0..3u64 {
                        let micros = (i as u64 * 37 + poll * 61) % 300;
                        let future = pin!(detector.watch(label, Spin(micros)));
                        assert!(future.poll(&mut cx).is_ready());
                    }
                }
            });
        }
    });
    detector
}

#[test]
fn a_report_at_max_labels_allocates_under_4_mib() {
    let detector = loaded();
    // The first report may set up what later ones reuse; what matters is every report.
    for round in 0..3 {
        ALLOCATED.store(0, Ordering::Relaxed);
        COUNTING.set(true);
        let report = if round == 1 {
            detector.report_and_reset()
        } else {
            detector.report()
        };
        COUNTING.set(false);
        let allocated = ALLOCATED.load(Ordering::Relaxed);
        eprintln!("report {round}: {} KiB allocated", allocated >> 10);
        if round < 2 {
            assert_eq!(report.entries.len(), 1_024);
        }
        assert!(
            allocated < 4 << 20,
            "report {round} allocated {allocated} bytes"
        );
        drop(report);
    }
}

/// The page, the text, the JSON and the metrics of a 1,024-label report, each served while a
/// second detector watches the endpoint's own polls with a threshold of half the time the page
/// takes to render (at least 20 ms): rendering happens on the blocking pool, so no poll of the
/// endpoint comes near it. (Rendered on the worker, the page's poll would take the whole render
/// time: twice the threshold.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_the_report_at_max_labels_never_holds_a_worker() {
    let detector = tokio::task::spawn_blocking(loaded).await.unwrap();
    let started = Instant::now();
    let page = detector.report().to_html();
    let render = started.elapsed();
    assert!(page.len() > 100_000);

    let threshold = (render / 2).max(Duration::from_millis(20));
    let watcher = Detector::builder().threshold(threshold).build().unwrap();
    let app = detector.router::<()>().route_layer(watcher.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
    for path in [
        "/debug/hogs?format=html",
        "/debug/hogs?format=text",
        "/debug/hogs",
        "/debug/hogs/metrics",
    ] {
        let uri = format!("http://{address}{path}").parse().unwrap();
        let response = client.get(uri).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        use http_body_util::BodyExt;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.len() > 10_000, "{path}: {} bytes", body.len());
    }
    let report = watcher.report();
    let served: Vec<_> = report
        .entries
        .iter()
        .filter(|entry| entry.label.starts_with("GET /debug/hogs"))
        .collect();
    assert_eq!(served.iter().map(|entry| entry.requests).sum::<u64>(), 4);
    for entry in served {
        assert_eq!(
            entry.slow_polls,
            0,
            "{} held a worker for {} µs (threshold {threshold:?}; rendering the page alone took {render:?}):\n{}",
            entry.label,
            entry.max_poll_us,
            report.to_text()
        );
    }
}
