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

/// Collects the stall events the `on_hog` callback receives, with the time each arrived.
#[derive(Clone, Default)]
struct Stalls(Arc<Mutex<Vec<(Instant, HogEvent)>>>);

impl Stalls {
    fn builder(&self) -> hogwatch::Builder {
        let sink = self.0.clone();
        Detector::builder()
            .threshold(Duration::from_millis(1))
            .on_hog(move |event: &HogEvent| {
                if event.kind == HogKind::Stall {
                    sink.lock().unwrap().push((Instant::now(), event.clone()));
                }
            })
    }

    /// The events reported so far (a stall is reported while it blocks: after the poll, its
    /// events are all in).
    fn events(&self) -> Vec<HogEvent> {
        let events = self.0.lock().unwrap();
        events.iter().map(|(_, event)| event.clone()).collect()
    }

    /// Asserts that `label`'s stall, whose poll started at `started`, was first reported within
    /// three times the watchdog threshold: by the time `on_hog` got it and by the duration the
    /// event states (what a user waiting for the warning feels).
    fn assert_reported_promptly(&self, label: &str, started: Instant) {
        let events = self.0.lock().unwrap();
        let (at, event) = events
            .iter()
            .find(|(_, event)| &*event.label == label)
            .unwrap_or_else(|| panic!("no stall of {label} reported"));
        assert_reported_within(event, at.duration_since(started));
    }
}

/// Asserts that `event`, which `on_hog` got `latency` after its poll started (if known), was
/// reported within three times the threshold.
fn assert_reported_within(event: &HogEvent, latency: Duration) {
    let bound = 3 * event.threshold;
    assert!(
        event.duration >= event.threshold && event.duration <= bound,
        "{}: first reported at {:?} into the poll (bound {bound:?})",
        event.label,
        event.duration
    );
    assert!(
        latency <= bound,
        "{}: on_hog got the stall {latency:?} after the poll started (bound {bound:?})",
        event.label
    );
}

/// This thread's name as the watchdog gives it (the test's name under libtest).
fn thread_name() -> String {
    let current = std::thread::current();
    match current.name() {
        Some(name) => name.to_string(),
        None => format!("{:?}", current.id()),
    }
}

/// One warning's fields, as text.
type Fields = Vec<(String, String)>;
type Warnings = Arc<Mutex<Vec<Fields>>>;

/// The warnings and errors sent to `tracing` by any thread (the watchdog warns from its own
/// thread, so a thread-local subscriber would not see them).
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
                let level = *event.metadata().level();
                if event.metadata().target() == "hogwatch"
                    && (level == tracing::Level::WARN || level == tracing::Level::ERROR)
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
    let runtime = current_thread();
    // A first stall loads the debug information and names `crunch_numbers`' frames, then is
    // forgotten: the stall below is named within the naming budget, so its events must carry
    // the stack and the culprit, in any build.
    black_box(runtime.block_on(detector.watch("warm-up", async {
        common::crunch_numbers(Duration::from_millis(300))
    })));
    common::named_entry(&detector, "warm-up");
    detector.report_and_reset();
    stalls.0.lock().unwrap().clear();
    let waiting = common::CpuWaitSince::here();

    let started = runtime.block_on(detector.watch("crunch", async {
        let started = Instant::now();
        black_box(common::crunch_numbers(Duration::from_millis(300)));
        started
    }));

    let events = stalls.events();
    assert!(
        !events.is_empty(),
        "a stall was reported: {:?}",
        detector.watchdog_stats()
    );
    stalls.assert_reported_promptly("crunch", started);
    let event = &events[0];
    assert_eq!(&*event.label, "crunch");
    assert_eq!(event.threshold, Duration::from_millis(50));
    assert_eq!(
        event.thread.as_deref(),
        Some(&*thread_name()),
        "the spinning thread is named"
    );
    // Reported at 50, 100 and 200 ms: the names are cached, so at least one event (under load
    // the naming thread may miss the 20 ms budget once or twice) has them.
    let named = events
        .iter()
        .find(|event| !event.stack.is_empty())
        .unwrap_or_else(|| panic!("no event with a stack: {events:#?}"));
    assert!(
        named
            .stack
            .iter()
            .any(|frame| frame.contains("crunch_numbers")),
        "{:#?}",
        named.stack
    );
    let culprit = named.culprit.as_deref().unwrap_or_default();
    assert!(culprit.ends_with("crunch_numbers"), "culprit {culprit:?}");
    assert!(
        !named.stack[0].contains("signal"),
        "the handler's frames are cut off: {:#?}",
        named.stack
    );

    let entry = common::named_entry(&detector, "crunch");
    assert_eq!(entry.stalls, 1, "one stall, however many reports");
    assert!(entry.top_culprits[0].culprit.ends_with("crunch_numbers"));
    assert!(entry.top_stacks[0].stack.contains("crunch_numbers"));
    let innermost = entry.top_stacks[0].stack.rsplit(';').next().unwrap();
    assert!(
        !innermost.contains("signal"),
        "the handler's frames are cut off: {}",
        entry.top_stacks[0].stack
    );
    let report = detector.report();
    let watchdog = report.watchdog.clone().unwrap();
    assert_eq!(watchdog.stack_mode, "unwind");
    assert!(watchdog.captures_completed >= 1, "{watchdog:?}");
    common::assert_capture_failures(&watchdog, waiting.waited(), Duration::from_millis(50) / 4);

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
/// The 2x bound of the issue is held by `tests/watchdog_first_stall.rs`, alone in its binary;
/// here other tests spin beside this one on two cores, so the bound is the suite's 3x.
fn right_after_build_a_spin_is_counted_reported_within_three_thresholds_and_named() {
    let threshold = Duration::from_millis(50);
    let seen: Arc<Mutex<Vec<(Instant, HogEvent)>>> = Arc::default();
    let sink = seen.clone();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(1))
        .on_hog(move |event: &HogEvent| {
            if event.kind == HogKind::Stall {
                sink.lock().unwrap().push((Instant::now(), event.clone()));
            }
        })
        .watchdog(threshold)
        .build()
        .unwrap();
    let waiting = common::CpuWaitSince::here();
    let started = current_thread().block_on(detector.watch("fresh", async {
        let started = Instant::now();
        black_box(common::crunch_numbers(Duration::from_millis(300)));
        started
    }));
    assert_eq!(detector.report().entry("fresh").unwrap().stalls, 1);
    let events = seen.lock().unwrap().clone();
    let (at, event) = events
        .first()
        .expect("the stall was reported while it blocked");
    assert_eq!(&*event.label, "fresh");
    let latency = at.duration_since(started);
    assert!(
        latency <= 3 * threshold,
        "reported {latency:?} after the poll started (threshold {threshold:?})"
    );
    let entry = common::named_entry(&detector, "fresh");
    assert!(
        entry.top_stacks[0].stack.contains("crunch_numbers"),
        "{:?}",
        entry.top_stacks
    );
    let stats = detector.watchdog_stats().unwrap();
    common::assert_capture_failures(&stats, waiting.waited(), threshold / 4);
}

/// A server that answers each of `connections` connections with `answer` after `delay`.
fn slow_server(
    connections: usize,
    delay: Duration,
    answer: &'static [u8],
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            std::thread::sleep(delay);
            std::io::Write::write_all(&mut stream, answer).unwrap();
        }
    });
    (address, server)
}

#[test]
fn a_blocking_read_with_a_timeout_is_never_interrupted() {
    // A read on a socket with `SO_RCVTIMEO` is never restarted after a signal handler, whatever
    // `SA_RESTART` says: a signal would make it fail with `Interrupted`.
    let (address, server) = slow_server(3, Duration::from_secs(1), b"the answer");
    let stalls = Stalls::default();
    let detector = stalls
        .builder()
        .watchdog(Duration::from_millis(50))
        .build()
        .unwrap();
    let runtime = current_thread();
    let waiting = common::CpuWaitSince::here();
    for round in 0..3 {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let label = format!("read-{round}");
        let (started, read) = runtime.block_on(detector.watch(&label, async move {
            let started = Instant::now();
            let mut answer = [0u8; 64];
            let read = std::io::Read::read(&mut stream, &mut answer).map(|n| answer[..n].to_vec());
            (started, read)
        }));
        match read {
            Ok(answer) => assert_eq!(answer, b"the answer", "round {round}"),
            Err(error) => panic!("round {round}: the read failed: {error:?}"),
        }
        // A thread waiting in a system call is reported as promptly as a spinning one.
        stalls.assert_reported_promptly(&label, started);
    }
    server.join().unwrap();
    let report = detector.report();
    for round in 0..3 {
        let entry = report.entry(&format!("read-{round}")).unwrap();
        assert_eq!(entry.stalls, 1, "each wait was seen as a stall");
    }
    let stats = detector.watchdog_stats().unwrap();
    common::assert_capture_failures(&stats, waiting.waited(), Duration::from_millis(50) / 4);
}

#[test]
fn a_panicking_on_hog_is_caught_logged_once_and_the_watchdog_goes_on() {
    let log = warnings();
    let calls = Arc::new(Mutex::new(Vec::<(Instant, HogEvent)>::new()));
    let counter = calls.clone();
    let detector = Detector::builder()
        // No slow-poll event: only the watchdog calls the callback here.
        .threshold(Duration::from_secs(10))
        .on_hog(move |event: &HogEvent| {
            if event.kind == HogKind::Stall {
                counter
                    .lock()
                    .unwrap()
                    .push((Instant::now(), event.clone()));
                // A panic (without the panic hook, whose backtrace would hold the watchdog
                // thread for a second in a debug build).
                std::panic::resume_unwind(Box::new("the callback panics"));
            }
        })
        .watchdog(Duration::from_millis(50))
        .build()
        .unwrap();
    let runtime = current_thread();
    let waiting = common::CpuWaitSince::here();
    for label in ["panics-1", "panics-2"] {
        let started = runtime.block_on(detector.watch(label, async {
            let started = Instant::now();
            black_box(common::crunch_numbers(Duration::from_millis(300)));
            started
        }));
        // Each stall, the one after the panics too, is reported on time.
        let calls = calls.lock().unwrap();
        let (at, event) = calls
            .iter()
            .find(|(_, event)| &*event.label == label)
            .unwrap_or_else(|| panic!("the watchdog kept calling the callback: no {label}"));
        assert_reported_within(event, at.duration_since(started));
    }
    let report = detector.report();
    for label in ["panics-1", "panics-2"] {
        assert_eq!(report.entry(label).unwrap().stalls, 1, "{label}");
    }
    let stats = report.watchdog.clone().unwrap();
    common::assert_capture_failures(&stats, waiting.waited(), Duration::from_millis(50) / 4);
    let logged = log
        .lock()
        .unwrap()
        .iter()
        .filter(|fields| {
            fields
                .iter()
                .any(|(k, v)| k == "message" && v.contains("on_hog callback panicked"))
        })
        .count();
    assert_eq!(logged, 1, "logged once");
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
    let waiting = common::CpuWaitSince::here();
    let (started, bytes) = runtime.block_on(detector.watch("json", async move {
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..3 {
            let text = serde_json::to_string(&document).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            bytes += serde_json::to_string(&parsed).unwrap().len();
        }
        (started, bytes)
    }));
    assert!(bytes > 10_000_000, "{bytes}");
    stalls.assert_reported_promptly("json", started);
    let events = stalls.events();
    common::named_entry(&detector, "json");
    // The naming thread may still be naming the last few stacks: let it finish (they are part
    // of the sample below).
    std::thread::sleep(Duration::from_millis(200));
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
    let stats = report.watchdog.clone().unwrap();
    common::assert_capture_failures(&stats, waiting.waited(), Duration::from_millis(20) / 4);
}

#[test]
fn a_poll_stuck_on_a_mutex_is_reported_before_it_returns() {
    let lock = Arc::new(Mutex::new(0u64));
    let held = lock.lock().unwrap();
    let returned = Arc::new(AtomicBool::new(false));
    let reported_while_stuck = Arc::new(AtomicBool::new(false));
    let (flag, seen) = (returned.clone(), reported_while_stuck.clone());
    let events = Arc::new(Mutex::new(Vec::<(Instant, HogEvent)>::new()));
    let sink = events.clone();
    let detector = Detector::builder()
        .watchdog(Duration::from_millis(50))
        .on_hog(move |event: &HogEvent| {
            if event.kind == HogKind::Stall && &*event.label == "stuck" {
                let stuck = !flag.load(Ordering::SeqCst);
                // The event first: the test reads it as soon as it sees the flag.
                sink.lock().unwrap().push((Instant::now(), event.clone()));
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
            let waiting = common::CpuWaitSince::here();
            let started = current_thread().block_on(detector.watch("stuck", async move {
                let started = Instant::now();
                *lock.lock().unwrap() += 1;
                returned.store(true, Ordering::SeqCst);
                started
            }));
            (started, waiting.waited())
        })
    };
    // The poll is stuck on the lock for 400 ms.
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        reported_while_stuck.load(Ordering::SeqCst),
        "the stall was reported while the poll was stuck: {:?}",
        detector.watchdog_stats()
    );
    assert!(!returned.load(Ordering::SeqCst), "the poll is still stuck");
    drop(held);
    let (started, waited) = worker.join().unwrap();
    assert!(returned.load(Ordering::SeqCst));
    let events = events.lock().unwrap();
    assert!(!events.is_empty());
    // Waiting for the lock is waiting in a system call (`futex`): the thread is never signalled
    // there (its stack is read without interrupting it). (Its first report may come while a
    // loaded machine has not yet run the thread to the lock: runnable in user space, it is
    // signalled once then. The later reports find it in `futex`.)
    // Reports at 1x, 2x and 4x the threshold are due within the 400 ms; a loaded machine may
    // run the watchdog thread too late for the third.
    assert!(
        events.len() >= 2,
        "reports at 1x and 2x the threshold at least: {}",
        events.len()
    );
    // Timed from the poll's start on the worker thread.
    let (at, first) = &events[0];
    assert_reported_within(first, at.duration_since(started));
    let stats = detector.watchdog_stats().unwrap();
    assert!(
        stats.captures_requested <= 1,
        "signalled in futex: {stats:?}"
    );
    common::assert_capture_failures(&stats, waited, Duration::from_millis(50) / 4);
    let entry = detector.report().entry("stuck").cloned().unwrap();
    assert_eq!(entry.stalls, 1);
    assert_eq!(entry.causes[0].cause, "lock", "{:#?}", entry.causes);
}

#[test]
fn a_poll_that_never_returns_is_reported_again_at_doublings_only() {
    let stalls = Stalls::default();
    // 100 ms: a doubling is missed only if the watchdog thread waits 100 ms for a CPU.
    let threshold = Duration::from_millis(100);
    let detector = stalls.builder().watchdog(threshold).build().unwrap();
    let waiting = common::CpuWaitSince::here();
    // Blocks for 1.5 s: past 100, 200, 400 and 800 ms, and far from 1,600 ms.
    let (started, blocked) = current_thread().block_on(detector.watch("long", async {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1_500) {
            std::thread::sleep(Duration::from_millis(20));
        }
        (start, start.elapsed())
    }));
    assert!(
        blocked < Duration::from_millis(1_600),
        "blocked {blocked:?}"
    );
    stalls.assert_reported_promptly("long", started);
    let events = stalls.events();
    // Reported at each doubling of the threshold it ran past, not at each check (every
    // 25 ms): exactly 4 reports, each at (or just after) its doubling.
    let durations: Vec<_> = events.iter().map(|event| event.duration).collect();
    assert_eq!(events.len(), 4, "reports at {durations:?} in {blocked:?}");
    for (doubling, duration) in durations.iter().enumerate() {
        let due = threshold * (1 << doubling);
        assert!(
            *duration >= due && *duration < 2 * due,
            "report {doubling} at {duration:?}, due at {due:?}: {durations:?}"
        );
    }
    assert_eq!(detector.report().entry("long").unwrap().stalls, 1);
    // The thread sleeps in `clock_nanosleep` nearly all the time, where it is never signalled:
    // the samples say `sleep`.
    let entry = detector.report().entry("long").cloned().unwrap();
    assert_eq!(entry.causes[0].cause, "sleep", "{:#?}", entry.causes);
    let stats = detector.watchdog_stats().unwrap();
    common::assert_capture_failures(&stats, waiting.waited(), threshold / 4);
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
    assert_eq!(
        Detector::builder()
            .watchdog(Duration::from_micros(999))
            .build()
            .unwrap_err(),
        hogwatch::ConfigError::WatchdogTooShort {
            threshold: Duration::from_micros(999),
            minimum: Duration::from_millis(1),
        }
    );
    assert!(Detector::builder()
        .watchdog(Duration::from_millis(1))
        .build()
        .is_ok());
}

/// Calls `crunch_numbers`: the culprit once `crunch_numbers` is declared the runtime's.
#[inline(never)]
fn calls_crunch(duration: Duration) -> u64 {
    let value = common::crunch_numbers(duration);
    // Something after the call: a release build calls `crunch_numbers` rather than jumping to
    // it, so this frame stays on the stack.
    black_box(value).wrapping_add(black_box(1))
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
    let waiting = common::CpuWaitSince::here();
    let started = current_thread().block_on(detector.watch("rt-signal", async {
        let started = Instant::now();
        black_box(calls_crunch(Duration::from_millis(300)));
        started
    }));
    stalls.assert_reported_promptly("rt-signal", started);
    // A culprit is recorded (`named_entry` waits for one): the caller, not the function the
    // custom prefix makes the runtime's.
    let entry = common::named_entry(&detector, "rt-signal");
    assert!(
        entry.top_stacks[0]
            .stack
            .contains("calls_crunch;watchdog::common::crunch_numbers"),
        "{entry:?}"
    );
    assert!(
        entry.top_culprits[0].culprit.ends_with("::calls_crunch"),
        "{:?}",
        entry.top_culprits
    );
    assert!(
        entry
            .top_culprits
            .iter()
            .all(|culprit| !culprit.culprit.contains("crunch_numbers")),
        "{:?}",
        entry.top_culprits
    );
    common::assert_capture_failures(
        &detector.watchdog_stats().unwrap(),
        waiting.waited(),
        Duration::from_millis(30) / 4,
    );
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
    /// `$salt` makes each function's code its own: a release build merges functions whose code
    /// is identical, and one of them would then be named for both.
    macro_rules! spin {
        ($duration:expr, $salt:expr) => {{
            let start = Instant::now();
            let mut acc = 0u64;
            while start.elapsed() < $duration {
                for i in 0..100_000u64 {
                    acc = black_box(acc.rotate_left(7) ^ i ^ $salt);
                }
            }
            acc
        }};
    }

    /// Spins for `duration`: the function the watchdog must name.
    #[inline(never)]
    fn stuck_in_background(duration: Duration) -> u64 {
        spin!(duration, 0x5a)
    }

    /// The same, for the watched future inside a task.
    #[inline(never)]
    fn stuck_in_watched(duration: Duration) -> u64 {
        spin!(duration, 0xa5)
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

        let waiting = common::CpuWaitSince::of(Vec::new(), &["tokio-rt-worker"]);
        let started = Arc::new(OnceLock::new());
        let start = started.clone();
        let (task, line) = rt.block_on(async move {
            let line = line!() + 1;
            let task = tokio::spawn(async move {
                start.set(Instant::now()).unwrap();
                stuck_in_background(Duration::from_millis(400))
            });
            (task, line)
        });
        black_box(rt.block_on(task).unwrap());
        let waited = waiting.waited();
        let events = stalls.events();

        let label = task_label(line);
        // Reported, and timed from the task's start on its worker.
        stalls.assert_reported_promptly(&label, *started.get().expect("the task ran"));
        let panicked = task_label(panic_line);
        assert!(
            events.iter().all(|event| *event.label != panicked),
            "{events:#?}"
        );

        // The stack is only kept if the thread was still in that poll when it was captured.
        let entry = common::named_entry(&detector, &label);
        assert_eq!(entry.stalls, 1);
        assert!(entry.top_culprits[0]
            .culprit
            .ends_with("stuck_in_background"));
        // The folded stack starts at the task's poll: tokio's worker is cut off.
        let stack = &entry.top_stacks[0].stack;
        assert!(stack.contains("stuck_in_background"), "{stack}");
        assert!(!stack.contains("tokio::runtime::scheduler"), "{stack}");
        let stats = detector.watchdog_stats().unwrap();
        common::assert_capture_failures(&stats, waited, Duration::from_millis(50) / 4);
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
        let waiting = common::CpuWaitSince::of(Vec::new(), &["tokio-rt-worker"]);
        let watched = detector.clone();
        // When the task's poll and the inner poll started, on the worker.
        let (task_started, inner_started) = (Arc::new(OnceLock::new()), Arc::new(OnceLock::new()));
        let (task_start, inner_start) = (task_started.clone(), inner_started.clone());
        let (task, line) = rt.block_on(async move {
            let line = line!() + 1;
            let task = tokio::spawn(async move {
                task_start.set(Instant::now()).unwrap();
                let inner = watched.watch("inner", async move {
                    inner_start.set(Instant::now()).unwrap();
                    stuck_in_watched(Duration::from_millis(300))
                });
                inner.await;
                // The task's entry is back in the slot, with the poll's start: already a stall.
                stuck_in_background(Duration::from_millis(300))
            });
            (task, line)
        });
        black_box(rt.block_on(task).unwrap());
        let waited = waiting.waited();
        let events = stalls.events();
        let label = task_label(line);
        let first = |label: &str| {
            events
                .iter()
                .find(|event| &*event.label == label)
                .unwrap_or_else(|| panic!("a stall of {label}: {events:#?}"))
        };
        // Timed from the inner poll's start on the worker.
        stalls.assert_reported_promptly("inner", *inner_started.get().expect("the inner poll ran"));
        // The task's poll has run for the inner poll's 300 ms when its entry comes back: it is
        // reported within three thresholds of that, by the event and by the clock.
        let task_stall = first(&label).duration;
        assert!(
            task_stall >= Duration::from_millis(300) && task_stall <= Duration::from_millis(450),
            "the task first reported {task_stall:?} into its poll"
        );
        let task_started = *task_started.get().expect("the task ran");
        let (task_at, _) = stalls
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, event)| *event.label == label)
            .cloned()
            .unwrap();
        let latency = task_at.duration_since(task_started);
        assert!(
            latency <= Duration::from_millis(450),
            "on_hog got the task's stall {latency:?} after its start"
        );
        let inner = common::named_entry(&detector, "inner");
        assert!(inner.top_culprits[0].culprit.ends_with("stuck_in_watched"));
        let task = common::named_entry(&detector, &label);
        assert!(task.top_culprits[0]
            .culprit
            .ends_with("stuck_in_background"));
        assert!(
            task.top_stacks
                .iter()
                .all(|stack| !stack.stack.contains("Watched")),
            "the watched poll is never reported as the task's: {:?}",
            task.top_stacks
        );
        let stats = detector.watchdog_stats().unwrap();
        common::assert_capture_failures(&stats, waited, Duration::from_millis(50) / 4);
    }
}
