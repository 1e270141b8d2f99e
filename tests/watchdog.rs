//! The stall watchdog: stacks of polls caught while they block, culprits, reports.
#![cfg(all(feature = "watchdog", target_os = "linux"))]

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hogwatch::{Detector, HogEvent, HogKind};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Collects the stall events the `on_hog` callback receives.
#[derive(Clone, Default)]
struct Stalls(Arc<Mutex<Vec<HogEvent>>>);

impl Stalls {
    fn builder(&self) -> hogwatch::Builder {
        let sink = self.0.clone();
        Detector::builder()
            .threshold(Duration::from_millis(1))
            .on_hog(move |event: &HogEvent| {
                if event.kind == HogKind::Stall {
                    sink.lock().unwrap().push(event.clone());
                }
            })
    }

    /// The events so far, after waiting (up to 30 s) for at least one: the first report can
    /// come after the poll returned, while the watchdog loads debug information.
    fn events(&self) -> Vec<HogEvent> {
        let start = Instant::now();
        while self.0.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.0.lock().unwrap().clone()
    }

    /// How many stalls of `label` were reported so far, without waiting on the callback's lock
    /// (none while the callback holds it): for a poll that blocks until it is reported, which
    /// must block where the test says, not on this lock.
    fn reported(&self, label: &str) -> usize {
        self.0.try_lock().map_or(0, |events| {
            events.iter().filter(|event| &*event.label == label).count()
        })
    }
}

/// Spins `crunch_numbers` in 20 ms pieces for at least `at_least`, and on until a stall of
/// `label` was reported (30 s at most): a new watchdog first loads debug information, and on a
/// busy machine (other tests of this binary run beside) it may not get to check for a while, so
/// a fixed spin can end before it catches anything. The stall is then caught while the poll still
/// spins, with `crunch_numbers` as the innermost frame.
fn spin_until_reported(at_least: Duration, stalls: &Stalls, label: &str) -> u64 {
    let start = Instant::now();
    let mut acc = 0;
    while start.elapsed() < at_least
        || (stalls.reported(label) == 0 && start.elapsed() < Duration::from_secs(30))
    {
        acc ^= common::crunch_numbers(Duration::from_millis(20));
    }
    acc
}

/// One warning's fields, as text.
type Fields = Vec<(String, String)>;
type Warnings = Arc<Mutex<Vec<Fields>>>;

/// The warnings sent to `tracing` by any thread (the watchdog warns from its own thread, so a
/// thread-local subscriber would not see them).
fn warnings() -> &'static Mutex<Vec<Fields>> {
    static WARNINGS: OnceLock<Warnings> = OnceLock::new();
    WARNINGS.get_or_init(|| {
        struct Recorder(Warnings);
        impl<S: tracing::Subscriber> Layer<S> for Recorder {
            fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
                struct Visitor(Fields);
                impl Visit for Visitor {
                    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                        self.0
                            .push((field.name().to_string(), format!("{value:?}")));
                    }
                    fn record_str(&mut self, field: &Field, value: &str) {
                        self.0.push((field.name().to_string(), value.to_string()));
                    }
                }
                if event.metadata().target() == "hogwatch"
                    && *event.metadata().level() == tracing::Level::WARN
                {
                    let mut fields = Visitor(Vec::new());
                    event.record(&mut fields);
                    self.0.lock().unwrap().push(fields.0);
                }
            }
        }
        let events = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Recorder(events.clone()));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        events
    })
}

#[test]
fn a_spinning_handler_is_caught_and_named_while_it_spins() {
    let warnings = warnings();
    let stalls = Stalls::default();
    let detector = stalls
        .builder()
        .watchdog(Duration::from_millis(50))
        .build()
        .unwrap();
    let result = current_thread().block_on(detector.watch("crunch", async {
        spin_until_reported(Duration::from_millis(300), &stalls, "crunch")
    }));
    black_box(result);

    let events = stalls.events();
    assert!(
        !events.is_empty(),
        "a stall was reported: {:?}",
        detector.watchdog_stats()
    );
    let event = &events[0];
    assert_eq!(&*event.label, "crunch");
    assert!(event.duration >= Duration::from_millis(50), "{event:?}");
    assert_eq!(event.threshold, Duration::from_millis(50));
    assert!(event.thread.is_some());
    assert!(
        event
            .stack
            .iter()
            .any(|frame| frame.contains("crunch_numbers")),
        "{:#?}",
        event.stack
    );
    let culprit = event.culprit.as_deref().unwrap_or_default();
    assert!(culprit.ends_with("crunch_numbers"), "culprit {culprit}");
    assert!(
        !event.stack[0].contains("signal"),
        "the handler's frames are cut off: {:#?}",
        event.stack
    );

    let report = detector.report();
    let entry = report.entry("crunch").unwrap();
    assert_eq!(entry.stalls, 1, "one stall, however many reports");
    assert!(entry.top_culprits[0].culprit.ends_with("crunch_numbers"));
    assert!(entry.top_stacks[0].stack.contains("crunch_numbers"));
    let watchdog = report.watchdog.clone().unwrap();
    assert_eq!(watchdog.stack_mode, "unwind");
    assert!(watchdog.captures_completed >= 1);

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["watchdog"]["stalls"], 1);
    let entry = &json["entries"][0];
    assert_eq!(entry["stalls"], 1);
    assert!(entry["top_stacks"][0]["stack"]
        .as_str()
        .unwrap()
        .contains("crunch_numbers"));
    assert!(entry["top_culprits"][0]["culprit"]
        .as_str()
        .unwrap()
        .ends_with("crunch_numbers"));

    let svg = report.flamegraph_svg();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..100.min(svg.len())]);
    assert!(svg.contains("crunch_numbers"));
    assert!(report.to_text().contains("crunch_numbers"));

    // The watchdog warns after it called `on_hog`: wait for the warning (30 s at most).
    let start = Instant::now();
    let warning = loop {
        let warning = warnings.lock().unwrap().iter().find_map(|fields| {
            let stall = fields.iter().any(|(k, v)| k == "label" && v == "crunch")
                && fields.iter().any(|(k, _)| k == "culprit");
            stall.then(|| fields.clone())
        });
        match warning {
            Some(warning) => break warning,
            None if start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            None => panic!("no stall warning for the label"),
        }
    };
    assert!(
        warning
            .iter()
            .any(|(k, v)| k == "culprit" && v.ends_with("crunch_numbers")),
        "{warning:?}"
    );
}

#[test]
fn a_json_round_trip_is_blamed_on_serde_json() {
    let document = serde_json::Value::Array(
        (0..100_000)
            .map(|i| {
                serde_json::json!({
                    "id": format!("item-{i:08}"),
                    "name": format!("a \"quoted\" name\twith escapes {i}"),
                    "tags": ["alpha", "beta", "gamma", "delta"],
                    "meta": {"venue": "XNYS", "note": "x".repeat(40)}
                })
            })
            .collect(),
    );
    let stalls = Stalls::default();
    let detector = stalls
        .builder()
        .watchdog(Duration::from_millis(20))
        .build()
        .unwrap();
    let runtime = current_thread();
    let bytes = runtime.block_on(detector.watch("json", async move {
        let mut bytes = 0;
        for _ in 0..3 {
            let text = serde_json::to_string(&document).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            bytes += serde_json::to_string(&parsed).unwrap().len();
        }
        bytes
    }));
    assert!(bytes > 10_000_000, "{bytes}");
    let events = stalls.events();
    assert!(!events.is_empty());
    let report = detector.report();
    // Each stack is one sample of where the time goes, spread over many serde_json functions:
    // most of them, not just the commonest, must name serde_json.
    let culprits = &report.entry("json").unwrap().top_culprits;
    let samples: u64 = culprits.iter().map(|c| c.count).sum();
    let in_serde_json: u64 = culprits
        .iter()
        .filter(|c| c.culprit.contains("serde_json"))
        .map(|c| c.count)
        .sum();
    assert!(
        in_serde_json * 2 > samples,
        "{in_serde_json} of {samples} samples\n{culprits:#?}\n{events:#?}"
    );
}

#[test]
fn a_poll_stuck_on_a_mutex_is_reported_before_it_returns() {
    let lock = Arc::new(Mutex::new(0u64));
    let held = lock.lock().unwrap();
    let returned = Arc::new(AtomicBool::new(false));
    let reported_while_stuck = Arc::new(AtomicBool::new(false));
    let (flag, seen) = (returned.clone(), reported_while_stuck.clone());
    let events = Arc::new(Mutex::new(Vec::<HogEvent>::new()));
    let sink = events.clone();
    let detector = Detector::builder()
        .watchdog(Duration::from_millis(50))
        .on_hog(move |event: &HogEvent| {
            if event.kind == HogKind::Stall && &*event.label == "stuck" {
                let stuck = !flag.load(Ordering::SeqCst);
                // The event first: the test reads it as soon as it sees the flag.
                sink.lock().unwrap().push(event.clone());
                if stuck {
                    seen.store(true, Ordering::SeqCst);
                }
            }
        })
        .build()
        .unwrap();
    let worker = {
        let (detector, lock, returned) = (detector.clone(), lock.clone(), returned.clone());
        std::thread::spawn(move || {
            current_thread().block_on(detector.watch("stuck", async move {
                *lock.lock().unwrap() += 1;
                returned.store(true, Ordering::SeqCst);
            }));
        })
    };
    // The poll is stuck on the lock until the stall is reported (30 s at most): a new watchdog
    // first loads debug information, which can take seconds on a busy machine.
    let start = Instant::now();
    while !reported_while_stuck.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        reported_while_stuck.load(Ordering::SeqCst),
        "the stall was reported while the poll was stuck: {:?}",
        detector.watchdog_stats()
    );
    assert!(!returned.load(Ordering::SeqCst), "the poll is still stuck");
    drop(held);
    worker.join().unwrap();
    assert!(returned.load(Ordering::SeqCst));
    let events = events.lock().unwrap();
    let stack = &events[0].stack;
    assert!(
        stack.iter().any(|frame| frame.contains("lock")),
        "{stack:#?}"
    );
    // The culprit is the test's async block, or none in a release build without debug
    // information, where the block is inlined into hogwatch's `Watched::poll`.
    if let Some(culprit) = &events[0].culprit {
        assert!(culprit.contains("a_poll_stuck_on_a_mutex"), "{culprit}");
    }
    assert_eq!(detector.report().entry("stuck").unwrap().stalls, 1);
}

#[test]
fn a_poll_that_never_returns_is_reported_again_at_doublings_only() {
    let stalls = Stalls::default();
    let detector = stalls
        .builder()
        .watchdog(Duration::from_millis(20))
        .build()
        .unwrap();
    // Blocks for at least 1.5 s, and on until the second report (30 s at most): the first can
    // come late, while a new watchdog loads debug information, and the next only at the next
    // doubling after it.
    let start = Instant::now();
    current_thread().block_on(detector.watch("long", async {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1_500)
            || (stalls.reported("long") < 2 && start.elapsed() < Duration::from_secs(30))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }));
    let blocked = start.elapsed();
    let events = stalls.events();
    // At 20, 40, 80... ms while it blocked: a few reports, not one per check (every 5 ms).
    let doublings = (blocked.as_millis() / 20).ilog2() as usize + 1;
    assert!(
        (2..=doublings).contains(&events.len()),
        "{} reports in {blocked:?}",
        events.len()
    );
    assert_eq!(detector.report().entry("long").unwrap().stalls, 1);
    let stack = &events[0].stack;
    assert!(
        stack.iter().any(|frame| frame.contains("sleep")),
        "{stack:#?}"
    );
}

/// Allocates and frees in a loop for `duration`.
fn churn(duration: Duration) -> usize {
    let start = Instant::now();
    let mut kept = Vec::new();
    let mut total = 0;
    let mut i = 0usize;
    while start.elapsed() < duration {
        let v: Vec<u8> = vec![(i % 251) as u8; 16 + (i * 7919) % 4096];
        total += v.len();
        kept.push(v);
        if kept.len() > 64 {
            kept.swap_remove(i % 64);
        }
        let boxed = Box::new([i; 8]);
        black_box(&boxed);
        i = i.wrapping_add(1);
    }
    black_box(kept.len());
    total
}

#[test]
fn stress_ten_thousand_captures_of_threads_that_allocate() {
    let detector = Detector::builder()
        .threshold(Duration::from_millis(1))
        .watchdog(Duration::from_millis(1))
        .warn_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let target = 10_000;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (detector, stop) = (detector.clone(), stop.clone());
            std::thread::spawn(move || {
                let runtime = current_thread();
                while !stop.load(Ordering::Relaxed) {
                    runtime.block_on(
                        detector.watch("churn", async { churn(Duration::from_millis(3)) }),
                    );
                }
            })
        })
        .collect();
    let started = Instant::now();
    loop {
        let stats = detector.watchdog_stats().unwrap();
        if stats.captures_requested >= target {
            break;
        }
        if std::env::var_os("HOGWATCH_STRESS_PROGRESS").is_some() {
            eprintln!("{:?} {stats:?}", started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} captures in 10 minutes",
            stats.captures_requested
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    // The watchdog may be finishing one capture: wait until the books balance.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let stats = detector.watchdog_stats().unwrap();
        if stats.captures_requested == stats.captures_completed + stats.captures_failed
            || Instant::now() > deadline
        {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(stats.captures_requested >= target, "{stats:?}");
    assert_eq!(
        stats.captures_requested,
        stats.captures_completed + stats.captures_failed,
        "{stats:?}"
    );
    // A capture fails only when the signalled thread does not answer within 250 ms, which a
    // machine busy with other builds can cause now and then: allow a handful in 10,000.
    assert!(
        stats.captures_failed * 1000 <= stats.captures_requested,
        "{stats:?}"
    );
    let report = detector.report();
    let entry = report.entry("churn").unwrap();
    assert!(entry.stalls > 0 && entry.top_stacks.len() <= 8);
}

#[test]
fn a_signal_that_cannot_be_caught_is_refused() {
    for signal in [libc::SIGKILL, libc::SIGSEGV, libc::SIGINT, 32, 33, 0, 1_000] {
        let error = Detector::builder()
            .watchdog(Duration::from_millis(50))
            .watchdog_signal(signal)
            .build()
            .unwrap_err();
        assert_eq!(error, hogwatch::ConfigError::InvalidSignal(signal));
    }
    assert_eq!(
        Detector::builder()
            .watchdog(Duration::ZERO)
            .build()
            .unwrap_err(),
        hogwatch::ConfigError::ZeroWatchdog
    );
}

#[test]
fn another_signal_works_and_custom_prefixes_move_the_culprit() {
    let stalls = Stalls::default();
    let detector = stalls
        .builder()
        .watchdog(Duration::from_millis(30))
        .watchdog_signal(libc::SIGRTMIN() + 4)
        .runtime_prefixes(
            hogwatch::Builder::DEFAULT_RUNTIME_PREFIXES
                .iter()
                .copied()
                .chain(["watchdog::common::crunch_"]),
        )
        .build()
        .unwrap();
    current_thread().block_on(detector.watch("rt-signal", async {
        spin_until_reported(Duration::from_millis(150), &stalls, "rt-signal")
    }));
    let events = stalls.events();
    assert!(
        !events.is_empty(),
        "a stall was reported: {:?}",
        detector.watchdog_stats()
    );
    assert!(events[0]
        .stack
        .iter()
        .any(|frame| frame.contains("crunch_numbers")));
    let culprit = events[0].culprit.as_deref().unwrap_or_default();
    assert!(!culprit.contains("crunch_numbers"), "{culprit}");
    assert_eq!(
        detector.watchdog_stats().unwrap().signal,
        libc::SIGRTMIN() + 4
    );
}

/// Tasks nobody wrapped, watched through tokio's task hooks (`Detector::instrument_runtime`).
#[cfg(tokio_unstable)]
mod tasks {
    use super::*;

    /// The spinning loop, written out in the function that must be named (a helper function
    /// would be the innermost frame of a debug build, and so the culprit).
    macro_rules! spin {
        ($at_least:expr, $done:expr) => {{
            let start = Instant::now();
            let mut acc = 0u64;
            loop {
                let elapsed = start.elapsed();
                if elapsed >= Duration::from_secs(30) || (elapsed >= $at_least && $done) {
                    break acc;
                }
                for i in 0..100_000u64 {
                    acc = black_box(acc.rotate_left(7) ^ i);
                }
            }
        }};
    }

    /// Spins for at least `at_least`, and on until a stall of `label` was reported (30 s at
    /// most): the first capture can wait for the watchdog to load debug information, and the
    /// stall must be caught while the task is still stuck. The function the watchdog must name.
    #[inline(never)]
    fn stuck_in_background(at_least: Duration, stalls: &Stalls, label: &str) -> u64 {
        spin!(at_least, stalls.reported(label) > 0)
    }

    /// The same, for the watched future inside a task.
    #[inline(never)]
    fn stuck_in_watched(stalls: &Stalls, label: &str) -> u64 {
        spin!(Duration::ZERO, stalls.reported(label) > 0)
    }

    fn instrumented(detector: &Detector) -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2).enable_all();
        detector.instrument_runtime(&mut builder).build().unwrap()
    }

    /// The label of a task spawned at `line` of this file.
    fn task_label(line: u32) -> String {
        format!("task {}:{line}", file!())
    }

    #[test]
    fn a_stuck_unwrapped_task_is_caught_under_its_spawn_location() {
        let stalls = Stalls::default();
        let detector = stalls
            .builder()
            .watchdog(Duration::from_millis(50))
            .build()
            .unwrap();
        let rt = instrumented(&detector);
        // A task that panics: tokio catches the panic inside the poll, the after-hook still runs
        // and nothing of it stays published (a leaked entry would be reported as a stall).
        // `resume_unwind` skips the panic hook, whose backtrace would make the poll itself slow.
        let (panicked, panic_line) = rt.block_on(async {
            let line = line!() + 1;
            let task = tokio::spawn(async { std::panic::resume_unwind(Box::new("a task panics")) });
            (task.await, line)
        });
        assert!(panicked.unwrap_err().is_panic());

        let spy = stalls.clone();
        let (task, line) = rt.block_on(async move {
            let line = line!() + 1;
            let task = tokio::spawn(async move {
                let label = task_label(line);
                stuck_in_background(Duration::from_millis(400), &spy, &label)
            });
            (task, line)
        });
        black_box(rt.block_on(task).unwrap());
        let events = stalls.events();

        let label = task_label(line);
        let event = events
            .iter()
            .find(|event| *event.label == label)
            .unwrap_or_else(|| panic!("a stall of {label}: {events:#?}"));
        assert!(event.duration >= Duration::from_millis(50), "{event:?}");
        // The stack is only kept if the thread was still in that poll when it was captured.
        assert!(
            event
                .stack
                .iter()
                .any(|frame| frame.contains("stuck_in_background")),
            "{:#?}",
            event.stack
        );
        let culprit = event.culprit.as_deref().unwrap_or_default();
        assert!(
            culprit.ends_with("stuck_in_background"),
            "culprit {culprit}"
        );
        let panicked = task_label(panic_line);
        assert!(
            events.iter().all(|event| *event.label != panicked),
            "{events:#?}"
        );

        let report = detector.report();
        let entry = report.entry(&label).unwrap();
        assert_eq!(entry.stalls, 1);
        assert!(entry.top_culprits[0]
            .culprit
            .ends_with("stuck_in_background"));
        // The folded stack starts at the task's poll: tokio's worker is cut off.
        let stack = &entry.top_stacks[0].stack;
        assert!(stack.contains("stuck_in_background"), "{stack}");
        assert!(!stack.contains("tokio::runtime::scheduler"), "{stack}");
    }

    #[test]
    fn a_watched_future_inside_a_task_is_reported_under_its_own_label_then_the_task() {
        let stalls = Stalls::default();
        let detector = stalls
            .builder()
            .watchdog(Duration::from_millis(50))
            .build()
            .unwrap();
        let rt = instrumented(&detector);
        let watched = detector.clone();
        let spy = stalls.clone();
        let (task, line) = rt.block_on(async move {
            let line = line!() + 1;
            let task = tokio::spawn(async move {
                let inner = watched.watch("inner", async { stuck_in_watched(&spy, "inner") });
                inner.await;
                // The task's entry is back in the slot, with the poll's start: already a stall.
                stuck_in_background(Duration::ZERO, &spy, &task_label(line))
            });
            (task, line)
        });
        black_box(rt.block_on(task).unwrap());
        let events = stalls.events();
        let label = task_label(line);
        let culprit_of = |label: &str| {
            events
                .iter()
                .find(|event| &*event.label == label)
                .and_then(|event| event.culprit.clone())
                .unwrap_or_else(|| panic!("a stall of {label} with a culprit: {events:#?}"))
        };
        assert!(culprit_of("inner").ends_with("stuck_in_watched"));
        assert!(culprit_of(&label).ends_with("stuck_in_background"));
        assert!(
            events.iter().all(|event| *event.label != label
                || !event.stack.iter().any(|frame| frame.contains("Watched"))),
            "the watched poll is never reported as the task's: {events:#?}"
        );
    }
}
