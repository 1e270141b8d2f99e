//! The runtime-wide view: tokio's task hooks (`--cfg tokio_unstable`), the event-loop lag probe
//! and the tokio-metrics section.
//!
//! Blocking is simulated with `std::thread::sleep`, far above the thresholds, and the assertions
//! leave wide margins: the CI machine has two cores shared with compilers. Where a test needs a
//! background task (the probe, the sampler, a spawned task) to have run, it waits for exactly
//! that with `common::wait_until`, not for a fixed time.

mod common;

use std::time::Duration;

use hogwatch::Detector;

const THRESHOLD: Duration = Duration::from_millis(10);
const BLOCK: Duration = Duration::from_millis(60);

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[cfg(tokio_unstable)]
mod hooks {
    use std::sync::{Arc, Mutex};

    use hogwatch::{HogEvent, LabelKind};

    use super::*;

    fn instrumented(detector: &Detector) -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2).enable_all();
        detector.instrument_runtime(&mut builder).build().unwrap()
    }

    #[test]
    fn an_unwrapped_task_is_reported_under_its_spawn_location() {
        let events = Arc::new(Mutex::new(Vec::<HogEvent>::new()));
        let sink = events.clone();
        let detector = Detector::builder()
            .threshold(THRESHOLD)
            .on_hog(move |event| sink.lock().unwrap().push(event.clone()))
            .build()
            .unwrap();
        let rt = instrumented(&detector);
        let line = line!() + 1;
        let task = rt.spawn(async {
            for _ in 0..3 {
                std::thread::sleep(BLOCK);
                tokio::task::yield_now().await;
            }
        });
        rt.block_on(task).unwrap();
        // The join handle wakes before the task's last after-poll hook: shutting the runtime down
        // waits for its workers, so every hook has run.
        drop(rt);

        let expected = format!("task {}:{line}", file!());
        let report = detector.report();
        let entry = report
            .entry(&expected)
            .unwrap_or_else(|| panic!("no {expected} in\n{}", report.to_text()));
        assert_eq!(entry.kind, LabelKind::Task);
        assert_eq!(entry.polls, 4, "three blocking polls and the last one");
        // The last poll is quick, unless the OS takes the thread away mid-poll (a loaded machine).
        assert!(entry.slow_polls >= 3, "{}", report.to_text());
        assert!(entry.max_poll_us >= 55_000, "{}", report.to_text());
        assert!(entry.slow_busy_us >= 3 * 55_000, "{}", report.to_text());
        assert_eq!(entry.completed, 1);
        assert_eq!(entry.cancelled, 0);
        assert_eq!(report.hogs().next().unwrap().label, expected);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["entries"][0]["kind"], "task");

        let events = events.lock().unwrap();
        assert_eq!(
            events.len() as u64,
            entry.slow_polls,
            "on_hog fires for every slow task poll"
        );
        assert!(events.iter().all(|event| *event.label == *expected));
    }

    #[test]
    fn a_watched_future_inside_a_task_is_counted_under_both_labels() {
        let detector = Detector::builder().threshold(THRESHOLD).build().unwrap();
        let rt = instrumented(&detector);
        let watched = detector.watch("parse", async {
            std::thread::sleep(BLOCK);
        });
        let line = line!() + 1;
        rt.block_on(rt.spawn(watched)).unwrap();
        drop(rt);

        let report = detector.report();
        let watch = report.entry("parse").unwrap();
        let task = report
            .entry(&format!("task {}:{line}", file!()))
            .unwrap_or_else(|| panic!("{}", report.to_text()));
        assert_eq!(watch.kind, LabelKind::Watch);
        assert_eq!(task.kind, LabelKind::Task);
        assert_eq!((watch.slow_polls, task.slow_polls), (1, 1));
        // The task's poll wraps the watched future's.
        assert!(
            task.max_poll_us >= watch.max_poll_us,
            "{}",
            report.to_text()
        );
        assert!(
            report.to_text().contains("  task  "),
            "{}",
            report.to_text()
        );
    }

    #[test]
    fn ended_tasks_count_as_completed_and_tasks_left_at_shutdown_as_cancelled() {
        let detector = Detector::builder().threshold(THRESHOLD).build().unwrap();
        let rt = instrumented(&detector);
        let aborted_line = line!() + 1;
        let aborted = rt.spawn(std::future::pending::<()>());
        let left_line = line!() + 1;
        let _left_running = rt.spawn(std::future::pending::<()>());
        let polled = |line: u32| {
            let label = format!("task {}:{line}", file!());
            detector.report().entry(&label).is_some()
        };
        rt.block_on(async {
            // Let both be polled once, so their labels exist.
            common::wait_until("both tasks polled", || {
                polled(aborted_line) && polled(left_line)
            })
            .await;
            aborted.abort();
            assert!(aborted.await.unwrap_err().is_cancelled());
        });
        drop(rt);
        let report = detector.report();
        let outcome = |line: u32| {
            let entry = report
                .entry(&format!("task {}:{line}", file!()))
                .unwrap_or_else(|| panic!("{}", report.to_text()));
            (entry.completed, entry.cancelled)
        };
        // An aborted task ends in a poll of its own, like a completed one: tokio's hook does not
        // tell them apart.
        assert_eq!(outcome(aborted_line), (1, 0), "{}", report.to_text());
        assert_eq!(outcome(left_line), (0, 1), "{}", report.to_text());
    }

    #[test]
    fn hogwatch_own_tasks_have_their_own_label() {
        let detector = Detector::builder()
            .lag_probe(Duration::from_millis(5))
            .build()
            .unwrap();
        let rt = instrumented(&detector);
        assert!(detector.start_probes(rt.handle()));
        let probe_polls = || {
            detector
                .report()
                .entry("task <hogwatch>")
                .map_or(0, |entry| entry.polls)
        };
        rt.block_on(common::wait_until("three polls of the probe", || {
            probe_polls() >= 3
        }));
        drop(rt);
        let report = detector.report();
        let probe = report
            .entry("task <hogwatch>")
            .unwrap_or_else(|| panic!("{}", report.to_text()));
        assert!(probe.polls >= 3, "{}", report.to_text());
        assert_eq!(report.entries.len(), 1, "{}", report.to_text());
    }

    #[test]
    fn spawn_blocking_tasks_are_not_counted() {
        let detector = Detector::builder().build().unwrap();
        let rt = instrumented(&detector);
        rt.block_on(rt.spawn_blocking(|| std::thread::sleep(Duration::from_millis(5))))
            .unwrap();
        drop(rt);
        let report = detector.report();
        assert!(
            report
                .entries
                .iter()
                .all(|entry| entry.kind != LabelKind::Task),
            "{}",
            report.to_text()
        );
    }
}

#[test]
fn lag_probe_sees_a_task_that_blocks() {
    current_thread().block_on(async {
        let detector = Detector::builder()
            .threshold(THRESHOLD)
            .lag_probe(Duration::from_millis(10))
            .build()
            .unwrap();
        let blocker = tokio::spawn(async {
            for _ in 0..8 {
                std::thread::sleep(BLOCK);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        blocker.await.unwrap();
        let lag = detector.report().event_loop_lag.expect("the probe runs");
        assert!(lag.samples >= 4, "{lag:?}");
        assert!(lag.max_us > 40_000, "{lag:?}");
        assert!(lag.p99_us > 40_000, "{lag:?}");
        assert!(
            lag.p50_us > 20_000,
            "most wake-ups waited for a block: {lag:?}"
        );
    });
}

#[test]
fn lag_probe_stays_low_on_an_idle_runtime() {
    current_thread().block_on(async {
        let detector = Detector::builder()
            .lag_probe(Duration::from_millis(10))
            .build()
            .unwrap();
        // On 2 shared cores the OS takes the thread away now and then, for tens of milliseconds
        // at a time, and the probe rightly reports it. So the test measures the same thing
        // beside the probe: a task that sleeps 10 ms in a loop and times how late it wakes. The
        // probe must see what it sees, no more: a probe that does not run, counts its own sleep
        // as lag (10 ms) or invents lag fails, however loaded the machine.
        detector.report_and_reset();
        let mut late = Vec::new();
        let window = tokio::time::Instant::now();
        while window.elapsed() < Duration::from_secs(3) {
            let start = tokio::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let lateness = start.elapsed().saturating_sub(Duration::from_millis(10));
            late.push(u64::try_from(lateness.as_micros()).unwrap());
        }
        let lag = detector
            .report_and_reset()
            .event_loop_lag
            .expect("the probe runs");
        late.sort_unstable();
        let (p50, max) = (late[late.len() / 2], late[late.len() - 1]);
        // The probe wakes every 10 ms as well (1 ms timer resolution either way).
        assert!(
            lag.samples * 2 >= late.len() as u64,
            "{lag:?}, {} wake-ups",
            late.len()
        );
        assert!(
            lag.p50_us <= p50 + 2_000,
            "probe p50 {} us, measured p50 {p50} us: {lag:?}",
            lag.p50_us
        );
        assert!(
            lag.p99_us <= max + 2_000,
            "probe p99 {} us, measured max {max} us: {lag:?}",
            lag.p99_us
        );
    });
}

#[test]
fn lag_probe_stops_when_the_last_detector_drops() {
    current_thread().block_on(async {
        let metrics = tokio::runtime::Handle::current().metrics();
        let detector = Detector::builder()
            .lag_probe(Duration::from_millis(5))
            .build()
            .unwrap();
        let clone = detector.clone();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(metrics.num_alive_tasks(), 1, "the probe runs");
        drop(detector);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(metrics.num_alive_tasks(), 1, "a clone keeps it running");
        // A watched future keeps the statistics alive, not the probe.
        let watched = clone.watch("still-alive", async {});
        drop(clone);
        common::wait_until("the probe ended", || metrics.num_alive_tasks() == 0).await;
        watched.await;
    });
}

#[test]
fn lag_probe_starts_on_first_watch_or_explicitly() {
    // Built outside any runtime: nothing runs yet, and the report has no lag section.
    let detector = Detector::builder()
        .lag_probe(Duration::from_millis(5))
        .build()
        .unwrap();
    assert!(detector.report().event_loop_lag.is_none());
    let json = serde_json::to_value(detector.report()).unwrap();
    assert!(json.get("event_loop_lag").is_none());

    let samples = |detector: &Detector| {
        detector
            .report()
            .event_loop_lag
            .map_or(0, |lag| lag.samples)
    };
    let rt = current_thread();
    rt.block_on(async {
        detector.watch("first", async {}).await;
        common::wait_until("a lag sample", || samples(&detector) > 0).await;
    });
    let lag = detector.report_and_reset().event_loop_lag.unwrap();
    assert!(lag.samples > 0, "{lag:?}");
    assert_eq!(lag.resolution_us, 5_000);
    assert_eq!(
        detector.report().event_loop_lag.unwrap().samples,
        0,
        "reset starts a new window"
    );
    assert!(!detector.start_probes(rt.handle()), "already running");

    let other = Detector::builder()
        .lag_probe(Duration::from_millis(5))
        .build()
        .unwrap();
    assert!(other.start_probes(rt.handle()));
    rt.block_on(common::wait_until(
        "a lag sample of the explicitly started probe",
        || samples(&other) > 0,
    ));
}

#[test]
fn the_lag_section_reaches_every_renderer() {
    current_thread().block_on(async {
        let detector = Detector::builder()
            .lag_probe(Duration::from_millis(5))
            .build()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let report = detector.report();
        let json = serde_json::to_value(&report).unwrap();
        for field in ["min_us", "mean_us", "p50_us", "p99_us", "max_us", "samples"] {
            assert!(json["event_loop_lag"][field].is_u64(), "{field}: {json}");
        }
        assert!(report.to_text().contains("event-loop lag: min "));
        assert!(report.to_text().contains("event-loop delay: "));
        assert!(report.to_html().contains("Event-loop lag p99 <strong"));
        assert!(report
            .to_html()
            .contains(" of it unattributed (no label held"));
    });
}

#[test]
fn a_zero_probe_interval_is_refused() {
    let error = Detector::builder()
        .lag_probe(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(
        error,
        hogwatch::ConfigError::ZeroProbeInterval {
            what: "lag probe resolution"
        }
    );
}

#[cfg(feature = "runtime-metrics")]
#[test]
fn runtime_metrics_fill_the_runtime_section() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let detector = Detector::builder()
        .runtime_metrics(Duration::from_millis(200))
        .build()
        .unwrap();
    assert!(detector.start_probes(rt.handle()));
    let samples = rt.block_on(async {
        common::wait_until("a runtime sample", || detector.report().runtime.is_some()).await;
        // The intervals that end from now on: the last one before the block is not among them.
        let before = detector.report().runtime.expect("sampled");
        let blocker = tokio::spawn(async { std::thread::sleep(Duration::from_millis(30)) });
        // Every 200 ms interval's figures, for 600 ms (read every 2 ms: none is missed, however
        // late this task runs).
        let mut samples: Vec<hogwatch::RuntimeFigures> = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_millis(600);
        while tokio::time::Instant::now() < end {
            let runtime = detector.report().runtime.expect("sampled");
            if runtime != before && samples.last() != Some(&runtime) {
                samples.push(runtime);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        blocker.await.unwrap();
        samples
    });
    // One of the two workers was busy for 30 ms: the intervals that ended since hold (at least)
    // those 30 ms of busy time, whichever of them tokio counted it in.
    let busy_us: f64 = samples
        .iter()
        .map(|runtime| runtime.busy_ratio * runtime.interval_us as f64 * runtime.workers as f64)
        .sum();
    assert!(
        busy_us >= 27_000.0,
        "{busy_us} us busy after a 30 ms block: {samples:#?}"
    );
    assert!(
        samples
            .iter()
            .all(|runtime| (0.0..=1.0).contains(&runtime.busy_ratio)),
        "{samples:#?}"
    );
    let runtime = detector.report().runtime.expect("sampled");
    assert_eq!(runtime.workers, 2);
    assert!(runtime.interval_us > 0);
    assert_eq!(runtime.mean_poll_us.is_some(), cfg!(tokio_unstable));
    let json = serde_json::to_value(detector.report()).unwrap();
    assert_eq!(json["runtime"]["workers"], 2);
    assert!(detector.report().to_text().contains("runtime: 2 workers"));
}

#[cfg(all(feature = "axum", feature = "runtime-metrics"))]
#[test]
fn runtime_sections_pass_promtool() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let metrics = rt.block_on(async {
        let detector = Detector::builder()
            .lag_probe(Duration::from_millis(5))
            .runtime_metrics(Duration::from_millis(20))
            .build()
            .unwrap();
        detector.watch("work", async {}).await;
        common::wait_until("a runtime sample and a lag sample", || {
            let report = detector.report();
            report.runtime.is_some() && report.event_loop_lag.is_some_and(|lag| lag.samples > 0)
        })
        .await;
        let router: axum::Router = detector.router();
        let request = axum::http::Request::get("/debug/hogs/metrics")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    });
    for needle in [
        "# TYPE hogwatch_event_loop_lag_seconds summary",
        "hogwatch_event_loop_lag_seconds{quantile=\"0.99\"} ",
        "hogwatch_event_loop_lag_seconds_count ",
        "# TYPE hogwatch_delay_seconds_total counter",
        "hogwatch_delay_seconds_total ",
        "hogwatch_unattributed_delay_seconds_total ",
        "hogwatch_inflicted_delay_seconds_total{label=\"work\"} ",
        "hogwatch_runtime_busy_ratio ",
        "hogwatch_runtime_workers 2",
        "hogwatch_label_info{label=\"work\",kind=\"watch\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }

    common::assert_promtool_accepts(&metrics);
}
