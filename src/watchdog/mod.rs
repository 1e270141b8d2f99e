//! The stall watchdog: catches a poll while it is still blocking, records the blocked thread's
//! stack and names the culprit. See the [guide](crate::docs::watchdog).
//!
//! - `activity`: whether a stalled thread runs its own code or waits in a system call (`/proc`);
//! - `signal`: the only `unsafe` code, interrupting a thread to record its stack;
//! - `symbols`: names, folded stacks and culprits, on the watchdog thread;
//! - `stalls`: per-label stall statistics for the report.
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
mod signal;
mod stalls;
mod symbols;
// issue 19: the runtime watchdog (`Detector::watch_runtime`), in its own module.
mod workers;
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
    /// The process that built it: in a `fork()` child its thread does not exist.
    pid: u32,
    /// issue 19 hook: the runtimes `Detector::watch_runtime` watches (see `workers`).
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
        // issue 19 hook: `watch_runtime` finds this watchdog's runtime list by its id.
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
            // issue 19 hook: the runtime watchdog's sampler.
            workers: workers::Sampler::new(watchdog.runtimes.clone()),
            recorder,
            watchdog,
            stalled: HashMap::new(),
            #[cfg(target_os = "linux")]
            activity: activity::Reader::default(),
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
}

/// A captured stack to name, record under its label and warn about.
#[cfg(target_os = "linux")]
struct Job {
    raw: signal::RawStack,
    /// The stall's event, without stack yet.
    event: HogEvent,
    /// `Some(suppressed)` if the stall's warning is due.
    warn: Option<u64>,
    /// Where the named stack goes if the watchdog thread still waits for it.
    reply: std::sync::mpsc::Sender<(Vec<String>, Option<String>)>,
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
                let mut symbolizer = symbols::Symbolizer::default();
                symbolizer.warm_up();
                // issue 19 hook: the C library's symbols too (a task stall's first stack).
                workers::warm_up(&mut symbolizer);
                while let Ok(job) = receive.recv() {
                    let Job {
                        raw,
                        mut event,
                        warn,
                        reply,
                    } = job;
                    let (stack, culprit) = name(&mut symbolizer, &watchdog, &event.label, &raw);
                    let _ = reply.send((stack.clone(), culprit.clone()));
                    if let Some(suppressed) = warn {
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

/// Names `raw` and records its stack and culprit under `label`; returns them.
#[cfg(target_os = "linux")]
fn name(
    symbolizer: &mut symbols::Symbolizer,
    watchdog: &Watchdog,
    label: &Arc<str>,
    raw: &signal::RawStack,
) -> (Vec<String>, Option<String>) {
    let frames = symbolizer.frames(&raw.ips, raw.pc);
    let culprit = symbols::culprit(&frames, &watchdog.prefixes);
    let mut stack: Vec<String> = frames.into_iter().map(|frame| frame.name).collect();
    stack.truncate(signal::MAX_FRAMES);
    let folded = symbols::fold(symbols::within_poll(&stack));
    let mut table = watchdog.lock();
    let entry = table.entry(label.clone()).or_default();
    if !stack.is_empty() {
        entry.stacks.record(&folded, stalls::TRACKED);
    }
    if let Some(culprit) = &culprit {
        entry.culprits.record(culprit, stalls::TRACKED);
    }
    (stack, culprit)
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
    /// issue 19 hook: samples the workers of the runtimes `watch_runtime` watches.
    workers: workers::Sampler,
    recorder: Arc<Recorder>,
    watchdog: Arc<Watchdog>,
    stalled: HashMap<usize, Stall>,
    #[cfg(target_os = "linux")]
    activity: activity::Reader,
    #[cfg(target_os = "linux")]
    namer: Namer,
    /// `signal::reinstalled()` when last looked at, to warn when it changes.
    #[cfg(target_os = "linux")]
    reinstalled: u64,
}

/// What became of one sample of a stall.
enum Sample {
    /// The stack was captured.
    #[cfg(target_os = "linux")]
    Stack(signal::RawStack),
    /// No stack, for this reason.
    None(String),
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
            // issue 19 hook: then every watched runtime's workers.
            if !stop.load(Ordering::Acquire) {
                self.workers.check(&self.recorder, &self.watchdog);
            }
        }
    }

    /// Looks at one thread: reports its poll if it has run past the threshold (again at each
    /// doubling: 1x, 2x, 4x... the threshold, so a poll that never returns is reported a few
    /// times, not every check).
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
        let stall = self.stalled.entry(key).or_insert(Stall {
            label: published.label,
            start_raw: published.start_raw,
            next_report_ns: threshold_ns,
            reports: 0,
            seen_in: generation,
        });
        if stall.label != published.label || stall.start_raw != published.start_raw {
            *stall = Stall {
                label: published.label,
                start_raw: published.start_raw,
                next_report_ns: threshold_ns,
                reports: 0,
                seen_in: generation,
            };
        }
        stall.seen_in = generation;
        if running_ns < stall.next_report_ns {
            return;
        }
        while stall.next_report_ns <= running_ns {
            stall.next_report_ns = stall.next_report_ns.saturating_mul(2);
        }
        let first = stall.reports == 0;
        stall.reports += 1;
        self.report(slot, published, running_ns, first);
    }

    /// Counts and reports one stalled poll, with its stack if it can be had (and named) now.
    fn report(&mut self, slot: &slot::Slot, published: Published, running_ns: u64, first: bool) {
        let Some(label) = self.recorder.registry.find(published.label) else {
            return;
        };
        let watchdog = self.watchdog.clone();
        // Counted when seen: whatever becomes of its stack, the poll did stall.
        if first {
            watchdog.stall_count.fetch_add(1, Ordering::Relaxed);
            let mut table = watchdog.lock();
            let entry = table.entry(label.name.clone()).or_default();
            entry.stalls = entry.stalls.saturating_add(1);
        }
        let (sample, cause) = self.sample(slot);
        // The poll may have ended before the signal arrived: the stack is then someone else's.
        // (Still the same poll now means the handler ran inside it, or inside a poll nested in
        // it, since a thread only comes back to a poll's start reading by returning to it.)
        let sample = match sample {
            #[cfg(target_os = "linux")]
            Sample::Stack(_) if slot.read() != Some(published) => {
                Sample::None("the poll returned before its stack was captured".to_string())
            }
            sample => sample,
        };
        let now_ns = self
            .recorder
            .clock
            .delta_as_nanos(0, self.recorder.clock.raw());
        let warn = {
            let mut table = watchdog.lock();
            let entry = table.entry(label.name.clone()).or_default();
            if let Some(cause) = cause {
                entry.causes.record(cause);
            }
            entry
                .warn_limiter
                .try_acquire(now_ns, self.recorder.warn_interval_ns)
        };
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
        // The reason there is no stack to warn with, if the warning is ours to send.
        let no_stack = match sample {
            #[cfg(target_os = "linux")]
            Sample::Stack(raw) => {
                let (reply, named) = std::sync::mpsc::channel();
                let job = Job {
                    raw,
                    event: event.clone(),
                    warn,
                    reply,
                };
                // The naming thread records the stack and sends the warning; the event gets the
                // names if they come quickly (no debug information to load, no new address to
                // look up).
                if self.namer.send(job) {
                    if let Ok((stack, culprit)) = named.recv_timeout(self.naming_budget()) {
                        event.stack = stack;
                        event.culprit = culprit;
                    }
                    None
                } else {
                    Some("not named: too many stacks waiting for their names".into())
                }
            }
            Sample::None(reason) => Some(reason),
        };
        if let Some(callback) = &self.recorder.on_hog {
            crate::event::call_on_hog(callback, &event);
        }
        if let (Some(reason), Some(suppressed)) = (no_stack, warn) {
            warn_stall(&watchdog, &event, suppressed, &reason);
        }
    }

    /// What the stalled thread is doing, and its stack if it is running its own code.
    #[cfg(target_os = "linux")]
    fn sample(&mut self, slot: &slot::Slot) -> (Sample, Option<stalls::Cause>) {
        let Some(target) = slot
            .attachment
            .as_deref()
            .and_then(|attachment| attachment.downcast_ref::<signal::Target>())
        else {
            // Registered before any watchdog existed (cannot happen: only a detector with a
            // watchdog publishes polls); nothing to signal.
            return (Sample::None("no signal target".to_string()), None);
        };
        let cause = match self.activity.read(target.tid()) {
            activity::Activity::Syscall(nr) => {
                let name = activity::syscall_name(nr).unwrap_or("?");
                let reason = format!(
                    "blocked in the system call {name} ({nr}); not interrupted for a stack"
                );
                return (Sample::None(reason), Some(stalls::Cause::Syscall(nr)));
            }
            activity::Activity::Unknown => {
                let reason = "going to sleep or waking up; not interrupted for a stack";
                return (Sample::None(reason.to_string()), None);
            }
            activity::Activity::User => Some(stalls::Cause::Cpu),
            // No `/proc`: signal as if it ran its own code (see the guide).
            activity::Activity::Unreadable => None,
        };
        let watchdog = self.watchdog.clone();
        watchdog.requested.fetch_add(1, Ordering::Relaxed);
        let timeout = Duration::from_millis(250);
        let captured = signal::capture(target, watchdog.signal, timeout);
        self.warn_if_reinstalled();
        match captured {
            Ok(raw) => {
                watchdog.completed.fetch_add(1, Ordering::Relaxed);
                (Sample::Stack(raw), cause)
            }
            Err(error) => {
                watchdog.failed.count(&error);
                if error == signal::CaptureError::Displaced {
                    self.warn_displaced();
                }
                (Sample::None(error.to_string()), cause)
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn sample(&mut self, _slot: &slot::Slot) -> (Sample, Option<stalls::Cause>) {
        (Sample::None(NO_STACK.to_string()), None)
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
