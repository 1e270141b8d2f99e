//! The report: a snapshot of every label's statistics, worst first, ready to render.
//!
//! A [`Report`] is plain data. It serialises to the JSON schema documented on its fields and is
//! what every renderer (text, Prometheus, HTML) reads; nothing here reaches back into the
//! live counters.

use std::cmp::Reverse;

use serde::Serialize;

pub(crate) use crate::recorder::LabelKind;
use crate::recorder::{LabelSnapshot, PollHistogram, Snapshot};

/// A snapshot of everything a [`Detector`](crate::Detector) recorded in one window.
///
/// ```
/// # fn main() -> Result<(), hogwatch::ConfigError> {
/// let detector = hogwatch::Detector::builder().build()?;
/// let report = detector.report();
/// assert!(report.entries.is_empty());
/// let json = serde_json::to_value(&report).unwrap();
/// assert_eq!(json["threshold_us"], 10_000);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// The hog threshold: a poll longer than this is a slow poll.
    pub threshold_us: u64,
    /// How long this window lasted: since the detector was built or last reset.
    pub window_us: u64,
    /// One entry per label, the worst first: by the delay it inflicted on the rest of the
    /// runtime (with the lag probe), then by the time it held a worker in slow polls or stalls.
    pub entries: Vec<Entry>,
    /// How many watched futures had a label that did not fit under `max_labels` and were counted
    /// under `<other>` instead.
    pub folded_labels: u64,
    /// How late the lag probe woke up: what every task on the runtime suffered, whoever caused
    /// it. Absent unless [`Builder::lag_probe`](crate::Builder::lag_probe) is on and the probe
    /// has started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_loop_lag: Option<crate::runtime::EventLoopLag>,
    /// The runtime's own figures from tokio-metrics, over the last sampling interval. Absent
    /// unless `Builder::runtime_metrics` is on (feature
    /// `runtime-metrics`) and a sample was taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::runtime::RuntimeFigures>,
    /// The stall watchdog's counters, if the detector has a watchdog.
    pub watchdog: Option<WatchdogStats>,
}

/// What the stall watchdog did in a report's window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WatchdogStats {
    /// A poll running longer than this is a stall.
    pub threshold_us: u64,
    /// The signal that interrupts a blocked thread for its stack.
    pub signal: i32,
    /// How stacks are captured: `"unwind"` (the whole stack), `"pc"` (the interrupted
    /// instruction only: the C library lacks `_dl_find_object`) or `"unsupported"` (no stacks
    /// on this platform).
    pub stack_mode: &'static str,
    /// Polls seen running past the threshold (each counted once, however long it stalls).
    pub stalls: u64,
    /// Stack captures asked for with the signal (one per sample whose thread runs its own code;
    /// a thread waiting in a system call is never signalled).
    pub captures_requested: u64,
    /// Captures that returned a stack.
    pub captures_completed: u64,
    /// Captures that did not (the thread did not answer in time, or no stacks here): the sum
    /// of the five counters below.
    pub captures_failed: u64,
    /// Failed captures whose signal was not handled in time (blocked by the thread's signal
    /// mask, or the thread was not scheduled: expected now and then on a loaded machine).
    pub captures_timeout: u64,
    /// Failed captures because another capture of the thread was in flight (a bug if ever
    /// seen: the watchdog captures one thread at a time).
    pub captures_busy: u64,
    /// Failed captures whose handler started but did not finish in time (a bug if ever seen:
    /// the handler only walks the stack).
    pub captures_stuck: u64,
    /// Captures not tried because another handler (a profiler?) had replaced the watchdog's.
    pub captures_displaced: u64,
    /// Captures whose signal could not be sent (`pthread_kill` failed).
    pub captures_unsent: u64,
    /// Samples of stalled polls taken: each one records the thread's cause and, where it can
    /// be had, its stack (captured with the signal, or read from a thread waiting in a system
    /// call without interrupting it).
    pub samples: u64,
    /// Samples left out because the per-second budget was spent (many threads stalled at once,
    /// or a very short threshold).
    pub samples_skipped: u64,
}

/// A stall stack, folded root first (`a;b;c`), and how many samples found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StackCount {
    /// Frames from the outermost (the first inside the watched poll) to the innermost, joined
    /// by `;`.
    pub stack: String,
    /// Samples with exactly this stack.
    pub count: u64,
}

/// A culprit (the first frame outside the runtime) and how many samples named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CulpritCount {
    /// The function, e.g. `serde_json::ser::to_string` or `my_app::crunch_numbers`.
    pub culprit: String,
    /// Samples that named it.
    pub count: u64,
    /// The app's frame that called it most often: the first frame outward of the culprit, in
    /// the poll, outside the runtime and in another crate (`my_app::handler` for a culprit in
    /// `serde_json`); absent when the culprit is the app's own code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub called_from: Option<String>,
}

/// Why a stalled thread held its executor: what the watchdog found it doing.
///
/// JSON, the text report, the page and Prometheus use its lowercase name ([`as_str`]), and
/// [`hint`] says what to do about it.
///
/// [`as_str`]: Self::as_str
/// [`hint`]: Self::hint
///
/// ```
/// use hogwatch::StallCause;
/// assert_eq!(StallCause::Sleep.as_str(), "sleep");
/// assert_eq!(StallCause::Sleep.hint(), Some("use tokio::time::sleep"));
/// assert_eq!(StallCause::Lock, "lock");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StallCause {
    /// Running its own code on a CPU.
    Cpu,
    /// In `nanosleep` or `clock_nanosleep` (`std::thread::sleep`), or `pause`.
    Sleep,
    /// In `futex`: a `std::sync::Mutex`, a condition variable, a channel, a `block_on`.
    Lock,
    /// Reading, writing, sending, receiving, polling, connecting, accepting, opening, syncing.
    Io,
    /// Waiting for a child process (`wait4`, `waitid`).
    Wait,
    /// Runnable in its own code, but it had less than a quarter of a CPU since the previous
    /// sample: the machine is oversubscribed and this code is the victim.
    Preempted,
    /// Any other system call.
    Syscall,
}

impl StallCause {
    /// The lowercase name, as in JSON: `"cpu"`, `"sleep"`, `"lock"`, `"io"`, `"wait"`,
    /// `"preempted"` or `"syscall"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StallCause::Cpu => "cpu",
            StallCause::Sleep => "sleep",
            StallCause::Lock => "lock",
            StallCause::Io => "io",
            StallCause::Wait => "wait",
            StallCause::Preempted => "preempted",
            StallCause::Syscall => "syscall",
        }
    }

    /// What to do about a stall of this cause, in one line (`None`: see the system call).
    pub fn hint(self) -> Option<&'static str> {
        Some(match self {
            StallCause::Cpu => {
                "send the cached bytes as they are, or move the work to spawn_blocking / a thread pool"
            }
            StallCause::Sleep => "use tokio::time::sleep",
            StallCause::Lock => "shorten the critical section, or use tokio::sync::Mutex",
            StallCause::Io => "use the async API (tokio::fs, an async client), or spawn_blocking",
            StallCause::Wait => "use tokio::process",
            StallCause::Preempted => "the machine is oversubscribed: this code is the victim",
            StallCause::Syscall => return None,
        })
    }
}

impl std::fmt::Display for StallCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for StallCause {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for StallCause {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// Why a stalled thread held its executor, and how many samples found it so.
///
/// `cause` (a [`StallCause`]) is one of `"cpu"` (running its own code), `"sleep"` (`nanosleep`,
/// `clock_nanosleep`), `"lock"` (`futex`: a `std::sync::Mutex`, a channel, a `block_on`), `"io"`
/// (reads, writes, sends, receives, `poll`/`epoll`/`select`, `connect`, `accept`, `open`,
/// `fsync`...), `"wait"` (`wait4`/`waitid` on a child process), `"preempted"` (runnable, but it
/// had less than a quarter of a CPU since the previous sample: the machine is oversubscribed)
/// or `"syscall"` (any other system call). See the [guide](crate::docs::watchdog).
///
/// ```
/// # fn main() -> Result<(), hogwatch::ConfigError> {
/// let detector = hogwatch::Detector::builder()
///     .watchdog(std::time::Duration::from_millis(50))
///     .build()?;
/// for entry in &detector.report().entries {
///     for cause in &entry.causes {
///         println!("{}: {} samples ({:?})", cause.cause, cause.count, cause.syscall);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CauseCount {
    /// What the thread was doing; JSON has its lowercase name (`"cpu"`, `"sleep"`...).
    pub cause: StallCause,
    /// Samples with this cause (and system call).
    pub count: u64,
    /// The system call the thread was blocked in (`"read"`, `"futex"`...), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
}

/// One row of a label's sampled profile, like a row of cProfile's table: a function and the
/// share of the label's stall samples that found it running (self) or on the stack (total).
///
/// The self function of a sample is its culprit: the innermost frame outside the runtime, the
/// code that was running or that called into the library the thread waits in.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FunctionSamples {
    /// The function, demangled.
    pub function: String,
    /// Samples in which it was the innermost frame outside the runtime.
    pub self_samples: u64,
    /// Samples in which it was anywhere on the stack inside the poll.
    pub total_samples: u64,
    /// `self_samples` as a percentage of the label's samples (one decimal).
    pub self_percent: f64,
    /// `total_samples` as a percentage of the label's samples (one decimal).
    pub total_percent: f64,
}

/// The statistics of one label.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Entry {
    /// The label: the name given to `watch`, or `METHOD /route/{template}` for the HTTP layer.
    pub label: String,
    /// What made the label (`"watch"`, `"route"`, `"task"` or `"other"` in JSON). A poll inside a
    /// watched future or a route is also counted under its task's label: two views of one poll.
    pub kind: LabelKind,
    /// Polls recorded.
    pub polls: u64,
    /// Polls longer than the threshold.
    pub slow_polls: u64,
    /// Time spent inside polls (busy time), summed.
    pub busy_us: u64,
    /// Time spent inside slow polls, summed: the time this label held a worker hostage.
    pub slow_busy_us: u64,
    /// What that cost everyone else: the scheduling delay a task waiting on the runtime
    /// suffered because this label's slow polls (or stalls) held the workers. Measured by the
    /// [lag probe](crate::Builder::lag_probe) (0 without it): each time the probe ran more than a
    /// threshold late, its lateness is shared among the labels holding workers meanwhile. Per
    /// waiting task, not summed over tasks; see [the guide](crate::docs::inflicted).
    pub inflicted_delay_us: u64,
    /// Time from first poll to end, summed over the futures that ended in this window.
    pub wall_us: u64,
    /// The longest poll (to 3 significant figures).
    pub max_poll_us: u64,
    /// Median poll duration.
    pub p50_poll_us: u64,
    /// 90th percentile poll duration.
    pub p90_poll_us: u64,
    /// 99th percentile poll duration.
    pub p99_poll_us: u64,
    /// 99.9th percentile poll duration.
    pub p999_poll_us: u64,
    /// Futures that returned `Ready`.
    pub completed: u64,
    /// Futures dropped before they were ready (for HTTP: the client went away, or a timeout).
    pub cancelled: u64,
    /// Futures whose poll panicked.
    pub panicked: u64,
    /// Requests seen (HTTP layer only; 0 for `watch`).
    pub requests: u64,
    /// Responses by status class (HTTP layer only).
    pub responses: Responses,
    /// Polls the watchdog caught running past its threshold (0 without a watchdog).
    pub stalls: u64,
    /// The most frequent stacks of those stalls, most frequent first (bounded per label).
    pub top_stacks: Vec<StackCount>,
    /// The most frequent culprits of those stalls, most frequent first (bounded per label).
    pub top_culprits: Vec<CulpritCount>,
    /// Samples the watchdog took of those stalls: one when it first sees a stall, then one at
    /// each check while the poll keeps blocking (within a per-second budget).
    pub samples: u64,
    /// What the blocked thread was doing in those samples, most frequent first.
    pub causes: Vec<CauseCount>,
    /// The sampled profile of the stalls, by self samples (at most 20 functions).
    pub functions: Vec<FunctionSamples>,
    /// Time from each stall's first sample to its last, summed: the part of the stalls the
    /// watchdog watched.
    pub stall_wall_us: u64,
    /// The stalled threads' CPU time over that same time (from `/proc/self/task/TID/schedstat`):
    /// close to `stall_wall_us` for CPU work, near zero for waiting. Only CPU work must move off
    /// the executor; waiting must become async.
    pub stall_cpu_us: u64,
    /// The longest stall the watchdog saw in the window, from the poll's start to its last
    /// sample (so far, for a stall still going on): the duration of a stall of a task no
    /// wrapper timed (`watch_runtime`), whose polls never reach `max_poll_us`.
    pub longest_stall_us: u64,
    /// The poll-duration histogram, for renderers that draw or bucket it.
    #[serde(skip)]
    pub histogram: PollHistogram,
}

/// Responses by HTTP status class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Responses {
    /// 1xx responses.
    #[serde(rename = "1xx")]
    pub informational: u64,
    /// 2xx responses.
    #[serde(rename = "2xx")]
    pub success: u64,
    /// 3xx responses.
    #[serde(rename = "3xx")]
    pub redirection: u64,
    /// 4xx responses.
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// 5xx responses.
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl Responses {
    /// Every response that was not 2xx: what a load test must not hide.
    pub fn non_success(&self) -> u64 {
        self.informational
            .saturating_add(self.redirection)
            .saturating_add(self.client_error)
            .saturating_add(self.server_error)
    }
}

impl Entry {
    /// A label's window, with the quantiles worked out.
    pub(crate) fn from_snapshot(snapshot: LabelSnapshot) -> Self {
        let histogram = snapshot.histogram;
        let [informational, success, redirection, client_error, server_error] = snapshot.responses;
        Self {
            label: snapshot.name.to_string(),
            kind: snapshot.kind,
            polls: histogram.len(),
            slow_polls: snapshot.slow_polls,
            busy_us: snapshot.busy_ns / 1_000,
            slow_busy_us: snapshot.slow_busy_ns / 1_000,
            inflicted_delay_us: snapshot.inflicted_ns / 1_000,
            wall_us: snapshot.wall_ns / 1_000,
            max_poll_us: histogram.max(),
            p50_poll_us: histogram.value_at_quantile(0.5),
            p90_poll_us: histogram.value_at_quantile(0.9),
            p99_poll_us: histogram.value_at_quantile(0.99),
            p999_poll_us: histogram.value_at_quantile(0.999),
            completed: snapshot.completed,
            cancelled: snapshot.cancelled,
            panicked: snapshot.panicked,
            requests: snapshot.requests,
            responses: Responses {
                informational,
                success,
                redirection,
                client_error,
                server_error,
            },
            stalls: 0,
            top_stacks: Vec::new(),
            top_culprits: Vec::new(),
            samples: 0,
            causes: Vec::new(),
            functions: Vec::new(),
            stall_wall_us: 0,
            stall_cpu_us: 0,
            longest_stall_us: 0,
            histogram,
        }
    }

    /// True when nothing at all was recorded for this label in the window.
    pub(crate) fn is_empty(&self) -> bool {
        self.polls == 0
            && self.inflicted_delay_us == 0
            && self.requests == 0
            && self.completed == 0
            && self.cancelled == 0
            && self.panicked == 0
            && self.stalls == 0
    }
}

impl Report {
    /// The report of a recorder's snapshot; `fill` adds what other subsystems know of each entry
    /// (the watchdog's stalls) before entries that stayed empty are dropped and the rest sorted.
    pub(crate) fn new(
        threshold_us: u64,
        snapshot: Snapshot,
        fill: impl FnOnce(&mut Vec<Entry>),
    ) -> Self {
        let Snapshot {
            labels,
            folded: folded_labels,
            window_us,
            ..
        } = snapshot;
        let mut entries: Vec<Entry> = labels.into_iter().map(Entry::from_snapshot).collect();
        fill(&mut entries);
        entries.retain(|entry| !entry.is_empty());
        // Worst first: the delay inflicted on the rest of the runtime (with the lag probe), then
        // time held hostage in slow polls or stalls (a task the runtime watchdog follows has
        // stalls and no timed polls: it was listed last), then the longest poll or stall, then
        // busy time.
        entries.sort_by_key(|entry| {
            (
                Reverse(entry.inflicted_delay_us),
                Reverse(entry.slow_busy_us.max(entry.stall_wall_us)),
                Reverse(entry.max_poll_us.max(entry.longest_stall_us)),
                Reverse(entry.busy_us),
                entry.label.clone(),
            )
        });
        Self {
            threshold_us,
            window_us,
            entries,
            folded_labels,
            event_loop_lag: None,
            runtime: None,
            watchdog: None,
        }
    }

    /// The entry for `label`, if it recorded anything in this window.
    pub fn entry(&self, label: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.label == label)
    }

    /// Labels with at least one slow poll, worst first.
    pub fn hogs(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|entry| entry.slow_polls > 0)
    }
}
