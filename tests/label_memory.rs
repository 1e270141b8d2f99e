//! What 1,024 labels cost when 8 threads poll each of them, alone in its own test binary: it
//! measures the process's resident memory, which tests beside it would disturb. (The recorder
//! keeps one storage per thread and label: see `src/recorder/label.rs` for the formula.)

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use hogwatch::Detector;

mod common;
use common::resident_bytes;
use common::Spin;

#[test]
fn a_thousand_labels_polled_from_eight_threads_stay_within_16_mib() {
    let labels: Vec<String> = (0..1_024).map(|i| format!("GET /route/{i}")).collect();
    let before = resident_bytes();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .max_labels(1_024)
        .build()
        .unwrap();
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let (detector, labels) = (&detector, &labels);
            scope.spawn(move || {
                let mut cx = Context::from_waker(Waker::noop());
                for (i, label) in labels.iter().enumerate() {
                    // Mostly sub-microsecond polls, and for one label in eight a poll of up to
                    // 300 µs, which lands in a bucket chunk of its own.
                    for poll in 0..4u64 {
                        let micros = if (i as u64 + thread) % 8 == 0 {
                            (i as u64 * 37 + poll * 61) % 300
                        } else {
                            0
                        };
                        let future = pin!(detector.watch(label, Spin(micros)));
                        assert!(future.poll(&mut cx).is_ready());
                    }
                }
            });
        }
    });
    let after = resident_bytes();
    let report = detector.report();
    assert_eq!(report.entries.len(), 1_024);
    assert!(report.entries.iter().all(|entry| entry.polls == 32));
    let growth = after.saturating_sub(before);
    eprintln!(
        "1,024 labels x 8 threads: resident memory grew by {} KiB",
        growth >> 10
    );
    assert!(growth < 16 << 20, "resident memory grew by {growth} bytes");
}
