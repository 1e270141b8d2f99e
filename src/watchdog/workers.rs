//! The runtime watchdog (`Detector::watch_runtime`): every stalled task poll of a runtime's
//! workers, on stable Rust, without wrapping anything.
//!
//! tokio's stable builder callbacks tell which threads are the runtime's (`on_thread_start` /
//! `on_thread_stop`) and which of them are idle (`on_thread_park` / `on_thread_unpark`): each
//! worker keeps the clock reading of its start or last unpark, 0 while parked, so a parked worker
//! costs the watchdog one atomic load. tokio calls `on_thread_start` for the blocking pool's
//! threads too, and only workers park: a thread that never parked is reported only with a stack
//! inside a task poll (in user code, or in `std::thread::sleep`, below). A current-thread
//! runtime's only thread is the one that calls `block_on`, which tokio tells about from its first
//! park on. Registering a thread registers its recorder slot, which gives it its
//! signal target (`slot::attach_with`): one target per thread, shared with the wrapped paths.
//!
//! Each check, a worker that has not parked for half a watchdog threshold is *sampled* like a
//! stalled watched poll (`/proc` first: a thread in a system call is not signalled; a thread in
//! its own code is signalled for its stack), at most once per half threshold. Two samples at
//! least half a threshold apart that show the same poll, the second after a whole threshold
//! without a park, make a stall (reported once; at most 1.25 thresholds after the poll began,
//! plus one check interval):
//!
//! - in user code, the same stack: the same instruction pointers from the thread's entry up to the
//!   interrupted function's caller (hence the same task-poll frame of tokio's scheduler, at the
//!   same depth, with the same frames above it); only the interrupted instruction may differ;
//! - in a system call, the same call (`/proc/…/syscall`: number, arguments, stack and instruction
//!   pointers) and no new time slice since (`/proc/…/schedstat`: the thread never left it);
//! - and, where tokio's stable worker metrics are readable, a running worker whose busy time did
//!   not move between the samples. tokio publishes a worker's busy time only between polls
//!   (every 61 polls by default, and when it parks), so a worker running many short polls of the
//!   same code, whose stacks look alike, moves it and is not reported. tokio does not say which
//!   worker is which thread: more busy times must have stood still than there are other workers
//!   that could not have moved theirs (parked, or given less than half the time on a CPU:
//!   preempted on a busy machine, blocked in a system call). On an oversubscribed machine a stall
//!   may then be confirmed a sample or two later.
//!
//! The stall is then named from its stack: the label is `task ` and the first frame above tokio's
//! task harness that is not the runtime's (the future's own function: `task my_app::refresh`
//! for `tokio::spawn(refresh())`, `task my_app::main` for an `async` block written in `main`),
//! without `{{closure}}` suffixes; its culprit is the innermost such frame. A stack without the
//! task harness (the future given to `block_on`, a thread between tasks, `block_in_place`, a
//! `spawn_blocking` closure) is not a task stall: the worker is left alone until it parks again.
//!
//! A worker blocked in `nanosleep` or `clock_nanosleep` called by `std::thread::sleep` is the one
//! exception to "never signal a thread in a system call": `std::thread::sleep` sleeps again for the
//! time left when a signal interrupts it, so one signal per stall costs it nothing, and without it
//! the stall would have no stack and no name. The caller is checked by reading the words at the
//! top of the sleeping thread's stack (`/proc/self/mem`, at the stack pointer `/proc` gives) and
//! naming them: any other sleeper (a C library's `usleep`, which returns early when interrupted)
//! is not signalled, and its stall is reported without a stack as `task <unknown>`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::activity::{self, Activity};
use super::{signal, stalls, symbols, warn_stall, Watchdog};
use crate::detector::Detector;
use crate::event::{HogEvent, HogKind};
use crate::recorder::slot::{self, Slot};
use crate::recorder::{LabelKind, Recorder};

/// The label of a task stall whose stack could not be had or named.
pub(crate) const UNKNOWN_TASK: &str = "task <unknown>";

/// `Detector::watch_runtime` was called on a detector without a watchdog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("watch_runtime needs a detector built with Builder::watchdog")]
#[non_exhaustive]
pub struct NoWatchdog;

impl Detector {
    /// Watches every task poll of the runtime `builder` builds, on stable Rust and without
    /// wrapping anything: a worker that stays inside one task poll longer than the
    /// [watchdog](crate::Builder::watchdog) threshold is reported as a stall
    /// ([`HogKind::Stall`] to [`on_hog`](crate::Builder::on_hog), a warning, and the stall,
    /// stack, culprit and cause in the report) under the label `task <the future's function>`
    /// (see [the guide](crate::docs::watchdog#every-worker-without-wrapping-watch_runtime)).
    /// Parked workers cost nothing; a busy worker is sampled at most twice per threshold.
    ///
    /// Installs tokio's `on_thread_start`, `on_thread_stop`, `on_thread_park` and
    /// `on_thread_unpark` callbacks, replacing any set on `builder` before (tokio keeps one of
    /// each). Stacks need Linux; elsewhere the runtime is built unwatched.
    ///
    /// # Errors
    ///
    /// [`NoWatchdog`] if the detector was built without [`Builder::watchdog`](crate::Builder::watchdog).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let detector = hogwatch::Detector::builder()
    ///     .watchdog(Duration::from_millis(50))
    ///     .build()?;
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// let rt = detector.watch_runtime(builder.enable_all())?.build()?;
    /// rt.block_on(async {
    ///     // Longer than the symbols take to load in a debug build (see the guide).
    ///     tokio::spawn(async { std::thread::sleep(Duration::from_secs(1)) })
    ///         .await
    ///         .unwrap();
    /// });
    /// # if cfg!(target_os = "linux") {
    /// let report = detector.report();
    /// let stalled = report.entries.iter().find(|entry| entry.stalls > 0).unwrap();
    /// assert!(stalled.label.starts_with("task "), "{}", stalled.label);
    /// # }
    /// # Ok(()) }
    /// ```
    pub fn watch_runtime<'a>(
        &self,
        builder: &'a mut tokio::runtime::Builder,
    ) -> Result<&'a mut tokio::runtime::Builder, NoWatchdog> {
        let recorder = self.recorder().clone();
        let Some(runtimes) = find(recorder.watchdog_id) else {
            return Err(NoWatchdog);
        };
        #[cfg(target_os = "linux")]
        {
            let runtime = Arc::new(Runtime {
                recorder,
                workers: Mutex::new(Vec::new()),
                handle: Mutex::new(None),
                handle_sent: AtomicBool::new(false),
            });
            runtimes.add(&runtime);
            let (start, stop, park, unpark) =
                (runtime.clone(), runtime.clone(), runtime.clone(), runtime);
            builder
                .on_thread_start(move || start.started())
                .on_thread_stop(move || stop.unregister())
                .on_thread_park(move || park.parked())
                .on_thread_unpark(move || unpark.unparked());
        }
        #[cfg(not(target_os = "linux"))]
        let _ = runtimes;
        Ok(builder)
    }
}

/// The runtimes one watchdog watches (`Watchdog::runtimes`).
#[derive(Default)]
pub(crate) struct Runtimes {
    #[cfg(target_os = "linux")]
    list: Mutex<Vec<Weak<Runtime>>>,
}

/// Every watchdog's runtimes, by watchdog id: how `watch_runtime` finds its detector's.
static REGISTRY: Mutex<Vec<(u64, Weak<Runtimes>)>> = Mutex::new(Vec::new());

/// Makes the runtime list of watchdog `id` findable by `watch_runtime`.
pub(crate) fn register(id: u64, runtimes: &Arc<Runtimes>) {
    let mut registry = REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    registry.retain(|(_, runtimes)| runtimes.strong_count() > 0);
    registry.push((id, Arc::downgrade(runtimes)));
}

fn find(id: u64) -> Option<Arc<Runtimes>> {
    if id == 0 {
        return None;
    }
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .find(|(found, _)| *found == id)
        .and_then(|(_, runtimes)| runtimes.upgrade())
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

    fn snapshot(&self, into: &mut Vec<Arc<Runtime>>) {
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
struct Runtime {
    recorder: Arc<Recorder>,
    workers: Mutex<Vec<Arc<Worker>>>,
    /// The runtime's handle, for its stable worker metrics, until the watchdog thread takes it
    /// (the watchdog keeps it, not the runtime's own callbacks, which would make a cycle).
    handle: Mutex<Option<tokio::runtime::Handle>>,
    handle_sent: AtomicBool,
}

/// One thread of a watched runtime.
#[cfg(target_os = "linux")]
struct Worker {
    /// Its recorder slot: the signal target, and the watched poll it publishes, if any.
    slot: Arc<Slot>,
    tid: i32,
    /// Clock reading at its start or last unpark; 0 while parked.
    running_since: AtomicU64,
    /// It has parked at least once, so it is one of the runtime's workers. A thread that has
    /// not may be a thread of the blocking pool (tokio calls `on_thread_start` for both, and
    /// only workers park): it is reported only with a stack inside a task poll.
    parked_once: AtomicBool,
    /// Its thread has stopped or exited.
    gone: AtomicBool,
}

#[cfg(target_os = "linux")]
thread_local! {
    /// The runtimes this thread is registered with (a thread may serve nested runtimes), and its
    /// worker in each; marks them gone when the thread exits.
    static REGISTERED: Registered = const { Registered(std::cell::RefCell::new(Vec::new())) };
}

#[cfg(target_os = "linux")]
struct Registered(std::cell::RefCell<Vec<(usize, Arc<Worker>)>>);

#[cfg(target_os = "linux")]
impl Drop for Registered {
    fn drop(&mut self) {
        for (_, worker) in self.0.borrow().iter() {
            worker.gone.store(true, Ordering::Release);
        }
    }
}

#[cfg(target_os = "linux")]
impl Runtime {
    fn key(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    /// This thread's worker of this runtime, registered on first sight. Off the hot path: once
    /// per thread, then a thread-local lookup per park and unpark.
    fn register(self: &Arc<Self>) -> Option<Arc<Worker>> {
        let key = self.key();
        let found = REGISTERED
            .try_with(|registered| {
                registered
                    .0
                    .borrow()
                    .iter()
                    .find(|(runtime, _)| *runtime == key)
                    .map(|(_, worker)| worker.clone())
            })
            .ok()?;
        if found.is_some() {
            return found;
        }
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
        let worker = Arc::new(Worker {
            slot,
            tid,
            running_since: AtomicU64::new(0),
            parked_once: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        });
        REGISTERED
            .try_with(|registered| registered.0.borrow_mut().push((key, worker.clone())))
            .ok()?;
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(worker.clone());
        Some(worker)
    }

    fn unregister(self: &Arc<Self>) {
        let key = self.key();
        let _ = REGISTERED.try_with(|registered| {
            registered.0.borrow_mut().retain(|(runtime, worker)| {
                if *runtime == key {
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
        self.send_handle();
        if let Some(worker) = self.register() {
            let now = self.recorder.clock.raw().max(1);
            let _ =
                worker
                    .running_since
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
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
            worker.parked_once.store(true, Ordering::Release);
            worker.running_since.store(0, Ordering::Release);
        }
    }

    fn unparked(self: &Arc<Self>) {
        if let Some(worker) = self.register() {
            // Never 0, which means parked.
            let now = self.recorder.clock.raw().max(1);
            worker.running_since.store(now, Ordering::Release);
        }
    }
}

/// Loads the C library's symbols into `backtrace`'s global cache (on the naming thread, when it
/// starts). Every stack a signal captures has the C library's signal trampoline in it, and a
/// sleeping worker's has its `clock_nanosleep`: loading that library's symbols the first time
/// took 90 ms on the watchdog thread in a release build, which delayed the first task stall
/// past twice the threshold. `clock_nanosleep`'s address is the C library's own (Rust loads
/// the address of a shared library's function from the GOT, not a PLT stub).
#[cfg(target_os = "linux")]
pub(crate) fn warm_up(symbolizer: &mut symbols::Symbolizer) {
    let in_libc = libc::clock_nanosleep as *const () as usize;
    symbolizer.frames(&[in_libc], 0);
    WARM.store(true, Ordering::Release);
}

/// A naming thread has loaded the program's and the C library's symbols (`backtrace`'s cache is
/// the process's): from then on naming a stack on the watchdog thread takes microseconds for
/// known addresses, not the whole load. Before, the watchdog thread would wait for the load
/// behind `backtrace`'s lock, holding up every check, the wrapped polls' included.
#[cfg(target_os = "linux")]
static WARM: AtomicBool = AtomicBool::new(false);

/// How long the runtime watchdog waits for a naming thread's warm-up before it names stacks
/// itself (a naming thread that could not start never warms anything).
#[cfg(target_os = "linux")]
const WARM_UP_WAIT: Duration = Duration::from_secs(5);

/// The calling thread's kernel id, from `/proc/thread-self` (`PID/task/TID`).
#[cfg(target_os = "linux")]
fn current_tid() -> Option<i32> {
    let path = std::fs::read_link("/proc/thread-self").ok()?;
    path.file_name()?.to_str()?.parse().ok()
}

#[cfg(target_os = "linux")]
fn target_of(slot: &Slot) -> Option<&signal::Target> {
    slot.attachment
        .as_deref()
        .and_then(|attachment| attachment.downcast_ref::<signal::Target>())
}

/// What one sample of a worker showed, to compare with the next.
#[cfg(target_os = "linux")]
#[derive(Clone, PartialEq, Eq, Debug)]
enum Key {
    /// Running its own code: the return addresses of its stack (the interrupted instruction
    /// left out).
    Stack(Vec<usize>),
    /// In a system call: `/proc/…/syscall` as read, and the thread's time slices so far.
    Syscall(Vec<u8>, u64),
}

/// The first sample of a possible stall.
#[cfg(target_os = "linux")]
struct Seen {
    at_raw: u64,
    key: Key,
    stack: Option<signal::RawStack>,
    /// The oldest the poll can be: the worker's unpark if no other poll was seen since, else
    /// the sample before this one.
    earliest_raw: u64,
    /// The runtime's workers' busy time at the sample (empty: not readable).
    busy: Vec<Duration>,
    /// The other workers' CPU time at the sample, by worker.
    cpu: Vec<(usize, u64)>,
}

/// What the watchdog thread remembers of one worker.
#[cfg(target_os = "linux")]
struct State {
    /// The `running_since` these apply to: a park in between starts over.
    since: u64,
    seen: Option<Seen>,
    /// The stall already reported, so that it is reported once.
    reported: Option<Key>,
    /// A sample showed no task poll (`block_on`'s future, `block_in_place`, between tasks):
    /// leave the worker alone until it parks.
    not_a_task: bool,
    generation: u64,
}

/// The watchdog thread's part: samples the watched runtimes' workers each check.
#[cfg(target_os = "linux")]
pub(crate) struct Sampler {
    runtimes: Arc<Runtimes>,
    scratch: Vec<Arc<Runtime>>,
    states: HashMap<usize, State>,
    handles: HashMap<usize, tokio::runtime::Handle>,
    reader: activity::Reader,
    symbolizer: symbols::Symbolizer,
    /// Per address: whether it is in `std::thread::sleep`.
    sleep_callers: HashMap<usize, bool>,
    buffer: Vec<u8>,
    generation: u64,
    /// When the sampler started, for [`WARM_UP_WAIT`].
    started: std::time::Instant,
    /// Stalls confirmed before the symbols were loaded, to name and report then.
    pending: Vec<Pending>,
}

/// A stall confirmed before the symbols were loaded.
#[cfg(target_os = "linux")]
struct Pending {
    worker: Arc<Worker>,
    stack: Option<signal::RawStack>,
    cause: Option<stalls::Cause>,
    running_ns: u64,
}

/// Stalls kept for when the symbols are loaded, at most (later ones are dropped).
#[cfg(target_os = "linux")]
const MAX_PENDING: usize = 64;

#[cfg(not(target_os = "linux"))]
pub(crate) struct Sampler;

#[cfg(not(target_os = "linux"))]
impl Sampler {
    pub(crate) fn new(_runtimes: Arc<Runtimes>) -> Self {
        Sampler
    }

    pub(crate) fn check(&mut self, _: &Recorder, _: &Arc<Watchdog>) {}
}

#[cfg(target_os = "linux")]
impl Sampler {
    pub(crate) fn new(runtimes: Arc<Runtimes>) -> Self {
        Self {
            runtimes,
            scratch: Vec::new(),
            states: HashMap::new(),
            handles: HashMap::new(),
            reader: activity::Reader::default(),
            symbolizer: symbols::Symbolizer::default(),
            sleep_callers: HashMap::new(),
            buffer: Vec::new(),
            generation: 0,
            started: std::time::Instant::now(),
            pending: Vec::new(),
        }
    }

    /// Whether stacks can be named now without waiting for the symbols to load (see [`WARM`]).
    fn can_name(&self) -> bool {
        WARM.load(Ordering::Acquire) || self.started.elapsed() >= WARM_UP_WAIT
    }

    /// One check of every watched runtime's workers.
    pub(crate) fn check(&mut self, recorder: &Recorder, watchdog: &Arc<Watchdog>) {
        self.generation = self.generation.wrapping_add(1);
        if !self.pending.is_empty() && self.can_name() {
            for pending in std::mem::take(&mut self.pending) {
                let Pending {
                    worker,
                    stack,
                    cause,
                    running_ns,
                } = pending;
                self.name_and_report(recorder, watchdog, &worker, stack, cause, running_ns);
            }
        }
        let mut runtimes = std::mem::take(&mut self.scratch);
        self.runtimes.snapshot(&mut runtimes);
        for runtime in &runtimes {
            let key = runtime.key();
            if let Some(handle) = runtime
                .handle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
            {
                self.handles.insert(key, handle);
            }
            let workers: Vec<Arc<Worker>> = runtime
                .workers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            if workers
                .iter()
                .all(|worker| worker.gone.load(Ordering::Acquire))
            {
                // A stopped runtime: let its handle go.
                self.handles.remove(&key);
            }
            for worker in &workers {
                self.check_worker(recorder, watchdog, key, worker, &workers);
            }
        }
        runtimes.clear();
        self.scratch = runtimes;
        let generation = self.generation;
        self.states
            .retain(|_, state| state.generation == generation);
    }

    fn check_worker(
        &mut self,
        recorder: &Recorder,
        watchdog: &Arc<Watchdog>,
        runtime: usize,
        worker: &Arc<Worker>,
        workers: &[Arc<Worker>],
    ) {
        if worker.gone.load(Ordering::Acquire) {
            return;
        }
        let since = worker.running_since.load(Ordering::Acquire);
        let threshold_ns = watchdog.threshold_ns;
        let now = recorder.clock.raw();
        // Sampled from half a threshold on; a stall needs a whole one (see `confirmed`).
        let busy_ns = if since == 0 {
            0
        } else {
            recorder.clock.delta_as_nanos(since, now)
        };
        if busy_ns < threshold_ns / 2 {
            return;
        }
        let generation = self.generation;
        let state = self
            .states
            .entry(Arc::as_ptr(worker) as usize)
            .or_insert(State {
                since,
                seen: None,
                reported: None,
                not_a_task: false,
                generation,
            });
        state.generation = generation;
        if state.since != since {
            *state = State {
                since,
                seen: None,
                reported: None,
                not_a_task: false,
                generation,
            };
        }
        if state.not_a_task {
            return;
        }
        // A watched poll in progress on this thread (`watch`, the layer, the task hooks): that
        // path reports it under its own label.
        if let Some(published) = worker.slot.read() {
            if published.detector == watchdog.id && published.start_raw != 0 {
                state.seen = None;
                return;
            }
        }
        if let Some(seen) = &state.seen {
            if recorder.clock.delta_as_nanos(seen.at_raw, now) < threshold_ns / 2 {
                return;
            }
        }
        let Some(target) = target_of(&worker.slot) else {
            return;
        };
        let busy = busy_times(self.handles.get(&runtime));
        let mut cpu = Vec::with_capacity(workers.len());
        for other in workers {
            if !Arc::ptr_eq(other, worker) && !other.gone.load(Ordering::Acquire) {
                if let Some(ns) = cpu_ns(&mut self.buffer, other.tid) {
                    cpu.push((Arc::as_ptr(other) as usize, ns));
                }
            }
        }
        let (key, stack, cause) = match self.reader.read(worker.tid) {
            Activity::User => {
                watchdog.requested.fetch_add(1, Ordering::Relaxed);
                match signal::capture(target, watchdog.signal, Duration::from_millis(250)) {
                    Ok(raw) => {
                        watchdog.completed.fetch_add(1, Ordering::Relaxed);
                        (stack_key(&raw), Some(raw), Some(stalls::Cause::Cpu))
                    }
                    Err(error) => {
                        watchdog.failed.count(&error);
                        return;
                    }
                }
            }
            // A thread that never parked and waits in a system call may be an idle thread of
            // the blocking pool: only a sleep, whose stack can be had, is looked at.
            Activity::Syscall(nr)
                if !worker.parked_once.load(Ordering::Acquire) && !is_sleep(nr) =>
            {
                return
            }
            Activity::Syscall(nr) => match syscall_key(&mut self.buffer, worker.tid) {
                Some(key) => (key, None, Some(stalls::Cause::Syscall(nr))),
                None => return,
            },
            Activity::Unknown | Activity::Unreadable => return,
        };
        if stack.is_some() && !self.can_name() {
            // A worker in its own code is sampled again once the symbols are loaded: before,
            // alike stacks of a loaded runtime's workers were taken for stalls (the load test,
            // all tests of its file at once). A sleeping worker's stall is confirmed, and kept
            // for then (`pending`).
            return;
        }
        let in_task = stack.as_ref().is_none_or(|raw| self.in_task(raw));
        let Some(state) = self.states.get_mut(&(Arc::as_ptr(worker) as usize)) else {
            return;
        };
        if !in_task {
            state.not_a_task = true;
            state.seen = None;
            return;
        }
        let confirmed = match &state.seen {
            // The same poll, not yet a threshold long: wait, keeping the first sample.
            Some(seen) if seen.key == key && busy_ns < threshold_ns => return,
            Some(seen) if seen.key == key => {
                if seen.busy.is_empty() || busy.is_empty() {
                    // No stable worker metrics here (no 64-bit atomics): the stacks decide.
                    true
                } else {
                    // tokio publishes a worker's busy time every 61 polls and when it parks,
                    // but says not which worker is which thread: a running worker whose busy
                    // time stood still since the first sample did not finish a poll. Stood
                    // still: more workers than are parked, or got (almost) no CPU time since
                    // (preempted, blocked in a system call: they cannot have polled), other
                    // than this one. A worker running short polls of the same code, whose
                    // stacks look alike, is then never a stall, even when another worker of a
                    // busy machine waits for a CPU.
                    let span_ns = recorder.clock.delta_as_nanos(seen.at_raw, now);
                    let idle = workers
                        .iter()
                        .filter(|other| !Arc::ptr_eq(other, worker))
                        .filter(|other| {
                            if other.gone.load(Ordering::Acquire) {
                                return false;
                            }
                            if other.running_since.load(Ordering::Acquire) == 0 {
                                return true;
                            }
                            let id = Arc::as_ptr(other) as usize;
                            let before = seen.cpu.iter().find(|(at, _)| *at == id);
                            let after = cpu.iter().find(|(at, _)| *at == id);
                            match (before, after) {
                                (Some((_, before)), Some((_, after))) => {
                                    after.saturating_sub(*before) < span_ns / 2
                                }
                                // Not readable: it may have stood still.
                                _ => true,
                            }
                        })
                        .count();
                    let still = seen
                        .busy
                        .iter()
                        .zip(&busy)
                        .filter(|(before, after)| before == after)
                        .count();
                    still > idle
                }
            }
            _ => false,
        };
        if !confirmed {
            // Another poll, or workers' busy times moved: this sample is the new first one.
            let earliest_raw = state.seen.as_ref().map_or(since, |seen| seen.at_raw);
            state.seen = Some(Seen {
                at_raw: now,
                key,
                stack,
                earliest_raw,
                busy,
                cpu,
            });
            return;
        }
        if state.reported.as_ref() == Some(&key) {
            return;
        }
        state.reported = Some(key);
        let Some(seen) = state.seen.take() else {
            return;
        };
        let running_ns = recorder.clock.delta_as_nanos(seen.earliest_raw, now);
        let stack = stack.or(seen.stack);
        let stack = match (stack, cause) {
            (None, Some(stalls::Cause::Syscall(nr))) if is_sleep(nr) => {
                let stack = self.sleep_stack(watchdog, worker, target);
                if stack.is_some() {
                    self.note_restarted_sleep(worker);
                }
                stack
            }
            (stack, _) => stack,
        };
        if !self.can_name() {
            // Counted and reported when the symbols are loaded: the label needs the names.
            if self.pending.len() < MAX_PENDING {
                self.pending.push(Pending {
                    worker: worker.clone(),
                    stack,
                    cause,
                    running_ns,
                });
            }
            return;
        }
        self.name_and_report(recorder, watchdog, worker, stack, cause, running_ns);
    }

    /// Reports a confirmed stall, unless its stack shows it was not a task's.
    fn name_and_report(
        &mut self,
        recorder: &Recorder,
        watchdog: &Arc<Watchdog>,
        worker: &Arc<Worker>,
        stack: Option<signal::RawStack>,
        cause: Option<stalls::Cause>,
        running_ns: u64,
    ) {
        let in_task = match &stack {
            Some(raw) => self.in_task(raw),
            // A thread not known to be a worker is reported only with a stack inside a task.
            None => worker.parked_once.load(Ordering::Acquire),
        };
        if !in_task {
            if let Some(state) = self.states.get_mut(&(Arc::as_ptr(worker) as usize)) {
                state.not_a_task = true;
            }
            return;
        }
        self.report(recorder, watchdog, worker, stack, cause, running_ns);
    }

    /// Whether `raw` was taken inside a task poll (tokio's task harness on the stack, and no
    /// `block_in_place` or blocking task above it).
    fn in_task(&mut self, raw: &signal::RawStack) -> bool {
        let frames = self.named_to_harness(raw);
        let names: Vec<String> = frames.into_iter().map(|frame| frame.name).collect();
        let within = symbols::within_poll(&names);
        within.len() < names.len()
            && !within.iter().any(|name| {
                name.contains("block_in_place") || name.contains("::blocking::task::BlockingTask")
            })
    }

    /// The names of `raw`'s frames from the interrupted one to tokio's task harness (or all of
    /// them, without the harness). The executor's frames below the harness name nothing of the
    /// task and are left unnamed: naming a new address costs tens of milliseconds the first
    /// time in a debug build (a test harness's frames, a `main`), on the watchdog thread, and a
    /// task stall's label must wait for the names.
    fn named_to_harness(&mut self, raw: &signal::RawStack) -> Vec<symbols::Frame> {
        // From the interrupted instruction on: the signal handler's frames before it (and the C
        // library's signal trampoline) are never named. Without it, `frames` finds the
        // handler's end among the first 32 addresses.
        let (start, mut end) = match raw.ips.iter().position(|ip| *ip == raw.pc) {
            Some(at) => (at, at + 8),
            None => (0, 40),
        };
        end = end.min(raw.ips.len());
        loop {
            let mut frames = self.symbolizer.frames(&raw.ips[start..end], raw.pc);
            let names: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
            let within = symbols::within_poll(&names).len();
            if within < names.len() {
                frames.truncate(within + 1);
                return frames;
            }
            if end == raw.ips.len() {
                return frames;
            }
            end = (end + 8).min(raw.ips.len());
        }
    }

    /// After the signal that took a sleeping worker's stack: `std::thread::sleep` restarts the
    /// same call (same arguments, same stack) on the time slice the signal woke it for, and
    /// later samples show that call, which must not be reported again. A second sleep, even an
    /// identical one, comes on a new slice. Waits (2 ms at most) for the thread to be back in
    /// the call, which takes longer in a debug build; if it is not, a later sample may report
    /// the same sleep twice.
    fn note_restarted_sleep(&mut self, worker: &Arc<Worker>) {
        let id = Arc::as_ptr(worker) as usize;
        let Some(Some(Key::Syscall(line, _))) =
            self.states.get(&id).map(|state| state.reported.clone())
        else {
            return;
        };
        for _ in 0..20 {
            if let Some(Key::Syscall(again, slices)) = syscall_key(&mut self.buffer, worker.tid) {
                if again == line {
                    if let Some(state) = self.states.get_mut(&id) {
                        state.reported = Some(Key::Syscall(again, slices));
                    }
                    return;
                }
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// The stack of a worker sleeping in `std::thread::sleep` (one signal, which that sleep
    /// survives), or `None` for any other sleeper.
    fn sleep_stack(
        &mut self,
        watchdog: &Watchdog,
        worker: &Worker,
        target: &signal::Target,
    ) -> Option<signal::RawStack> {
        let sp = syscall_stack_pointer(&mut self.buffer, worker.tid)?;
        let words = read_stack(sp, 512)?;
        let from_std = if self.can_name() {
            self.called_from_std_sleep(words)
        } else {
            // Before the symbols are loaded: a return address just after the start of
            // `std::thread::sleep`, into which std's sleep loop is inlined (the frame above the
            // C library's `clock_nanosleep` in std's builds); otherwise no signal.
            let sleep = std::thread::sleep as fn(Duration) as *const () as usize;
            words.iter().any(|word| word.wrapping_sub(sleep) < 512)
        };
        if !from_std {
            return None;
        }
        watchdog.requested.fetch_add(1, Ordering::Relaxed);
        match signal::capture(target, watchdog.signal, Duration::from_millis(250)) {
            Ok(raw) => {
                watchdog.completed.fetch_add(1, Ordering::Relaxed);
                Some(raw)
            }
            Err(error) => {
                watchdog.failed.count(&error);
                None
            }
        }
    }

    /// Whether a word of `words` is a return address in `std::thread::sleep` (or std's sleep
    /// it calls), by name.
    fn called_from_std_sleep(&mut self, words: Vec<usize>) -> bool {
        words.into_iter().any(|word| {
            if let Some(known) = self.sleep_callers.get(&word) {
                return *known;
            }
            let mut found = false;
            backtrace::resolve(word as *mut std::ffi::c_void, |symbol| {
                if let Some(name) = symbol.name() {
                    let name = format!("{name:#}");
                    found |= is_std_sleep(&name);
                }
            });
            if self.sleep_callers.len() >= 4096 {
                self.sleep_callers.clear();
            }
            self.sleep_callers.insert(word, found);
            found
        })
    }

    /// Counts and reports one stall, named from its stack.
    fn report(
        &mut self,
        recorder: &Recorder,
        watchdog: &Arc<Watchdog>,
        worker: &Worker,
        raw: Option<signal::RawStack>,
        cause: Option<stalls::Cause>,
        running_ns: u64,
    ) {
        let frames = raw
            .as_ref()
            .map(|raw| self.named_to_harness(raw))
            .unwrap_or_default();
        let culprit = symbols::culprit(&frames, &watchdog.prefixes);
        let mut stack: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
        stack.truncate(signal::MAX_FRAMES);
        let label = task_label(&frames, &watchdog.prefixes);
        let label = recorder.registry.get(&label, LabelKind::Task).name.clone();
        let now_ns = recorder.clock.delta_as_nanos(0, recorder.clock.raw());
        watchdog.stall_count.fetch_add(1, Ordering::Relaxed);
        let warn = {
            let mut table = watchdog.lock();
            let entry = table.entry(label.clone()).or_default();
            entry.stalls = entry.stalls.saturating_add(1);
            if let Some(cause) = cause {
                entry.causes.record(cause);
            }
            if !stack.is_empty() {
                let folded = symbols::fold(symbols::within_poll(&stack));
                entry.stacks.record(&folded, stalls::TRACKED);
            }
            if let Some(culprit) = &culprit {
                entry.culprits.record(culprit, stalls::TRACKED);
            }
            entry
                .warn_limiter
                .try_acquire(now_ns, recorder.warn_interval_ns)
        };
        let event = HogEvent {
            kind: HogKind::Stall,
            label,
            duration: Duration::from_nanos(running_ns),
            threshold: Duration::from_nanos(watchdog.threshold_ns),
            thread: Some(worker.slot.thread_name.clone()),
            stack,
            culprit,
        };
        if let Some(callback) = &recorder.on_hog {
            crate::event::call_on_hog(callback, &event);
        }
        if let Some(suppressed) = warn {
            let text = if event.stack.is_empty() {
                match cause {
                    Some(stalls::Cause::Syscall(nr)) => format!(
                        "blocked in the system call {} ({nr}); not interrupted for a stack",
                        activity::syscall_name(nr).unwrap_or("?")
                    ),
                    _ => "no stack".to_string(),
                }
            } else {
                event.stack.join("\n  ")
            };
            warn_stall(watchdog, &event, suppressed, &text);
        }
    }
}

/// The label of a task stall: `task ` and the first frame above tokio's task harness (outermost
/// first) that is not the runtime's, without its `{{closure}}` suffixes; [`UNKNOWN_TASK`] if
/// there is none.
pub(crate) fn task_label(frames: &[symbols::Frame], prefixes: &[String]) -> String {
    let names: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
    let within = symbols::within_poll(&names);
    if within.len() == names.len() {
        return UNKNOWN_TASK.to_string();
    }
    frames[..within.len()]
        .iter()
        .rev()
        .find(|frame| {
            !frame.system
                && frame.name != symbols::UNKNOWN
                && !symbols::is_runtime(&frame.name, prefixes)
        })
        .map_or_else(
            || UNKNOWN_TASK.to_string(),
            |frame| {
                let mut name = frame.name.as_str();
                while let Some(outer) = name.strip_suffix("::{{closure}}") {
                    name = outer;
                }
                format!("task {name}")
            },
        )
}

/// A user-code sample's identity: its return addresses, without the interrupted instruction
/// and the signal handler's frames before it.
#[cfg(target_os = "linux")]
fn stack_key(raw: &signal::RawStack) -> Key {
    let start = raw
        .ips
        .iter()
        .position(|ip| *ip == raw.pc)
        .map_or(0, |at| at + 1);
    Key::Stack(raw.ips[start.min(raw.ips.len())..].to_vec())
}

/// The CPU time a thread has had so far (`/proc/…/schedstat`, first field, in nanoseconds).
#[cfg(target_os = "linux")]
fn cpu_ns(buffer: &mut Vec<u8>, tid: i32) -> Option<u64> {
    let schedstat = read_proc(buffer, tid, "schedstat")?;
    std::str::from_utf8(&schedstat)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A system-call sample's identity: the call (number, arguments, stack and instruction
/// pointers) and the thread's time slices so far.
#[cfg(target_os = "linux")]
fn syscall_key(buffer: &mut Vec<u8>, tid: i32) -> Option<Key> {
    let schedstat = read_proc(buffer, tid, "schedstat")?;
    let slices: u64 = std::str::from_utf8(&schedstat)
        .ok()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    let line = read_proc(buffer, tid, "syscall")?;
    Some(Key::Syscall(line, slices))
}

/// The user stack pointer of a thread in a system call (the next-to-last field of
/// `/proc/…/syscall`).
#[cfg(target_os = "linux")]
fn syscall_stack_pointer(buffer: &mut Vec<u8>, tid: i32) -> Option<u64> {
    let line = read_proc(buffer, tid, "syscall")?;
    let text = std::str::from_utf8(&line).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    let sp = fields.get(fields.len().checked_sub(2)?)?;
    u64::from_str_radix(sp.trim_start_matches("0x"), 16).ok()
}

/// `bytes` bytes of this process's memory at `address`, as native words, read through
/// `/proc/self/mem` (an unmapped address is an error, not a fault).
#[cfg(target_os = "linux")]
fn read_stack(address: u64, bytes: usize) -> Option<Vec<usize>> {
    let mut file = std::fs::File::open("/proc/self/mem").ok()?;
    file.seek(SeekFrom::Start(address)).ok()?;
    let mut memory = vec![0u8; bytes];
    file.read_exact(&mut memory).ok()?;
    const WORD: usize = std::mem::size_of::<usize>();
    Some(
        memory
            .chunks_exact(WORD)
            .map(|chunk| {
                let mut word = [0u8; WORD];
                word.copy_from_slice(chunk);
                usize::from_ne_bytes(word)
            })
            .collect(),
    )
}

#[cfg(target_os = "linux")]
fn read_proc(buffer: &mut Vec<u8>, tid: i32, name: &str) -> Option<Vec<u8>> {
    buffer.clear();
    std::fs::File::open(format!("/proc/self/task/{tid}/{name}"))
        .and_then(|mut file| file.read_to_end(buffer))
        .ok()?;
    Some(buffer.clone())
}

/// Whether `name` is `std::thread::sleep` or the function of `std` it calls, which sleeps again
/// for the time left when a signal interrupts it (`std::thread::sleep`,
/// `std::thread::functions::sleep`, `std::sys::thread::unix::sleep`,
/// `std::sys::pal::unix::thread::Thread::sleep`, as std's layout changed).
fn is_std_sleep(name: &str) -> bool {
    name.starts_with("std::")
        && name.contains("thread")
        && (name.ends_with("::sleep") || name.ends_with("Thread::sleep"))
}

#[cfg(target_os = "linux")]
fn is_sleep(nr: libc::c_long) -> bool {
    nr == libc::SYS_nanosleep || nr == libc::SYS_clock_nanosleep
}

/// Each worker's busy time, from tokio's stable metrics (empty if not readable here).
#[cfg(target_os = "linux")]
fn busy_times(handle: Option<&tokio::runtime::Handle>) -> Vec<Duration> {
    #[cfg(target_has_atomic = "64")]
    if let Some(handle) = handle {
        let metrics = handle.metrics();
        return (0..metrics.num_workers())
            .map(|worker| metrics.worker_total_busy_duration(worker))
            .collect();
    }
    let _ = handle;
    Vec::new()
}
