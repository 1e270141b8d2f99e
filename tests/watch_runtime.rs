//! `Detector::watch_runtime`: stalls of unwrapped tasks on stable Rust, named by the task's
//! function, with no false stall under a load of short polls.
#![cfg(target_os = "linux")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_captures, runtime_threads};
use hogwatch::{Detector, HogEvent, HogKind};

const WATCHDOG: Duration = Duration::from_millis(100);
const BLOCK: Duration = Duration::from_secs(1);

/// One test at a time: the load tests keep both cores of a small machine busy, which would
/// delay the watchdog thread of a test timing how soon a stall is reported. What is timed is
/// the runtime watchdog's own latency.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What `on_hog` saw: each stall event with the time it arrived.
type Seen = Arc<Mutex<Vec<(Instant, HogEvent)>>>;

fn detector() -> (Detector, Seen) {
    detector_with(WATCHDOG)
}

fn detector_with(watchdog: Duration) -> (Detector, Seen) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(50))
        .watchdog(watchdog)
        .on_hog(move |event| {
            if event.kind == HogKind::Stall {
                sink.lock().unwrap().push((Instant::now(), event.clone()));
            }
        })
        .build()
        .unwrap();
    (detector, seen)
}

#[inline(never)]
fn sleep_in_refresh(duration: Duration) {
    std::thread::sleep(duration);
    // Not a tail call: this frame stays on the stack. The two functions differ in this constant:
    // identical functions are merged into one by the optimizer (MergeFunctions), and their
    // stacks would name the same one.
    std::hint::black_box(1u32);
}

#[inline(never)]
fn sleep_in_consume(duration: Duration) {
    std::thread::sleep(duration);
    // Not a tail call: this frame stays on the stack.
    std::hint::black_box(2u64);
}

/// Two unwrapped background tasks, each blocking its worker for one second.
async fn refresh_cache(started: Arc<Mutex<Option<Instant>>>) {
    *started.lock().unwrap() = Some(Instant::now());
    sleep_in_refresh(BLOCK);
}

async fn consume_queue(started: Arc<Mutex<Option<Instant>>>) {
    *started.lock().unwrap() = Some(Instant::now());
    sleep_in_consume(BLOCK);
}

/// `std::thread::sleep`, or the function of std it is (`std::thread::functions::sleep`).
fn is_std_sleep(frame: &str) -> bool {
    frame.starts_with("std::thread::") && frame.ends_with("::sleep")
}

/// Runs both tasks on `rt` and checks each stall: reported within 2x the watchdog threshold of
/// the task's start, named after the task's function, with a stack containing the sleep.
fn both_stalls_are_reported(rt: tokio::runtime::Runtime, detector: &Detector, seen: &Seen) {
    let waiting = runtime_threads();
    let refresh_started = Arc::new(Mutex::new(None));
    let consume_started = Arc::new(Mutex::new(None));
    let (refresh, consume) = (refresh_started.clone(), consume_started.clone());
    rt.block_on(async move {
        let a = tokio::spawn(refresh_cache(refresh));
        let b = tokio::spawn(consume_queue(consume));
        a.await.unwrap();
        b.await.unwrap();
    });
    assert_captures(detector, &waiting);
    drop(rt);
    let events = seen.lock().unwrap().clone();
    for (function, culprit, started) in [
        ("refresh_cache", "sleep_in_refresh", &refresh_started),
        ("consume_queue", "sleep_in_consume", &consume_started),
    ] {
        let labels = common::task_labels(
            &format!("watch_runtime::{function}"),
            &format!("watch_runtime::{culprit}"),
        );
        let started = started.lock().unwrap().expect("the task ran");
        let (at, event) = events
            .iter()
            .find(|(_, event)| labels.iter().any(|label| *event.label == **label))
            .unwrap_or_else(|| panic!("no stall for {labels:?}: {events:#?}"));
        let label = &*event.label;
        let late = at.duration_since(started);
        assert!(
            late <= 2 * WATCHDOG,
            "{label} reported {late:?} after its start"
        );
        assert!(
            event.stack.iter().any(|frame| is_std_sleep(frame)),
            "{label}: {:#?}",
            event.stack
        );
        assert_eq!(
            event.culprit.as_deref(),
            Some(format!("watch_runtime::{culprit}").as_str())
        );
        let report = detector.report();
        let entry = report.entry(label).expect("the stall is in the report");
        assert_eq!(entry.stalls, 1, "{entry:#?}");
        assert!(
            entry.top_stacks[0].stack.split(';').any(is_std_sleep),
            "{entry:#?}"
        );
    }
    assert_eq!(events.len(), 2, "one event per stall: {events:#?}");
}

#[test]
fn two_blocked_workers_are_both_reported_and_named() {
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    both_stalls_are_reported(rt, &detector, &seen);
}

#[test]
fn the_current_thread_runtime_is_watched_too() {
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_current_thread_runtime(&detector);
    both_stalls_are_reported(rt, &detector, &seen);
}

#[test]
fn parked_workers_are_never_sampled() {
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    let waiting = runtime_threads();
    let idle = || {
        rt.block_on(async {
            // Idle for 20 thresholds: the workers park and stay parked.
            tokio::time::sleep(20 * WATCHDOG).await;
        })
    };
    idle();
    let stats = detector.watchdog_stats().unwrap();
    assert_eq!(stats.captures_requested, 0, "{stats:?}");
    assert!(seen.lock().unwrap().is_empty());
    // The control: a task spinning on a worker of the same runtime is sampled and reported.
    a_real_stall_is_reported(&rt, &detector, &seen);
    let sampled = detector.watchdog_stats().unwrap().captures_requested;
    assert!(sampled > 0, "{:?}", detector.watchdog_stats());
    // And once its workers park again, they are left alone again.
    idle();
    let stats = detector.watchdog_stats().unwrap();
    assert_eq!(stats.captures_requested, sampled, "{stats:?}");
    assert_captures(&detector, &waiting);
}

#[test]
fn without_a_watchdog_it_is_a_typed_error() {
    let _serial = serial();
    let detector = Detector::builder().build().unwrap();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let error = detector.watch_runtime(&mut builder).unwrap_err();
    assert!(matches!(error, hogwatch::NoWatchdog { .. }));
    assert!(error.to_string().contains("Builder::watchdog"), "{error}");
}

/// A poll's work: `duration` on the CPU.
#[inline(never)]
fn spin(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

/// A short poll's work: about 100 µs on the CPU.
fn short_work() {
    spin(Duration::from_micros(100));
}

/// Keeps both workers of `rt` busy for `load`: two drivers, each keeping `batch` tasks of
/// `work` in flight. Returns how many tasks ran.
fn drive(rt: &tokio::runtime::Runtime, load: Duration, batch: usize, work: Duration) -> u64 {
    let started = Instant::now();
    rt.block_on(async move {
        let drivers: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async move {
                    let mut polls = 0u64;
                    while started.elapsed() < load {
                        let tasks: Vec<_> = (0..batch)
                            .map(|_| tokio::spawn(async move { spin(work) }))
                            .collect();
                        for task in tasks {
                            task.await.unwrap();
                        }
                        polls += batch as u64;
                    }
                    polls
                })
            })
            .collect();
        let mut polls = 0;
        for driver in drivers {
            polls += driver.await.unwrap();
        }
        polls
    })
}

/// Runs `load` on a runtime watched at `threshold`, then checks it made no stall, and that a
/// real stall on the same runtime is reported.
fn no_stall_while(threshold: Duration, load: impl FnOnce(&tokio::runtime::Runtime)) {
    let (detector, seen) = detector_with(threshold);
    let rt = watched_runtime(&detector);
    let waiting = runtime_threads();
    load(&rt);
    assert_no_stall(&detector, &seen);
    a_real_stall_is_reported(&rt, &detector, &seen);
    assert_captures(&detector, &waiting);
}

/// The control of a test that nothing is a stall: on the same runtime, a task spinning for
/// `BLOCK` is reported within twice the threshold of its start, under its function's name; plus
/// the time the watchdog thread waited for a CPU meanwhile (none on an idle machine): a
/// watchdog that is not run reports nothing. Beside two CPU hogs in a debug build it once
/// waited long enough to report the control 188 ms (3.8 thresholds) after its start.
fn a_real_stall_is_reported(rt: &tokio::runtime::Runtime, detector: &Detector, seen: &Seen) {
    let watchdog_waiting = common::CpuWaitSince::of(Vec::new(), &["hogwatch-watchd"]);
    let started = Arc::new(Mutex::new(None));
    let task = rebuild_index(started.clone());
    rt.block_on(async { tokio::spawn(task).await.unwrap() });
    let started = started.lock().unwrap().expect("the task ran");
    let events = seen.lock().unwrap();
    let (at, event) = events
        .iter()
        .find(|(at, _)| *at >= started)
        .unwrap_or_else(|| {
            panic!(
                "the control's stall was not reported: {events:#?}\n{:?}",
                detector.watchdog_stats()
            )
        });
    // A release build may inline the `async fn` into tokio's harness (see the guide).
    assert!(
        matches!(
            &*event.label,
            "task watch_runtime::rebuild_index" | "task watch_runtime::crunch_in_rebuild"
        ),
        "{events:#?}"
    );
    let late = at.duration_since(started);
    let waited = watchdog_waiting.waited();
    assert!(
        late <= 2 * event.threshold + waited,
        "the control's stall reported {late:?} after its start (the watchdog waited {waited:?} \
         for a CPU): {event:#?}"
    );
}

/// No stall event and no stall in the report, though the workers were sampled.
fn assert_no_stall(detector: &Detector, seen: &Seen) {
    let stats = detector.watchdog_stats().unwrap();
    // The workers were busy long enough to be sampled: the test would see a false stall.
    assert!(stats.captures_requested > 0, "{stats:?}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:#?}",
        seen.lock().unwrap()
    );
    assert_eq!(stalled(detector), []);
}

#[test]
fn a_load_of_short_polls_is_never_a_stall() {
    let _serial = serial();
    // At the shortest threshold the guide suggests: the most samples, the most chances of a
    // false stall, the highest cost.
    const THRESHOLD: Duration = Duration::from_millis(50);
    let (detector, seen) = detector_with(THRESHOLD);
    let rt = watched_runtime(&detector);
    const LOAD: Duration = Duration::from_secs(4);
    let watchdog_before = watchdog_cpu();
    let started = Instant::now();
    // Both workers stay busy, running the same code at the same stack depth poll after poll,
    // and never park.
    let waiting = runtime_threads();
    let polls = drive(&rt, LOAD, 64, Duration::from_micros(100));
    assert!(polls > 10_000, "{polls} polls");
    let elapsed = started.elapsed();
    let watchdog_ns = watchdog_cpu().saturating_sub(watchdog_before);
    assert_no_stall(&detector, &seen);
    let stats = detector.watchdog_stats().unwrap();
    // At most one sample per worker per half threshold.
    let per_worker = stats.captures_requested as f64 / elapsed.as_secs_f64() / 2.0;
    assert!(
        per_worker <= 2.2 / THRESHOLD.as_secs_f64(),
        "{per_worker}/s"
    );
    // The figures for BENCHMARKS.md (run this test alone: the watchdog threads of other tests
    // would be counted too).
    eprintln!(
        "load: {elapsed:?}, {} signals ({per_worker:.1}/s per worker), {} completed; \
         watchdog threads' CPU {:.2} ms ({:.3} % of a core, {:.1} µs per signal)",
        stats.captures_requested,
        stats.captures_completed,
        watchdog_ns as f64 / 1e6,
        watchdog_ns as f64 / elapsed.as_nanos() as f64 * 100.0,
        watchdog_ns as f64 / 1e3 / stats.captures_requested.max(1) as f64,
    );
    a_real_stall_is_reported(&rt, &detector, &seen);
    assert_captures(&detector, &waiting);
}

/// Polls of a tenth of the threshold back to back: tokio publishes a worker's busy time every 61
/// polls, so it stands still for 300 ms at a time, longer than two samples apart, while the
/// stacks match sample after sample. Only the polled task's id tells these polls apart.
#[test]
fn a_load_of_polls_a_tenth_of_the_threshold_each_is_never_a_stall() {
    let _serial = serial();
    no_stall_while(Duration::from_millis(50), |rt| {
        drive(rt, Duration::from_secs(2), 8, Duration::from_millis(5));
    });
}

/// Polls of 70 % of the threshold back to back, on workers that never park: two samples half a
/// threshold apart can fall in one poll, which is no stall: a stall needs the same poll seen a
/// whole threshold apart.
#[test]
fn polls_of_most_of_a_threshold_back_to_back_are_never_a_stall() {
    let _serial = serial();
    no_stall_while(WATCHDOG, |rt| {
        drive(rt, Duration::from_secs(2), 2, WATCHDOG * 7 / 10);
    });
}

/// One task re-polled back to back (it yields after 200 µs of work, for 2 s): the same task id
/// and the same stack at every sample, but tokio's busy time moves every 61 polls.
#[test]
fn a_task_that_yields_often_is_never_a_stall() {
    let _serial = serial();
    no_stall_while(Duration::from_millis(50), |rt| {
        rt.block_on(async {
            tokio::spawn(async {
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(2) {
                    spin(Duration::from_micros(200));
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap();
        });
    });
}

/// A `spawn_blocking` closure blocks a thread of the blocking pool, not a worker: not a task
/// stall, though tokio runs it through the same task harness.
#[test]
fn a_blocking_closure_is_not_a_task_stall() {
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    let waiting = runtime_threads();
    // The control first: the same two blocks in tasks on this runtime are both task stalls,
    // reported within twice the threshold. (Run after the blocking closures, they were first
    // reported 2.5 to 3.7 thresholds into their polls in every run here; first, in one run of
    // three: a worker sampled between two polls is left alone for two thresholds.)
    let refresh_started = Arc::new(Mutex::new(None));
    let rebuild_started = Arc::new(Mutex::new(None));
    let (refresh, rebuild) = (
        refresh_cache(refresh_started.clone()),
        rebuild_index(rebuild_started.clone()),
    );
    rt.block_on(async {
        let a = tokio::spawn(refresh);
        let b = tokio::spawn(rebuild);
        a.await.unwrap();
        b.await.unwrap();
    });
    let control = seen.lock().unwrap().clone();
    for (started, functions) in [
        (&refresh_started, ["refresh_cache", "sleep_in_refresh"]),
        (&rebuild_started, ["rebuild_index", "crunch_in_rebuild"]),
    ] {
        let started = started.lock().unwrap().expect("the task ran");
        let labels = functions.map(|function| format!("task watch_runtime::{function}"));
        // A release build may inline the `async fn` into tokio's harness (see the guide).
        let (at, _) = control
            .iter()
            .find(|(_, event)| labels.iter().any(|label| *event.label == **label))
            .unwrap_or_else(|| panic!("no stall for {labels:?}: {control:#?}"));
        let late = at.duration_since(started);
        assert!(
            late <= 2 * WATCHDOG,
            "{labels:?} reported {late:?} after its start: {control:#?}"
        );
    }
    assert_eq!(control.len(), 2, "{control:#?}");
    let stalls_before = stalled(&detector);
    let sampled_before = detector.watchdog_stats().unwrap().captures_requested;

    rt.block_on(async {
        let sleeper = tokio::task::spawn_blocking(|| sleep_in_refresh(BLOCK));
        let spinner = tokio::task::spawn_blocking(|| crunch_in_rebuild(BLOCK));
        sleeper.await.unwrap();
        spinner.await.unwrap();
    });
    // The spinning blocking thread was looked at (signalled for its stack) and left alone.
    let stats = detector.watchdog_stats().unwrap();
    assert!(stats.captures_requested > sampled_before, "{stats:?}");
    let events = seen.lock().unwrap().clone();
    assert_eq!(events.len(), control.len(), "{events:#?}");
    assert_eq!(stalled(&detector), stalls_before);
    assert_captures(&detector, &waiting);
}

/// Two current-thread runtimes built one after the other on the same thread, each blocked by a
/// task: both stalls are reported (the second runtime is not taken for the first).
#[test]
fn a_runtime_built_after_another_on_the_same_thread_is_watched() {
    let _serial = serial();
    let (detector, seen) = detector();
    let waiting = runtime_threads();
    for round in 0..2 {
        let rt = watched_current_thread_runtime(&detector);
        // Just before the task starts: a bound from here holds from its start too.
        let started = Instant::now();
        rt.block_on(async { tokio::spawn(warm_cache()).await.unwrap() });
        drop(rt);
        let events = seen.lock().unwrap();
        assert_eq!(events.len(), round + 1, "{events:#?}");
        let (at, event) = &events[round];
        let late = at.duration_since(started);
        assert!(
            late <= 2 * WATCHDOG,
            "round {round}: reported {late:?} after the task started: {event:#?}"
        );
    }
    assert_captures(&detector, &waiting);
}

/// The CPU time of this process's `hogwatch-watchdog` threads so far (`/proc`, in ns).
fn watchdog_cpu() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "hogwatch-watchd" {
            continue;
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// The stalls of `detector`'s report: (label, stalls) of each entry with any, by label. (The
/// report lists its entries worst first, by the delay they inflicted, which is charged a grace
/// period after each stall: two reports of the same stalls may list them in another order.)
fn stalled(detector: &Detector) -> Vec<(String, u64)> {
    let mut stalled: Vec<(String, u64)> = detector
        .report()
        .entries
        .iter()
        .filter(|entry| entry.stalls > 0)
        .map(|entry| (entry.label.to_string(), entry.stalls))
        .collect();
    stalled.sort();
    stalled
}

fn watched_current_thread_runtime(detector: &Detector) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    detector
        .watch_runtime(&mut builder)
        .unwrap()
        .build()
        .unwrap()
}

fn watched_runtime(detector: &Detector) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    detector
        .watch_runtime(&mut builder)
        .unwrap()
        .build()
        .unwrap()
}

#[test]
fn a_watched_future_stall_is_counted_once_under_its_own_label() {
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    let waiting = runtime_threads();
    let watched = detector.watch("refresh", async {
        let started = Instant::now();
        sleep_in_refresh(BLOCK);
        started
    });
    let started = rt.block_on(async move { tokio::spawn(watched).await.unwrap() });
    assert_captures(&detector, &waiting);
    drop(rt);
    // The watched poll is published in the worker's slot: the watchdog reports it under its
    // label, and the runtime watchdog leaves that worker alone while it is published.
    assert_eq!(stalled(&detector), [("refresh".to_string(), 1)]);
    assert_eq!(detector.watchdog_stats().unwrap().stalls, 1);
    let events = seen.lock().unwrap();
    assert!(
        events.iter().all(|(_, event)| *event.label == *"refresh"),
        "{events:#?}"
    );
    let (at, _) = events.first().expect("the stall was reported");
    let late = at.duration_since(started);
    assert!(late <= 2 * WATCHDOG, "reported {late:?} after its start");
}

#[cfg(feature = "axum")]
#[test]
fn a_stalled_route_is_counted_once_under_its_route() {
    let _serial = serial();
    use tower::ServiceExt;

    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    let waiting = runtime_threads();
    let started = Arc::new(Mutex::new(None));
    let start = started.clone();
    let app = axum::Router::new()
        .route(
            "/block",
            axum::routing::get(|| async move {
                *start.lock().unwrap() = Some(Instant::now());
                sleep_in_consume(BLOCK);
                "done"
            }),
        )
        .layer(detector.layer());
    let status = rt.block_on(async move {
        tokio::spawn(async move {
            let request = axum::http::Request::get("/block")
                .body(axum::body::Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap().status()
        })
        .await
        .unwrap()
    });
    assert_captures(&detector, &waiting);
    drop(rt);
    assert_eq!(status, 200);
    assert_eq!(stalled(&detector), [("GET /block".to_string(), 1)]);
    assert_eq!(detector.watchdog_stats().unwrap().stalls, 1);
    let started = started.lock().unwrap().expect("the handler ran");
    let events = seen.lock().unwrap();
    let (at, event) = events.first().expect("the stall was reported");
    assert_eq!(&*event.label, "GET /block", "{events:#?}");
    let late = at.duration_since(started);
    assert!(late <= 2 * WATCHDOG, "reported {late:?} after its start");
}

/// With tokio's task hooks too, a task's poll is published under its spawn location: one stall,
/// under that label, not a second one under the task's function.
#[cfg(tokio_unstable)]
#[test]
fn with_instrument_runtime_a_task_stall_is_counted_once() {
    let _serial = serial();
    let (detector, seen) = detector();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    detector.instrument_runtime(&mut builder);
    let rt = detector
        .watch_runtime(&mut builder)
        .unwrap()
        .build()
        .unwrap();
    let waiting = runtime_threads();
    let (line, started) = rt.block_on(async {
        let line = line!() + 1;
        let task = tokio::spawn(async {
            let started = Instant::now();
            sleep_in_refresh(BLOCK);
            started
        });
        (line, task.await.unwrap())
    });
    assert_captures(&detector, &waiting);
    drop(rt);
    let label = format!("task {}:{line}", file!());
    assert_eq!(stalled(&detector), [(label.clone(), 1)]);
    assert_eq!(detector.watchdog_stats().unwrap().stalls, 1);
    let events = seen.lock().unwrap();
    let (at, event) = events.first().expect("the stall was reported");
    assert_eq!(*event.label, *label, "{events:#?}");
    let late = at.duration_since(started);
    assert!(late <= 2 * WATCHDOG, "reported {late:?} after its start");
}

/// A background task blocking its worker for 300 ms.
async fn warm_cache() {
    sleep_in_refresh(Duration::from_millis(300));
}

/// A 300 ms stall right after `build()` (before a debug build's debug information is loaded) is
/// reported while it lasts, named, once.
#[test]
fn a_300_ms_stall_right_after_build_is_reported_while_it_lasts() {
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    let waiting = runtime_threads();
    let started = Instant::now();
    rt.block_on(async { tokio::spawn(warm_cache()).await.unwrap() });
    let ended = Instant::now();
    assert_captures(&detector, &waiting);
    drop(rt);
    let events = seen.lock().unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    let (at, event) = &events[0];
    assert!(
        *at < ended,
        "reported {:?} after the stall ended",
        *at - ended
    );
    assert!(
        at.duration_since(started) <= 2 * WATCHDOG,
        "reported {:?} after build()",
        at.duration_since(started)
    );
    let label = event.label.to_string();
    // A release build without debug information inlines this small `async fn` into tokio's
    // harness: its stack then names the function it calls (see the guide).
    assert!(
        label == "task watch_runtime::warm_cache"
            || (!cfg!(debug_assertions) && label == "task watch_runtime::sleep_in_refresh"),
        "{label}"
    );
    assert!(
        event.stack.iter().any(|frame| is_std_sleep(frame)),
        "{events:#?}"
    );
    assert_eq!(stalled(&detector), [(label, 1)]);
}

/// Spins on the CPU for `duration`.
#[inline(never)]
fn crunch_in_rebuild(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
    // Unlike `spin`: identical functions are merged into one in a release build, and the
    // stack would name the other.
    std::hint::black_box(4u16);
}

async fn rebuild_index(started: Arc<Mutex<Option<Instant>>>) {
    *started.lock().unwrap() = Some(Instant::now());
    crunch_in_rebuild(BLOCK);
}

/// A short stall's work, unlike `crunch_in_rebuild` (a release build would merge the two).
#[inline(never)]
fn crunch_among_yielders(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
    std::hint::black_box(5u16);
}

async fn stall_among_yielders(started: Arc<Mutex<Option<Instant>>>) {
    *started.lock().unwrap() = Some(Instant::now());
    crunch_among_yielders(4 * WATCHDOG);
}

/// Workers running tasks that do next to nothing (each yields at once, again and again) spend
/// much of their time in tokio's scheduler between two polls, where samples catch them. A stall
/// that begins on such a worker, which never parks, is reported within twice the threshold of
/// its start, five times out of five, plus what the watchdog and the workers waited for a CPU
/// (nothing much on an idle machine: beside two CPU hogs, the yielding worker gets too little
/// of one to publish its busy time, and the busy-time guard starts confirmations over). A
/// worker caught between polls was left alone for two thresholds, or eight if it had never
/// parked: a stall that began meanwhile was reported up to 3.4 thresholds late (a CI run saw
/// 2.4), or not at all.
#[test]
fn a_stall_on_a_worker_caught_between_polls_is_reported_promptly() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    let waiting = runtime_threads();
    let stop = Arc::new(AtomicBool::new(false));
    let mut stalls = Vec::new();
    rt.block_on(async {
        let yielders: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        // The naming thread loads the debug information meanwhile (a debug build's takes a
        // core for hundreds of milliseconds): the other worker, which yields, must get the
        // CPU it needs to publish its busy time, or the busy-time guard cannot tell that the
        // stalled one stood still (see `sampler::stood_still`), and starts over.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..5 {
            // Samples of the yielding workers meanwhile.
            tokio::time::sleep(3 * WATCHDOG).await;
            let watchdog_waiting = common::CpuWaitSince::of(Vec::new(), &["hogwatch-watchd"]);
            let workers_waiting = runtime_threads();
            let started = Arc::new(Mutex::new(None));
            tokio::spawn(stall_among_yielders(started.clone()))
                .await
                .unwrap();
            let started = started.lock().unwrap().expect("the task ran");
            stalls.push((
                started,
                watchdog_waiting.waited() + workers_waiting.waited(),
            ));
        }
        stop.store(true, Ordering::Relaxed);
        for yielder in yielders {
            yielder.await.unwrap();
        }
    });
    assert_captures(&detector, &waiting);
    drop(rt);
    let events = seen.lock().unwrap();
    let labels = [
        "task watch_runtime::stall_among_yielders",
        "task watch_runtime::crunch_among_yielders",
    ];
    assert!(
        events
            .iter()
            .all(|(_, event)| labels.contains(&&*event.label)),
        "only the stalls: {events:#?}"
    );
    for (started, waited) in stalls {
        let (at, _) = events
            .iter()
            .find(|(at, _)| *at >= started)
            .unwrap_or_else(|| panic!("the stall at {started:?} was not reported: {events:#?}"));
        let late = at.duration_since(started);
        assert!(
            late <= 2 * WATCHDOG + waited,
            "reported {late:?} after its start (the watchdog and the workers waited {waited:?} \
             for a CPU)"
        );
    }
    assert_eq!(events.len(), 5, "{events:#?}");
}

/// A task on the CPU (signalled for its stack) is reported within 2x, named, cause `cpu`.
#[test]
fn a_task_spinning_on_the_cpu_is_reported_and_named() {
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    let waiting = runtime_threads();
    let started = Arc::new(Mutex::new(None));
    let task = rebuild_index(started.clone());
    rt.block_on(async { tokio::spawn(task).await.unwrap() });
    assert_captures(&detector, &waiting);
    drop(rt);
    let started = started.lock().unwrap().expect("the task ran");
    let events = seen.lock().unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    let (at, event) = &events[0];
    let late = at.duration_since(started);
    assert!(late <= 2 * WATCHDOG, "reported {late:?} after its start");
    let label = "task watch_runtime::rebuild_index";
    assert!(
        &*event.label == label
            || (!cfg!(debug_assertions)
                && &*event.label == "task watch_runtime::crunch_in_rebuild"),
        "{events:#?}"
    );
    assert_eq!(
        event.culprit.as_deref(),
        Some("watch_runtime::crunch_in_rebuild"),
        "{events:#?}"
    );
    let report = detector.report();
    let entry = report
        .entry(&event.label)
        .expect("the stall is in the report");
    assert_eq!(entry.stalls, 1, "{entry:#?}");
    assert_eq!(
        entry.causes.first().map(|count| count.cause.as_str()),
        Some("cpu"),
        "{entry:#?}"
    );
}

/// Waits for a byte that never comes, for `duration` (a blocking read with a timeout).
#[inline(never)]
fn read_in_fetch(duration: Duration) -> std::io::Result<usize> {
    use std::io::Read;
    let (mut socket, _peer) = std::os::unix::net::UnixStream::pair()?;
    socket.set_read_timeout(Some(duration))?;
    let read = socket.read(&mut [0u8; 1]);
    std::hint::black_box(3u8);
    read
}

async fn fetch_config() -> std::io::Result<usize> {
    read_in_fetch(BLOCK)
}

/// A task blocked in a system call other than a sleep, on a worker that has not parked yet
/// (right after `build()`): reported from its scanned stack, not signalled (the read times out
/// as it should, not with `EINTR`).
#[test]
fn a_blocking_read_right_after_build_is_reported_and_not_interrupted() {
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    let started = Instant::now();
    let read = rt.block_on(async { tokio::spawn(fetch_config()).await.unwrap() });
    common::assert_no_failed_captures(&detector.watchdog_stats().unwrap());
    drop(rt);
    let error = read.expect_err("nothing was written");
    assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock, "{error}");
    let events = seen.lock().unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    let (at, event) = &events[0];
    let late = at.duration_since(started);
    assert!(late <= 2 * WATCHDOG, "reported {late:?} after build()");
    assert!(
        &*event.label == "task watch_runtime::fetch_config"
            || (!cfg!(debug_assertions) && &*event.label == "task watch_runtime::read_in_fetch"),
        "{events:#?}"
    );
    assert!(
        event
            .stack
            .iter()
            .any(|frame| frame.contains("read_in_fetch")),
        "{events:#?}"
    );
    // Seen from `/proc` in its system call, not signalled in its own code: the stall's cause is
    // an I/O wait, and no signal was sent at all.
    let report = detector.report();
    let entry = report
        .entry(&event.label)
        .expect("the stall is in the report");
    assert!(
        !entry.causes.is_empty() && entry.causes.iter().all(|count| count.cause == "io"),
        "{:#?}",
        entry.causes
    );
    let stats = detector.watchdog_stats().unwrap();
    assert_eq!(stats.captures_requested, 0, "{stats:?}");
}

/// One worker blocked while the other serves short requests now and then, parking in between:
/// the other worker's busy time moves at each park, which must not hide the stall.
#[test]
fn a_stall_beside_a_worker_that_serves_and_parks_is_reported() {
    let _serial = serial();
    let (detector, seen) = detector();
    let rt = watched_runtime(&detector);
    let waiting = runtime_threads();
    let started = Arc::new(Mutex::new(None));
    let task = refresh_cache(started.clone());
    rt.block_on(async {
        let blocked = tokio::spawn(task);
        // A short request every 5 ms on the other worker until the block is over.
        let serving = tokio::spawn(async {
            let until = Instant::now() + BLOCK;
            while Instant::now() < until {
                tokio::spawn(async { short_work() }).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        blocked.await.unwrap();
        serving.await.unwrap();
    });
    assert_captures(&detector, &waiting);
    drop(rt);
    let started = started.lock().unwrap().expect("the task ran");
    let events = seen.lock().unwrap();
    let labels = common::task_labels(
        "watch_runtime::refresh_cache",
        "watch_runtime::sleep_in_refresh",
    );
    let (at, event) = events
        .iter()
        .find(|(_, event)| labels.iter().any(|label| *event.label == **label))
        .unwrap_or_else(|| panic!("no stall for {labels:?}: {events:#?}"));
    let late = at.duration_since(started);
    assert!(
        late <= 2 * WATCHDOG,
        "reported {late:?} after its start: {event:#?}"
    );
    assert_eq!(events.len(), 1, "{events:#?}");
}
