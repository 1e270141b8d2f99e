//! Tests of the parent module.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, OnceLock};

/// A handler of this signal that claims a request waits until this is cleared (0): a stuck
/// handler, on demand.
static HOLD_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// Whether the last handler that claimed a request ran on an alternate signal stack (it
/// must not: the unwinder needs the room of the thread's own stack).
static ON_ALT_STACK: AtomicBool = AtomicBool::new(false);

/// What the tests observe inside the handler, after it claimed a request.
pub(super) fn in_handler(signal: c_int) {
    while HOLD_SIGNAL.load(Ordering::Acquire) == signal {
        std::hint::spin_loop();
    }
    // SAFETY: an all-zero stack_t is a valid value of this plain C struct.
    let mut stack: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only reads the current one (async-signal-safe) into ours.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut stack) } == 0 {
        ON_ALT_STACK.store(stack.ss_flags & libc::SS_ONSTACK != 0, Ordering::Release);
    }
}

/// Nanoseconds since the first call, from the monotonic clock (`clock_gettime`, which is
/// async-signal-safe); 0 before a test starts timing.
pub(super) fn handler_clock() -> u64 {
    TIMING_BASE
        .get()
        .map_or(0, |base| base.elapsed().as_nanos() as u64)
}

/// Adds one handler's recording time (since `started`) to the test's figures.
pub(super) fn recorded(target: &Target, started: u64) {
    // Only the timed test's own thread: other tests capture in the same process.
    if TIMING_BASE.get().is_some() && std::ptr::eq(target, TIMED.load(Ordering::Acquire)) {
        let took = handler_clock().saturating_sub(started);
        HANDLER_NS.fetch_add(took as usize, Ordering::Relaxed);
        HANDLER_MAX_NS.fetch_max(took as usize, Ordering::Relaxed);
        HANDLER_RUNS.fetch_add(1, Ordering::Relaxed);
    }
}

static TIMING_BASE: OnceLock<Instant> = OnceLock::new();
static HANDLER_NS: AtomicUsize = AtomicUsize::new(0);
static HANDLER_MAX_NS: AtomicUsize = AtomicUsize::new(0);
static HANDLER_RUNS: AtomicUsize = AtomicUsize::new(0);
/// The target whose handler runs are timed.
static TIMED: AtomicPtr<Target> = AtomicPtr::new(std::ptr::null_mut());

/// What one sample costs the blocked thread: the handler's time recording its stack. The
/// figure is printed for `BENCHMARKS.md` (`cargo test --release --lib
/// the_handler_holds_the_thread -- --nocapture`); the bound only catches a handler gone
/// wrong (it takes tens of microseconds).
#[test]
fn the_handler_holds_the_thread_for_tens_of_microseconds() {
    let signal = libc::SIGRTMIN() + 10;
    install(signal).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (target, handle) = spinning_thread(stop.clone());
    TIMED.store(Arc::as_ptr(&target).cast_mut(), Ordering::Release);
    TIMING_BASE.get_or_init(Instant::now);
    let captures = 1_000;
    let started = Instant::now();
    for _ in 0..captures {
        capture(&target, signal, Duration::from_secs(5)).unwrap();
    }
    let round_trips = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    let runs = HANDLER_RUNS.load(Ordering::Relaxed);
    let mean_ns = HANDLER_NS.load(Ordering::Relaxed) / runs.max(1);
    let max_ns = HANDLER_MAX_NS.load(Ordering::Relaxed);
    println!(
        "handler: {runs} captures, recording the stack took {:.1} µs on average, {:.1} µs at most; \
         a capture's round trip (signal sent to stack read) {:.1} µs on average",
        mean_ns as f64 / 1e3,
        max_ns as f64 / 1e3,
        round_trips.as_secs_f64() * 1e6 / captures as f64,
    );
    assert_eq!(runs, captures);
    assert!(
        mean_ns < 50_000,
        "{mean_ns} ns on average: not tens of microseconds"
    );
}

/// Spins on a thread of its own, attached, until told to stop.
fn spinning_thread(stop: Arc<AtomicBool>) -> (Arc<Target>, std::thread::JoinHandle<()>) {
    let (send, receive) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let attached = Attached::current_thread();
        send.send(attached.target().clone()).unwrap();
        let mut acc = 0u64;
        while !stop.load(Ordering::Relaxed) {
            acc = std::hint::black_box(acc.wrapping_add(1));
        }
        drop(attached);
    });
    (receive.recv().unwrap(), handle)
}

#[test]
fn captures_the_whole_stack_or_only_the_interrupted_instruction() {
    let signal = libc::SIGRTMIN() + 6;
    install(signal).unwrap();
    assert!(
        full_unwind(),
        "glibc 2.35+ is expected on the machines we test on"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (target, handle) = spinning_thread(stop.clone());
    let timeout = Duration::from_secs(5);

    let full = capture(&target, signal, timeout).unwrap();
    assert_ne!(full.pc, 0);
    assert!(full.ips.len() > 3, "{full:?}");
    assert!(full.ips.contains(&full.pc), "{full:?}");

    // The strictly async-signal-safe fallback.
    FULL_UNWIND.store(false, Ordering::Relaxed);
    let pc_only = capture(&target, signal, timeout);
    FULL_UNWIND.store(true, Ordering::Relaxed);
    let pc_only = pc_only.unwrap();
    assert_eq!(pc_only.ips, [pc_only.pc]);

    // One capture of a thread at a time.
    target.state.store(REQUESTED, Ordering::Release);
    assert_eq!(
        capture(&target, signal, timeout).unwrap_err(),
        CaptureError::Busy
    );
    target.state.store(IDLE, Ordering::Release);

    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    assert_eq!(target.state.load(Ordering::Acquire), DEAD);
    assert_eq!(
        capture(&target, signal, timeout).unwrap_err(),
        CaptureError::Gone,
        "a thread that left is never signalled, and that is no overlapping capture"
    );
}

/// The race a stress run once hit: the handler publishes DONE and the thread exits (DONE to
/// DEAD) before the watchdog looks. The capture must return that stack, not wait forever.
///
/// The thread leaves the moment its handler has written the stack, so it nearly always wins
/// the race; but a busy machine can preempt it right after the handler, and the capture then
/// takes the stack from DONE as usual (the thread leaves once the capture is over). So rounds
/// run until 20 of them hit the race; every capture must deliver its stack, and every thread
/// that left must stay left. The capture's timeout is long: a thread that is not scheduled
/// for a while is not what this test is about.
#[test]
fn a_thread_that_exits_right_after_its_capture_still_delivers_it() {
    let signal = libc::SIGRTMIN() + 7;
    install(signal).unwrap();
    let mut raced = 0;
    for _ in 0..1_000 {
        let (send, receive) = mpsc::channel();
        let captured = Arc::new(AtomicBool::new(false));
        let leaver = {
            let captured = captured.clone();
            std::thread::spawn(move || {
                let attached = Attached::current_thread();
                let target = attached.target().clone();
                send.send(target.clone()).unwrap();
                // Leave the moment the handler has written the stack (or once the capture is
                // over, if the watchdog read it first).
                while target.state.load(Ordering::Acquire) != DONE
                    && !captured.load(Ordering::Acquire)
                {
                    std::hint::spin_loop();
                }
                drop(attached);
            })
        };
        let target: Arc<Target> = receive.recv().unwrap();
        let (done, finished) = mpsc::channel();
        let watcher = {
            let target = target.clone();
            std::thread::spawn(move || {
                let stack = capture(&target, signal, Duration::from_secs(5));
                done.send((stack, target.state.load(Ordering::Acquire)))
                    .unwrap();
            })
        };
        // Longer than the capture's own bounds (5 s to answer, 20 s for a stuck handler).
        let (stack, state) = finished
            .recv_timeout(Duration::from_secs(30))
            .expect("the capture returns although its thread has left");
        captured.store(true, Ordering::Release);
        assert_ne!(stack.unwrap().pc, 0);
        watcher.join().unwrap();
        leaver.join().unwrap();
        assert_eq!(
            target.state.load(Ordering::Acquire),
            DEAD,
            "a thread that left stays left"
        );
        if state == DEAD {
            raced += 1;
            if raced == 20 {
                return;
            }
        }
    }
    panic!("only {raced} of 1000 threads left before their capture was read");
}

/// A thread that forks right after its handler answered a capture the parent's watchdog has not
/// read yet (`DONE`, as on a loaded machine where the watchdog waits for a CPU): in the child,
/// where that watchdog does not exist, the thread is capturable again (`IDLE`).
#[test]
fn a_fork_right_after_an_answered_capture_leaves_the_childs_thread_capturable() {
    let signal = libc::SIGRTMIN() + 12;
    // Registers the fork handlers too.
    install(signal).unwrap();
    let status = std::thread::spawn(|| {
        let attached = Attached::current_thread();
        let target = attached.target().clone();
        target.state.store(DONE, Ordering::Release);
        // SAFETY: the child only reads an atomic and ends with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let idle = target.state.load(Ordering::Acquire) == IDLE;
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(if idle { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: reaps our own child into our local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        // The parent's watchdog reads its answer (here: nobody), as `capture` would.
        target.state.store(IDLE, Ordering::Release);
        drop(attached);
        status
    })
    .join()
    .unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's thread was left busy: status {status:#x}"
    );
}

#[test]
fn a_stuck_capture_gives_the_thread_back_and_handlers_run_on_the_threads_stack() {
    let signal = libc::SIGRTMIN() + 8;
    install(signal).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (target, handle) = spinning_thread(stop.clone());
    HOLD_SIGNAL.store(signal, Ordering::Release);
    let stuck = capture(&target, signal, Duration::from_millis(200));
    HOLD_SIGNAL.store(0, Ordering::Release);
    assert_eq!(stuck.unwrap_err(), CaptureError::Stuck);
    let again = capture(&target, signal, Duration::from_secs(5));
    assert!(again.is_ok(), "the thread was given back: {again:?}");
    assert!(
        !ON_ALT_STACK.load(Ordering::Acquire),
        "the handler runs on the thread's own stack (no SA_ONSTACK)"
    );
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
}

/// Counts the signals a "profiler" installed over ours receives.
static FOREIGN_CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn foreign(_signal: c_int) {
    FOREIGN_CALLS.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn another_handler_is_never_signalled_and_the_default_action_gets_ours_back() {
    let signal = libc::SIGRTMIN() + 9;
    install(signal).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (target, handle) = spinning_thread(stop.clone());
    let timeout = Duration::from_secs(5);
    assert!(capture(&target, signal, timeout).is_ok());

    // A profiler installs its own handler: no signal may reach it from us.
    let mut profiler = zeroed_action();
    profiler.sa_sigaction = foreign as extern "C" fn(c_int) as usize;
    // SAFETY: `foreign` is a valid one-argument handler; both pointers are valid.
    assert_eq!(
        unsafe { libc::sigaction(signal, &profiler, std::ptr::null_mut()) },
        0
    );
    assert_eq!(
        capture(&target, signal, timeout).unwrap_err(),
        CaptureError::Displaced
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(FOREIGN_CALLS.load(Ordering::Relaxed), 0, "never sent");

    // It stops and restores the default action, which for a real-time signal ends the
    // process: the next capture puts our handler back first.
    let reinstalled_before = reinstalled();
    // SAFETY: setting a catchable signal to its default action.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
    assert!(capture(&target, signal, timeout).is_ok());
    assert!(reinstalled() > reinstalled_before);
    let mut current = zeroed_action();
    // SAFETY: reads the disposition into our local.
    unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
    assert_eq!(current.sa_sigaction, handler_address());
    assert_eq!(current.sa_flags & libc::SA_ONSTACK, 0);
    assert_eq!(FOREIGN_CALLS.load(Ordering::Relaxed), 0);

    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
}

#[test]
fn only_profiling_user_and_real_time_signals_are_usable() {
    assert!(usable(libc::SIGPROF));
    assert!(usable(libc::SIGRTMIN() + 4));
    for refused in [
        libc::SIGSEGV,
        libc::SIGKILL,
        libc::SIGINT,
        libc::SIGTERM,
        32,
        0,
        65,
    ] {
        assert!(!usable(refused), "{refused}");
    }
}

/// A minimal `.eh_frame` (one CIE, one FDE for 16 bytes at `code`, the terminator), as
/// 32-bit words so that it is aligned as libgcc wants.
fn eh_frame_for(code: usize) -> Box<[u32; 14]> {
    let mut bytes = Vec::with_capacity(56);
    // CIE: length 20, id 0, version 1, "zR", code alignment 1, data alignment -8,
    // return address register 16, augmentation data: pointer encoding absptr; then
    // DW_CFA_def_cfa rsp+8, DW_CFA_offset r16 at cfa-8, and padding.
    bytes.extend_from_slice(&20u32.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&[1, b'z', b'R', 0, 1, 0x78, 16, 1, 0x00]);
    bytes.extend_from_slice(&[0x0c, 0x07, 0x08, 0x90, 0x01, 0, 0]);
    // FDE: length 24, the distance back to the CIE, start, length, no augmentation data.
    bytes.extend_from_slice(&24u32.to_le_bytes());
    bytes.extend_from_slice(&28u32.to_le_bytes());
    bytes.extend_from_slice(&(code as u64).to_le_bytes());
    bytes.extend_from_slice(&16u64.to_le_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(bytes.len(), 56);
    let mut words = Box::new([0u32; 14]);
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

/// A thread that registers and deregisters unwind tables in a loop (as JIT runtimes do)
/// holds libgcc's object lock much of the time. A handler that unwound with libgcc would
/// wait for that lock on the very thread that holds it, for ever: every capture of that
/// thread must finish.
#[test]
fn a_thread_holding_libgccs_frame_lock_is_captured_without_deadlock() {
    extern "C" {
        fn __register_frame(begin: *const u8);
        fn __deregister_frame(begin: *const u8);
    }
    static CODE: [u8; 16] = [0xC3; 16];
    let signal = libc::SIGRTMIN() + 11;
    install(signal).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (send, receive) = mpsc::channel();
    let registering = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let attached = Attached::current_thread();
            send.send(attached.target().clone()).unwrap();
            let table = eh_frame_for(CODE.as_ptr() as usize);
            let begin = table.as_ptr().cast::<u8>();
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `table` is a well-formed .eh_frame ending in a zero terminator,
                // alive and unmoved until it is deregistered just after.
                unsafe {
                    __register_frame(begin);
                    __deregister_frame(begin);
                }
            }
            drop(attached);
        })
    };
    let target = receive.recv().unwrap();
    let mut unwound = 0;
    for _ in 0..2000 {
        match capture(&target, signal, Duration::from_secs(1)) {
            Ok(stack) => unwound += usize::from(stack.ips.len() > 1),
            // The thread is stuck in its handler, holding libgcc's lock: a panic would
            // unwind through libgcc and wait for that lock too, so the test ends the process.
            Err(error) => {
                eprintln!("capture failed ({error}): the handler deadlocked on libgcc's lock");
                std::process::abort();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    registering.join().unwrap();
    assert!(unwound > 1900, "only {unwound} of 2000 captures unwound");
}
