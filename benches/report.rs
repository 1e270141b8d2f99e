//! What a report costs at production size: `report()` with 1,024 labels that all have data,
//! and the renderers on top of it. A report runs on whatever thread asks (an endpoint handler
//! on an executor worker, a Prometheus scrape), so it must stay far below the hog threshold.
//! Run: `cargo bench --bench report`. (Its allocations are counted in `tests/report_cost.rs`.)

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};

/// A future that spins `micros` on its one poll.
struct Spin(u64);

impl Future for Spin {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> std::task::Poll<()> {
        let until = Instant::now() + Duration::from_micros(self.0);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        std::task::Poll::Ready(())
    }
}

/// A detector with `labels` labels, each polled from two threads with a spread of durations
/// (1 µs to 300 µs: each label has several non-empty buckets in several octaves, as a real
/// route does).
fn loaded(labels: usize) -> hogwatch::Detector {
    let detector = hogwatch::Detector::builder()
        .threshold(Duration::from_millis(10))
        .max_labels(labels)
        .build()
        .expect("valid configuration");
    let names: Vec<String> = (0..labels).map(|i| format!("GET /route/{i}")).collect();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut cx = Context::from_waker(Waker::noop());
                for (i, name) in names.iter().enumerate() {
                    for poll in 0..5u64 {
                        let micros = (i as u64 * 37 + poll * 61) % 300;
                        let future = pin!(detector.watch(name, Spin(micros)));
                        let _ = future.poll(&mut cx);
                    }
                }
            });
        }
    });
    detector
}

fn report(c: &mut Criterion) {
    let detector = loaded(1_024);
    let report = detector.report();
    assert_eq!(report.entries.len(), 1_024, "every label has data");
    let mut group = c.benchmark_group("report");
    group.bench_function("labels_1024/report", |b| {
        b.iter(|| black_box(detector.report()))
    });
    // After the first reset the windows are empty but every counter is still read: the cost of
    // a scrape-and-reset loop.
    group.bench_function("labels_1024/report_and_reset", |b| {
        b.iter(|| black_box(detector.report_and_reset()))
    });
    group.bench_function("labels_1024/to_text", |b| {
        b.iter(|| black_box(report.to_text()))
    });
    group.bench_function("labels_1024/to_html", |b| {
        b.iter(|| black_box(report.to_html()))
    });
    group.bench_function("labels_1024/json", |b| {
        b.iter(|| black_box(serde_json::to_string(&report).expect("serialisable")))
    });
    // After the first reset the windows are empty but every counter is still read: the cost of
    // a scrape-and-reset loop.
    group.bench_function("labels_1024/report_and_reset", |b| {
        b.iter(|| black_box(detector.report_and_reset()))
    });
    group.finish();
}

criterion_group!(benches, report);
criterion_main!(benches);
