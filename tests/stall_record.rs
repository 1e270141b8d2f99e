//! One stall record for every source (issue 23): a stall caught in a wrapped future (`watch`),
//! in a route (`layer`), in an unwrapped task (`watch_runtime`) and in a task of an
//! instrumented runtime (`instrument_runtime`, `tokio_unstable`) fills the same fields, and
//! every renderer shows them: JSON, text, the page and Prometheus.
#![cfg(all(feature = "watchdog", feature = "axum", target_os = "linux"))]

mod common;

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

use hogwatch::{Detector, Report};

/// The watchdog's threshold in every test.
const THRESHOLD: Duration = Duration::from_millis(100);

/// One test at a time: each blocks a worker for a second, and their watchdogs' timing must not
/// suffer from the others' load on a 2-core machine.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn detector() -> Detector {
    Detector::builder()
        .threshold(Duration::from_millis(1))
        .watchdog(THRESHOLD)
        .build()
        .unwrap()
}

#[inline(never)]
fn sleep_for_a_second() {
    std::thread::sleep(Duration::from_secs(1));
    black_box(());
}

/// Not the same code as `sleep_for_a_second` (a release build would merge the two and give
/// both one name).
#[inline(never)]
fn sleep_a_second_too() {
    std::thread::sleep(Duration::from_millis(1_001));
    black_box(());
}

/// The one label among `candidates` that stalled: a task's label is its future's function, or,
/// where a release build inlined that into tokio's harness, the first function of its own it
/// calls (here the blocking one).
fn stalled_label(report: &Report, candidates: &[&str]) -> String {
    let found: Vec<&str> = report
        .entries
        .iter()
        .filter(|entry| entry.stalls > 0 && candidates.contains(&entry.label.as_str()))
        .map(|entry| entry.label.as_str())
        .collect();
    assert_eq!(found.len(), 1, "{candidates:?} in {report:#?}");
    found[0].to_string()
}

/// The fields of `label`'s stall record, the same whatever the source, in every renderer; its
/// culprit is `blocker`.
fn assert_full_record(report: &Report, label: &str, blocker: &str) {
    let json = serde_json::to_value(report).unwrap();
    let entry = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["label"] == label)
        .unwrap_or_else(|| panic!("no entry {label}: {json:#}"));
    let field = |name: &str| {
        entry[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: {entry:#}"))
    };
    assert_eq!(field("stalls"), 1, "{entry:#}");
    assert!(field("longest_stall_us") >= 1_000_000, "{entry:#}");
    assert!(field("samples") >= 5, "{entry:#}");
    assert!(field("stall_wall_us") > 0, "{entry:#}");
    let causes = entry["causes"].as_array().unwrap();
    assert!(
        causes.iter().any(|cause| cause["cause"] == "sleep"),
        "{entry:#}"
    );
    let functions = entry["functions"].as_array().unwrap();
    assert!(
        functions
            .iter()
            .any(|f| f["function"].as_str().unwrap().contains(blocker)),
        "{entry:#}"
    );
    let culprit = entry["top_culprits"][0]["culprit"]
        .as_str()
        .unwrap_or_default();
    assert!(culprit.contains(blocker), "{entry:#}");
    let stack = entry["top_stacks"][0]["stack"].as_str().unwrap_or_default();
    assert!(stack.contains(blocker), "{entry:#}");
    assert!(!stack.contains("[unknown]"), "{entry:#}");
    assert!(!stack.contains("(uncertain)"), "{entry:#}");

    let text = report.to_text();
    let stalls_line = format!("stalls {}: 1, in ", label.escape_debug());
    assert!(text.contains(&stalls_line), "{text}");
    assert!(text.contains("sleep"), "{text}");
    let table = text
        .lines()
        .skip_while(|line| !line.starts_with(&stalls_line))
        .take(12)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(table.contains(blocker), "{table}");

    let page = report.to_html();
    assert!(page.contains(blocker), "the page names the culprit");

    let metrics = report.to_prometheus();
    let stalls_metric = format!("hogwatch_stalls_total{{label=\"{label}\"}} 1");
    assert!(metrics.contains(&stalls_metric), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("hogwatch_stall_samples_total") && line.contains(label)),
        "{metrics}"
    );
}

#[test]
fn a_watched_future_stall_is_a_full_record() {
    let _serial = serial();
    let detector = detector();
    let waiting = common::runtime_threads();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(detector.watch("watched", async { sleep_for_a_second() }));
    assert_full_record(&detector.report(), "watched", "sleep_for_a_second");
    common::assert_captures(&detector, &waiting);
}

#[test]
fn a_route_stall_is_a_full_record() {
    use tower::ServiceExt;
    let _serial = serial();
    let detector = detector();
    let app = axum::Router::new()
        .route(
            "/block",
            axum::routing::get(|| async {
                sleep_for_a_second();
                "done"
            }),
        )
        .layer(detector.layer());
    let waiting = common::runtime_threads();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async move {
        let request = axum::http::Request::get("/block")
            .body(axum::body::Body::empty())
            .unwrap();
        app.oneshot(request).await.unwrap().status()
    });
    assert_eq!(status, 200);
    assert_full_record(&detector.report(), "GET /block", "sleep_for_a_second");
    common::assert_captures(&detector, &waiting);
}

async fn unwrapped_sleeping_task() {
    sleep_for_a_second();
}

async fn another_unwrapped_sleeping_task() {
    sleep_a_second_too();
}

/// Issue 23's scenario: two unwrapped tasks each block 1 s in `std::thread::sleep` on a
/// 2-worker runtime with a 100 ms watchdog.
#[test]
fn an_unwrapped_task_stall_is_a_full_record() {
    let _serial = serial();
    let detector = detector();
    let waiting = common::runtime_threads();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    detector.watch_runtime(&mut builder).unwrap();
    let runtime = builder.build().unwrap();
    runtime.block_on(async {
        let one = tokio::spawn(unwrapped_sleeping_task());
        let two = tokio::spawn(another_unwrapped_sleeping_task());
        one.await.unwrap();
        two.await.unwrap();
        // The workers park: the stalls' final durations are known.
        tokio::time::sleep(THRESHOLD).await;
    });
    let report = detector.report();
    let one = stalled_label(
        &report,
        &[
            "task stall_record::unwrapped_sleeping_task",
            "task stall_record::sleep_for_a_second",
        ],
    );
    assert_full_record(&report, &one, "sleep_for_a_second");
    let two = stalled_label(
        &report,
        &[
            "task stall_record::another_unwrapped_sleeping_task",
            "task stall_record::sleep_a_second_too",
        ],
    );
    assert_full_record(&report, &two, "sleep_a_second_too");
    common::assert_captures(&detector, &waiting);
}

#[cfg(tokio_unstable)]
#[test]
fn an_instrumented_task_stall_is_a_full_record() {
    let _serial = serial();
    let detector = detector();
    let waiting = common::runtime_threads();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    detector.instrument_runtime(&mut builder);
    let runtime = builder.build().unwrap();
    runtime.block_on(async {
        tokio::spawn(unwrapped_sleeping_task()).await.unwrap();
    });
    let report = detector.report();
    let label = report
        .entries
        .iter()
        .find(|entry| entry.stalls > 0)
        .map(|entry| entry.label.clone())
        .expect("an instrumented task stalled");
    assert!(label.starts_with("task "), "{label}");
    assert_full_record(&report, &label, "sleep_for_a_second");
    common::assert_captures(&detector, &waiting);
}

async fn blocking_handler() -> &'static str {
    sleep_for_a_second();
    "done"
}

/// Serves `app` on a loopback port of a 2-worker runtime watched with `watch_runtime`, sends it
/// one `GET /block` over a real socket, checks the watchdog's captures and returns the report
/// once the answer came.
fn serve_and_block(detector: &Detector, app: axum::Router) -> Report {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let waiting = common::runtime_threads();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    detector.watch_runtime(&mut builder).unwrap();
    let runtime = builder.build().unwrap();
    let answer = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /block HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .expect("answered within 10 s")
            .unwrap();
        server.abort();
        tokio::time::sleep(THRESHOLD).await;
        answer
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    common::assert_captures(detector, &waiting);
    detector.report()
}

/// Every label that stalled, with its stall count.
fn stalled(report: &Report) -> Vec<(&str, u64)> {
    report
        .entries
        .iter()
        .filter(|entry| entry.stalls > 0)
        .map(|entry| (entry.label.as_str(), entry.stalls))
        .collect()
}

/// A handler that blocks inside hyper's connection task, under a real `axum::serve`, with
/// `watch_runtime` alone: one stall, named after the handler (hyper's, axum's and tower's
/// frames are the runtime's), or after the blocking function where a release build inlined
/// the handler into axum's code.
#[test]
fn a_handler_stall_under_axum_serve_is_named_after_the_handler() {
    let _serial = serial();
    let detector = detector();
    let app = axum::Router::new().route("/block", axum::routing::get(blocking_handler));
    let report = serve_and_block(&detector, app);
    let stalled = stalled(&report);
    assert_eq!(stalled.len(), 1, "one stall: {report:#?}");
    let label = stalled_label(
        &report,
        &[
            "task stall_record::blocking_handler",
            "task stall_record::sleep_for_a_second",
        ],
    );
    assert_full_record(&report, &label, "sleep_for_a_second");
}

/// The same with the layer: the stall is the route's, counted once (the runtime watchdog leaves
/// a watched poll to the wrapped path).
#[test]
fn a_route_stall_under_axum_serve_is_counted_once_under_its_route() {
    let _serial = serial();
    let detector = detector();
    let app = axum::Router::new()
        .route("/block", axum::routing::get(blocking_handler))
        .layer(detector.layer());
    let report = serve_and_block(&detector, app);
    let stalled = stalled(&report);
    assert_eq!(stalled, [("GET /block", 1)], "{report:#?}");
    assert_full_record(&report, "GET /block", "sleep_for_a_second");
}
