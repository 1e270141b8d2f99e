//! The [`Detector`] handle, its [`Builder`] and the configuration errors.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;

use crate::event::{HogEvent, OnHog};
use crate::recorder::{LabelKind, Recorder};
use crate::report::Report;
use crate::runtime::{EventLoopLag, RuntimeState};
use crate::watch::Watched;

/// A configuration the [`Builder`] refuses, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The hog threshold was zero: every poll would be a hog.
    #[error("the hog threshold must be greater than zero")]
    ZeroThreshold,
    /// The histogram (1 µs .. 60 s) cannot hold the threshold.
    #[error("the hog threshold {threshold:?} is outside the poll histogram's range of {lowest:?} to {highest:?}")]
    ThresholdOutOfRange {
        /// The threshold asked for.
        threshold: Duration,
        /// The smallest poll duration the histogram resolves.
        lowest: Duration,
        /// The largest poll duration the histogram holds.
        highest: Duration,
    },
    /// `max_labels` was zero: no label could ever be recorded.
    #[error("max_labels must be at least 1")]
    ZeroMaxLabels,
    /// The lag probe's resolution or the runtime-metrics interval was zero: the probe would
    /// never sleep.
    #[error("the {what} must be greater than zero")]
    ZeroProbeInterval {
        /// Which setting: `"lag probe resolution"` or `"runtime metrics interval"`.
        what: &'static str,
    },
    /// The watchdog threshold was zero.
    #[error("the watchdog threshold must be greater than zero")]
    ZeroWatchdog,
    /// The watchdog threshold was below its minimum: the watchdog would look at (and signal)
    /// nearly every poll.
    #[error("the watchdog threshold {threshold:?} is below the minimum of {minimum:?}")]
    WatchdogTooShort {
        /// The threshold asked for.
        threshold: Duration,
        /// The shortest threshold the watchdog accepts.
        minimum: Duration,
    },
    /// The watchdog signal cannot be caught, or is one the runtime needs (faults, `SIGKILL`...).
    #[error("signal {0} cannot be used by the watchdog")]
    InvalidSignal(i32),
    /// The watchdog could not be started (the signal handler or its thread).
    #[error("the watchdog could not be started: {0}")]
    Watchdog(String),
}

/// Configures and builds a [`Detector`].
///
/// ```
/// use std::time::Duration;
///
/// # fn main() -> Result<(), hogwatch::ConfigError> {
/// let detector = hogwatch::Detector::builder()
///     .threshold(Duration::from_millis(1))
///     .max_labels(256)
///     .warn_interval(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(detector.threshold(), Duration::from_millis(1));
/// # Ok(()) }
/// ```
#[must_use]
pub struct Builder {
    threshold: Duration,
    max_labels: usize,
    warn_interval: Duration,
    on_hog: Option<OnHog>,
    /// Set by `Builder::server_timing`, in the layer's module.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) server_timing: bool,
    lag_probe: Option<Duration>,
    runtime_metrics: Option<Duration>,
    #[cfg(feature = "watchdog")]
    watchdog: crate::watchdog::Config,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("threshold", &self.threshold)
            .field("max_labels", &self.max_labels)
            .field("warn_interval", &self.warn_interval)
            .field("on_hog", &self.on_hog.as_ref().map(|_| "Fn(&HogEvent)"))
            .field("server_timing", &self.server_timing)
            .field("lag_probe", &self.lag_probe)
            .field("runtime_metrics", &self.runtime_metrics)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            threshold: Builder::DEFAULT_THRESHOLD,
            max_labels: Builder::DEFAULT_MAX_LABELS,
            warn_interval: Builder::DEFAULT_WARN_INTERVAL,
            on_hog: None,
            server_timing: false,
            lag_probe: None,
            runtime_metrics: None,
            #[cfg(feature = "watchdog")]
            watchdog: crate::watchdog::Config::default(),
        }
    }
}

impl Builder {
    /// The default hog threshold, 10 ms: long enough that a production server does not warn on
    /// ordinary work, short enough to catch a JSON round-trip of a large document.
    pub const DEFAULT_THRESHOLD: Duration = Duration::from_millis(10);
    /// The default bound on distinct labels.
    pub const DEFAULT_MAX_LABELS: usize = 1024;
    /// The default minimum time between two `tracing` warnings for one label.
    pub const DEFAULT_WARN_INTERVAL: Duration = Duration::from_secs(1);
    /// A good resolution for the [lag probe](Self::lag_probe): 10 ms, one sample per 10 ms.
    pub const DEFAULT_LAG_RESOLUTION: Duration = Duration::from_millis(10);
    /// The frames the watchdog never names as a stall's culprit, see
    /// [`runtime_prefixes`](Self::runtime_prefixes): the standard library, tokio, the HTTP stack,
    /// hogwatch itself, and the C library's allocator, memory and thread functions.
    #[cfg(feature = "watchdog")]
    #[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
    pub const DEFAULT_RUNTIME_PREFIXES: &'static [&'static str] =
        crate::watchdog::DEFAULT_RUNTIME_PREFIXES;

    /// A poll that runs longer than this is a hog: counted as a slow poll, warned about, and
    /// passed to [`on_hog`](Self::on_hog). Default: [`Self::DEFAULT_THRESHOLD`].
    pub fn threshold(mut self, threshold: Duration) -> Self {
        self.threshold = threshold;
        self
    }

    /// At most this many distinct labels get their own entry; polls of further labels are counted
    /// under `"<other>"`. Bounds memory whatever labels arrive. Default: 1024.
    pub fn max_labels(mut self, max_labels: usize) -> Self {
        self.max_labels = max_labels;
        self
    }

    /// At most one `tracing` warning per label per `interval`; the next warning says how many were
    /// held back. `Duration::ZERO` warns on every hog. Default: one second.
    ///
    /// The warnings have the target `hogwatch` at level WARN. A filter that lets only the app's
    /// own targets through hides them: add `hogwatch=warn` to it, e.g.
    /// `EnvFilter::new("my_app=debug,tower_http=debug,hogwatch=warn")` or
    /// `RUST_LOG=my_app=debug,hogwatch=warn`.
    pub fn warn_interval(mut self, interval: Duration) -> Self {
        self.warn_interval = interval;
        self
    }

    /// Calls `callback` for every hog, without rate limiting, on the thread that was blocked.
    /// Keep it short: it runs on the executor.
    pub fn on_hog<F>(mut self, callback: F) -> Self
    where
        F: Fn(&HogEvent) + Send + Sync + 'static,
    {
        self.on_hog = Some(Arc::new(callback));
        self
    }

    /// Measures event-loop lag: a task sleeps `resolution` again and again and records how late
    /// it wakes, into the report's [`event_loop_lag`](crate::Report::event_loop_lag). Off by
    /// default; [`Self::DEFAULT_LAG_RESOLUTION`] (10 ms) suits most servers. tokio's timer ticks
    /// in whole milliseconds, so a resolution under 1 ms sleeps 1 ms and reads as lag. Works on
    /// stable tokio; the runtime needs its timer (`enable_time` or `enable_all`).
    ///
    /// The probe is a task on the runtime it measures. It starts by itself when the detector is
    /// built inside a runtime, or on the first [`watch`](Detector::watch) or `layer` inside one;
    /// otherwise call [`Detector::start_probes`]. It stops when the last `Detector` clone is
    /// dropped.
    ///
    /// ```
    /// use hogwatch::Builder;
    ///
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder()
    ///     .lag_probe(Builder::DEFAULT_LAG_RESOLUTION)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn lag_probe(mut self, resolution: Duration) -> Self {
        self.lag_probe = Some(resolution);
        self
    }

    /// Adds the runtime's own figures (busy ratio, queue depths, park counts, mean poll time) from
    /// tokio-metrics' `RuntimeMonitor`, sampled every `interval` (1 s is a good start), to the
    /// report's [`runtime`](crate::Report::runtime) section; see
    /// [`RuntimeFigures`](crate::RuntimeFigures) for which figures need `tokio_unstable`. Off by
    /// default. Started and stopped like the [lag probe](Self::lag_probe).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder()
    ///     .runtime_metrics(Duration::from_secs(1))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "runtime-metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "runtime-metrics")))]
    pub fn runtime_metrics(mut self, interval: Duration) -> Self {
        self.runtime_metrics = Some(interval);
        self
    }

    /// Starts a watchdog thread that looks at every watched poll still running after
    /// `threshold` and reports it while it blocks: a [`HogKind::Stall`](crate::HogKind::Stall)
    /// event to [`on_hog`](Self::on_hog) (called on the watchdog thread) as soon as the stall is
    /// seen, and a `tracing` warning. The blocked thread's stack (unless it waits in a system
    /// call, which a signal would interrupt) is captured then and named on a thread of its own:
    /// the event carries the stack and the culprit when the names are ready in time (the first
    /// stall of a process usually comes without), the warning and the report always do. A poll
    /// that keeps blocking is reported again at 2, 4, 8... times the threshold. See the
    /// [guide](crate::docs::watchdog) for how stacks are captured.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder()
    ///     .threshold(Duration::from_millis(1))
    ///     .watchdog(Duration::from_millis(50)) // look at any poll still running after 50 ms
    ///     .build()?;
    /// assert!(detector.watchdog_stats().is_some());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "watchdog")]
    #[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
    pub fn watchdog(mut self, threshold: Duration) -> Self {
        self.watchdog.threshold = Some(threshold);
        self
    }

    /// The signal that interrupts a blocked thread to record its stack (Linux). Default:
    /// `SIGPROF`. Pick another, such as `SIGRTMIN() + 4`, if a profiler in the same process uses
    /// `SIGPROF` (pprof-rs, gperftools); see the [guide](crate::docs::watchdog).
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder()
    ///     .watchdog(std::time::Duration::from_millis(50))
    ///     .watchdog_signal(libc::SIGRTMIN() + 4)
    ///     .build()?;
    /// # assert_eq!(detector.watchdog_stats().unwrap().signal, libc::SIGRTMIN() + 4);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "watchdog")]
    #[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
    pub fn watchdog_signal(mut self, signal: i32) -> Self {
        self.watchdog.signal = Some(signal);
        self
    }

    /// The frames that are "the runtime", skipped when the watchdog names a stall's culprit;
    /// replaces [`DEFAULT_RUNTIME_PREFIXES`](Self::DEFAULT_RUNTIME_PREFIXES).
    ///
    /// A prefix ending in `_` or `::` matches any frame that starts with it; any other prefix
    /// is a crate name, matching a frame whose first path segment is exactly that name (`tokio`
    /// matches `tokio::…`, not `tokio_util::…` nor your own `tokio_app::…`), or a C function
    /// name, matching it and its `_` continuations (`pthread` matches `pthread_mutex_lock`).
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// use hogwatch::Builder;
    /// let detector = hogwatch::Detector::builder()
    ///     .watchdog(std::time::Duration::from_millis(50))
    ///     .runtime_prefixes(Builder::DEFAULT_RUNTIME_PREFIXES.iter().copied().chain(["my_framework"]))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "watchdog")]
    #[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
    pub fn runtime_prefixes<I>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.watchdog.runtime_prefixes = Some(prefixes.into_iter().map(Into::into).collect());
        self
    }

    /// Checks the configuration and builds the detector.
    ///
    /// # Errors
    ///
    /// - [`ConfigError::ZeroThreshold`] if the threshold is zero;
    /// - [`ConfigError::ThresholdOutOfRange`] if the threshold is below 1 µs or not below 60 s,
    ///   the range the poll histogram holds;
    /// - [`ConfigError::ZeroMaxLabels`] if `max_labels` is zero;
    /// - [`ConfigError::ZeroProbeInterval`] if the lag probe's resolution or the runtime-metrics
    ///   interval is zero.
    /// - with a watchdog: [`ConfigError::ZeroWatchdog`] if its threshold is zero,
    ///   [`ConfigError::WatchdogTooShort`] if it is below 1 ms,
    ///   [`ConfigError::InvalidSignal`] if its signal cannot be used, and
    ///   [`ConfigError::Watchdog`] if its signal handler or thread cannot be set up.
    pub fn build(self) -> Result<Detector, ConfigError> {
        if self.threshold.is_zero() {
            return Err(ConfigError::ZeroThreshold);
        }
        let lowest = Duration::from_micros(crate::recorder::LOWEST_US);
        let highest = Duration::from_micros(crate::recorder::HIGHEST_US);
        if self.threshold < lowest || self.threshold >= highest {
            return Err(ConfigError::ThresholdOutOfRange {
                threshold: self.threshold,
                lowest,
                highest,
            });
        }
        if self.max_labels == 0 {
            return Err(ConfigError::ZeroMaxLabels);
        }
        for (interval, what) in [
            (self.lag_probe, "lag probe resolution"),
            (self.runtime_metrics, "runtime metrics interval"),
        ] {
            if interval.is_some_and(|interval| interval.is_zero()) {
                return Err(ConfigError::ZeroProbeInterval { what });
            }
        }
        #[cfg(feature = "watchdog")]
        let watchdog = match self.watchdog.threshold {
            None => None,
            Some(threshold) if threshold.is_zero() => return Err(ConfigError::ZeroWatchdog),
            Some(threshold) if threshold < crate::watchdog::MIN_THRESHOLD => {
                return Err(ConfigError::WatchdogTooShort {
                    threshold,
                    minimum: crate::watchdog::MIN_THRESHOLD,
                })
            }
            Some(threshold) => {
                use crate::watchdog::{SetupError, Watchdog};
                match Watchdog::new(self.watchdog, threshold) {
                    Ok(watchdog) => Some(Arc::new(watchdog)),
                    Err(SetupError::InvalidSignal(signal)) => {
                        return Err(ConfigError::InvalidSignal(signal))
                    }
                    Err(SetupError::Install(error)) => {
                        return Err(ConfigError::Watchdog(error.to_string()))
                    }
                }
            }
        };
        let recorder = Arc::new(Recorder::new(crate::recorder::Config {
            threshold: self.threshold,
            max_labels: self.max_labels,
            warn_interval: self.warn_interval,
            on_hog: self.on_hog,
            #[cfg(feature = "watchdog")]
            watchdog_id: watchdog.as_ref().map_or(0, |watchdog| watchdog.id),
            #[cfg(not(feature = "watchdog"))]
            watchdog_id: 0,
        }));
        #[cfg(feature = "watchdog")]
        let watchdog_thread = match &watchdog {
            Some(watchdog) => Some(
                crate::watchdog::WatchdogThread::spawn(recorder.clone(), watchdog.clone())
                    .map_err(|error| ConfigError::Watchdog(error.to_string()))?,
            ),
            None => None,
        };
        let detector = Detector {
            handle: Arc::new(Handle {
                recorder,
                runtime: Arc::new(RuntimeState::new(self.lag_probe, self.runtime_metrics)),
                server_timing: self.server_timing,
                #[cfg(feature = "watchdog")]
                watchdog,
                #[cfg(feature = "watchdog")]
                _watchdog_thread: watchdog_thread,
            }),
        };
        detector.start_probes_if_in_runtime();
        Ok(detector)
    }
}

/// Finds the code that blocks your executor: watches futures, times every poll, and reports.
///
/// A `Detector` is a cheap handle (`Clone + Send + Sync`); clones share one set of statistics.
///
/// ```
/// use std::time::Duration;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let detector = hogwatch::Detector::builder()
///     .threshold(Duration::from_millis(1))
///     .build()?;
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
/// # rt.block_on(async {
/// let answer = detector.watch("refresh-cache", async { 42 }).await;
/// assert_eq!(answer, 42);
/// # });
/// let report = detector.report();
/// assert_eq!(report.entry("refresh-cache").unwrap().completed, 1);
/// println!("{}", report.to_text());
/// let json = serde_json::to_string(&report)?;
/// # assert!(json.contains("refresh-cache"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Detector {
    handle: Arc<Handle>,
}

impl fmt::Debug for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detector")
            .field("threshold_us", &self.handle.recorder.threshold_us)
            .finish_non_exhaustive()
    }
}

/// What the user's `Detector` clones share. Background threads and tasks stop when this is
/// dropped, that is when the last `Detector` goes, even if watched futures remain.
struct Handle {
    recorder: Arc<Recorder>,
    /// The lag probe and runtime-metrics sampler: configuration and results.
    runtime: Arc<RuntimeState>,
    server_timing: bool,
    #[cfg(feature = "watchdog")]
    watchdog: Option<Arc<crate::watchdog::Watchdog>>,
    /// Stopped and joined when the last `Detector` goes.
    #[cfg(feature = "watchdog")]
    _watchdog_thread: Option<crate::watchdog::WatchdogThread>,
}

impl Handle {
    fn report(&self, reset: bool) -> Report {
        let snapshot = self.recorder.snapshot(reset);
        let delays = (snapshot.delay_us, snapshot.unattributed_delay_us);
        #[allow(unused_mut)]
        let mut report = Report::new(self.recorder.threshold_us, snapshot, |_entries| {
            #[cfg(feature = "watchdog")]
            if let Some(watchdog) = &self.watchdog {
                watchdog.fill(_entries, reset);
            }
        });
        report.event_loop_lag = self.runtime.event_loop_lag(reset).map(|lag| EventLoopLag {
            delay_us: delays.0,
            unattributed_delay_us: delays.1,
            ..lag
        });
        report.runtime = self.runtime.figures();
        #[cfg(feature = "watchdog")]
        {
            report.watchdog = self.watchdog.as_ref().map(|watchdog| watchdog.stats(reset));
        }
        report
    }
}

impl Detector {
    /// A builder with the defaults: 10 ms threshold, 1024 labels, one warning per label per second.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Wraps `future` so that each of its polls is timed and recorded under `label`.
    ///
    /// The label is looked up once, here; polling the returned future takes no lock and does not
    /// allocate. Dropping it before it is ready counts as cancelled; a panicking poll counts as
    /// panicked and the panic propagates unchanged.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder()
    ///     .threshold(std::time::Duration::from_millis(100))
    ///     .build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// rt.block_on(detector.watch("tick", async {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    /// }));
    /// let entry = detector.report().entry("tick").cloned().unwrap();
    /// assert_eq!(entry.polls, 2);
    /// assert_eq!(entry.slow_polls, 0);
    /// # Ok(()) }
    /// ```
    pub fn watch<F: Future>(&self, label: &str, future: F) -> Watched<F> {
        self.watched(label, future)
    }

    /// Wraps `stream` so that each poll of it (`poll_next`) is timed and recorded under `label`,
    /// like a [watched future](Self::watch): a stream that produces its items with CPU work on
    /// the executor shows up as slow polls. It ends (counted as completed) when it yields
    /// `None`; dropping it earlier counts as cancelled.
    ///
    /// ```
    /// use futures_core::Stream;
    /// use std::pin::pin;
    /// use std::task::{Context, Poll, Waker};
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder()
    ///     .threshold(Duration::from_millis(5))
    ///     .build()?;
    /// let items = tokio_stream_like(3);
    /// let mut watched = pin!(detector.watch_stream("rows", items));
    /// let mut cx = Context::from_waker(Waker::noop());
    /// while let Poll::Ready(Some(_)) = watched.as_mut().poll_next(&mut cx) {}
    /// let entry = detector.report().entry("rows").cloned().unwrap();
    /// assert_eq!((entry.polls, entry.slow_polls, entry.completed), (4, 3, 1));
    /// # Ok(()) }
    /// # // A stream of `n` items, each produced by 10 ms of blocking work.
    /// # fn tokio_stream_like(n: u32) -> impl Stream<Item = u32> {
    /// #     struct Rows(u32);
    /// #     impl Stream for Rows {
    /// #         type Item = u32;
    /// #         fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<u32>> {
    /// #             if self.0 == 0 { return Poll::Ready(None); }
    /// #             std::thread::sleep(Duration::from_millis(10));
    /// #             self.0 -= 1;
    /// #             Poll::Ready(Some(self.0))
    /// #         }
    /// #     }
    /// #     Rows(n)
    /// # }
    /// ```
    pub fn watch_stream<S: Stream>(&self, label: &str, stream: S) -> Watched<S> {
        self.watched(label, stream)
    }

    fn watched<T>(&self, label: &str, inner: T) -> Watched<T> {
        self.start_probes_if_in_runtime();
        let label = self.handle.recorder.registry.get(label, LabelKind::Watch);
        Watched::new(inner, self.handle.recorder.clone(), label)
    }

    /// A snapshot of every label's statistics since the start of the window, worst first.
    pub fn report(&self) -> Report {
        self.handle.report(false)
    }

    /// Like [`report`](Self::report), and starts a new window: counters are taken and zeroed
    /// atomically, so nothing recorded meanwhile is lost or counted twice.
    pub fn report_and_reset(&self) -> Report {
        self.handle.report(true)
    }

    /// The stall watchdog's counters since the detector was built or last reset (`None` without
    /// a watchdog): captures requested = completed + failed once no capture is in flight.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// assert!(detector.watchdog_stats().is_none());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "watchdog")]
    #[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
    pub fn watchdog_stats(&self) -> Option<crate::WatchdogStats> {
        let watchdog = self.handle.watchdog.as_ref()?;
        Some(watchdog.stats(false))
    }

    /// The hog threshold this detector was built with.
    pub fn threshold(&self) -> Duration {
        Duration::from_nanos(self.handle.recorder.threshold_ns)
    }

    /// Starts the [lag probe](Builder::lag_probe) and the
    /// [runtime-metrics sampler](Builder#method.runtime_metrics), whichever are configured, as tasks
    /// on `runtime`. Returns `true` if this call started them, `false` if they were already
    /// running or none is configured.
    ///
    /// hogwatch calls this for you when the detector is built, or asked to `watch` or make a
    /// `layer`, inside a runtime; call it yourself when the detector is built outside any runtime
    /// and the first of those also happens outside one (for example with only
    /// `instrument_runtime`). The tasks stop once the last `Detector` clone is dropped.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let detector = hogwatch::Detector::builder()
    ///     .lag_probe(Duration::from_millis(10))
    ///     .build()?; // no runtime yet: nothing started
    /// let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    /// assert!(detector.start_probes(rt.handle()));
    /// assert!(!detector.start_probes(rt.handle()), "already running");
    /// # Ok(()) }
    /// ```
    pub fn start_probes(&self, runtime: &tokio::runtime::Handle) -> bool {
        crate::runtime::start(
            &self.handle.runtime,
            &self.handle.recorder,
            Arc::downgrade(&self.handle),
            runtime,
        )
    }

    /// The per-future check: one relaxed load once the probes run (or when none is configured).
    #[inline]
    pub(crate) fn start_probes_if_in_runtime(&self) {
        if self.handle.runtime.waiting_to_start() {
            crate::runtime::start_if_in_runtime(
                &self.handle.runtime,
                &self.handle.recorder,
                Arc::downgrade(&self.handle),
            );
        }
    }

    /// The recorder every watched poll writes into, for the features that extend the handle.
    #[cfg_attr(not(any(feature = "axum", tokio_unstable)), allow(dead_code))]
    pub(crate) fn recorder(&self) -> &Arc<Recorder> {
        &self.handle.recorder
    }

    /// The watchdog, if the detector has one, for the features that extend the handle
    /// (`watch_runtime`).
    #[cfg(feature = "watchdog")]
    pub(crate) fn watchdog_state(&self) -> Option<&Arc<crate::watchdog::Watchdog>> {
        self.handle.watchdog.as_ref()
    }

    /// Whether the layer adds a `Server-Timing` header.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn server_timing(&self) -> bool {
        self.handle.server_timing
    }
}
