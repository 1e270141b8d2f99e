//! The watchdog's stalls as the HTML page shows them, from a real capture.
#![cfg(target_os = "linux")]

mod common;

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hogwatch::{Detector, HogEvent, HogKind};

/// Escapes like the page does for text (the label and names here have no control characters).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[test]
fn the_html_page_shows_the_stall_its_culprit_and_stack() {
    let threshold = Duration::from_millis(50);
    // When `on_hog` first got the stall, and the duration it stated.
    let reported: Arc<Mutex<Option<(Instant, Duration)>>> = Arc::default();
    let sink = reported.clone();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(10))
        .watchdog(threshold)
        .on_hog(move |event: &HogEvent| {
            if event.kind == HogKind::Stall {
                sink.lock()
                    .unwrap()
                    .get_or_insert((Instant::now(), event.duration));
            }
        })
        .build()
        .unwrap();
    let label = "<spin & \"crunch\">";
    let waiting = common::CpuWaitSince::here();
    let started = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(detector.watch(label, async move {
            let started = Instant::now();
            black_box(common::crunch_numbers(Duration::from_millis(300)));
            started
        }));
    let (at, duration) = reported
        .lock()
        .unwrap()
        .unwrap_or_else(|| panic!("a stall was reported: {:?}", detector.watchdog_stats()));
    // Within three thresholds of the poll's start, by the event and by the clock.
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

    let stats = detector.watchdog_stats().unwrap();
    common::assert_capture_failures(&stats, waiting.waited(), threshold / 4);

    // The stack is named by the watchdog's naming thread, which may still be loading the debug
    // information: wait for it (failing after 10 s).
    common::named_entry(&detector, label);
    let report = detector.report();
    let entry = report.entry(label).unwrap();
    assert_eq!(entry.stalls, 1);
    // One stall, reported (and captured) again if it ran on past twice the threshold.
    let (culprit, count) = (&entry.top_culprits[0].culprit, entry.top_culprits[0].count);
    let page = report.to_html();
    let start = page.find("<section class=\"stalls\">").unwrap();
    let section = &page[start..start + page[start..].find("</section>").unwrap()];
    assert!(
        section.contains(
            "<strong class=\"hot\">1</strong> stall caught (a poll still running after 50.0 ms)"
        ),
        "{section}"
    );
    assert!(section.contains("<h4>Top culprits</h4>"), "{section}");
    assert!(
        section.contains(&format!(
            "<li><code>{}</code> <span class=\"muted\">× {count}</span></li>",
            escape(culprit)
        )),
        "{section}"
    );
    assert!(section.contains("<ol class=\"frames\">"), "{section}");
    assert!(section.contains("crunch_numbers</code></li>"), "{section}");
    assert!(page.contains(&format!(
        "<strong class=\"hot\">1</strong> stall caught in 1 label; top culprit <code>{}</code>",
        escape(culprit)
    )));
    assert_eq!(page.matches("<a href=\"hogs/flamegraph.svg\">").count(), 1);
    assert!(page.contains(&escape(label)));
    assert!(!page.contains("<spin"));
}
