//! The watchdog's state that the handle, the watchdog thread and the reports share: its
//! configuration, its counters and the stall table (one `LabelStalls` record per label, filled
//! by every source through `LabelStalls::record`), and the one `tracing` warning of a stall.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::event::HogEvent;
use crate::report::{Entry, WatchdogStats};

#[cfg(target_os = "linux")]
use super::signal;
use super::symbols::DEFAULT_RUNTIME_PREFIXES;
use super::{stalls, workers};
#[cfg(target_os = "linux")]
use crate::recorder::slot;

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
    pub(super) threshold_ns: u64,
    threshold_us: u64,
    pub(super) signal: i32,
    pub(super) prefixes: Vec<String>,
    stalls: Mutex<HashMap<Arc<str>, stalls::LabelStalls>>,
    pub(super) stall_count: AtomicU64,
    pub(super) requested: AtomicU64,
    pub(super) completed: AtomicU64,
    /// Failed captures, one counter per kind of failure (their sum is `captures_failed`).
    pub(super) failed: FailedCaptures,
    pub(super) samples: AtomicU64,
    pub(super) skipped: AtomicU64,
    /// The process that built it: in a `fork()` child its thread does not exist.
    pub(super) pid: u32,
    /// The runtimes `Detector::watch_runtime` watches (see `workers`).
    pub(crate) runtimes: Arc<workers::Runtimes>,
}

/// Failed captures by kind: a `Timeout` under load is expected now and then, a `Stuck` or a
/// `Busy` is a bug, and the tests tell them apart.
#[derive(Default)]
pub(super) struct FailedCaptures {
    timeout: AtomicU64,
    busy: AtomicU64,
    stuck: AtomicU64,
    displaced: AtomicU64,
    unsent: AtomicU64,
}

impl FailedCaptures {
    #[cfg(target_os = "linux")]
    pub(super) fn count(&self, error: &signal::CaptureError) {
        let counter = match error {
            signal::CaptureError::Timeout => &self.timeout,
            signal::CaptureError::Busy => &self.busy,
            signal::CaptureError::Stuck => &self.stuck,
            signal::CaptureError::Displaced => &self.displaced,
            signal::CaptureError::Send(_) => &self.unsent,
            // Not a failure: nothing was asked (see the variant).
            signal::CaptureError::Gone => return,
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
fn usable_signal(signal: i32) -> bool {
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
pub(super) const NO_STACK: &str = "no stack on this platform";

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
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let runtimes = Arc::new(workers::Runtimes::default());
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

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, stalls::LabelStalls>> {
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

/// One `tracing` warning about a stall; `stack` is the stack as text, or why there is none.
pub(super) fn warn_stall(watchdog: &Watchdog, event: &HogEvent, suppressed: u64, stack: &str) {
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
