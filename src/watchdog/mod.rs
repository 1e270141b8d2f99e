//! The stall watchdog: catches a poll while it is still blocking, records the blocked thread's
//! stack and names the culprit. See the [guide](crate::docs::watchdog).
//!
//! - `activity`: whether a stalled thread runs its own code or waits in a system call, and its
//!   CPU and run-queue clocks (`/proc`);
//! - `signal`: the only `unsafe` code, interrupting a thread to record its stack;
//! - `scan`: the stack of a thread waiting in a system call, read without interrupting it;
//! - `unwind`: the exact, table-driven unwinder both of them use (the other `unsafe` room: it
//!   reads the loaded objects' unwind tables and the interrupted stack in place);
//! - `symbols`: names, folded stacks and culprits, on the naming thread;
//! - `stalls`: per-label stall statistics for the report: causes, stacks, the sampled profile;
//! - `symtab`: function names from the program's ELF symbol table, in milliseconds (the
//!   runtime watchdog's names before the debug information is loaded);
//! - `workers`: the runtime watchdog (`Detector::watch_runtime`): stalls of any task of a
//!   runtime, found by sampling its busy workers, named from their stacks.
//!
//! While a watched poll stays stalled the watchdog samples it at each check (every quarter of
//! the threshold), within a budget of [`SAMPLES_PER_SECOND`] for all the watched polls: each
//! sample records what the thread was doing (its cause), its stack, and its CPU time since the
//! previous sample. The runtime watchdog's samples are paced per worker instead (about two per
//! threshold while it is busy: `workers`), outside that budget.
//!
//! A stall is counted and reported when the watchdog sees it; its stack is captured right away
//! (unless the thread waits in a system call, which a signal would interrupt), and named by a
//! thread of its own (`Namer`), which loads the program's debug information when it starts:
//! neither the first check, nor any later one, nor dropping the detector waits for that.
//!
//! The recorder's poll path (`Recorder::begin` and `end`, used by watched futures, streams, the
//! layer's bodies and tokio's task hooks) publishes each poll in its thread's slot
//! (`crate::recorder::slot`), restoring what the thread published before, so a watched poll
//! inside a task poll is reported under its own label and the task's comes back when it
//! returns. The watchdog reads the slots; it attaches its signal target to each thread as it
//! registers (`slot::attach_with`).

#[cfg(target_os = "linux")]
mod activity;
#[cfg(target_os = "linux")]
mod scan;
#[cfg(target_os = "linux")]
mod signal;
mod stalls;
mod symbols;
#[cfg(target_os = "linux")]
mod symtab;
#[cfg(target_os = "linux")]
mod unwind;
mod workers;
pub(crate) use workers::install as install_workers;
pub use workers::NoWatchdog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::event::{HogEvent, HogKind};
use crate::recorder::slot::{self, Published};
use crate::recorder::Recorder;
use crate::report::{Entry, WatchdogStats};

pub(crate) use symbols::DEFAULT_RUNTIME_PREFIXES;

/// The watchdog's configuration, as the builder collected it (`threshold: None`: no watchdog).
#[derive(Clone, Debug, Default)]
pub(crate) struct Config {
    pub(crate) threshold: Option<Duration>,
    pub(crate) signal: Option<i32>,
    pub(crate) runtime_prefixes: Option<Vec<String>>,
}

/// Why a watchdog could not be set up.
#[derive(Debug)]
pub(crate) enum SetupError {
    InvalidSignal(i32),
    Install(std::io::Error),
}

/// What the watchdog thread and the reports share.
pub(crate) struct Watchdog {
    /// This detector's id in the thread slots (never 0).
    pub(crate) id: u64,
    threshold_ns: u64,
    threshold_us: u64,
    signal: i32,
    prefixes: Vec<String>,
    stalls: Mutex<HashMap<Arc<str>, stalls::LabelStalls>>,
    stall_count: AtomicU64,
    requested: AtomicU64,
    completed: AtomicU64,
    /// Failed captures, one counter per kind of failure (their sum is `captures_failed`).
    failed: FailedCaptures,
    samples: AtomicU64,
    skipped: AtomicU64,
    /// The process that built it: in a `fork()` child its thread does not exist.
    pid: u32,
    /// The runtimes `Detector::watch_runtime` watches (see `workers`).
    runtimes: Arc<workers::Runtimes>,
}

/// Failed captures by kind: a `Timeout` under load is expected now and then, a `Stuck` or a
/// `Busy` is a bug, and the tests tell them apart.
#[derive(Default)]
struct FailedCaptures {
    timeout: AtomicU64,
    busy: AtomicU64,
    stuck: AtomicU64,
    displaced: AtomicU64,
    unsent: AtomicU64,
}

impl FailedCaptures {
    #[cfg(target_os = "linux")]
    fn count(&self, error: &signal::CaptureError) {
        let counter = match error {
            signal::CaptureError::Timeout => &self.timeout,
            signal::CaptureError::Busy => &self.busy,
            signal::CaptureError::Stuck => &self.stuck,
            signal::CaptureError::Displaced => &self.displaced,
            signal::CaptureError::Send(_) => &self.unsent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters read (or taken) with `take`, and their sum as `captures_failed`.
    fn stats(&self, take: impl Fn(&AtomicU64) -> u64) -> WatchdogStats {
        let (timeout, busy, stuck) = (take(&self.timeout), take(&self.busy), take(&self.stuck));
        let (displaced, unsent) = (take(&self.displaced), take(&self.unsent));
        WatchdogStats {
            captures_failed: [timeout, busy, stuck, displaced, unsent]
                .into_iter()
                .fold(0, u64::saturating_add),
            captures_timeout: timeout,
            captures_busy: busy,
            captures_stuck: stuck,
            captures_displaced: displaced,
            captures_unsent: unsent,
            ..WatchdogStats::default()
        }
    }
}

/// The shortest watchdog threshold: below it the watchdog would look at, and signal, nearly
/// every poll.
pub(crate) const MIN_THRESHOLD: Duration = Duration::from_millis(1);

/// Whether `signal` can be given to `Builder::watchdog_signal` on this platform.
pub(crate) fn usable_signal(signal: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        signal::usable(signal)
    }
    #[cfg(not(target_os = "linux"))]
    {
        signal > 0
    }
}

/// What a stall event says when no stack can be had on this platform.
#[cfg(not(target_os = "linux"))]
const NO_STACK: &str = "no stack on this platform";

impl Watchdog {
    /// Checks the configuration and installs the signal handler.
    pub(crate) fn new(config: Config, threshold: Duration) -> Result<Self, SetupError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        #[cfg(target_os = "linux")]
        let signal = config.signal.unwrap_or(signal::DEFAULT_SIGNAL);
        #[cfg(not(target_os = "linux"))]
        let signal = config.signal.unwrap_or(27);
        if !usable_signal(signal) {
            return Err(SetupError::InvalidSignal(signal));
        }
        #[cfg(target_os = "linux")]
        signal::install(signal).map_err(SetupError::Install)?;
        // Each thread that registers a slot gets its signal target, made on the thread.
        #[cfg(target_os = "linux")]
        slot::attach_with(|| {
            let attached = signal::Attached::current_thread();
            (attached.target().clone(), Box::new(attached))
        });
        // `watch_runtime` finds this watchdog's runtime list by its id (the recorder knows the
        // id, not the watchdog).
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let runtimes = Arc::new(workers::Runtimes::default());
        workers::register(id, &runtimes);
        Ok(Self {
            id,
            runtimes,
            threshold_ns: threshold.as_nanos().try_into().unwrap_or(u64::MAX),
            threshold_us: threshold.as_micros().try_into().unwrap_or(u64::MAX),
            signal,
            prefixes: config.runtime_prefixes.unwrap_or_else(|| {
                DEFAULT_RUNTIME_PREFIXES
                    .iter()
                    .map(|prefix| prefix.to_string())
                    .collect()
            }),
            stalls: Mutex::new(HashMap::new()),
            stall_count: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: FailedCaptures::default(),
            samples: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            pid: std::process::id(),
        })
    }

    /// The counters, for the report (and zeroed with `reset`).
    pub(crate) fn stats(&self, reset: bool) -> WatchdogStats {
        let take = |counter: &AtomicU64| {
            if reset {
                counter.swap(0, Ordering::Relaxed)
            } else {
                counter.load(Ordering::Relaxed)
            }
        };
        WatchdogStats {
            threshold_us: self.threshold_us,
            signal: self.signal,
            stack_mode: stack_mode(),
            stalls: take(&self.stall_count),
            captures_requested: take(&self.requested),
            captures_completed: take(&self.completed),
            samples: take(&self.samples),
            samples_skipped: take(&self.skipped),
            ..self.failed.stats(take)
        }
    }

    /// Adds each label's stalls, stacks and culprits to its report entry.
    pub(crate) fn fill(&self, entries: &mut [Entry], reset: bool) {
        let Some(mut table) = self.lock_for_report() else {
            return;
        };
        for entry in entries.iter_mut() {
            if let Some(stalls) = table.get(entry.label.as_str()) {
                entry.stalls = stalls.stalls;
                entry.top_stacks = stalls.top_stacks();
                entry.top_culprits = stalls.top_culprits();
                entry.samples = stalls.samples;
                entry.causes = stalls.causes.report();
                entry.functions = stalls.functions.report(stalls.samples);
                entry.stall_wall_us = stalls.sampled_ns / 1_000;
                entry.stall_cpu_us = stalls.cpu_ns / 1_000;
                // A wrapped stall's poll ends in the recorder: its duration is the longest
                // poll's (within its histogram bucket) if the watchdog's samples saw less.
                entry.longest_stall_us = (stalls.longest_ns / 1_000).max(match stalls.stalls {
                    0 => 0,
                    _ => entry.max_poll_us,
                });
            }
        }
        if reset {
            table.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, stalls::LabelStalls>> {
        // A poisoned lock only means a callback panicked while we held it; the table is whole.
        self.stalls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The table for a report. In a `fork()` child the watchdog thread may have held the lock
    /// when the process was copied, and it is not there to release it: then the report goes
    /// without the stall figures rather than waiting for ever.
    fn lock_for_report(
        &self,
    ) -> Option<std::sync::MutexGuard<'_, HashMap<Arc<str>, stalls::LabelStalls>>> {
        if std::process::id() == self.pid {
            return Some(self.lock());
        }
        match self.stalls.try_lock() {
            Ok(table) => Some(table),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// How stacks are captured here: `"unwind"`, `"pc"` (interrupted instruction only) or
/// `"unsupported"`.
fn stack_mode() -> &'static str {
    #[cfg(target_os = "linux")]
    {
        if signal::full_unwind() {
            "unwind"
        } else {
            "pc"
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        "unsupported"
    }
}

/// The watchdog thread; stops (promptly) and is joined when dropped.
pub(crate) struct WatchdogThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// The process the thread runs in: a `fork()` child has a copy of this handle, not the thread.
    pid: u32,
}

impl WatchdogThread {
    /// Starts the thread that watches `recorder`'s polls (and, on Linux, the thread that names
    /// the stacks it captures).
    pub(crate) fn spawn(recorder: Arc<Recorder>, watchdog: Arc<Watchdog>) -> std::io::Result<Self> {
        #[cfg(target_os = "linux")]
        let namer = Namer::spawn(watchdog.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let checker = Checker {
            workers: workers::Sampler::new(watchdog.runtimes.clone()),
            recorder,
            watchdog,
            stalled: HashMap::new(),
            budget: Budget::default(),
            #[cfg(target_os = "linux")]
            activity: activity::Reader::default(),
            #[cfg(target_os = "linux")]
            scanner: scan::Scanner::default(),
            #[cfg(target_os = "linux")]
            namer,
            #[cfg(target_os = "linux")]
            reinstalled: signal::reinstalled(),
        };
        let handle = std::thread::Builder::new()
            .name("hogwatch-watchdog".to_string())
            .spawn(move || checker.run(&flag))?;
        Ok(Self {
            stop,
            handle: Some(handle),
            pid: std::process::id(),
        })
    }
}

impl Drop for WatchdogThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            if std::process::id() != self.pid {
                // A `fork()` child: the thread stayed in the parent. Joining would wait for ever,
                // and even detaching touches the parent's thread record: leave it alone.
                std::mem::forget(handle);
                return;
            }
            handle.thread().unpark();
            // The last detector may be dropped by a callback on the watchdog thread itself:
            // it then sees the flag and ends after the callback returns.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// A poll the watchdog saw stalled, and when to report it again.
struct Stall {
    label: usize,
    start_raw: u64,
    next_report_ns: u64,
    reports: u64,
    seen_in: u64,
    /// The thread's CPU clock and the watchdog's clock (in ns) at this stall's recent
    /// samples, oldest first: the last one for its CPU time, the oldest (about
    /// [`PREEMPTION_WINDOW`] ago) to tell preemption from a busy machine's usual sharing.
    #[cfg(target_os = "linux")]
    readings: std::collections::VecDeque<(activity::SchedClocks, u64)>,
}

/// The time over which a thread's run-queue wait and CPU time are compared to call it
/// `preempted`: several of the scheduler's time slices, so that a thread that shares a CPU
/// fairly is not called preempted because one short interval fell between its slices.
#[cfg(target_os = "linux")]
const PREEMPTION_WINDOW: Duration = Duration::from_millis(100);

impl Stall {
    fn new(published: Published, threshold_ns: u64, generation: u64) -> Self {
        Self {
            label: published.label,
            start_raw: published.start_raw,
            next_report_ns: threshold_ns,
            reports: 0,
            seen_in: generation,
            #[cfg(target_os = "linux")]
            readings: std::collections::VecDeque::new(),
        }
    }
}

/// Samples per second, at most, for one watchdog (all stalled threads together). A stall is
/// always sampled when it is reported (when first seen, then at 2, 4, 8... times the threshold);
/// the samples in between come out of this budget.
pub(crate) const SAMPLES_PER_SECOND: u64 = 100;

/// The sampling budget: credit in nanoseconds, earned with time (up to one second's worth), a
/// sample costing `1 s / SAMPLES_PER_SECOND`.
#[derive(Default)]
struct Budget {
    credit_ns: u64,
    last_ns: u64,
}

impl Budget {
    const COST_NS: u64 = 1_000_000_000 / SAMPLES_PER_SECOND;

    /// Takes one sample's credit if there is enough at `now_ns` (a report always takes it,
    /// going into debt no further than zero).
    fn take(&mut self, now_ns: u64, always: bool) -> bool {
        let earned = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.credit_ns = self.credit_ns.saturating_add(earned).min(1_000_000_000);
        if self.credit_ns >= Self::COST_NS || always {
            self.credit_ns = self.credit_ns.saturating_sub(Self::COST_NS);
            true
        } else {
            false
        }
    }
}

/// A captured stack to name and record under its label, and maybe to warn about.
#[cfg(target_os = "linux")]
struct Job {
    raw: signal::RawStack,
    label: Arc<str>,
    /// The sample to record with the names.
    sample: stalls::Sample,
    /// Now and the warning interval, if the sample may warn (see `LabelStalls::record`).
    warn_at: Option<(u64, u64)>,
    /// The stall's event, without stack yet, if it is reported.
    event: Option<HogEvent>,
    /// Where the named stack goes if the watchdog thread still waits for it.
    reply: Option<std::sync::mpsc::Sender<(Vec<String>, Option<String>)>>,
}

/// The thread that names captured stacks (`hogwatch-symbols`): reading debug information takes
/// about a second the first time in a debug build, and naming new addresses can take tens of
/// milliseconds after that, which the watchdog thread must not spend away from its checks. It
/// loads the program's debug information as soon as it starts (before any stall, usually), and
/// ends when the watchdog thread does; nothing waits for it.
#[cfg(target_os = "linux")]
struct Namer {
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
}

/// Stacks waiting to be named, at most; later ones are dropped (their stalls are still counted
/// and reported).
#[cfg(target_os = "linux")]
const MAX_WAITING: usize = 64;

#[cfg(target_os = "linux")]
impl Namer {
    fn spawn(watchdog: Arc<Watchdog>) -> Self {
        let (jobs, receive) = std::sync::mpsc::sync_channel::<Job>(MAX_WAITING);
        let spawned = std::thread::Builder::new()
            .name("hogwatch-symbols".to_string())
            .spawn(move || {
                // The debug information loads beside: stacks named meanwhile take their names
                // from the symbol table.
                symbols::warm_up_in_background();
                let mut symbolizer = symbols::Symbolizer::default();
                while let Ok(job) = receive.recv() {
                    let Job {
                        raw,
                        label,
                        mut sample,
                        warn_at,
                        event,
                        reply,
                    } = job;
                    let mut frames = symbolizer.frames(&raw.ips, raw.pc, raw.uncertain_from);
                    frames.truncate(signal::MAX_FRAMES);
                    let named = symbols::named_stack(&frames, &watchdog.prefixes);
                    let culprit = named.culprit.clone();
                    sample.named = Some(named);
                    let warn = watchdog
                        .lock()
                        .entry(label)
                        .or_default()
                        .record(&sample, warn_at);
                    let stack: Vec<String> = frames.into_iter().map(|frame| frame.name).collect();
                    if let Some(reply) = reply {
                        let _ = reply.send((stack.clone(), culprit.clone()));
                    }
                    if let (Some(mut event), Some(suppressed)) = (event, warn) {
                        event.stack = stack;
                        event.culprit = culprit;
                        warn_stall(&watchdog, &event, suppressed, &event.stack.join("\n  "));
                    }
                }
            });
        Self {
            // Without the thread, stacks are captured but never named.
            jobs: spawned.ok().map(|_| jobs),
        }
    }

    /// Hands `job` to the naming thread; `false` if that thread is busy or gone.
    fn send(&self, job: Job) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.try_send(job).is_ok())
    }
}

/// One `tracing` warning about a stall; `stack` is the stack as text, or why there is none.
fn warn_stall(watchdog: &Watchdog, event: &HogEvent, suppressed: u64, stack: &str) {
    let running_ns = u64::try_from(event.duration.as_nanos()).unwrap_or(u64::MAX);
    let thread = event.thread.as_deref().unwrap_or("?");
    tracing::warn!(
        target: "hogwatch",
        label = %event.label,
        running_ms = running_ns / 1_000_000,
        threshold_us = watchdog.threshold_us,
        thread = %thread,
        culprit = event.culprit.as_deref().unwrap_or("unknown"),
        suppressed,
        "a poll has been blocking the executor for {:.1} ms, in {}; stack:\n  {}",
        running_ns as f64 / 1e6,
        event.culprit.as_deref().unwrap_or("unknown code"),
        stack,
    );
}

/// The watchdog thread's state.
struct Checker {
    /// Samples the workers of the runtimes `watch_runtime` watches.
    workers: workers::Sampler,
    recorder: Arc<Recorder>,
    watchdog: Arc<Watchdog>,
    stalled: HashMap<usize, Stall>,
    budget: Budget,
    #[cfg(target_os = "linux")]
    activity: activity::Reader,
    #[cfg(target_os = "linux")]
    scanner: scan::Scanner,
    #[cfg(target_os = "linux")]
    namer: Namer,
    /// `signal::reinstalled()` when last looked at, to warn when it changes.
    #[cfg(target_os = "linux")]
    reinstalled: u64,
}

/// What became of one sample of a stall.
enum Sample {
    /// The stack was captured (by the signal) or read (by a scan).
    #[cfg(target_os = "linux")]
    Stack(signal::RawStack),
    /// No stack, for this reason.
    None(String),
}

/// One sample of a stalled thread.
struct Taken {
    sample: Sample,
    /// What the thread was doing (`None`: it was changing state, or `/proc` is unreadable).
    cause: Option<stalls::Cause>,
    /// The thread's CPU time and the time since the previous sample, if both were read.
    cpu_and_wall_ns: Option<(u64, u64)>,
}

impl Checker {
    /// How often the slots are looked at: every quarter of the threshold (100 µs at the least).
    fn interval(&self) -> Duration {
        Duration::from_nanos(self.watchdog.threshold_ns / 4).max(Duration::from_micros(100))
    }

    /// How long the watchdog thread waits for a stack to be named before it reports the stall
    /// without it (the stack is still named, recorded and warned about when it is ready): a
    /// fraction of the interval between checks, 20 ms at most.
    fn naming_budget(&self) -> Duration {
        (self.interval() / 2).min(Duration::from_millis(20))
    }

    fn run(mut self, stop: &AtomicBool) {
        let interval = self.interval();
        let mut slots = Vec::new();
        let mut generation = 0u64;
        while !stop.load(Ordering::Acquire) {
            std::thread::park_timeout(interval);
            if stop.load(Ordering::Acquire) {
                break;
            }
            generation = generation.wrapping_add(1);
            slot::snapshot(&mut slots);
            for slot in &slots {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                self.check(slot, generation);
            }
            self.stalled.retain(|_, stall| stall.seen_in == generation);
            // Then every watched runtime's workers.
            if !stop.load(Ordering::Acquire) {
                self.workers.check(&self.recorder, &self.watchdog);
            }
        }
    }

    /// Looks at one thread: if its poll has run past the threshold, samples it (within the
    /// budget), and reports it when first seen and again at each doubling (1x, 2x, 4x... the
    /// threshold), so a poll that never returns is reported a few times, not every check.
    fn check(&mut self, slot: &Arc<slot::Slot>, generation: u64) {
        let Some(published) = slot.read() else {
            return;
        };
        if published.detector != self.watchdog.id || published.start_raw == 0 {
            return;
        }
        let now = self.recorder.clock.raw();
        let running_ns = self.recorder.clock.delta_as_nanos(published.start_raw, now);
        let threshold_ns = self.watchdog.threshold_ns;
        if running_ns < threshold_ns {
            return;
        }
        let key = Arc::as_ptr(slot) as usize;
        let stall = self
            .stalled
            .entry(key)
            .or_insert_with(|| Stall::new(published, threshold_ns, generation));
        if stall.label != published.label || stall.start_raw != published.start_raw {
            *stall = Stall::new(published, threshold_ns, generation);
        }
        stall.seen_in = generation;
        let due = running_ns >= stall.next_report_ns;
        while stall.next_report_ns <= running_ns {
            stall.next_report_ns = stall.next_report_ns.saturating_mul(2);
        }
        let first = stall.reports == 0;
        if due {
            stall.reports += 1;
        }
        let now_ns = self.recorder.clock.delta_as_nanos(0, now);
        if !self.budget.take(now_ns, due) {
            self.watchdog.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.sample_and_report(slot, key, published, running_ns, first, due);
    }

    /// Samples one stalled poll (its cause, stack and CPU time) and, if `report`, counts it
    /// (when `first`) and reports it, with its stack if it can be had (and named) now.
    ///
    /// The sample is recorded once, under one lock of the stall table: by the naming thread
    /// with its names when there is a stack, here without one otherwise.
    fn sample_and_report(
        &mut self,
        slot: &slot::Slot,
        key: usize,
        published: Published,
        running_ns: u64,
        first: bool,
        report: bool,
    ) {
        let Some(label) = self.recorder.registry.find(published.label) else {
            return;
        };
        let watchdog = self.watchdog.clone();
        // Counted when seen: whatever becomes of its stack, the poll did stall.
        if first && report {
            watchdog.stall_count.fetch_add(1, Ordering::Relaxed);
        }
        let Taken {
            sample,
            cause,
            cpu_and_wall_ns,
        } = self.sample(slot, key, report);
        watchdog.samples.fetch_add(1, Ordering::Relaxed);
        // The poll may have ended before the stack was taken: it is then someone else's.
        // (Still the same poll now means the handler ran inside it, or inside a poll nested in
        // it, since a thread only comes back to a poll's start reading by returning to it.)
        let sample = match sample {
            #[cfg(target_os = "linux")]
            Sample::Stack(_) if slot.read() != Some(published) => {
                Sample::None("the poll returned before its stack was taken".to_string())
            }
            sample => sample,
        };
        let now_ns = self
            .recorder
            .clock
            .delta_as_nanos(0, self.recorder.clock.raw());
        let record = stalls::Sample {
            first: first && report,
            running_ns,
            cause,
            cpu_and_wall_ns,
            named: None,
        };
        let warn_at = report.then_some((now_ns, self.recorder.warn_interval_ns));
        #[allow(unused_mut)]
        let mut event = HogEvent {
            kind: HogKind::Stall,
            label: label.name.clone(),
            duration: Duration::from_nanos(running_ns),
            threshold: Duration::from_nanos(watchdog.threshold_ns),
            thread: Some(slot.thread_name.clone()),
            stack: Vec::new(),
            culprit: None,
        };
        // The reason there is no stack, and the sample left to record here.
        let (reason, record) = match sample {
            #[cfg(target_os = "linux")]
            Sample::Stack(raw) => {
                let (reply, named) = std::sync::mpsc::channel();
                let job = Job {
                    raw,
                    label: label.name.clone(),
                    sample: record.clone(),
                    warn_at,
                    // A sample between reports is named and recorded, nobody waits for it.
                    event: report.then(|| event.clone()),
                    reply: report.then_some(reply),
                };
                // The naming thread records the sample and sends the warning; the event gets
                // the names if they come quickly (no new address to look up).
                if self.namer.send(job) {
                    if !report {
                        return;
                    }
                    if let Ok((stack, culprit)) = named.recv_timeout(self.naming_budget()) {
                        event.stack = stack;
                        event.culprit = culprit;
                    }
                    (None, None)
                } else {
                    let reason = "not named: too many stacks waiting for their names";
                    (Some(reason.to_string()), Some(record))
                }
            }
            Sample::None(reason) => (Some(reason), Some(record)),
        };
        let warn = record.and_then(|record| {
            watchdog
                .lock()
                .entry(label.name.clone())
                .or_default()
                .record(&record, warn_at)
        });
        if !report {
            return;
        }
        if let Some(callback) = &self.recorder.on_hog {
            crate::event::call_on_hog(callback, &event);
        }
        if let (Some(reason), Some(suppressed)) = (reason, warn) {
            warn_stall(&watchdog, &event, suppressed, &reason);
        }
    }

    /// What the stalled thread is doing: its cause, its CPU time since the previous sample of
    /// this stall, and its stack, captured with the signal if it runs its own code, or scanned
    /// if it waits in a system call (which a signal would interrupt).
    ///
    /// A sample between reports waits for the signal's answer no longer than the interval
    /// between checks: a thread the machine hardly runs must not hold up the watchdog's look
    /// at the others (a report waits 250 ms, as it always did).
    #[cfg(target_os = "linux")]
    fn sample(&mut self, slot: &slot::Slot, key: usize, report: bool) -> Taken {
        let Some(target) = slot
            .attachment
            .as_deref()
            .and_then(|attachment| attachment.downcast_ref::<signal::Target>())
        else {
            // Registered before any watchdog existed (cannot happen: only a detector with a
            // watchdog publishes polls); nothing to signal.
            return Taken {
                sample: Sample::None("no signal target".to_string()),
                cause: None,
                cpu_and_wall_ns: None,
            };
        };
        let tid = target.tid();
        let seen = self.activity.read(tid);
        // The thread's clocks now, at the previous sample of this stall, and about
        // PREEMPTION_WINDOW ago.
        let now_ns = self
            .recorder
            .clock
            .delta_as_nanos(0, self.recorder.clock.raw());
        let clocks = self.activity.clocks(tid);
        let (previous, oldest) = match self.stalled.get_mut(&key) {
            Some(stall) => {
                let previous = stall.readings.back().copied();
                let window = PREEMPTION_WINDOW.as_nanos() as u64;
                while stall.readings.len() > 1
                    && stall.readings[1].1.saturating_add(window) <= now_ns
                {
                    stall.readings.pop_front();
                }
                let oldest = stall.readings.front().copied();
                match clocks {
                    Some(clocks) => stall.readings.push_back((clocks, now_ns)),
                    None => stall.readings.clear(),
                }
                (previous, oldest)
            }
            None => (None, None),
        };
        let cpu_and_wall_ns = previous.zip(clocks).map(|((before, then_ns), now)| {
            let wall_ns = now_ns.saturating_sub(then_ns);
            (
                now.cpu_ns.saturating_sub(before.cpu_ns).min(wall_ns),
                wall_ns,
            )
        });
        let preempted = oldest.zip(clocks).is_some_and(|((before, then_ns), now)| {
            stalls::preempted(
                now.cpu_ns.saturating_sub(before.cpu_ns),
                now_ns.saturating_sub(then_ns),
            )
        });
        let taken = |sample, cause| Taken {
            sample,
            cause,
            cpu_and_wall_ns,
        };
        let cause = match seen {
            activity::Activity::Syscall(nr, registers) => {
                let sample = match self.scanner.scan(registers) {
                    Some(raw) => Sample::Stack(raw),
                    None => {
                        let name = activity::syscall_name(nr).unwrap_or("?");
                        Sample::None(format!(
                            "blocked in the system call {name} ({nr}), whose stack could not \
                             be read; not interrupted"
                        ))
                    }
                };
                return taken(sample, Some(stalls::Cause::Syscall(nr)));
            }
            activity::Activity::Unknown => {
                let reason = "going to sleep or waking up; not interrupted for a stack";
                return taken(Sample::None(reason.to_string()), None);
            }
            activity::Activity::User if preempted => Some(stalls::Cause::Preempted),
            activity::Activity::User => Some(stalls::Cause::Cpu),
            // No `/proc`: signal as if it ran its own code (see the guide).
            activity::Activity::Unreadable => None,
        };
        let watchdog = self.watchdog.clone();
        watchdog.requested.fetch_add(1, Ordering::Relaxed);
        let timeout = match report {
            true => Duration::from_millis(250),
            false => self.interval().min(Duration::from_millis(250)),
        };
        let captured = signal::capture(target, watchdog.signal, timeout);
        self.warn_if_reinstalled();
        match captured {
            Ok(raw) => {
                watchdog.completed.fetch_add(1, Ordering::Relaxed);
                taken(Sample::Stack(raw), cause)
            }
            Err(error) => {
                watchdog.failed.count(&error);
                if error == signal::CaptureError::Displaced {
                    self.warn_displaced();
                }
                taken(Sample::None(error.to_string()), cause)
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn sample(&mut self, _slot: &slot::Slot, _key: usize, _report: bool) -> Taken {
        Taken {
            sample: Sample::None(NO_STACK.to_string()),
            cause: None,
            cpu_and_wall_ns: None,
        }
    }

    /// Says once per process that another handler took the watchdog's signal.
    #[cfg(target_os = "linux")]
    fn warn_displaced(&self) {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "hogwatch",
                signal = self.watchdog.signal,
                "another handler has replaced the watchdog's on signal {} (a profiler?): stalls \
                 are reported without stacks while it stays; see `Builder::watchdog_signal`",
                self.watchdog.signal,
            );
        }
    }

    /// Says (once per re-installation seen) that the signal's handler had been reset.
    #[cfg(target_os = "linux")]
    fn warn_if_reinstalled(&mut self) {
        let now = signal::reinstalled();
        if now != self.reinstalled {
            self.reinstalled = now;
            tracing::warn!(
                target: "hogwatch",
                signal = self.watchdog.signal,
                "the watchdog's signal {} had been reset to its default action (a profiler \
                 stopping?); hogwatch installed its handler again",
                self.watchdog.signal,
            );
        }
    }
}
