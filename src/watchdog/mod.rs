//! The stall watchdog: catches a poll while it is still blocking, records the blocked thread's
//! stack and names the culprit. See the [guide](crate::docs::watchdog).
//!
//! - `slot`: what each thread publishes about the poll it is inside (lock-free, per thread);
//! - `signal`: the only `unsafe` code, interrupting a thread to record its stack;
//! - `symbols`: names, folded stacks and culprits, on the watchdog thread;
//! - `stalls`: per-label stall statistics for the report.
//!
//! The recorder's poll path (`Recorder::begin` and `end`, used by watched futures, streams, the
//! layer's bodies and tokio's task hooks) feeds the slots through [`poll_started`] and
//! [`poll_ended`]. Each restores what the thread published before, so a watched poll inside a
//! task poll is reported under its own label and the task's comes back when it returns.

#[cfg(target_os = "linux")]
mod signal;
mod slot;
mod stalls;
mod symbols;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::event::{HogEvent, HogKind};
use crate::recorder::Recorder;
use crate::report::{Entry, WatchdogStats};

pub(crate) use slot::Published;
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
    failed: AtomicU64,
}

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
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
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
            failed: AtomicU64::new(0),
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
            captures_failed: take(&self.failed),
        }
    }

    /// Adds each label's stalls, stacks and culprits to its report entry.
    pub(crate) fn fill(&self, entries: &mut [Entry], reset: bool) {
        let mut table = self.lock();
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

/// Publishes that the current thread is inside a poll of the label at `label` (an address,
/// only compared) that started at `start_raw` (a reading of the detector's clock). Returns what
/// [`poll_ended`] must restore.
#[inline]
pub(crate) fn poll_started(watchdog_id: u64, label: usize, start_raw: u64) -> Option<Published> {
    slot::poll_started(watchdog_id, label, start_raw)
}

/// Publishes that the poll announced by [`poll_started`] ended.
#[inline]
pub(crate) fn poll_ended(previous: Published) {
    slot::poll_ended(previous);
}

/// The watchdog thread; stops (promptly) and is joined when dropped.
pub(crate) struct WatchdogThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl WatchdogThread {
    /// Starts the thread that watches `shared`'s polls.
    pub(crate) fn spawn(recorder: Arc<Recorder>, watchdog: Arc<Watchdog>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("hogwatch-watchdog".to_string())
            .spawn(move || Checker::new(recorder, watchdog).run(&flag))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for WatchdogThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
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

/// The watchdog thread's state.
struct Checker {
    recorder: Arc<Recorder>,
    watchdog: Arc<Watchdog>,
    symbolizer: symbols::Symbolizer,
    stalled: HashMap<usize, Stall>,
}

impl Checker {
    fn new(recorder: Arc<Recorder>, watchdog: Arc<Watchdog>) -> Self {
        Self {
            recorder,
            watchdog,
            symbolizer: symbols::Symbolizer::default(),
            stalled: HashMap::new(),
        }
    }

    /// How often the slots are looked at: every quarter of the threshold (100 µs at the least).
    fn interval(&self) -> Duration {
        Duration::from_nanos(self.watchdog.threshold_ns / 4).max(Duration::from_micros(100))
    }

    fn run(mut self, stop: &AtomicBool) {
        #[cfg(target_os = "linux")]
        self.symbolizer.warm_up();
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

    /// Captures, names and reports one stalled poll.
    fn report(&mut self, slot: &slot::Slot, published: Published, running_ns: u64, first: bool) {
        let Some(label) = self.recorder.registry.find(published.label) else {
            return;
        };
        let watchdog = self.watchdog.clone();
        watchdog.requested.fetch_add(1, Ordering::Relaxed);
        let raw = self.capture(slot);
        match &raw {
            Ok(_) => watchdog.completed.fetch_add(1, Ordering::Relaxed),
            Err(_) => watchdog.failed.fetch_add(1, Ordering::Relaxed),
        };
        // The poll may have ended before the signal arrived: the stack is then someone else's.
        // (Still the same poll now means the handler ran inside it, or inside a poll nested in
        // it, since a thread only comes back to a poll's start reading by returning to it.)
        if slot.read() != Some(published) {
            return;
        }
        let (frames, stack_error) = match raw {
            Ok(raw) => (self.symbolize(&raw), None),
            Err(error) => (Vec::new(), Some(error)),
        };
        let culprit = symbols::culprit(&frames, &watchdog.prefixes);
        let frames: Vec<String> = frames.into_iter().map(|frame| frame.name).collect();
        if first {
            watchdog.stall_count.fetch_add(1, Ordering::Relaxed);
        }
        let now_ns = self
            .recorder
            .clock
            .delta_as_nanos(0, self.recorder.clock.raw());
        let suppressed = {
            let mut table = watchdog.lock();
            let entry = table.entry(label.name.clone()).or_default();
            if first {
                entry.stalls = entry.stalls.saturating_add(1);
            }
            if !frames.is_empty() {
                let inside = symbols::within_poll(&frames);
                entry.stacks.record(&symbols::fold(inside), stalls::TRACKED);
            }
            if let Some(culprit) = &culprit {
                entry.culprits.record(culprit, stalls::TRACKED);
            }
            entry
                .warn_limiter
                .try_acquire(now_ns, self.recorder.warn_interval_ns)
        };
        let event = HogEvent {
            kind: HogKind::Stall,
            label: label.name.clone(),
            duration: Duration::from_nanos(running_ns),
            threshold: Duration::from_nanos(watchdog.threshold_ns),
            thread: Some(slot.thread_name.clone()),
            stack: frames,
            culprit,
        };
        if let Some(callback) = &self.recorder.on_hog {
            crate::event::call_on_hog(callback, &event);
        }
        if let Some(suppressed) = suppressed {
            let stack = match &stack_error {
                Some(error) => error.clone(),
                None => event.stack.join("\n  "),
            };
            tracing::warn!(
                target: "hogwatch",
                label = %event.label,
                running_ms = running_ns / 1_000_000,
                threshold_us = watchdog.threshold_us,
                thread = %slot.thread_name,
                culprit = event.culprit.as_deref().unwrap_or("unknown"),
                suppressed,
                "a poll has been blocking the executor for {:.1} ms, in {}; stack:\n  {}",
                running_ns as f64 / 1e6,
                event.culprit.as_deref().unwrap_or("unknown code"),
                stack,
            );
        }
    }

    #[cfg(target_os = "linux")]
    fn capture(&mut self, slot: &slot::Slot) -> Result<signal::RawStack, String> {
        let timeout = Duration::from_millis(250);
        signal::capture(&slot.target, self.watchdog.signal, timeout)
            .map_err(|error| error.to_string())
    }

    #[cfg(target_os = "linux")]
    fn symbolize(&mut self, raw: &signal::RawStack) -> Vec<symbols::Frame> {
        self.symbolizer.frames(&raw.ips, raw.pc)
    }

    #[cfg(not(target_os = "linux"))]
    fn capture(&mut self, _slot: &slot::Slot) -> Result<std::convert::Infallible, String> {
        Err(NO_STACK.to_string())
    }

    #[cfg(not(target_os = "linux"))]
    fn symbolize(&mut self, raw: &std::convert::Infallible) -> Vec<symbols::Frame> {
        let _ = &self.symbolizer;
        match *raw {}
    }
}
