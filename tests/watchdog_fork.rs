//! A `fork()` child of a process with a watchdog can watch polls, report and drop its detector
//! without hanging or deadlocking; it can also start a watchdog of its own. (Its own test binary:
//! it forks the process.)
#![cfg(all(feature = "watchdog", target_os = "linux"))]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hogwatch::Detector;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// What the child does; returns normally only if every check holds.
fn child(detector: Detector) {
    // The inherited detector: its watchdog thread stayed in the parent.
    let value = current_thread().block_on(detector.watch("child", async {
        common::crunch_numbers(Duration::from_millis(300))
    }));
    std::hint::black_box(value);
    let report = detector.report();
    assert_eq!(report.entry("child").unwrap().completed, 1);
    drop(detector);

    // A detector of the child's own, with a watchdog that runs in the child: its stall is
    // reported within twice its threshold, and every capture is taken.
    let threshold = Duration::from_millis(50);
    let log = common::StallLog::default();
    let own = Detector::builder()
        .watchdog(threshold)
        .on_hog(log.on_hog())
        .build()
        .unwrap();
    let waiting = common::CpuWaitSince::here();
    let started = current_thread().block_on(own.watch("own", async {
        let started = Instant::now();
        std::hint::black_box(common::crunch_numbers(Duration::from_millis(300)));
        started
    }));
    log.assert_first_within("own", started, 2 * threshold);
    assert_eq!(own.report().entry("own").unwrap().stalls, 1);
    let stats = own.watchdog_stats().unwrap();
    assert!(stats.captures_completed > 0, "{stats:?}");
    common::assert_capture_failures(&stats, waiting.waited(), threshold / 4);
    drop(own);
}

/// Waits for `pid` up to `timeout`; kills it if it has not ended by then.
fn wait(pid: libc::pid_t, timeout: Duration) -> Result<libc::c_int, String> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid only writes the status into our local.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            return Ok(status);
        }
        assert_eq!(done, 0, "waitpid failed");
        if start.elapsed() > timeout {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!("the child did not end within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_forked_child_watches_reports_and_drops_without_hanging() {
    let threshold = Duration::from_millis(5);
    let log = common::StallLog::default();
    let detector = Detector::builder()
        .threshold(Duration::from_millis(1))
        .watchdog(threshold)
        .on_hog(log.on_hog())
        .build()
        .unwrap();
    let waiting = common::CpuWaitSince::here();
    // This thread's slot exists before the fork (the child inherits it).
    current_thread().block_on(detector.watch("parent", async {
        common::crunch_numbers(Duration::from_millis(20))
    }));
    // The parent's watchdog is busy while the process forks: another thread stalls all along
    // (30 ms polls), so the watchdog checks, captures, names and takes its locks. The future
    // holds no `Detector`: the one handle below is the last, and the child drops it.
    let stop = Arc::new(AtomicBool::new(false));
    let busy_started = Arc::new(std::sync::OnceLock::new());
    let busy = {
        let (stop, started) = (stop.clone(), busy_started.clone());
        detector.watch("busy", async move {
            started.get_or_init(Instant::now);
            while !stop.load(Ordering::Relaxed) {
                common::crunch_numbers(Duration::from_millis(30));
                tokio::task::yield_now().await;
            }
        })
    };
    let staller = std::thread::spawn(move || {
        let waiting = common::CpuWaitSince::here();
        current_thread().block_on(busy);
        waiting.waited()
    });
    let mut held = Some(detector);
    // How long each fork held the parent (while the kernel copies the process's memory map, a
    // page fault in another thread waits for it: a signal handler writing its stack too).
    let mut forks = Vec::new();
    for round in 0..5 {
        let forking = Instant::now();
        // SAFETY: the child runs only the code below and ends with `_exit`, never returning
        // into the test harness (whose other threads it does not have).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // The child's only handle of the detector: dropping it drops the watchdog handle,
            // whose thread is in the parent.
            let detector = held.take().unwrap();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || child(detector)));
            // The panic's message went to the test's captured output, which the child's exit
            // loses: written to the real stderr with one system call (no lock another thread
            // may have held at the fork).
            if let Err(payload) = &outcome {
                let message = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                let line = format!("round {round}: the child failed: {message}\n");
                // SAFETY: writes `line`'s bytes, which outlive the call, to fd 2.
                unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
            }
            // SAFETY: ends the child at once, without running the parent's atexit handlers.
            unsafe { libc::_exit(if outcome.is_ok() { 0 } else { 1 }) };
        }
        forks.push(forking.elapsed());
        let status = wait(pid, Duration::from_secs(20)).unwrap_or_else(|error| {
            panic!("round {round}: {error}");
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "round {round}: the child ended with status {status:#x}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let staller_waited = staller.join().unwrap();
    let detector = held.take().unwrap();
    assert!(detector.report().entry("busy").unwrap().stalls > 0);
    // The busy thread's first 30 ms poll was reported while it blocked: within 6 thresholds
    // (its own length) of its start. (A 5 ms threshold is checked every 1.25 ms; 2x would be a
    // 10 ms bound, less than a scheduler's slice or two on a loaded machine.)
    let started = *busy_started.get().expect("the busy poll ran");
    log.assert_first_within("busy", started, 6 * threshold);
    // A capture of the parent's threads fails only if they waited for a CPU, or for a fork, at
    // least its timeout (a quarter of the threshold; four times that for a handler that
    // started, `stuck`) meanwhile: their waits, counted in timeouts, cover them.
    let stats = detector.watchdog_stats().unwrap();
    assert!(stats.captures_completed > 0, "{stats:?}");
    let timeout = threshold / 4;
    let waited = waiting.waited() + staller_waited;
    let by_forks: u64 = forks
        .iter()
        .map(|fork| fork.as_nanos().div_ceil(timeout.as_nanos()) as u64)
        .sum();
    let allowed = (waited.as_nanos() / timeout.as_nanos()) as u64 + by_forks;
    assert_eq!(
        (
            stats.captures_busy,
            stats.captures_displaced,
            stats.captures_unsent
        ),
        (0, 0, 0),
        "{stats:?}"
    );
    assert!(
        stats.captures_timeout + 4 * stats.captures_stuck <= allowed,
        "{} timed out and {} stuck, but the threads waited {waited:?} for a CPU and the forks \
         took {forks:?} ({allowed} timeouts of {timeout:?}): {stats:?}",
        stats.captures_timeout,
        stats.captures_stuck
    );
}
