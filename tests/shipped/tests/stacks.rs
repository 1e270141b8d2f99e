//! The watchdog's answer in the builds users ship: which function blocks, with the exact chain
//! of callers and no frame of a call that had returned before the block. `.ci/run` runs this
//! file in release with `debug = false`, `debug = "line-tables-only"`, fat LTO and stripped.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hogwatch::{Detector, HogEvent, HogKind};

/// Whether this binary was stripped of its symbol table (profile `stripped`): its functions
/// then have no names, and the watchdog must say so rather than name them wrongly.
fn stripped() -> bool {
    std::env::var("HOGWATCH_SHIPPED_STRIPPED").is_ok_and(|v| v == "1")
}

/// A deep chain of calls that returns before the block: its return addresses stay behind on the
/// stack, where the block's frames then lie. None of it may show in the stall's stack.
#[inline(never)]
fn planted_returned_helper(depth: u32) -> u64 {
    let mut scratch = [0u64; 16];
    scratch[depth as usize % 16] = u64::from(depth);
    let below = if depth == 0 {
        0
    } else {
        planted_returned_helper(depth - 1)
    };
    black_box(black_box(scratch).iter().sum::<u64>() + below)
}

#[inline(never)]
fn sleeping_blocker(time: Duration) {
    std::thread::sleep(time);
    // Something after the call, so that it is not a tail call (which would leave no frame).
    black_box(());
}

#[inline(never)]
fn sleeping_caller(time: Duration) {
    black_box(planted_returned_helper(40));
    sleeping_blocker(time);
    black_box(());
}

/// Sleeps as its last act: a release build makes that a tail call (`jmp` to
/// `std::thread::sleep`), so this function leaves no frame of its own.
#[inline(never)]
fn tail_calling_blocker(time: Duration) {
    std::thread::sleep(time)
}

#[inline(never)]
fn tail_caller(time: Duration) {
    black_box(planted_returned_helper(40));
    tail_calling_blocker(time);
    black_box(());
}

#[inline(never)]
fn spinning_blocker(time: Duration) -> u64 {
    let start = Instant::now();
    let mut acc = 0u64;
    while start.elapsed() < time {
        for i in 0..1000u64 {
            acc = black_box(acc.wrapping_mul(31).wrapping_add(i));
        }
    }
    acc
}

#[inline(never)]
fn spinning_caller(time: Duration) -> u64 {
    black_box(planted_returned_helper(40));
    let acc = spinning_blocker(time);
    black_box(acc + 1)
}

fn detector(events: Arc<Mutex<Vec<HogEvent>>>) -> Detector {
    Detector::builder()
        .threshold(Duration::from_millis(1))
        .watchdog(Duration::from_millis(100))
        .on_hog(move |event: &HogEvent| {
            if event.kind == HogKind::Stall {
                events.lock().unwrap().push(event.clone());
            }
        })
        .build()
        .unwrap()
}

/// `name` without its generic arguments (`Vec<u8>::push` is `Vec::push`).
fn without_generics(name: &str) -> String {
    let mut depth = 0usize;
    let mut previous = ' ';
    name.chars()
        .filter(|&c| {
            let keep = match c {
                '<' => {
                    depth += 1;
                    false
                }
                // The `>` of a function type's `->` closes nothing.
                '>' if previous == '-' => false,
                '>' => {
                    depth = depth.saturating_sub(1);
                    false
                }
                _ => depth == 0,
            };
            previous = c;
            keep
        })
        .collect()
}

/// The frames of `folded` (root first), and where each of `names` is in it, in that order.
fn assert_chain(folded: &str, names: &[&str]) {
    let frames: Vec<&str> = folded.split(';').collect();
    let mut at = 0;
    for name in names {
        match frames[at..].iter().position(|frame| frame.contains(name)) {
            Some(found) => at += found + 1,
            None => panic!(
                "{name} missing (or out of order) in the stack:\n{}",
                frames.join("\n")
            ),
        }
    }
    for frame in &frames {
        assert!(
            !frame.contains("planted_returned_helper"),
            "a returned call's frame:\n{}",
            frames.join("\n")
        );
        assert!(
            !frame.contains("(uncertain)"),
            "an uncertain frame:\n{}",
            frames.join("\n")
        );
    }
}

/// The capture failures that are bugs whenever seen, in any build: overlapping captures
/// (`busy`), and `displaced` or `unsent` ones, which need another handler on the watchdog's
/// signal or a thread gone before its signal (none here). Timeouts depend on how busy the
/// machine is; the main suite (`tests/common`) weighs them against the threads' waits for a CPU.
fn assert_no_capture_bugs(detector: &Detector) {
    let stats = detector.watchdog_stats().expect("a watchdog");
    assert_eq!(
        (
            stats.captures_busy,
            stats.captures_displaced,
            stats.captures_unsent
        ),
        (0, 0, 0),
        "busy, displaced and unsent captures: {stats:?}"
    );
}

/// Runs `block` inside a poll watched as `label` on a current-thread runtime, then takes a
/// report at once: the label's entry (one stall), with its top culprit and top stack.
fn stall_of<T>(label: &str, block: impl FnOnce() -> T) -> (hogwatch::Entry, String, String) {
    let detector = detector(Arc::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(detector.watch(label, async { black_box(block()) }));
    let report = detector.report();
    assert_no_capture_bugs(&detector);
    let entry = report.entry(label).expect("an entry").clone();
    assert_eq!(entry.stalls, 1, "{entry:#?}");
    let first = |what: Option<String>, name: &str| {
        what.unwrap_or_else(|| panic!("a {name} in the report taken right after: {entry:#?}"))
    };
    let culprit = first(
        entry.top_culprits.first().map(|c| c.culprit.clone()),
        "culprit",
    );
    let stack = first(entry.top_stacks.first().map(|s| s.stack.clone()), "stack");
    for function in &entry.functions {
        assert!(function.total_percent <= 100.0, "{function:?}");
    }
    (entry, culprit, stack)
}

/// A wrapped poll blocks 600 ms in `std::thread::sleep` (the thread waits in a system call: its
/// stack is read from `/proc` and unwound from there), then a report is taken at once.
#[test]
fn a_sleep_stall_names_the_exact_chain_in_a_report_taken_right_after_it() {
    let (_, culprit, stack) = stall_of("sleep", || sleeping_caller(Duration::from_millis(600)));
    if stripped() {
        assert!(culprit.starts_with("<stripped>"), "{culprit}");
        assert!(!stack.contains("planted"), "{stack}");
        return;
    }
    assert!(
        culprit.contains("sleeping_blocker"),
        "culprit {culprit}, stack {stack}"
    );
    assert_chain(&stack, &["sleeping_caller", "sleeping_blocker"]);
    // Then `std::thread::sleep` (`std::thread::functions::sleep` in recent versions), or, where
    // fat LTO inlined it into `sleeping_blocker`, the C library's sleep right away.
    let innermost = stack.rsplit(';').next().unwrap_or_default();
    assert!(innermost.contains("sleep"), "{stack}");
}

/// A blocking function that tail-calls `std::thread::sleep` leaves no frame: its caller is still
/// found, exactly (not marked uncertain), and named the culprit (the innermost app frame).
#[test]
fn a_sleep_behind_a_tail_call_keeps_its_caller() {
    let (_, culprit, stack) = stall_of("tail", || tail_caller(Duration::from_millis(600)));
    if stripped() {
        assert!(!stack.contains("planted"), "{stack}");
        return;
    }
    // The blocking function itself shows only where the build kept its frame (no tail call).
    assert!(
        culprit.contains("tail_calling_blocker") || culprit.contains("tail_caller"),
        "culprit {culprit}, stack {stack}"
    );
    assert_chain(&stack, &["tail_caller"]);
}

/// A wrapped poll spins 600 ms on the CPU (the thread is signalled and unwound in the handler).
#[test]
fn a_cpu_stall_names_the_exact_chain_in_a_report_taken_right_after_it() {
    let (_, culprit, stack) = stall_of("spin", || spinning_caller(Duration::from_millis(600)));
    if stripped() {
        assert!(culprit.starts_with("<stripped>"), "{culprit}");
        assert!(!stack.contains("planted"), "{stack}");
        return;
    }
    assert!(
        culprit.contains("spinning_blocker"),
        "culprit {culprit}, stack {stack}"
    );
    assert_chain(&stack, &["spinning_caller", "spinning_blocker"]);
}

/// A document of about 8 MB: many objects with strings and numbers.
fn big_document() -> serde_json::Value {
    let item = |i: usize| {
        serde_json::json!({
            "id": i,
            "name": format!("item number {i} with a name long enough to escape"),
            "tags": ["alpha", "beta", "gamma", "delta"],
            "score": i as f64 * 1.5,
        })
    };
    serde_json::Value::Array((0..60_000).map(item).collect())
}

#[inline(never)]
fn render_json_handler(document: &serde_json::Value, until: Instant) -> usize {
    let mut bytes = 0;
    while Instant::now() < until {
        bytes += black_box(serde_json::to_vec(document).unwrap()).len();
    }
    black_box(bytes)
}

/// A wrapped poll serialises a large document again and again for 600 ms: the culprit is
/// serde_json's code (not a memory copy or an allocator call it makes), called from the
/// handler.
#[test]
fn a_json_stall_is_blamed_on_serde_json_called_from_the_handler() {
    let document = big_document();
    let until = Instant::now() + Duration::from_millis(600);
    let (entry, culprit, _) = stall_of("json", || render_json_handler(&document, until));
    if stripped() {
        assert!(!culprit.contains("::"), "{culprit}");
        return;
    }
    let culprits: Vec<String> = entry
        .top_culprits
        .iter()
        .map(|c| format!("{} ({}) from {:?}", c.culprit, c.count, c.called_from))
        .collect();
    eprintln!("json culprits: {culprits:#?}");
    // serde_json's code or a crate it calls (itoa, its float formatter), by full path, never a
    // standard library primitive (a copy, a `Vec` growth, an allocator call) nor a short name.
    for culprit in &entry.top_culprits {
        let name = culprit.culprit.trim_start_matches('<');
        let path: String = without_generics(name);
        assert!(path.contains("::"), "a short name: {culprits:#?}");
        for primitive in ["core::", "alloc::", "std::", "f64 as core", "u8 as core"] {
            assert!(!name.starts_with(primitive), "{culprits:#?}");
        }
        if !name.starts_with("stacks::") {
            let caller = culprit.called_from.as_deref().unwrap_or_default();
            assert!(caller.contains("render_json_handler"), "{culprits:#?}");
        }
    }
}

async fn background_task_that_stalls_twice() {
    tokio::time::sleep(Duration::from_millis(100)).await;
    black_box(spinning_blocker(Duration::from_millis(400)));
    // The second stall comes seconds after the start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    black_box(spinning_blocker(Duration::from_millis(400)));
}

/// An unwrapped task of a runtime watched with `watch_runtime` stalls twice, the second time
/// seconds after the start: both stalls are reported, named after the task.
#[test]
fn an_unwrapped_task_stalling_twice_is_reported_twice() {
    let events: Arc<Mutex<Vec<HogEvent>>> = Arc::default();
    let detector = detector(Arc::clone(&events));
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    detector.watch_runtime(&mut builder).unwrap();
    let runtime = builder.build().unwrap();
    runtime.block_on(async {
        tokio::spawn(background_task_that_stalls_twice())
            .await
            .unwrap();
    });
    assert_no_capture_bugs(&detector);
    let events = events.lock().unwrap();
    let labels: Vec<&str> = events.iter().map(|event| &*event.label).collect();
    let ours = labels
        .iter()
        .filter(|label| label.contains("background_task_that_stalls_twice"))
        .count();
    if stripped() {
        // Without a symbol table the task harness cannot be found by name: the runtime
        // watchdog then reports no task stall (documented), and never one wrongly named.
        assert!(
            labels.iter().all(|label| !label.contains("::")),
            "{labels:?}"
        );
        return;
    }
    assert_eq!(ours, 2, "{labels:?}");
}

/// The same under `#[tokio::test]`, either flavor, watched with `watch_current_runtime`: both
/// stalls are reported, and the idle workers before them were never signalled (their parks are
/// told from their stacks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_current_runtime_reports_both_stalls_and_leaves_parked_workers_alone() {
    both_stalls_of_the_current_runtime().await;
}

#[tokio::test]
async fn watch_current_runtime_on_a_current_thread_runtime() {
    both_stalls_of_the_current_runtime().await;
}

async fn both_stalls_of_the_current_runtime() {
    let events: Arc<Mutex<Vec<HogEvent>>> = Arc::default();
    let detector = detector(Arc::clone(&events));
    detector.watch_current_runtime().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = detector.watchdog_stats().unwrap();
    tokio::spawn(background_task_that_stalls_twice())
        .await
        .unwrap();
    assert_no_capture_bugs(&detector);
    let labels: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|event| event.label.to_string())
        .collect();
    if stripped() {
        assert!(
            labels.iter().all(|label| !label.contains("::")),
            "{labels:?}"
        );
        return;
    }
    assert_eq!(idle.captures_requested, 0, "{idle:?}");
    let ours = labels
        .iter()
        .filter(|label| label.contains("background_task_that_stalls_twice"))
        .count();
    assert_eq!(ours, 2, "{labels:?}");
}

/// The test guard in the builds users ship: a spawned task's 20 ms sleep and a 50 ms spin of the
/// test body each fail the test, the sleeping and spinning functions named; a stripped build has
/// no names to tell a task's poll by, and finds nothing (documented), never something wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_guard_names_a_sleeping_task_and_a_spinning_body() {
    let guard = hogwatch::testing::forbid_blocking();
    tokio::spawn(async { sleeping_caller(Duration::from_millis(20)) })
        .await
        .unwrap();
    let sleeping = guard.finish();
    let guard = hogwatch::testing::forbid_blocking();
    black_box(spinning_caller(Duration::from_millis(50)));
    let spinning = guard.finish();
    if stripped() {
        assert_eq!((sleeping, spinning), (Ok(()), Ok(())));
        return;
    }
    let sleeping = sleeping.unwrap_err();
    assert!(sleeping.contains("cause: sleep"), "{sleeping}");
    assert!(sleeping.contains("in: stacks::sleeping_blocker"), "{sleeping}");
    let spinning = spinning.unwrap_err();
    assert!(spinning.contains("--> block_on stacks::"), "{spinning}");
    assert!(spinning.contains("cause: cpu"), "{spinning}");
    assert!(spinning.contains("in: stacks::spinning_blocker"), "{spinning}");
}

/// A watched poll blocking inside `block_in_place` is no stall and no slow poll (the watchdog
/// finds tokio's function by address); the same sleep outside it is both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_in_place_is_never_a_hog() {
    let events: Arc<Mutex<Vec<HogEvent>>> = Arc::default();
    let detector = detector(Arc::clone(&events));
    detector
        .watch("offloaded", async {
            tokio::task::block_in_place(|| sleeping_blocker(Duration::from_millis(300)))
        })
        .await;
    detector
        .watch("blocking", async { sleeping_blocker(Duration::from_millis(300)) })
        .await;
    let report = detector.report();
    let text = report.to_text();
    let offloaded = report.entry("offloaded").expect("polled");
    let blocking = report.entry("blocking").expect("polled");
    assert_eq!((blocking.slow_polls, blocking.stalls), (1, 1), "{text}");
    // No symbol table, or (fat LTO without debug information) `block_in_place` inlined into
    // its caller: it cannot be found, and the poll counts (documented).
    let unseen = stripped() || std::env::var("HOGWATCH_SHIPPED_PROFILE").as_deref() == Ok("fat");
    let expected = if unseen { (1, 1) } else { (0, 0) };
    assert_eq!((offloaded.slow_polls, offloaded.stalls), expected, "{text}");
}
