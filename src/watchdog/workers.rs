//! The runtime watchdog (`Detector::watch_runtime`): every stalled task poll of a runtime's
//! workers, on stable Rust, without wrapping anything.
//!
//! tokio's stable builder callbacks tell which threads are the runtime's (`on_thread_start` /
//! `on_thread_stop`) and which of them are idle (`on_thread_park` / `on_thread_unpark`): each
//! worker keeps the clock reading of its start or last unpark, 0 while parked, so a parked worker
//! costs the watchdog one atomic load. tokio calls `on_thread_start` for the blocking pool's
//! threads too, and only workers park: a sample of a thread that never parked that shows no task
//! poll leaves it alone until it parks. A current-thread runtime's only thread is the one that
//! calls `block_on`, of which tokio says nothing until it parks: the thread that calls
//! `watch_runtime` is taken for it until then (it usually builds the runtime and runs it).
//! Registering a thread registers its recorder slot, which gives it its signal target
//! (`slot::attach_with`): one target per thread, shared with the wrapped paths.
//!
//! Each check, a worker that has not parked for an eighth of a watchdog threshold is *sampled*
//! like a stalled watched poll, then every half threshold while it stays busy (`sampler`): a
//! thread in a system call is not signalled (the call could fail with `EINTR`), its stack is
//! scanned (`scan`); a thread in its own code is signalled for its stack, and the handler also
//! reads the id of the tokio task it polls. The same poll seen by two samples a whole threshold
//! apart (and by the one between them) is a stall, reported once, at most about 1.4
//! thresholds after the poll began:
//!
//! - in user code, the same task, polled from the same place: the same task id and the same
//!   return addresses from tokio's task harness to the thread's start (the frames above the
//!   harness change as a poll on the CPU goes from function to function);
//! - in a system call, the same call (`/proc/…/syscall`: number, arguments, stack and instruction
//!   pointers) and no new time slice since (`/proc/…/schedstat`: the thread never left it);
//! - and, where tokio's stable worker metrics are readable, busy times that stood still (see
//!   `stood_still`): one task re-polled without a park has the same id at every poll.
//!
//! The stall is then named from its stack: the label is `task ` and the first frame above tokio's
//! task harness that is not the runtime's (the future's own function: `task my_app::refresh`
//! for `tokio::spawn(refresh())`, `task my_app::main` for an `async` block written in `main`),
//! without `{{closure}}` suffixes; its culprit is the innermost such frame. A stack without the
//! task harness (the future given to `block_on`, a thread between tasks, `block_in_place`), or
//! with the blocking pool's code below it (a `spawn_blocking` closure), is not a task stall.
//! Names come from the program's symbol table (`symtab`) until the naming thread has loaded the
//! debug information, then from `backtrace` (`task_names`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::signal;
use crate::recorder::slot::{self, Slot};
use crate::recorder::Recorder;

/// `Detector::watch_runtime` was called on a detector without a watchdog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("watch_runtime needs a detector built with Builder::watchdog")]
#[non_exhaustive]
pub struct NoWatchdog;

/// Why `Detector::watch_current_runtime` could not watch the runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CurrentRuntimeError {
    /// The detector was built without [`Builder::watchdog`](crate::Builder::watchdog).
    #[error("watch_current_runtime needs a detector built with Builder::watchdog")]
    NoWatchdog,
    /// It was called outside a tokio runtime's context.
    #[error("watch_current_runtime must be called from inside a tokio runtime (an async fn run by #[tokio::main] or #[tokio::test], or a task)")]
    NoRuntime,
}

/// How long `watch_current_runtime`, called from a multi-thread runtime's `block_on` thread,
/// waits for every worker to have run one of its registration tasks: a task spawned right after
/// it returns must find its worker watched. Workers that are idle take microseconds; one busy in
/// a long poll is found when it is done (its registration task stays queued).
#[cfg(target_os = "linux")]
const FIND_WORKERS_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// How long each registration task goes on looking for the workers no other one reached.
#[cfg(target_os = "linux")]
const FIND_WORKERS_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Watches the runtime the calling thread is in, found from the runtime itself
/// (`Detector::watch_current_runtime`): no callback can be installed any more, so its threads
/// are registered by tasks spawned on it, and the sampler tells their parks from `/proc`
/// (`Runtime::found`, `Sampler::observe`).
///
/// With `bodies` (the test guard), stalls of the future given to `block_on` are reported in
/// either flavor (a current-thread runtime's always are: they block every task).
pub(crate) fn watch_current(
    recorder: &Arc<Recorder>,
    runtimes: &Runtimes,
    bodies: bool,
) -> Result<(), CurrentRuntimeError> {
    let handle =
        tokio::runtime::Handle::try_current().map_err(|_| CurrentRuntimeError::NoRuntime)?;
    #[cfg(target_os = "linux")]
    {
        use tokio::runtime::RuntimeFlavor;
        static NEXT_RUNTIME: AtomicU64 = AtomicU64::new(1 << 32);
        // Called again on a runtime this thread already serves for this detector: nothing to do.
        if Runtime::already_found_here(recorder) {
            return Ok(());
        }
        let current_thread = handle.runtime_flavor() == RuntimeFlavor::CurrentThread;
        let runtime = Arc::new(Runtime {
            id: NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed),
            recorder: recorder.clone(),
            workers: Mutex::new(Vec::new()),
            handle: Mutex::new(Some(handle.clone())),
            handle_sent: AtomicBool::new(true),
            threads_started: AtomicBool::new(false),
            found: true,
            bodies: bodies || current_thread,
            checks: AtomicU64::new(0),
        });
        runtimes.add(&runtime);
        super::symbols::symbol_table();
        let workers = handle.metrics().num_workers();
        let in_task = tokio::task::try_id().is_some();
        match current_thread {
            // Its only thread is this one.
            true => {
                runtime.runs_from_now();
            }
            false => {
                if in_task {
                    // A task runs on a worker: this one.
                    runtime.runs_from_now();
                } else if !bodies {
                    // `block_on`'s thread is none of the workers: marked, so that a second call
                    // from it is known.
                    runtime.mark_here();
                }
                for _ in 0..workers {
                    handle.spawn(find_workers(runtime.clone(), workers));
                }
                if !in_task {
                    let deadline = std::time::Instant::now() + FIND_WORKERS_WAIT;
                    let waiting = || std::time::Instant::now() < deadline;
                    while runtime.found_workers() < workers && waiting() {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    // And for the watchdog's first full look at them (the check under way may
                    // have started before the last one registered): it learns from each idle
                    // worker's stack how it parks, milliseconds in a debug build, which a stall
                    // right after this call waited for before its first sample (a spawned
                    // task's 20 ms sleep at the test guard's 5 ms was first sampled up to 10 ms
                    // in, and once not reported before it ended).
                    let checked = runtime.checks.load(Ordering::Acquire);
                    while runtime.checks.load(Ordering::Acquire) < checked + 2 && waiting() {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                    // `block_on`'s thread, watched for the test guard: only from now on, or
                    // the waits above, in the test's body, would be its stall.
                    if bodies {
                        if let Some(worker) = runtime.runs_from_now() {
                            worker.block_on.store(true, Ordering::Release);
                        }
                    }
                }
            }
        }
        // The runtime owns its record from now on: the task is dropped, and with it the record,
        // when the runtime shuts down (the watchdog then lets go of its handle).
        handle.spawn(async move {
            let _runtime = runtime;
            std::future::pending::<()>().await
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (recorder, runtimes, handle, bodies);
    Ok(())
}

/// A registration task of `watch_current_runtime`: registers the worker that runs it, then keeps
/// yielding (so that the other workers pick up the other registration tasks, stealing them from
/// this one's queue) until all `workers` are registered, or for [`FIND_WORKERS_FOR`].
#[cfg(target_os = "linux")]
async fn find_workers(runtime: Arc<Runtime>, workers: usize) {
    let started = std::time::Instant::now();
    let mut rounds = 0u32;
    loop {
        runtime.runs_from_now();
        if runtime.found_workers() >= workers || started.elapsed() > FIND_WORKERS_FOR {
            return;
        }
        rounds += 1;
        if rounds < 1000 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// Watches the runtime `builder` builds with `runtimes`, a watchdog's list, for `recorder`'s
/// detector: installs tokio's thread callbacks (`Detector::watch_runtime`).
pub(crate) fn install(
    recorder: &Arc<Recorder>,
    runtimes: &Runtimes,
    builder: &mut tokio::runtime::Builder,
) {
    #[cfg(target_os = "linux")]
    {
        static NEXT_RUNTIME: AtomicU64 = AtomicU64::new(1);
        let runtime = Arc::new(Runtime {
            id: NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed),
            recorder: recorder.clone(),
            workers: Mutex::new(Vec::new()),
            handle: Mutex::new(None),
            handle_sent: AtomicBool::new(false),
            threads_started: AtomicBool::new(false),
            found: false,
            bodies: false,
            checks: AtomicU64::new(0),
        });
        runtimes.add(&runtime);
        // The program's symbol table, read here on the caller's thread (milliseconds, at
        // set-up) rather than by the watchdog thread at a stall.
        super::symbols::symbol_table();
        runtime.caller();
        let (start, stop, park, unpark) =
            (runtime.clone(), runtime.clone(), runtime.clone(), runtime);
        builder
            .on_thread_start(move || start.started())
            .on_thread_stop(move || stop.unregister())
            .on_thread_park(move || park.parked())
            .on_thread_unpark(move || unpark.unparked());
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (recorder, runtimes, builder);
}

/// The runtimes one watchdog watches (`Watchdog::runtimes`).
#[derive(Default)]
pub(crate) struct Runtimes {
    #[cfg(target_os = "linux")]
    list: Mutex<Vec<Weak<Runtime>>>,
}

#[cfg(target_os = "linux")]
impl Runtimes {
    fn add(&self, runtime: &Arc<Runtime>) {
        let mut list = self
            .list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        list.retain(|runtime| runtime.strong_count() > 0);
        list.push(Arc::downgrade(runtime));
    }

    pub(super) fn snapshot(&self, into: &mut Vec<Arc<Runtime>>) {
        into.clear();
        let list = self
            .list
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        into.extend(list.iter().filter_map(Weak::upgrade));
    }
}

/// One watched runtime: owned by its callbacks, read by the watchdog thread.
#[cfg(target_os = "linux")]
pub(super) struct Runtime {
    /// Unique in the process (an address could be reused by the next runtime).
    pub(super) id: u64,
    pub(super) recorder: Arc<Recorder>,
    pub(super) workers: Mutex<Vec<Arc<Worker>>>,
    /// The runtime's handle, for its stable worker metrics, until the watchdog thread takes it
    /// (the watchdog keeps it, not the runtime's own callbacks, which would make a cycle).
    pub(super) handle: Mutex<Option<tokio::runtime::Handle>>,
    pub(super) handle_sent: AtomicBool,
    /// tokio has started a thread for it: a multi-thread runtime's workers start in `build()`,
    /// a current-thread runtime starts none until its blocking pool is used.
    pub(super) threads_started: AtomicBool,
    /// Found by `watch_current_runtime`, without tokio's callbacks: the sampler tells when its
    /// workers park from `/proc` (see `Sampler::observe`).
    pub(super) found: bool,
    /// A stall of the future given to `block_on` counts too (a task stall's label says
    /// `block_on`): on a current-thread runtime it blocks every task; the test guard asks for
    /// it in either flavor, its `block_on` thread then watched beside the workers.
    pub(super) bodies: bool,
    /// How many of the watchdog's checks have looked at its workers: `watch_current_runtime`
    /// waits for the first ones (see there).
    pub(super) checks: AtomicU64,
}

/// One thread of a watched runtime.
#[cfg(target_os = "linux")]
pub(super) struct Worker {
    /// Its recorder slot: the signal target, and the watched poll it publishes, if any.
    pub(super) slot: Arc<Slot>,
    pub(super) tid: i32,
    /// Clock reading at its start or last unpark; 0 while parked.
    pub(super) running_since: AtomicU64,
    /// Clock reading at its last park (0: never parked): where a stall that ended in a park
    /// ended.
    pub(super) parked_raw: AtomicU64,
    /// How many times it has unparked: a worker parked at two samples with the same count
    /// stayed parked between them.
    pub(super) unparks: AtomicU64,
    /// It has parked at least once, so it is one of the runtime's workers. A thread that has
    /// not may be a thread of the blocking pool (tokio calls `on_thread_start` for both, and
    /// only workers park): it is reported only with a stack inside a task poll.
    pub(super) parked_once: AtomicBool,
    /// Its thread has stopped or exited.
    pub(super) gone: AtomicBool,
    /// It is the thread that called `watch_runtime` (see `Runtime::caller`).
    pub(super) caller: AtomicBool,
    /// It is a multi-thread runtime's `block_on` thread, none of its workers, watched for the
    /// test guard (`Runtime::bodies`): tokio's worker metrics say nothing of it.
    pub(super) block_on: AtomicBool,
}

#[cfg(target_os = "linux")]
thread_local! {
    /// The runtimes this thread is registered with (a thread may serve nested runtimes, or build
    /// one after another), and its worker in each (`None`: registering failed, not tried
    /// again); marks them gone when the thread exits.
    static REGISTERED: Registered = const { Registered(std::cell::RefCell::new(Vec::new())) };
}

#[cfg(target_os = "linux")]
type Registration = (u64, Weak<Runtime>, Option<Arc<Worker>>);

#[cfg(target_os = "linux")]
struct Registered(std::cell::RefCell<Vec<Registration>>);

#[cfg(target_os = "linux")]
impl Drop for Registered {
    fn drop(&mut self) {
        for (_, _, worker) in self.0.borrow().iter() {
            if let Some(worker) = worker {
                worker.gone.store(true, Ordering::Release);
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl Runtime {
    pub(super) fn key(&self) -> u64 {
        self.id
    }

    /// How many of its threads are registered.
    fn found_workers(&self) -> usize {
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Whether the calling thread already serves a runtime `watch_current_runtime` found for
    /// `recorder`'s detector (or called it from that runtime's `block_on`).
    fn already_found_here(recorder: &Arc<Recorder>) -> bool {
        REGISTERED
            .try_with(|registered| {
                registered.0.borrow().iter().any(|(_, runtime, _)| {
                    runtime.upgrade().is_some_and(|runtime| {
                        runtime.found && Arc::ptr_eq(&runtime.recorder, recorder)
                    })
                })
            })
            .unwrap_or(false)
    }

    /// Marks the calling thread as having found this runtime without being one of its workers.
    fn mark_here(self: &Arc<Self>) {
        let _ = REGISTERED.try_with(|registered| {
            registered
                .0
                .borrow_mut()
                .push((self.key(), Arc::downgrade(self), None))
        });
    }

    /// This thread's worker of this runtime, registered on first sight. Off the hot path: once
    /// per thread, then a thread-local lookup per park and unpark.
    fn register(self: &Arc<Self>) -> Option<Arc<Worker>> {
        let key = self.key();
        let found = REGISTERED
            .try_with(|registered| {
                let mut registered = registered.0.borrow_mut();
                // Runtimes dropped since: their entries go (a thread that builds runtime after
                // runtime keeps a bounded list).
                registered.retain(|(_, runtime, worker)| {
                    let alive = runtime.strong_count() > 0;
                    if let (false, Some(worker)) = (alive, worker) {
                        worker.gone.store(true, Ordering::Release);
                    }
                    alive
                });
                registered
                    .iter()
                    .find(|(runtime, _, _)| *runtime == key)
                    .map(|(_, _, worker)| worker.clone())
            })
            .ok()?;
        if let Some(found) = found {
            return found;
        }
        let worker = self.new_worker();
        REGISTERED
            .try_with(|registered| {
                registered
                    .0
                    .borrow_mut()
                    .push((key, Arc::downgrade(self), worker.clone()))
            })
            .ok()?;
        if let Some(worker) = &worker {
            self.workers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(worker.clone());
        }
        worker
    }

    /// A worker for the calling thread: its recorder slot, which gives it its signal target.
    fn new_worker(&self) -> Option<Arc<Worker>> {
        let tid = current_tid()?;
        // Registers this thread's recorder slot (which attaches its signal target), publishing
        // nothing: what was published before is put back at once.
        let previous = slot::poll_started(0, 0, 0)?;
        slot::poll_ended(previous);
        let mut slots = Vec::new();
        slot::snapshot(&mut slots);
        let slot = slots
            .into_iter()
            .find(|slot| target_of(slot).is_some_and(|target| target.tid() == tid))?;
        // Samples in its own code tell polls apart by the task they poll (see `Key`).
        target_of(&slot)?.read_task_here();
        Some(Arc::new(Worker {
            slot,
            tid,
            running_since: AtomicU64::new(0),
            parked_raw: AtomicU64::new(0),
            unparks: AtomicU64::new(0),
            parked_once: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            caller: AtomicBool::new(false),
            block_on: AtomicBool::new(false),
        }))
    }

    fn unregister(self: &Arc<Self>) {
        let key = self.key();
        let _ = REGISTERED.try_with(|registered| {
            registered.0.borrow_mut().retain(|(runtime, _, worker)| {
                if let (true, Some(worker)) = (*runtime == key, worker) {
                    worker.gone.store(true, Ordering::Release);
                }
                *runtime != key
            })
        });
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|worker| !worker.gone.load(Ordering::Acquire));
    }

    /// A new thread of the runtime runs from its start: a worker may pick up a task spawned
    /// before it ever parked (a task spawned right after `build()`).
    fn started(self: &Arc<Self>) {
        self.threads_started.store(true, Ordering::Release);
        self.send_handle();
        self.runs_from_now();
    }

    /// The thread that calls `watch_runtime`, taken for the one that will call `block_on` on a
    /// current-thread runtime: tokio says nothing of that thread before it parks, and a task
    /// spawned right away would block it unseen. It is left alone once tokio has started a
    /// thread for the runtime (a multi-thread runtime's workers, at `build()`), until it parks.
    fn caller(self: &Arc<Self>) {
        if let Some(worker) = self.runs_from_now() {
            worker.caller.store(true, Ordering::Release);
        }
    }

    /// Whether `worker` is only the `watch_runtime` caller taken for a current-thread runtime's
    /// thread, on a runtime that turned out to start threads of its own (see `caller`).
    pub(super) fn not_the_runtimes(&self, worker: &Worker) -> bool {
        worker.caller.load(Ordering::Acquire)
            && !worker.parked_once.load(Ordering::Acquire)
            && self.threads_started.load(Ordering::Acquire)
    }

    /// Registers this thread as running from now (unless it already runs).
    fn runs_from_now(self: &Arc<Self>) -> Option<Arc<Worker>> {
        let worker = self.register()?;
        let now = self.recorder.clock.raw().max(1);
        let _ = worker
            .running_since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        Some(worker)
    }

    /// Hands the runtime's handle to the watchdog thread, once: from the first thread that
    /// starts (the runtime's context is entered there) or, for a current-thread runtime, parks.
    fn send_handle(&self) {
        if self.handle_sent.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            if !self.handle_sent.swap(true, Ordering::Relaxed) {
                *self
                    .handle
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(handle);
            }
        }
    }

    fn parked(self: &Arc<Self>) {
        self.send_handle();
        if let Some(worker) = self.register() {
            worker.parks(self.recorder.clock.raw());
        }
    }

    fn unparked(self: &Arc<Self>) {
        if let Some(worker) = self.register() {
            worker.unparks(self.recorder.clock.raw());
        }
    }
}

#[cfg(target_os = "linux")]
impl Worker {
    /// It parks, at clock reading `now`.
    pub(super) fn parks(&self, now: u64) {
        self.parked_once.store(true, Ordering::Release);
        self.parked_raw.store(now, Ordering::Release);
        self.running_since.store(0, Ordering::Release);
    }

    /// It unparks, at clock reading `now`.
    pub(super) fn unparks(&self, now: u64) {
        self.unparks.fetch_add(1, Ordering::Relaxed);
        // Never 0, which means parked.
        self.running_since.store(now.max(1), Ordering::Release);
    }
}

/// The calling thread's kernel id, from `/proc/thread-self` (`PID/task/TID`).
#[cfg(target_os = "linux")]
fn current_tid() -> Option<i32> {
    let path = std::fs::read_link("/proc/thread-self").ok()?;
    path.file_name()?.to_str()?.parse().ok()
}

#[cfg(target_os = "linux")]
pub(super) fn target_of(slot: &Slot) -> Option<&signal::Target> {
    slot.attachment
        .as_deref()
        .and_then(|attachment| attachment.downcast_ref::<signal::Target>())
}
