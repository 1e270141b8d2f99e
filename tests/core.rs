//! The core: watched futures, per-label statistics, hog events and the builder's errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hogwatch::{ConfigError, Detector, HogEvent};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One `tracing` event: its level, target and fields as text.
#[derive(Debug, Clone)]
struct Captured {
    level: tracing::Level,
    target: String,
    fields: Vec<(String, String)>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Captured>>>);

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Fields(Vec<(String, String)>);
        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0
                    .push((field.name().to_string(), format!("{value:?}")));
            }
            fn record_str(&mut self, field: &Field, value: &str) {
                self.0.push((field.name().to_string(), value.to_string()));
            }
        }
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_string(),
            fields: fields.0,
        });
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn detector(threshold: Duration) -> Detector {
    Detector::builder().threshold(threshold).build().unwrap()
}

#[test]
fn a_blocking_poll_is_flagged_and_warned_about() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let detector = detector(Duration::from_millis(10));
    tracing::subscriber::with_default(subscriber, || {
        current_thread().block_on(detector.watch("sleepy", async {
            std::thread::sleep(Duration::from_millis(60));
        }));
    });

    let report = detector.report();
    let entry = report.entry("sleepy").expect("the label is reported");
    assert_eq!(entry.slow_polls, 1, "one poll, and it was slow");
    assert!(entry.max_poll_us >= 60_000, "max {}", entry.max_poll_us);
    assert_eq!(entry.completed, 1);

    let events = recorder.0.lock().unwrap();
    let warnings: Vec<_> = events
        .iter()
        .filter(|event| event.target == "hogwatch")
        .collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert_eq!(warnings[0].level, tracing::Level::WARN);
    assert_eq!(warnings[0].field("label"), Some("sleepy"));
    assert!(
        warnings[0]
            .field("poll_us")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 60_000
    );
    assert_eq!(warnings[0].field("threshold_us"), Some("10000"));
}

#[test]
fn warnings_are_rate_limited_per_label_but_the_callback_sees_every_hog() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let seen = Arc::new(Mutex::new(Vec::<HogEvent>::new()));
    let sink = seen.clone();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(5))
        .warn_interval(Duration::from_secs(3600))
        .on_hog(move |event| sink.lock().unwrap().push(event.clone()))
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        current_thread().block_on(async {
            for _ in 0..3 {
                detector
                    .watch("again", async {
                        std::thread::sleep(Duration::from_millis(20));
                    })
                    .await;
            }
        });
    });
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|event| &*event.label == "again" && event.duration >= Duration::from_millis(20)));
    let warnings = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|event| event.target == "hogwatch")
        .count();
    assert_eq!(warnings, 1, "one warning per interval");
    assert_eq!(detector.report().entry("again").unwrap().slow_polls, 3);
}

#[test]
fn an_async_sleep_is_not_a_hog() {
    // 100 ms: far above what a busy machine adds to a short poll, far below the 300 ms nap
    // (a detector that timed the future's wall time instead of its polls would flag it).
    let detector = detector(Duration::from_millis(100));
    current_thread().block_on(detector.watch("napping", async {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }));
    let report = detector.report();
    let entry = report.entry("napping").unwrap();
    assert_eq!(entry.slow_polls, 0, "{}", report.to_text());
    assert!(entry.wall_us >= 300_000, "wall {}", entry.wall_us);
    assert!(entry.busy_us < 100_000, "busy {}", entry.busy_us);
    assert!(entry.polls >= 2);
}

#[test]
fn a_cpu_bound_json_round_trip_is_flagged() {
    let document = serde_json::Value::Array(
        (0..60_000)
            .map(|i| {
                serde_json::json!({
                    "id": i,
                    "symbol": format!("SYM{i:06}"),
                    "prices": [i as f64 * 1.5, i as f64 * 2.25, 3.125],
                    "meta": {"venue": "XNYS", "active": i % 2 == 0}
                })
            })
            .collect(),
    );
    let detector = detector(Duration::from_millis(1));
    let bytes = current_thread().block_on(detector.watch("json", async move {
        let text = serde_json::to_string(&document).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::to_string(&parsed).unwrap().len()
    }));
    assert!(bytes > 4_000_000, "a multi-megabyte document: {bytes}");
    let report = detector.report();
    assert_eq!(report.entry("json").unwrap().slow_polls, 1);
    assert_eq!(report.hogs().next().unwrap().label, "json");
}

#[test]
fn cancelled_and_panicked_futures_are_counted_and_the_panic_propagates() {
    let detector = detector(Duration::from_millis(10));
    let runtime = current_thread();
    runtime.block_on(async {
        let slow = detector.watch("cut-short", tokio::time::sleep(Duration::from_secs(60)));
        let _ = tokio::time::timeout(Duration::from_millis(5), slow).await;
    });
    let panicking = detector.watch("boom", async { panic!("the handler's own message") });
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(panicking);
    }));
    let payload = caught.expect_err("the panic reaches the caller");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"the handler's own message")
    );

    let report = detector.report();
    let cut = report.entry("cut-short").unwrap();
    assert_eq!((cut.completed, cut.cancelled, cut.panicked), (0, 1, 0));
    let boom = report.entry("boom").unwrap();
    assert_eq!((boom.completed, boom.cancelled, boom.panicked), (0, 0, 1));
    assert_eq!(boom.polls, 1);
}

#[test]
fn counts_are_exact_across_eight_worker_threads() {
    let detector = detector(Duration::from_millis(50));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .build()
        .unwrap();
    let futures = 10_000u64;
    let expected_polls: u64 = (0..futures).map(|i| i % 5 + 1).sum();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..futures)
            .map(|i| {
                let label = if i % 2 == 0 { "even" } else { "odd" };
                tokio::spawn(detector.watch(label, async move {
                    // i % 5 yields: i % 5 + 1 polls.
                    for _ in 0..i % 5 {
                        tokio::task::yield_now().await;
                    }
                }))
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let report = detector.report();
    let polls: u64 = report.entries.iter().map(|entry| entry.polls).sum();
    let completed: u64 = report.entries.iter().map(|entry| entry.completed).sum();
    assert_eq!(polls, expected_polls);
    assert_eq!(completed, futures);
    assert_eq!(report.entry("even").unwrap().completed, futures / 2);
}

#[test]
fn labels_beyond_max_labels_fold_into_other() {
    let detector = Detector::builder().max_labels(100).build().unwrap();
    let runtime = current_thread();
    for i in 0..5_000 {
        runtime.block_on(detector.watch(&format!("label-{i}"), async {}));
    }
    let report = detector.report();
    assert_eq!(report.entries.len(), 101);
    let other = report.entry(hogwatch::OTHER_LABEL).unwrap();
    assert_eq!(other.completed, 4_900);
    assert_eq!(report.folded_labels, 4_900);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["folded_labels"], 4_900);
}

#[test]
fn report_and_reset_starts_a_new_window() {
    let detector = detector(Duration::from_millis(10));
    let runtime = current_thread();
    runtime.block_on(detector.watch("a", async {}));
    let first = detector.report_and_reset();
    assert_eq!(first.entry("a").unwrap().polls, 1);
    assert!(detector.report().entries.is_empty());
    runtime.block_on(detector.watch("a", async {}));
    assert_eq!(detector.report().entry("a").unwrap().polls, 1);
}

#[test]
fn json_has_the_documented_fields() {
    let detector = detector(Duration::from_millis(10));
    current_thread().block_on(detector.watch("a", async {}));
    let json = serde_json::to_value(detector.report()).unwrap();
    for field in ["threshold_us", "entries", "folded_labels"] {
        assert!(json.get(field).is_some(), "top-level {field}");
    }
    let entry = &json["entries"][0];
    for field in [
        "label",
        "polls",
        "slow_polls",
        "busy_us",
        "wall_us",
        "max_poll_us",
        "p50_poll_us",
        "p90_poll_us",
        "p99_poll_us",
        "p999_poll_us",
        "completed",
        "cancelled",
        "panicked",
    ] {
        assert!(entry.get(field).is_some(), "entry field {field}: {entry}");
    }
}

#[test]
fn entries_are_sorted_worst_first() {
    let detector = detector(Duration::from_millis(5));
    let runtime = current_thread();
    runtime.block_on(detector.watch("fine", async {}));
    runtime.block_on(detector.watch("bad", async {
        std::thread::sleep(Duration::from_millis(20));
    }));
    runtime.block_on(detector.watch("worse", async {
        std::thread::sleep(Duration::from_millis(60));
    }));
    let labels: Vec<_> = detector
        .report()
        .entries
        .iter()
        .map(|entry| entry.label.clone())
        .collect();
    assert_eq!(labels, ["worse", "bad", "fine"]);
    let text = detector.report().to_text();
    let worse = text.find("worse").unwrap();
    let fine = text.find("fine").unwrap();
    assert!(worse < fine, "{text}");
}

#[test]
fn the_builder_rejects_nonsense() {
    assert_eq!(
        Detector::builder()
            .threshold(Duration::ZERO)
            .build()
            .unwrap_err(),
        ConfigError::ZeroThreshold
    );
    assert_eq!(
        Detector::builder().max_labels(0).build().unwrap_err(),
        ConfigError::ZeroMaxLabels
    );
    for threshold in [Duration::from_nanos(500), Duration::from_secs(61)] {
        let error = Detector::builder()
            .threshold(threshold)
            .build()
            .unwrap_err();
        assert!(
            matches!(error, ConfigError::ThresholdOutOfRange { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("range"), "{error}");
    }
}

#[test]
fn the_detector_is_a_cheap_shared_handle() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<Detector>();
    let detector = detector(Duration::from_millis(10));
    let clone = detector.clone();
    current_thread().block_on(clone.watch("shared", async {}));
    assert!(detector.report().entry("shared").is_some());
}
