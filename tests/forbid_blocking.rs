//! `hogwatch::testing::forbid_blocking`: the test whose runtime a poll blocked fails, with a
//! message naming the task, the cause, the blocking function and its caller; a test that only
//! awaits, offloads (`spawn_blocking`, `block_in_place`) or is another test's neighbour passes.
#![cfg(target_os = "linux")]
// `serial()` holds a std mutex for a whole test, across its awaits: each test has a runtime of
// its own on its own thread, so no task of another test ever waits for it.
#![allow(clippy::await_holding_lock)]

mod common;

use std::time::Duration;

use hogwatch::testing::forbid_blocking;

/// One test at a time: each times how soon its block is seen, which another test's load on the
/// two cores of a small machine would delay (one test runs 21 runtimes at once on purpose).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[inline(never)]
fn sleep_in_refresh(duration: Duration) {
    std::thread::sleep(duration);
    // Not a tail call: this frame stays on the stack.
    std::hint::black_box(1u32);
}

/// An unwrapped background task that blocks its worker.
async fn refresh_cache() {
    sleep_in_refresh(Duration::from_millis(20));
}

#[inline(never)]
fn spin_in_checksum(duration: Duration) -> u64 {
    common::crunch_numbers(duration)
}

/// The message of a spawned task's 20 ms sleep: the task (the caller), `sleep`, and the app's
/// function that slept (the culprit: the first frame outside std and tokio).
fn assert_sleep_message(message: &str) {
    // In a release build the task's poll is inlined into tokio's harness: until the debug
    // information is loaded (names meanwhile come from the symbol table, which has no inlined
    // frames), the task is named after the function it called.
    let named = match cfg!(debug_assertions) {
        true => "--> task forbid_blocking::refresh_cache held its thread for",
        false => "--> task forbid_blocking::",
    };
    // Never `task <unknown>`: a stall whose sampling started over (another worker's busy time
    // moved) once lost the stack its first sample had read, and was reported without one.
    assert!(message.contains(named), "{message}");
    assert!(message.contains("cause: sleep"), "{message}");
    assert!(
        message.contains("in: forbid_blocking::sleep_in_refresh"),
        "{message}"
    );
    assert!(message.contains("use tokio::time::sleep"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_sleeping_20_ms_fails_its_test_multi_thread() {
    let _serial = serial();
    let guard = forbid_blocking();
    tokio::spawn(refresh_cache()).await.unwrap();
    assert_sleep_message(&guard.finish().unwrap_err());
}

#[tokio::test]
async fn a_task_sleeping_20_ms_fails_its_test_current_thread() {
    let _serial = serial();
    let guard = forbid_blocking();
    tokio::spawn(refresh_cache()).await.unwrap();
    assert_sleep_message(&guard.finish().unwrap_err());
}

/// The guard itself fails the test when it drops.
#[tokio::test]
#[should_panic(expected = "blocked this test's tokio runtime")]
async fn the_guard_panics_when_it_drops() {
    let _serial = serial();
    let _guard = forbid_blocking();
    tokio::spawn(refresh_cache()).await.unwrap();
}

/// The test body itself spinning 50 ms on the CPU, in either flavor.
async fn body_spins() -> String {
    let guard = forbid_blocking();
    std::hint::black_box(spin_in_checksum(Duration::from_millis(50)));
    let message = guard.finish().unwrap_err();
    assert!(
        message.contains("block_on forbid_blocking::"),
        "the test body is the label: {message}"
    );
    assert!(message.contains("cause: cpu"), "{message}");
    assert!(
        message.contains("in: forbid_blocking::common::crunch_numbers"),
        "{message}"
    );
    message
}

#[tokio::test]
async fn a_body_spinning_50_ms_fails_current_thread() {
    let _serial = serial();
    body_spins().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_spinning_50_ms_fails_multi_thread() {
    let _serial = serial();
    body_spins().await;
}

/// Timers, spawns, joins, a 200 ms `spawn_blocking` sleep and (multi-thread) a 200 ms
/// `block_in_place` sleep: no finding, run after run.
fn only_awaits_and_offloads(runtime: tokio::runtime::Runtime, block_in_place: bool) {
    runtime.block_on(async move {
        let guard = forbid_blocking();
        let timers: Vec<_> = (0..8)
            .map(|i| tokio::spawn(tokio::time::sleep(Duration::from_millis(i))))
            .collect();
        let offloaded = tokio::task::spawn_blocking(|| {
            std::thread::sleep(Duration::from_millis(200));
        });
        if block_in_place {
            tokio::spawn(async {
                tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(200)))
            })
            .await
            .unwrap();
        }
        for timer in timers {
            timer.await.unwrap();
        }
        offloaded.await.unwrap();
        tokio::task::yield_now().await;
        if let Err(message) = guard.finish() {
            panic!("a false finding: {message}");
        }
    });
}

#[test]
fn awaiting_and_offloading_is_never_a_finding_over_100_runs() {
    let _serial = serial();
    for _ in 0..100 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        only_awaits_and_offloads(runtime, true);
    }
}

#[test]
fn awaiting_and_offloading_is_never_a_finding_current_thread() {
    let _serial = serial();
    for _ in 0..20 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        only_awaits_and_offloads(runtime, false);
    }
}

/// 21 tests at once in one process, each on its own runtime with its own guard: the one that
/// blocks is the only one with a finding.
#[test]
fn a_finding_belongs_to_the_test_that_blocked() {
    let _serial = serial();
    let tests: Vec<_> = (0..21)
        .map(|i| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let guard = forbid_blocking();
                    if i == 7 {
                        // Far above the threshold: 21 runtimes and their watchdogs share two
                        // cores here.
                        tokio::spawn(async { sleep_in_refresh(Duration::from_millis(200)) })
                            .await
                            .unwrap();
                    } else {
                        for _ in 0..20 {
                            tokio::spawn(tokio::time::sleep(Duration::from_millis(2)))
                                .await
                                .unwrap();
                        }
                    }
                    guard.finish()
                })
            })
        })
        .collect();
    let results: Vec<Result<(), String>> =
        tests.into_iter().map(|test| test.join().unwrap()).collect();
    for (i, result) in results.iter().enumerate() {
        match i {
            7 => {
                let message = result.as_ref().unwrap_err();
                assert!(message.contains("cause: sleep"), "{message}");
                assert!(message.contains("sleep_in_refresh"), "{message}");
            }
            _ => assert!(result.is_ok(), "test {i}: {result:?}"),
        }
    }
}

/// `.allow` lets a finding through; `.threshold` raises the bound above the block.
#[tokio::test]
async fn allowed_or_under_the_threshold_is_no_finding() {
    let _serial = serial();
    let guard = forbid_blocking().allow(|finding| finding.mentions("sleep_in_refresh"));
    tokio::spawn(refresh_cache()).await.unwrap();
    assert_eq!(guard.findings(), Vec::new());
    guard.finish().unwrap();
    let guard = forbid_blocking().threshold(Duration::from_millis(200));
    tokio::spawn(refresh_cache()).await.unwrap();
    guard.finish().unwrap();
    // The control: the same block with the default threshold and nothing allowed.
    let guard = forbid_blocking();
    tokio::spawn(refresh_cache()).await.unwrap();
    assert_eq!(guard.findings().len(), 1, "{:?}", guard.findings());
    assert!(guard.finish().is_err());
}

#[test]
#[should_panic(expected = "inside a tokio runtime")]
fn outside_a_runtime_it_says_so() {
    let _serial = serial();
    let _guard = forbid_blocking();
}

/// A handler served by a real `axum::serve` on loopback, asked over TCP: its 50 ms sleep fails
/// the test (the connection task is a task of the test's runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_behind_axum_serve_fails_its_test() {
    let _serial = serial();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            sleep_in_refresh(Duration::from_millis(50));
            "done"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let guard = forbid_blocking();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let message = guard.finish().unwrap_err();
    server.abort();
    assert!(message.contains("cause: sleep"), "{message}");
    assert!(
        message.contains("in: forbid_blocking::sleep_in_refresh"),
        "{message}"
    );
}
