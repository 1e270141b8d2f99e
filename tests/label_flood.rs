//! A flood of distinct custom labels, alone in its own test binary: it measures the process's
//! resident memory, which tests running beside it in the same process would disturb.

use hogwatch::Detector;

mod common;
use common::resident_bytes;

#[test]
fn a_flood_of_distinct_custom_labels_stays_bounded() {
    let detector = Detector::builder().max_labels(1024).build().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let flood = |from: u64| {
        for i in from..from + 100_000 {
            runtime.block_on(detector.watch(&format!("label-{i}"), async {}));
        }
    };
    flood(0);
    let after_first = resident_bytes();
    flood(100_000);
    let after_second = resident_bytes();

    let report = detector.report();
    assert_eq!(report.entries.len(), 1025, "1024 labels and <other>");
    assert_eq!(report.folded_labels, 200_000 - 1024);
    let other = report.entry(hogwatch::OTHER_LABEL).unwrap();
    assert_eq!(other.completed, report.folded_labels);
    let total: u64 = report.entries.iter().map(|entry| entry.completed).sum();
    assert_eq!(total, 200_000, "every watched future is accounted for");
    // Another 100,000 new labels after the registry is full cost (almost) nothing.
    let growth = after_second.saturating_sub(after_first);
    assert!(growth < 4 << 20, "resident memory grew by {growth} bytes");
}
