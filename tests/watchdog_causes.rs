//! The watchdog's diagnosis of a stall: what the blocked thread was doing in each sample (its
//! cause), how much of the stall was on a CPU, and the sampled profile of the label.
//!
//! Every block has a fixed length; the report is read after the poll returned.
#![cfg(all(feature = "watchdog", target_os = "linux"))]

mod common;

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use hogwatch::{Detector, Entry};

const WATCHDOG: Duration = Duration::from_millis(50);

/// One test at a time: each measures a thread's share of a CPU on a machine with two, and one
/// of them fills a CPU with spinners on purpose.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn detector(log: &common::StallLog) -> Detector {
    Detector::builder()
        .threshold(Duration::from_millis(50))
        .watchdog(WATCHDOG)
        .on_hog(log.on_hog())
        .build()
        .unwrap()
}

/// How soon a stall must first be reported, from the start of its block: twice the threshold
/// (the watchdog looks every quarter of it; one test runs at a time here).
const PROMPTLY: Duration = Duration::from_millis(2 * 50);

/// Runs `block` inside one watched poll labelled `label` on this thread and returns its entry,
/// once every stack it took is named. Checks that the stall was first reported within `bound`
/// of the block's start by the clock (and within `PROMPTLY` by the duration the event states:
/// when the watchdog saw it), and every failure kind of the captures (timeouts only as many as
/// this thread's waits for a CPU explain).
fn stalled<T>(label: &str, bound: Duration, block: impl FnOnce() -> T) -> Entry {
    let log = common::StallLog::default();
    let detector = detector(&log);
    let tid = common::this_tid();
    let waited_before = common::cpu_wait(std::slice::from_ref(&tid));
    let (started, result) = current_thread().block_on(detector.watch(label, async move {
        let started = std::time::Instant::now();
        (started, block())
    }));
    let waited = common::cpu_wait(std::slice::from_ref(&tid)) - waited_before;
    black_box(result);
    let first = log.assert_first_within(label, started, bound);
    assert!(first.duration <= PROMPTLY, "{first:#?}");
    // The samples are counted as they are taken; their stacks are named by the naming thread,
    // which may still be loading the debug information (a second or so in a debug build): wait
    // until every stack taken is named (the count stands still across 200 ms), 10 s at most.
    let named = |entry: &Entry| {
        entry
            .top_stacks
            .iter()
            .map(|stack| stack.count)
            .sum::<u64>()
    };
    let start = std::time::Instant::now();
    let mut last = None;
    let entry = loop {
        let entry = detector.report().entry(label).cloned().unwrap();
        if last == Some(named(&entry)) && !entry.top_culprits.is_empty() {
            break entry;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{label}: stacks not named within 10 s: {entry:#?}"
        );
        last = Some(named(&entry));
        std::thread::sleep(Duration::from_millis(200));
    };
    let stats = detector.watchdog_stats().unwrap();
    assert_eq!(stats.stalls, 1, "{stats:?}");
    common::assert_capture_failures(&stats, waited, WATCHDOG / 4);
    entry
}

/// Checks that `cause` is the top cause, in at least 9 of 10 samples, and that the culprit is
/// `function`.
fn assert_cause(entry: &Entry, cause: &str, function: &str) {
    assert_causes(entry, &[cause], function);
}

/// Checks that the samples whose cause is one of `causes` are at least 9 in 10, the first of
/// them the most frequent, and that the culprit is `function`.
fn assert_causes(entry: &Entry, causes: &[&str], function: &str) {
    assert_eq!(entry.stalls, 1, "{entry:#?}");
    assert!(entry.samples >= 10, "a few samples per stall: {entry:#?}");
    let mut by_cause: Vec<(&str, u64)> = Vec::new();
    for count in &entry.causes {
        match by_cause
            .iter_mut()
            .find(|(name, _)| *name == count.cause.as_str())
        {
            Some((_, sum)) => *sum += count.count,
            None => by_cause.push((count.cause.as_str(), count.count)),
        }
    }
    by_cause.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    assert!(causes.contains(&by_cause[0].0), "{:#?}", entry.causes);
    let right: u64 = by_cause
        .iter()
        .filter(|(cause, _)| causes.contains(cause))
        .map(|(_, count)| count)
        .sum();
    assert!(
        right * 10 >= entry.samples * 9,
        "{causes:?} in {right} of {} samples: {:#?}",
        entry.samples,
        entry.causes
    );
    let culprit = &entry.top_culprits[0].culprit;
    assert!(culprit.contains(function), "{:#?}", entry.top_culprits);
    assert!(
        entry.functions[0].function.contains(function),
        "{:#?}",
        entry.functions
    );
}

/// The share of the watched part of the stall spent on a CPU.
fn cpu_share(entry: &Entry) -> f64 {
    assert!(entry.stall_wall_us > 0, "{entry:#?}");
    entry.stall_cpu_us as f64 / entry.stall_wall_us as f64
}

#[inline(never)]
fn spin_a_while() -> u64 {
    common::crunch_numbers(Duration::from_millis(600))
}

#[inline(never)]
fn sleep_a_while() -> u64 {
    std::thread::sleep(Duration::from_millis(600));
    // Something after the call, so that a release build calls `sleep` rather than jumping to it
    // (a tail call leaves no frame of this function on the stack, for any unwinder).
    black_box(1)
}

#[inline(never)]
fn wait_for_the_lock(lock: &Mutex<u64>) -> u64 {
    *lock.lock().unwrap()
}

#[inline(never)]
fn read_the_answer(stream: &mut std::net::TcpStream) -> usize {
    let mut answer = [0u8; 64];
    stream.read(&mut answer).unwrap()
}

#[inline(never)]
fn wait_for_the_child(child: &mut std::process::Child) -> bool {
    child.wait().unwrap().success()
}

#[test]
fn a_spin_is_cpu_and_on_the_cpu() {
    let _serial = serial();
    let entry = stalled("spin", PROMPTLY, spin_a_while);
    let share = cpu_share(&entry);
    if share >= 0.4 {
        assert_cause(&entry, "cpu", "crunch_numbers");
    } else {
        // The spinning thread had less than 40 % of a CPU: the machine is oversubscribed (other
        // builds, other tests), and some samples truthfully say `preempted` (see
        // `the_victim_of_an_oversubscribed_cpu_is_preempted`). Its own code is all it ran.
        eprintln!(
            "a spin with {:.0} % of a CPU: {:?}",
            share * 100.0,
            entry.causes
        );
        assert_causes(&entry, &["cpu", "preempted"], "crunch_numbers");
    }
    assert!(entry.causes[0].syscall.is_none(), "{:#?}", entry.causes);
    assert!(share > 0.05, "{entry:#?}");
    let json = serde_json::to_value(&entry).unwrap();
    assert_eq!(
        json["causes"][0]["cause"],
        entry.causes[0].cause.as_str(),
        "{json:#}"
    );
    assert_eq!(
        json["causes"][0]["count"], entry.causes[0].count,
        "{json:#}"
    );
    assert!(json["causes"][0].get("syscall").is_none(), "{json:#}");
    assert!(json["functions"][0]["self_percent"].is_f64(), "{json:#}");
}

/// The current thread's kernel id.
fn tid() -> String {
    let path = std::fs::read_link("/proc/thread-self").unwrap();
    path.file_name().unwrap().to_str().unwrap().to_string()
}

/// Runs a command of util-linux on thread `tid` (`taskset`, `renice`).
fn on_thread(program: &str, args: &[&str], tid: &str) {
    let status = std::process::Command::new(program)
        .args(args)
        .arg(tid)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|error| panic!("{program} (util-linux) runs: {error}"));
    assert!(status.success(), "{program} {args:?} {tid}");
}

/// `rounds` of 10,000 multiply-adds, however long it takes to get the CPU for them (3 s at
/// most).
#[inline(never)]
fn fixed_work(rounds: u64) -> u64 {
    let start = std::time::Instant::now();
    let mut acc = 0u64;
    for _ in 0..rounds {
        for i in 0..10_000u64 {
            acc = black_box(acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    acc
}

/// How many rounds of `fixed_work` take about `cpu` on this machine and build (measured in
/// wall time, which is at least the CPU time: on a busy machine the work is smaller).
fn rounds_for(cpu: Duration) -> u64 {
    let start = std::time::Instant::now();
    black_box(fixed_work(100));
    let per_round = start.elapsed() / 100;
    (cpu.as_nanos() / per_round.as_nanos().max(1)).clamp(1, 1_000_000) as u64
}

#[test]
fn the_victim_of_an_oversubscribed_cpu_is_preempted() {
    let _serial = serial();
    // Two spinners at normal priority and the watched one at the lowest (nice 19), all three on
    // CPU 0: the watched thread gets about 1 % of it, and spends its stall in the run queue.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (pinned, on_cpu_0) = std::sync::mpsc::channel();
    let competitors: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let pinned = pinned.clone();
            std::thread::spawn(move || {
                on_thread("taskset", &["-pc", "0"], &tid());
                pinned.send(()).unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    black_box(common::crunch_numbers(Duration::from_millis(1)));
                }
            })
        })
        .collect();
    // Both spinners on CPU 0 before the watched thread starts: while one was still being
    // pinned, the watched thread had CPU 0 to itself and its stall came out too short to
    // sample (430 ms, 2 samples, the first of which always says `cpu`).
    for _ in 0..2 {
        on_cpu_0.recv().unwrap();
    }
    // 20 ms of CPU: at about 1 % of a CPU, a stall of a second or more.
    let rounds = rounds_for(Duration::from_millis(20));
    // The watchdog, on the other CPU, sees the stall on time; its report waits for the
    // signalled victim's stack, up to the report's 250 ms capture timeout (src/watchdog/mod.rs):
    // a thread at nice 19 on an oversubscribed CPU may not run for that long.
    let bound = PROMPTLY + Duration::from_millis(250);
    let entry = stalled("victim", bound, || {
        on_thread("taskset", &["-pc", "0"], &tid());
        on_thread("renice", &["-n", "19", "-p"], &tid());
        fixed_work(rounds)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for competitor in competitors {
        competitor.join().unwrap();
    }
    // The first sample has no earlier reading to compare with: it says `cpu`.
    let preempted: u64 = entry
        .causes
        .iter()
        .filter(|cause| cause.cause == "preempted")
        .map(|cause| cause.count)
        .sum();
    assert_eq!(entry.causes[0].cause, "preempted", "{entry:#?}");
    assert!(preempted * 10 >= (entry.samples - 1) * 9, "{entry:#?}");
    assert!(cpu_share(&entry) < 0.2, "{entry:#?}");
}

#[test]
fn a_sleep_is_sleep_and_off_the_cpu() {
    let _serial = serial();
    let entry = stalled("sleep", PROMPTLY, sleep_a_while);
    assert_cause(&entry, "sleep", "sleep_a_while");
    let syscall = entry.causes[0].syscall.as_deref();
    assert!(
        matches!(syscall, Some("clock_nanosleep" | "nanosleep")),
        "{syscall:?}"
    );
    assert!(cpu_share(&entry) < 0.1, "{entry:#?}");
}

#[test]
fn a_std_mutex_held_elsewhere_is_lock() {
    let _serial = serial();
    let lock = Arc::new(Mutex::new(7u64));
    let barrier = Arc::new(Barrier::new(2));
    let holder = {
        let (lock, barrier) = (lock.clone(), barrier.clone());
        std::thread::spawn(move || {
            let guard = lock.lock().unwrap();
            barrier.wait();
            std::thread::sleep(Duration::from_millis(600));
            drop(guard);
        })
    };
    barrier.wait();
    let entry = stalled("lock", PROMPTLY, || wait_for_the_lock(&lock));
    holder.join().unwrap();
    assert_cause(&entry, "lock", "wait_for_the_lock");
    assert_eq!(entry.causes[0].syscall.as_deref(), Some("futex"));
    assert!(cpu_share(&entry) < 0.1, "{entry:#?}");
}

#[test]
fn a_socket_read_waiting_for_a_slow_server_is_io() {
    let _serial = serial();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        stream.write_all(b"the answer").unwrap();
    });
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let entry = stalled("io", PROMPTLY, || read_the_answer(&mut stream));
    server.join().unwrap();
    assert_cause(&entry, "io", "read_the_answer");
    assert!(
        matches!(
            entry.causes[0].syscall.as_deref(),
            Some("read" | "recvfrom")
        ),
        "{:#?}",
        entry.causes
    );
    assert!(cpu_share(&entry) < 0.1, "{entry:#?}");
}

#[test]
fn waiting_for_a_child_process_is_wait() {
    let _serial = serial();
    let mut child = std::process::Command::new("sleep")
        .arg("0.6")
        .spawn()
        .unwrap();
    let entry = stalled("wait", PROMPTLY, || wait_for_the_child(&mut child));
    assert_cause(&entry, "wait", "wait_for_the_child");
    assert!(cpu_share(&entry) < 0.1, "{entry:#?}");
}

#[test]
fn a_two_second_spin_gives_tens_of_samples_and_a_profile_led_by_the_spinning_function() {
    let _serial = serial();
    let entry = stalled("profile", PROMPTLY, || {
        common::crunch_numbers(Duration::from_secs(2))
    });
    assert!(entry.samples >= 10, "{entry:#?}");
    let top = &entry.functions[0];
    assert!(
        top.function.contains("crunch_numbers"),
        "{:#?}",
        entry.functions
    );
    assert!(
        top.self_samples * 2 >= entry.samples,
        "{:#?}",
        entry.functions
    );
    assert!(top.total_percent >= top.self_percent && top.total_percent <= 100.0);
    // The stacks (and so the flame graph) are weighted by samples.
    let stacked: u64 = entry.top_stacks.iter().map(|stack| stack.count).sum();
    assert!(stacked >= 10, "{:#?}", entry.top_stacks);
}

#[test]
fn the_async_versions_have_no_slow_poll_and_no_stall() {
    let _serial = serial();
    let log = common::StallLog::default();
    let detector = detector(&log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sleep = detector.watch(
            "async sleep",
            tokio::time::sleep(Duration::from_millis(600)),
        );
        let lock = Arc::new(tokio::sync::Mutex::new(0u64));
        let held = lock.clone().lock_owned().await;
        let locked = detector.watch("async lock", {
            let lock = lock.clone();
            async move { *lock.lock().await }
        });
        let release = async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            drop(held);
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            tokio::io::AsyncWriteExt::write_all(&mut stream, b"the answer")
                .await
                .unwrap();
        };
        let read = detector.watch("async io", async move {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let mut answer = [0u8; 64];
            tokio::io::AsyncReadExt::read(&mut stream, &mut answer)
                .await
                .unwrap()
        });
        let blocking = detector.watch("spawn_blocking", async {
            tokio::task::spawn_blocking(|| common::crunch_numbers(Duration::from_millis(600)))
                .await
                .unwrap()
        });
        let (_, value, _, _, n, spun) =
            tokio::join!(sleep, locked, release, server, read, blocking);
        assert_eq!((value, n), (0, 10));
        black_box(spun);
    });
    let report = detector.report();
    for label in ["async sleep", "async lock", "async io", "spawn_blocking"] {
        let entry = report.entry(label).unwrap();
        assert_eq!(entry.slow_polls, 0, "{entry:#?}");
        assert_eq!(entry.stalls, 0, "{entry:#?}");
        assert_eq!(entry.samples, 0, "{entry:#?}");
    }
    assert!(log.events().is_empty(), "{:#?}", log.events());
    // The control: on the same runtime and detector, the blocking sleep is a slow poll and a
    // stall, reported on time.
    let started = runtime.block_on(detector.watch("blocking sleep", async {
        let started = std::time::Instant::now();
        black_box(sleep_a_while());
        started
    }));
    log.assert_first_within("blocking sleep", started, PROMPTLY);
    let entry = detector.report().entry("blocking sleep").cloned().unwrap();
    assert_eq!((entry.slow_polls, entry.stalls), (1, 1), "{entry:#?}");
    common::assert_no_failed_captures(&detector.watchdog_stats().unwrap());
}

/// The threads of this process whose name (`comm`, cut to 15 bytes) is `name`, with their CPU
/// time in nanoseconds.
fn threads_named(name: &str) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let schedstat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            let cpu_ns = schedstat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse().ok())
                .unwrap_or(0);
            found.push((task.file_name().to_string_lossy().into_owned(), cpu_ns));
        }
    }
    found
}

/// The CPU time of the one thread named `name` that is not in `before`.
fn new_thread_cpu_ns(name: &str, before: &[(String, u64)]) -> u64 {
    let new: Vec<(String, u64)> = threads_named(name)
        .into_iter()
        .filter(|(tid, _)| before.iter().all(|(old, _)| old != tid))
        .collect();
    assert_eq!(new.len(), 1, "{name}: {new:?}");
    new[0].1
}

/// What sampling costs the watchdog's threads: their CPU time over a 2 s stall, per sample
/// (including the checks of the slots in between, and the naming of each stack), for a thread
/// spinning (signalled) and for one sleeping (its stack scanned). Printed for `BENCHMARKS.md`
/// (`cargo test --release --test watchdog_causes sampling -- --nocapture`); the bound only
/// catches a watchdog gone wrong.
#[test]
fn sampling_costs_the_watchdog_threads_little_cpu_per_sample() {
    let _serial = serial();
    for (kind, spin) in [("cpu", true), ("sleep", false)] {
        let (watchdogs, namers) = (
            threads_named("hogwatch-watchd"),
            threads_named("hogwatch-symbol"),
        );
        let log = common::StallLog::default();
        let detector = detector(&log);
        // Let the naming thread load the debug information first: that is paid once per
        // process.
        std::thread::sleep(Duration::from_millis(1_500));
        let watchdog_before = new_thread_cpu_ns("hogwatch-watchd", &watchdogs);
        let namer_before = new_thread_cpu_ns("hogwatch-symbol", &namers);
        let waited_before = common::cpu_wait(&[common::this_tid()]);
        let (started, result) = current_thread().block_on(detector.watch("cost", async move {
            let started = std::time::Instant::now();
            let result = if spin {
                common::crunch_numbers(Duration::from_secs(2))
            } else {
                std::thread::sleep(Duration::from_secs(2));
                0
            };
            (started, result)
        }));
        let waited = common::cpu_wait(&[common::this_tid()]) - waited_before;
        black_box(result);
        log.assert_first_within("cost", started, PROMPTLY);
        std::thread::sleep(Duration::from_millis(500));
        let watchdog_ns = new_thread_cpu_ns("hogwatch-watchd", &watchdogs) - watchdog_before;
        let namer_ns = new_thread_cpu_ns("hogwatch-symbol", &namers) - namer_before;
        let stats = detector.watchdog_stats().unwrap();
        let samples = stats.samples.max(1);
        println!(
            "{kind}: {} samples over a 2 s stall ({} skipped, {} signals): watchdog thread \
             {:.1} µs of CPU per sample, naming thread {:.1} µs per sample",
            stats.samples,
            stats.samples_skipped,
            stats.captures_requested,
            watchdog_ns as f64 / 1e3 / samples as f64,
            namer_ns as f64 / 1e3 / samples as f64,
        );
        assert!(stats.samples >= 10, "{stats:?}");
        if spin {
            assert!(stats.captures_requested > 0, "{stats:?}");
        } else {
            // A thread in its sleep is never signalled: only a sample taken before it got
            // there, running its own code (on a loaded machine it may wait for a CPU on the
            // way, once beside two CPU hogs), and such a sample's cause says so.
            let entry = detector.report().entry("cost").cloned().unwrap();
            let running: u64 = entry
                .causes
                .iter()
                .filter(|cause| cause.cause == "cpu" || cause.cause == "preempted")
                .map(|cause| cause.count)
                .sum();
            assert!(
                stats.captures_requested <= running,
                "{stats:?} {:?}",
                entry.causes
            );
        }
        common::assert_capture_failures(&stats, waited, WATCHDOG / 4);
        assert!(
            watchdog_ns / samples < 2_000_000,
            "{watchdog_ns} ns for {samples} samples"
        );
        drop(detector);
    }
}
