//! The only module with `unsafe` code: the signal that stops a blocked thread just long enough to
//! record its stack.
//!
//! The watchdog thread asks for a capture by moving a thread's [`Target`] from `IDLE` to
//! `REQUESTED` and sending it the signal with `pthread_kill`. The handler, running on the blocked
//! thread, claims the request (`REQUESTED` to `IN_PROGRESS`), writes raw instruction pointers into
//! the target's preallocated atomics and publishes `DONE`; the watchdog reads them and sets `IDLE`
//! again. One request per thread at a time: nothing is ever captured twice at once, and a thread
//! leaves (`DEAD`) only from `IDLE` or `DONE`, never while a signal may still be on its way, so
//! `pthread_kill` never targets a thread that has exited.
//!
//! Before each signal the watchdog checks that the signal's disposition is still this handler
//! (a profiler may have restored the default, which for `SIGPROF` ends the process): a default or
//! ignored disposition gets the handler back, another program's handler means no signal at all.
//!
//! After `fork()` the child has only the forking thread: fork handlers release the slot list's
//! lock in the child and give the forking thread back its capture state, so the child neither
//! deadlocks nor waits for a signal that was discarded.
//!
//! What the handler does: no allocation, no lock, no panic; it saves and restores `errno`. It
//! walks the interrupted thread's stack with the table-driven unwinder of `unwind` (framehop over
//! the `.eh_frame` tables located before any signal), reading only that thread's stack from its
//! stack pointer up: no libgcc, so a thread interrupted while it holds libgcc's lock (code
//! registering frames at run time) is unwound like any other. Where there are no tables to use
//! (another architecture), the handler records the interrupted instruction alone.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{
    compiler_fence, AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use super::unwind::MAX_FRAMES;

const IDLE: u32 = 0;
const REQUESTED: u32 = 1;
const IN_PROGRESS: u32 = 2;
const DONE: u32 = 3;
const DEAD: u32 = 4;

/// Signals are numbered 1..=64 on Linux; slot 0 is unused.
const SIGNALS: usize = 65;

/// The signal used when the builder names none: `SIGPROF`.
pub(crate) const DEFAULT_SIGNAL: c_int = libc::SIGPROF;

/// One thread that can be asked for its stack, with the memory the handler writes into.
pub(crate) struct Target {
    thread: libc::pthread_t,
    /// The kernel's id of the thread (for `/proc/self/task/TID`); renewed in a fork's child.
    tid: AtomicI32,
    state: AtomicU32,
    /// Set while this thread runs the handler: a second handler nested in it (another signal)
    /// must not claim a request, whose stack the first one would then overwrite.
    in_handler: AtomicBool,
    /// The interrupted instruction pointer, from the signal context (0: unknown).
    pc: AtomicUsize,
    /// The thread's stack, lowest and highest address: the handler reads the interrupted stack
    /// from its stack pointer up to the top, never beyond, and unwinds only if it runs within
    /// this stack with [`HEADROOM`] below it ((0, 0): unknown, no unwinding).
    stack: (usize, usize),
    /// Whether the handler also reads the tokio task this thread polls (`reads_task`).
    reads_task: AtomicBool,
    /// That task's id (0: none, or not read).
    task: AtomicU64,
    depth: AtomicUsize,
    frames: [AtomicUsize; MAX_FRAMES],
}

/// A stack as the handler recorded it: raw instruction pointers, innermost first.
#[derive(Debug, Default, Clone)]
pub(crate) struct RawStack {
    /// The instruction the thread was executing when the signal arrived (0: unknown).
    pub(crate) pc: usize,
    /// Instruction pointers, innermost first: the handler's own frames come before `pc`.
    pub(crate) ips: Vec<usize>,
    /// The id of the tokio task the thread was polling, if the target reads it (0: none).
    pub(crate) task: u64,
    /// The index of the first address that is not certain (`ips.len()` if all are): a stack
    /// read from `/proc` past a frame reached through an indirect call (see `unwind`).
    pub(crate) uncertain_from: usize,
}

/// Why a capture produced no stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaptureError {
    /// Another capture of this thread is in flight.
    Busy,
    /// The thread has left (its target was detached as it exited): nothing was requested and
    /// no signal sent. Not a failed capture: the watchdog learns that the thread is gone before
    /// the runtime's bookkeeping says so.
    Gone,
    /// The signal's handler is another program's now (a profiler installed its own): no signal
    /// was sent, since it would reach that handler instead.
    Displaced,
    /// `pthread_kill` failed (with this error number).
    Send(c_int),
    /// The signal was not handled in time (blocked by the thread's signal mask, or replaced).
    Timeout,
    /// The handler started but did not finish in time; the thread is given back, so a later
    /// capture may try again.
    Stuck,
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::Busy => f.write_str("another capture of this thread is in flight"),
            CaptureError::Gone => f.write_str("the thread has left"),
            CaptureError::Displaced => f.write_str(
                "the signal's handler was replaced by another one (a profiler?); no signal sent",
            ),
            CaptureError::Send(errno) => write!(f, "pthread_kill failed with errno {errno}"),
            CaptureError::Timeout => f.write_str("the signal was not handled in time"),
            CaptureError::Stuck => f.write_str("the signal handler did not finish"),
        }
    }
}

thread_local! {
    /// This thread's target while it is attached; read by the handler. Constant-initialised and
    /// without destructor, so reading it is a plain thread-local load (no lazy initialisation,
    /// no allocation) and it stays readable until the thread is gone.
    static CURRENT: AtomicPtr<Target> = const { AtomicPtr::new(std::ptr::null_mut()) };
}

/// Keeps the current thread's [`Target`] reachable from the handler; detaches on drop (at the
/// latest when the thread exits).
pub(crate) struct Attached {
    target: Arc<Target>,
}

impl Attached {
    /// Makes the current thread capturable. Call once per thread and keep the result in a
    /// thread-local: the thread is signalled only while it is attached.
    pub(crate) fn current_thread() -> Self {
        let target = Arc::new(Target {
            // SAFETY: pthread_self has no preconditions and always succeeds.
            thread: unsafe { libc::pthread_self() },
            tid: AtomicI32::new(current_tid()),
            state: AtomicU32::new(IDLE),
            in_handler: AtomicBool::new(false),
            pc: AtomicUsize::new(0),
            stack: stack_bounds(),
            reads_task: AtomicBool::new(false),
            task: AtomicU64::new(0),
            depth: AtomicUsize::new(0),
            frames: std::array::from_fn(|_| AtomicUsize::new(0)),
        });
        CURRENT.with(|current| current.store(Arc::as_ptr(&target).cast_mut(), Ordering::SeqCst));
        Self { target }
    }

    /// The target, for the watchdog thread.
    pub(crate) fn target(&self) -> &Arc<Target> {
        &self.target
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Leave only from IDLE: a capture in flight is finished first (its signal is delivered
        // at the latest when sched_yield returns), so the watchdog never signals a thread that
        // has exited.
        // From DONE too: the watchdog may not have read that capture yet, and takes DEAD to
        // mean "done, and the thread has left" (or it gave up waiting and nobody reads it).
        while [IDLE, DONE].into_iter().all(|from| {
            self.target
                .state
                .compare_exchange(from, DEAD, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        }) {
            std::thread::yield_now();
        }
        let _ = CURRENT.try_with(|current| current.store(std::ptr::null_mut(), Ordering::SeqCst));
        // The handler runs on this thread: keep the compiler from moving the Arc's release
        // before the pointer is cleared.
        compiler_fence(Ordering::SeqCst);
    }
}

impl Target {
    /// The thread's kernel id, for `/proc/self/task/TID`.
    pub(crate) fn tid(&self) -> i32 {
        self.tid.load(Ordering::Relaxed)
    }

    /// From now on the handler also reads which tokio task the thread is polling (the runtime
    /// watchdog tells two polls of alike stacks apart by it). Call it on the target's own
    /// thread: it reads tokio's thread-local once here, so that the handler never is the first
    /// to touch it (a first touch registers its destructor, which may allocate).
    pub(crate) fn read_task_here(&self) {
        let _ = current_task();
        self.reads_task.store(true, Ordering::Release);
    }
}

/// The id of the tokio task the calling thread is polling, as a number (0: none). tokio's `Id`
/// has no numeric accessor; its `Hash` writes the one `u64` it holds, which this hasher keeps:
/// a thread-local read and no allocation, fit for the handler once the thread-local is live.
fn current_task() -> u64 {
    struct Keep(u64);
    impl Hasher for Keep {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for byte in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
            }
        }
        fn write_u64(&mut self, value: u64) {
            self.0 = value;
        }
    }
    tokio::task::try_id().map_or(0, |id| {
        let mut keep = Keep(0);
        id.hash(&mut keep);
        keep.0.max(1)
    })
}

/// The stack room the handler needs to unwind (framehop's DWARF evaluation, in a debug build):
/// a thread nearer than this to the end of its stack has its interrupted instruction recorded
/// alone.
const HEADROOM: usize = 128 * 1024;

/// The calling thread's stack, lowest and highest address, from its pthread attributes ((0, 0)
/// if unknown). Not for the handler: glibc reads `/proc/self/maps` for the main thread.
fn stack_bounds() -> (usize, usize) {
    // SAFETY: an all-zero pthread_attr_t is only passed to pthread_getattr_np, which fills it.
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    // SAFETY: pthread_self is valid; `attr` is ours and destroyed below once initialised.
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) } != 0 {
        return (0, 0);
    }
    let mut low: *mut c_void = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: `attr` was initialised by pthread_getattr_np; both out pointers are ours.
    let got = unsafe { libc::pthread_attr_getstack(&attr, &mut low, &mut size) };
    // SAFETY: `attr` was initialised above and is not used after this.
    unsafe { libc::pthread_attr_destroy(&mut attr) };
    match got {
        0 => (low as usize, (low as usize).saturating_add(size)),
        _ => (0, 0),
    }
}

/// The calling thread's kernel id.
fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and always succeeds.
    unsafe { libc::gettid() }
}

/// Whether the handler unwinds (unwind tables located at installation) or records the
/// interrupted instruction only.
static FULL_UNWIND: AtomicBool = AtomicBool::new(false);
/// Whether captures walk the whole stack (`true`) or record the interrupted instruction only.
pub(crate) fn full_unwind() -> bool {
    FULL_UNWIND.load(Ordering::Relaxed)
}

/// Asks `target`'s thread for its stack with `signal` and waits up to `timeout` for it.
///
/// The handler for `signal` must have been installed with [`install`].
///
/// # Errors
///
/// See [`CaptureError`].
pub(crate) fn capture(
    target: &Target,
    signal: c_int,
    timeout: Duration,
) -> Result<RawStack, CaptureError> {
    // A library loaded since the unwind tables were read gets its tables now, here and not in
    // the handler.
    super::unwind::refresh();
    // Without our handler, the signal would take its default action (for `SIGPROF`: end the
    // process) or reach another program's handler. What is left of the race (a disposition
    // changed between this check and the signal) is described in the guide.
    ensure_ours(signal)?;
    target
        .state
        .compare_exchange(IDLE, REQUESTED, Ordering::AcqRel, Ordering::Acquire)
        .map_err(|state| match state {
            DEAD => CaptureError::Gone,
            _ => CaptureError::Busy,
        })?;
    // SAFETY: the thread is alive: it leaves only after moving its state from IDLE to DEAD, and
    // we hold the state at REQUESTED. `signal`'s handler is installed, so the signal does not
    // take its default action.
    let sent = unsafe { libc::pthread_kill(target.thread, signal) };
    if sent != 0 {
        target.state.store(IDLE, Ordering::Release);
        return Err(CaptureError::Send(sent));
    }
    let started = Instant::now();
    let mut spins = 0u32;
    loop {
        match target.state.load(Ordering::Acquire) {
            // DEAD: the handler published DONE and the thread exited before we looked (it may
            // leave from DONE, and could not have left from IDLE while we held REQUESTED). The
            // stack is in the target, which our Arc keeps alive, and reading DEAD synchronises
            // with the handler's DONE through the thread's read-modify-write.
            DONE | DEAD => break,
            // Withdraw the request; if the handler claimed it meanwhile, wait for it.
            REQUESTED
                if started.elapsed() > timeout
                    && target
                        .state
                        .compare_exchange(REQUESTED, IDLE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok() =>
            {
                return Err(CaptureError::Timeout);
            }
            // IN_PROGRESS: the handler itself is stuck (or its thread is not being run). Give
            // the thread back so that later captures may try again: the handler, if it ever
            // finishes, then finds its request withdrawn and publishes nothing; a later signal
            // of the same number waits for it to return (it is blocked while its handler runs),
            // and one of another number nested in it claims nothing (`in_handler`).
            _ if started.elapsed() > timeout * 4 => {
                let _ = target.state.compare_exchange(
                    IN_PROGRESS,
                    IDLE,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                return Err(CaptureError::Stuck);
            }
            _ => {}
        }
        // A short spin covers the usual case (the thread is running, the handler takes tens of
        // microseconds); then sleep rather than yield: a yielding watchdog gets to run again
        // only after whole time slices of other threads, a sleeping one as soon as it wakes.
        spins = spins.saturating_add(1);
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let depth = target.depth.load(Ordering::Relaxed).min(MAX_FRAMES);
    let stack = RawStack {
        pc: target.pc.load(Ordering::Relaxed),
        task: target.task.load(Ordering::Relaxed),
        uncertain_from: depth,
        ips: target.frames[..depth]
            .iter()
            .map(|frame| frame.load(Ordering::Relaxed))
            .collect(),
    };
    // Hand the thread back, unless it has already left.
    let _ = target
        .state
        .compare_exchange(DONE, IDLE, Ordering::AcqRel, Ordering::Relaxed);
    Ok(stack)
}

/// The signal handler. Async-signal-safe as far as the module docs say: no allocation, no
/// lock, no panic, `errno` preserved.
extern "C" fn handler(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: __errno_location returns this thread's errno, valid for the thread's life.
    let saved_errno = unsafe { *libc::__errno_location() };
    let target = CURRENT
        .try_with(|current| current.load(Ordering::Acquire))
        .unwrap_or(std::ptr::null_mut());
    // SAFETY: a non-null CURRENT points to the Target an `Attached` of this thread keeps alive;
    // `Attached::drop` clears it before releasing the Arc, on this same thread.
    let target = unsafe { target.as_ref() };
    let claimed = target.is_some_and(|target| {
        // Set while this handler runs; already set means this handler is nested in one of ours
        // on this thread (another signal), which owns the flag and the target's buffer.
        let nested = target.in_handler.swap(true, Ordering::Relaxed);
        let claimed = !nested
            && target
                .state
                .compare_exchange(REQUESTED, IN_PROGRESS, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if claimed {
            #[cfg(test)]
            tests::in_handler(signal);
            #[cfg(test)]
            let started = tests::handler_clock();
            record(target, context);
            #[cfg(test)]
            tests::recorded(target, started);
            // The watchdog may have given up on this capture (`Stuck`) and handed the thread
            // back: then nothing is published.
            let _ = target.state.compare_exchange(
                IN_PROGRESS,
                DONE,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
        if !nested {
            target.in_handler.store(false, Ordering::Relaxed);
        }
        claimed
    });
    if !claimed {
        // Not ours (another profiler's signal, or a request already withdrawn): pass it on.
        // SAFETY: the arguments are the ones the kernel gave this handler.
        unsafe { chain(signal, info, context) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// Runs in the forking thread before a fork: takes the slot list's lock, so that no other thread
/// holds it while the process is copied (the child would wait for it for ever).
extern "C" fn fork_prepare() {
    crate::recorder::slot::fork_prepare();
}

/// Runs in the parent after a fork: lets the slot list go.
extern "C" fn fork_parent() {
    crate::recorder::slot::fork_done();
}

/// Runs in the child after a fork, where only the forking thread exists: lets the slot list go,
/// and gives the forking thread its new kernel id and its capture state back: a signal pending
/// at the fork is not inherited, so a request in flight would never be answered, and a capture
/// its handler had answered (`DONE`) is the parent's watchdog's to read, which is not in the
/// child: left `DONE`, every capture of the thread in the child failed as busy (20 of 20, once,
/// beside two CPU hogs: the parent's watchdog had not yet read the answer when the thread
/// forked).
extern "C" fn fork_child() {
    crate::recorder::slot::fork_done();
    let _ = CURRENT.try_with(|current| {
        // SAFETY: as in the handler: a non-null CURRENT points to this thread's live Target.
        if let Some(target) = unsafe { current.load(Ordering::Acquire).as_ref() } {
            target.tid.store(current_tid(), Ordering::Relaxed);
            for answered_or_not in [REQUESTED, DONE] {
                let _ = target.state.compare_exchange(
                    answered_or_not,
                    IDLE,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            target.in_handler.store(false, Ordering::Relaxed);
        }
    });
}

/// Writes the interrupted thread's stack into `target`; runs inside the handler.
fn record(target: &Target, context: *mut c_void) {
    target
        .pc
        .store(interrupted_pc(context.cast_const()), Ordering::Relaxed);
    let task = match target.reads_task.load(Ordering::Acquire) {
        true => current_task(),
        false => 0,
    };
    target.task.store(task, Ordering::Relaxed);
    /// Writes the unwound addresses into the target's preallocated frames.
    struct Frames<'a> {
        frames: &'a [AtomicUsize; MAX_FRAMES],
        depth: usize,
    }
    impl super::unwind::Sink for Frames<'_> {
        fn push(&mut self, address: usize) -> bool {
            if let Some(slot) = self.frames.get(self.depth) {
                slot.store(address, Ordering::Relaxed);
                self.depth += 1;
            }
            self.depth < MAX_FRAMES
        }
    }
    let pc = target.pc.load(Ordering::Relaxed);
    let mut frames = Frames {
        frames: &target.frames,
        depth: 0,
    };
    // Where the handler runs: on the thread's own stack, with room to unwind (not on an
    // alternate stack some other handler of this thread switched to).
    let here = std::ptr::addr_of!(frames) as usize;
    let (low, top) = target.stack;
    if full_unwind() && here < top && here >= low.saturating_add(HEADROOM) {
        super::unwind::unwind_interrupted(pc, context.cast_const(), top, &mut frames);
    }
    if frames.depth == 0 {
        // The interrupted instruction alone, where nothing could be unwound.
        super::unwind::Sink::push(&mut frames, pc);
    }
    target.depth.store(frames.depth, Ordering::Relaxed);
}

/// The instruction pointer saved in the signal context (0 where we do not know the layout).
#[allow(clippy::needless_return)]
fn interrupted_pc(context: *const c_void) -> usize {
    if context.is_null() {
        return 0;
    }
    let context = context.cast::<libc::ucontext_t>();
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t as the third
        // argument, alive for the handler's duration; REG_RIP indexes within gregs.
        return unsafe { (*context).uc_mcontext.gregs[libc::REG_RIP as usize] as usize };
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: as above; `pc` is a plain field of the machine context.
        return unsafe { (*context).uc_mcontext.pc as usize };
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = context;
        return 0;
    }
}

mod disposition;
mod objects;

use disposition::{chain, ensure_ours};
#[cfg(test)]
use disposition::{handler_address, zeroed_action};
pub(crate) use disposition::{install, reinstalled, usable};
pub(crate) use objects::{
    exported_name, in_executable_or_c_library, in_system_library, offset_in_executable,
};

#[cfg(test)]
mod tests;
