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
//! Each check, a worker that has not parked for half a watchdog threshold is *sampled* like a
//! stalled watched poll, at most once per half threshold: a thread in a system call is never
//! signalled (the call could fail with `EINTR`), its stack is scanned (`scan`); a thread in its
//! own code is signalled for its stack, and the handler also reads the id of the tokio task it
//! polls. Two samples at least half a threshold apart that show the same poll, the second after
//! a whole threshold without a park, make a stall (reported once; at most 1.25 thresholds after
//! the poll began, plus one check interval):
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
//! task harness (the future given to `block_on`, a thread between tasks, `block_in_place`, a
//! `spawn_blocking` closure) is not a task stall. Names come from the program's symbol table
//! (`symtab`) until the naming thread has loaded the debug information, then from `backtrace`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::activity::{self, Activity};
use super::symtab::SymbolTable;
use super::{scan, signal, stalls, symbols, warn_stall, Watchdog};
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
    /// How many times it has unparked: a worker parked at two samples with the same count
    /// stayed parked between them.
    unparks: AtomicU64,
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
        // Samples in its own code tell polls apart by the task they poll (see `Key`).
        target_of(&slot)?.read_task_here();
        let worker = Arc::new(Worker {
            slot,
            tid,
            running_since: AtomicU64::new(0),
            unparks: AtomicU64::new(0),
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

    /// The thread that calls `watch_runtime`, taken for the one that will call `block_on` on a
    /// current-thread runtime: tokio says nothing of that thread before it parks, and a task
    /// spawned right away would block it unseen. On a multi-thread runtime it is sampled once,
    /// shows no task poll, and is left alone from then on.
    fn caller(self: &Arc<Self>) {
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
            worker.unparks.fetch_add(1, Ordering::Relaxed);
            worker.running_since.store(now, Ordering::Release);
        }
    }
}

/// Loads the C library's symbols into `backtrace`'s global cache (on the naming thread, when it
/// starts), then says that `backtrace` names stacks quickly from now on ([`WARM`]). Every stack
/// a signal captures has the C library's signal trampoline in it: loading that library's
/// symbols the first time took 90 ms in a release build here (250 ms with its separate debug
/// information installed). `clock_nanosleep`'s address is the C library's own (Rust loads the
/// address of a shared library's function from the GOT, not a PLT stub).
#[cfg(target_os = "linux")]
pub(crate) fn warm_up(symbolizer: &mut symbols::Symbolizer) {
    let in_libc = libc::clock_nanosleep as *const () as usize;
    symbolizer.frames(&[in_libc], 0);
    WARM.store(true, Ordering::Release);
}

/// A naming thread has loaded the program's and the C library's symbols (`backtrace`'s cache is
/// the process's): from then on naming a stack on the watchdog thread takes microseconds for
/// known addresses, not the whole load. Before, the runtime watchdog names stacks from the
/// program's symbol table ([`symtab`](super::symtab)) instead of waiting behind `backtrace`'s
/// lock, which would hold up every check, the wrapped polls' included.
#[cfg(target_os = "linux")]
static WARM: AtomicBool = AtomicBool::new(false);

/// How long the runtime watchdog waits for a naming thread's warm-up before it names stacks
/// with `backtrace` itself (a naming thread that could not start never warms anything).
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
    /// Running its own code: the tokio task it polls (its id as the signal handler read it; 0
    /// outside a task) and the return addresses from tokio's task harness to the thread's
    /// start, where the scheduler polls the task. The frames above the harness are left out: a
    /// poll on the CPU goes through many functions. Polls of alike tasks have the same
    /// addresses; the task's id tells them apart.
    Stack(u64, Vec<usize>),
    /// In a system call: `/proc/…/syscall` as read (number, arguments, stack and instruction
    /// pointers), and the thread's time slices so far (a thread that never left the call has
    /// had no new one; an identical second call has).
    Syscall(Vec<u8>, u64),
}

#[cfg(target_os = "linux")]
impl Key {
    /// Whether a stall already reported as `self` goes on in a sample that shows `other`: the
    /// same task still polled (a poll on the CPU goes through many functions, whose stacks
    /// differ), or the same system call.
    fn same_stall(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Stack(task, _), Key::Stack(other, _)) if *task != 0 => task == other,
            _ => self == other,
        }
    }
}

/// Another worker of the runtime at a sample, for the busy-time guard (`Sampler::stood_still`).
#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
struct Other {
    worker: usize,
    parked: bool,
    unparks: u64,
    cpu_ns: Option<u64>,
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
    /// The runtime's workers' busy times at the sample (empty: not readable).
    busy: Vec<Duration>,
    /// The other workers at the sample.
    others: Vec<Other>,
}

/// How many thresholds a worker whose sample showed no task poll is left alone: a worker
/// running `block_on`'s future or `block_in_place` is not signalled twice per threshold, and one
/// caught between two polls is looked at again soon (a stall there is then confirmed this much
/// later).
#[cfg(target_os = "linux")]
const QUIET_THRESHOLDS: u64 = 2;

/// What the watchdog thread remembers of one worker.
#[cfg(target_os = "linux")]
struct State {
    /// The `running_since` these apply to: a park in between starts over.
    since: u64,
    seen: Option<Seen>,
    /// The stall already reported, so that it is reported once.
    reported: Option<Key>,
    /// A sample showed no task poll (`block_on`'s future, `block_in_place`, the scheduler
    /// between two polls, an idle thread of the blocking pool): the clock reading before which
    /// the thread is left alone (see [`QUIET_THRESHOLDS`]).
    quiet_until: u64,
    generation: u64,
}

#[cfg(target_os = "linux")]
impl State {
    fn new(since: u64, generation: u64) -> Self {
        Self {
            since,
            seen: None,
            reported: None,
            quiet_until: 0,
            generation,
        }
    }
}

/// The watchdog thread's part: samples the watched runtimes' workers each check.
#[cfg(target_os = "linux")]
pub(crate) struct Sampler {
    runtimes: Arc<Runtimes>,
    scratch: Vec<Arc<Runtime>>,
    states: HashMap<usize, State>,
    handles: HashMap<usize, tokio::runtime::Handle>,
    reader: activity::Reader,
    scanner: scan::Scanner,
    names: Names,
    buffer: Vec<u8>,
    generation: u64,
}

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
            scanner: scan::Scanner::default(),
            names: Names::new(),
            buffer: Vec::new(),
            generation: 0,
        }
    }

    /// One check of every watched runtime's workers.
    pub(crate) fn check(&mut self, recorder: &Recorder, watchdog: &Arc<Watchdog>) {
        self.generation = self.generation.wrapping_add(1);
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
        let busy_ns = match since {
            0 => 0,
            since => recorder.clock.delta_as_nanos(since, now),
        };
        if busy_ns < threshold_ns / 2 {
            return;
        }
        let id = Arc::as_ptr(worker) as usize;
        let generation = self.generation;
        let state = self
            .states
            .entry(id)
            .or_insert_with(|| State::new(since, generation));
        state.generation = generation;
        if state.since != since {
            *state = State::new(since, generation);
        }
        if now < state.quiet_until {
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
        let seen_key = state.seen.as_ref().map(|seen| seen.key.clone());
        let Some(target) = target_of(&worker.slot) else {
            return;
        };
        let busy = busy_times(self.handles.get(&runtime));
        let others = self.others(worker, workers);
        let (key, stack, cause) = match self.reader.read(worker.tid) {
            Activity::User => {
                watchdog.requested.fetch_add(1, Ordering::Relaxed);
                match signal::capture(target, watchdog.signal, Duration::from_millis(250)) {
                    Ok(raw) => {
                        watchdog.completed.fetch_add(1, Ordering::Relaxed);
                        // The key is made below, from the names.
                        (
                            Key::Stack(raw.task, Vec::new()),
                            Some(raw),
                            Some(stalls::Cause::Cpu),
                        )
                    }
                    Err(error) => {
                        watchdog.failed.count(&error);
                        return;
                    }
                }
            }
            // Never signalled (the call could fail with `EINTR`): its stack is scanned, once
            // per call it waits in.
            Activity::Syscall(nr, registers) => {
                let Some(key) = syscall_key(&mut self.buffer, worker.tid) else {
                    return;
                };
                let stack = match seen_key.as_ref() == Some(&key) {
                    true => None,
                    false => self.scanner.scan_checked(registers, self.names.table()),
                };
                (key, stack, Some(stalls::Cause::Syscall(nr)))
            }
            Activity::Unknown | Activity::Unreadable => return,
        };
        let mut key = key;
        let in_task = match &stack {
            Some(raw) => match self.names.frames_to_harness(raw) {
                Some(named) => {
                    if let (Key::Stack(_, addresses), Some(harness)) = (&mut key, named.harness) {
                        *addresses = raw.ips[harness..].to_vec();
                    }
                    in_task(&named.frames)
                }
                // Nothing can name it yet (no symbol table): sampled again later.
                None => return,
            },
            // The same system call as the first sample, whose stack was looked at then; a call
            // whose stack could not be read counts only for a thread known to be a worker.
            None => seen_key.as_ref() == Some(&key) || worker.parked_once.load(Ordering::Acquire),
        };
        let Some(state) = self.states.get_mut(&id) else {
            return;
        };
        if !in_task {
            // A worker caught between two polls runs tasks again at once: it is looked at again
            // a few thresholds on. A thread that never parked (the blocking pool's: tokio starts
            // them with the same callback) runs no task: it is left alone until it parks.
            state.quiet_until = match worker.parked_once.load(Ordering::Acquire) {
                true => now.saturating_add(
                    recorder
                        .ticks
                        .of_ns(threshold_ns.saturating_mul(QUIET_THRESHOLDS)),
                ),
                false => u64::MAX,
            };
            state.seen = None;
            return;
        }
        let confirmed = match &state.seen {
            // The same poll, not yet a threshold long: wait, keeping the first sample.
            Some(seen) if seen.key == key && busy_ns < threshold_ns => return,
            Some(seen) if seen.key == key => stood_still(recorder, seen, now, &busy, &others),
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
                others,
            });
            return;
        }
        if state
            .reported
            .as_ref()
            .is_some_and(|reported| reported.same_stall(&key))
        {
            return;
        }
        state.reported = Some(key);
        let Some(seen) = state.seen.take() else {
            return;
        };
        let running_ns = recorder.clock.delta_as_nanos(seen.earliest_raw, now);
        // The latest stack, or the first sample's for a call that went on waiting.
        let stack = stack.or(seen.stack);
        self.report(recorder, watchdog, worker, stack, cause, running_ns);
    }

    /// The runtime's other workers now, for the busy-time guard (a worker that has not parked
    /// yet is left out: it counts as one that moved its busy time).
    fn others(&mut self, worker: &Arc<Worker>, workers: &[Arc<Worker>]) -> Vec<Other> {
        workers
            .iter()
            // Only threads that have parked are surely workers: the blocking pool's threads, and
            // the thread that called `watch_runtime` on a multi-thread runtime, never park.
            .filter(|other| {
                !Arc::ptr_eq(other, worker)
                    && !other.gone.load(Ordering::Acquire)
                    && other.parked_once.load(Ordering::Acquire)
            })
            .map(|other| Other {
                worker: Arc::as_ptr(other) as usize,
                parked: other.running_since.load(Ordering::Acquire) == 0,
                unparks: other.unparks.load(Ordering::Acquire),
                cpu_ns: cpu_ns(&mut self.buffer, other.tid),
            })
            .collect()
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
            .and_then(|raw| self.names.frames_to_harness(raw))
            .unwrap_or_default()
            .frames;
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
                        "blocked in the system call {} ({nr}), whose stack could not be read; \
                         not interrupted",
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

/// Whether a worker whose two samples match stood still in between: tokio's stable worker
/// metrics publish a worker's busy time only between polls (every 61 polls by default, and when
/// it parks), so a worker running many short polls moves it, and a stalled one does not. tokio
/// does not say which worker is which thread, so this counts: more busy times must have stood
/// still than there are other workers that may have left theirs alone. A worker that parked
/// between the samples published its busy time then and moved it; one parked at both samples
/// and never unparked in between did not; one that unparked since may not have published yet;
/// one that ran all along moved it unless it got less than half the time on a CPU (preempted
/// on a busy machine, blocked in a system call). Without the metrics (no 64-bit atomics) the
/// samples decide alone.
#[cfg(target_os = "linux")]
fn stood_still(
    recorder: &Recorder,
    seen: &Seen,
    now: u64,
    busy: &[Duration],
    others: &[Other],
) -> bool {
    if seen.busy.is_empty() || busy.is_empty() || seen.busy.len() != busy.len() {
        return true;
    }
    let span_ns = recorder.clock.delta_as_nanos(seen.at_raw, now);
    let may_have_stood_still = |after: &&Other| {
        let Some(before) = seen
            .others
            .iter()
            .find(|before| before.worker == after.worker)
        else {
            // Started since.
            return true;
        };
        let unparked = before.unparks != after.unparks;
        match (before.parked, after.parked) {
            (true, true) => !unparked,
            (false, true) => false,
            (true, false) => true,
            (false, false) if unparked => false,
            (false, false) => match (before.cpu_ns, after.cpu_ns) {
                (Some(before), Some(after)) => after.saturating_sub(before) < span_ns / 2,
                _ => true,
            },
        }
    };
    let idle = others.iter().filter(may_have_stood_still).count();
    let still = seen
        .busy
        .iter()
        .zip(busy)
        .filter(|(before, after)| before == after)
        .count();
    still > idle
}

/// Whether `frames` (innermost first, down to tokio's task harness) were taken inside a task
/// poll: the harness is there, and no `block_in_place` or blocking task above it.
fn in_task(frames: &[symbols::Frame]) -> bool {
    let names: Vec<String> = frames.iter().map(|frame| frame.name.clone()).collect();
    let within = symbols::within_poll(&names);
    within.len() < names.len()
        && !within.iter().any(|name| {
            name.contains("block_in_place") || name.contains("::blocking::task::BlockingTask")
        })
}

/// Names stacks on the watchdog thread: from the program's symbol table until a naming thread
/// has loaded `backtrace`'s debug information ([`WARM`]), then with `backtrace` (which also
/// names inlined functions). A debug build's first `backtrace` lookup parses the whole
/// program's debug information (hundreds of milliseconds); the symbol table loads in
/// milliseconds, so a stall right after `build()` is named in time.
#[cfg(target_os = "linux")]
struct Names {
    symbolizer: symbols::Symbolizer,
    /// The program's symbol table: its names until [`WARM`], where its functions start for
    /// the scanner's checks (`None`: not read yet, or stripped).
    table: Option<SymbolTable>,
    /// The symbol table could not be read (a stripped program): wait for `backtrace`.
    no_table: bool,
    started: std::time::Instant,
}

#[cfg(target_os = "linux")]
impl Names {
    fn new() -> Self {
        Self {
            symbolizer: symbols::Symbolizer::default(),
            table: None,
            no_table: false,
            started: std::time::Instant::now(),
        }
    }

    /// The names of `raw`'s frames from the interrupted one to tokio's task harness (or all of
    /// them, without the harness), and the index in `raw.ips` of the harness's frame; `None` if
    /// nothing can name them yet. The executor's frames below the harness name nothing of the
    /// task and are left unnamed: naming an address `backtrace` has not seen costs tens of
    /// milliseconds the first time in a debug build.
    fn frames_to_harness(&mut self, raw: &signal::RawStack) -> Option<Named> {
        // From the interrupted instruction on: the signal handler's frames before it (and the C
        // library's signal trampoline) are never named.
        let start = raw.ips.iter().position(|ip| *ip == raw.pc).unwrap_or(0);
        let mut frames = Vec::new();
        let mut names = Vec::new();
        for (at, ip) in raw.ips.iter().enumerate().skip(start) {
            let named = self.frames(*ip, at == start)?;
            names.extend(named.iter().map(|frame| frame.name.clone()));
            frames.extend(named);
            let within = symbols::within_poll(&names).len();
            if within < names.len() {
                frames.truncate(within + 1);
                return Some(Named {
                    frames,
                    harness: Some(at),
                });
            }
        }
        Some(Named {
            frames,
            harness: None,
        })
    }

    /// The program's symbol table, read the first time it is asked for (`None`: stripped).
    fn table(&mut self) -> Option<&SymbolTable> {
        if self.table.is_none() && !self.no_table {
            self.table = SymbolTable::load();
            self.no_table = self.table.is_none();
        }
        self.table.as_ref()
    }

    /// The frames at `ip` (more than one where functions were inlined into it), a return address
    /// unless it is the interrupted instruction (`is_pc`).
    fn frames(&mut self, ip: usize, is_pc: bool) -> Option<Vec<symbols::Frame>> {
        if WARM.load(Ordering::Acquire) || self.started.elapsed() >= WARM_UP_WAIT {
            // The names are `backtrace`'s from now on; the scanner still checks calls against
            // where functions start.
            if let Some(table) = self.table.as_mut() {
                table.forget_names();
            }
            return Some(self.symbolizer.frames(&[ip], ip));
        }
        // A return address is just past its call: look up the call itself.
        let call = if is_pc { ip } else { ip.saturating_sub(1) };
        let name = self
            .table()?
            .name(call)
            .map(super::stalls::cap_name)
            .unwrap_or_else(|| symbols::UNKNOWN.to_string());
        let system = signal::in_system_library(ip);
        Some(vec![symbols::Frame { name, system }])
    }
}

/// A stack named down to tokio's task harness.
#[cfg(target_os = "linux")]
#[derive(Default)]
struct Named {
    /// Innermost first, the harness's frame last.
    frames: Vec<symbols::Frame>,
    /// Where the harness's frame is in the raw stack's addresses (`None`: not in a task poll).
    harness: Option<usize>,
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

#[cfg(target_os = "linux")]
fn read_proc(buffer: &mut Vec<u8>, tid: i32, name: &str) -> Option<Vec<u8>> {
    buffer.clear();
    std::fs::File::open(format!("/proc/self/task/{tid}/{name}"))
        .and_then(|mut file| file.read_to_end(buffer))
        .ok()?;
    Some(buffer.clone())
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
