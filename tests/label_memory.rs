//! What 1,024 labels cost when 8 threads poll each of them, alone in its own test binary: it
//! measures the process's resident memory, which tests beside it would disturb. (The recorder
//! keeps one storage per thread and label: see `src/recorder/label.rs` for the formula.)

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hogwatch::Detector;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A future that spins for its microseconds on its one poll.
struct Spin(u64);

impl Future for Spin {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        let until = Instant::now() + Duration::from_micros(self.0);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Poll::Ready(())
    }
}

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
