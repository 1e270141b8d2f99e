//! The [`Detector`] handle, its [`Builder`] and the configuration errors.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::event::{HogEvent, HogKind, OnHog};
use crate::report::Report;
use crate::stats::{LabelStats, Registry};
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
    server_timing: bool,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("threshold", &self.threshold)
            .field("max_labels", &self.max_labels)
            .field("warn_interval", &self.warn_interval)
            .field("on_hog", &self.on_hog.as_ref().map(|_| "Fn(&HogEvent)"))
            .field("server_timing", &self.server_timing)
            .finish()
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

    /// Adds a `Server-Timing` header to every response of the [layer](Detector::layer) with the
    /// request's time in polls, its longest poll and its poll count, so `curl -v` and a browser's
    /// devtools show them per request. Off by default: it tells clients how your server spends
    /// its time.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().server_timing(true).build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn server_timing(mut self, enabled: bool) -> Self {
        self.server_timing = enabled;
        self
    }

    /// Checks the configuration and builds the detector.
    ///
    /// # Errors
    ///
    /// - [`ConfigError::ZeroThreshold`] if the threshold is zero;
    /// - [`ConfigError::ThresholdOutOfRange`] if the threshold is below 1 µs or not below 60 s,
    ///   the range the poll histogram holds;
    /// - [`ConfigError::ZeroMaxLabels`] if `max_labels` is zero.
    pub fn build(self) -> Result<Detector, ConfigError> {
        if self.threshold.is_zero() {
            return Err(ConfigError::ZeroThreshold);
        }
        let lowest = Duration::from_micros(crate::stats::LOWEST_US);
        let highest = Duration::from_micros(crate::stats::HIGHEST_US);
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
        let clock = quanta::Clock::new();
        let threshold_us = duration_as_u64(self.threshold.as_micros());
        let shared = Shared {
            window_start: AtomicU64::new(clock.raw()),
            clock,
            threshold_ns: duration_as_u64(self.threshold.as_nanos()),
            threshold_us,
            warn_interval_ns: duration_as_u64(self.warn_interval.as_nanos()),
            registry: Registry::new(self.max_labels, threshold_us),
            on_hog: self.on_hog,
            server_timing: self.server_timing,
        };
        Ok(Detector {
            handle: Arc::new(Handle {
                shared: Arc::new(shared),
            }),
        })
    }
}

fn duration_as_u64(value: u128) -> u64 {
    value.try_into().unwrap_or(u64::MAX)
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
            .field("threshold_us", &self.handle.shared.threshold_us)
            .finish_non_exhaustive()
    }
}

/// What the user's `Detector` clones share. Background threads (added by later subsystems) stop
/// when this is dropped, that is when the last `Detector` goes, even if watched futures remain.
struct Handle {
    shared: Arc<Shared>,
}

/// What every watched future needs: the clock, the configuration and the statistics.
pub(crate) struct Shared {
    pub(crate) clock: quanta::Clock,
    pub(crate) threshold_ns: u64,
    pub(crate) threshold_us: u64,
    warn_interval_ns: u64,
    pub(crate) registry: Registry,
    on_hog: Option<OnHog>,
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) server_timing: bool,
    /// Clock reading at the start of the current report window.
    window_start: AtomicU64,
}

impl Shared {
    /// The slow path of a poll that took longer than the threshold: count it, tell the callback,
    /// and warn (rate limited per label).
    #[cold]
    #[inline(never)]
    pub(crate) fn on_slow_poll(&self, stats: &LabelStats, poll_ns: u64, now_raw: u64) {
        stats.record_slow_poll(poll_ns);
        if let Some(callback) = &self.on_hog {
            callback(&HogEvent {
                kind: HogKind::SlowPoll,
                label: stats.label.clone(),
                duration: Duration::from_nanos(poll_ns),
                threshold: Duration::from_nanos(self.threshold_ns),
            });
        }
        let now_ns = self.clock.delta_as_nanos(0, now_raw);
        if let Some(suppressed) = stats
            .warn_limiter
            .try_acquire(now_ns, self.warn_interval_ns)
        {
            tracing::warn!(
                target: "hogwatch",
                label = %stats.label,
                poll_us = poll_ns / 1_000,
                threshold_us = self.threshold_us,
                suppressed,
                "a poll blocked the executor for {:.1} ms",
                poll_ns as f64 / 1e6,
            );
        }
    }

    fn report(&self, reset: bool) -> Report {
        let now = self.clock.raw();
        let start = if reset {
            self.window_start.swap(now, Ordering::Relaxed)
        } else {
            self.window_start.load(Ordering::Relaxed)
        };
        let (entries, folded) = self.registry.snapshot(reset);
        let window_us = self.clock.delta_as_nanos(start, now) / 1_000;
        Report::new(self.threshold_us, window_us, entries, folded)
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
    /// let detector = hogwatch::Detector::builder().build()?;
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
        let stats = self.handle.shared.registry.get(label);
        Watched::new(future, self.handle.shared.clone(), stats)
    }

    /// A snapshot of every label's statistics since the start of the window, worst first.
    pub fn report(&self) -> Report {
        self.handle.shared.report(false)
    }

    /// Like [`report`](Self::report), and starts a new window: counters are taken and zeroed
    /// atomically, so nothing recorded meanwhile is lost or counted twice.
    pub fn report_and_reset(&self) -> Report {
        self.handle.shared.report(true)
    }

    /// The hog threshold this detector was built with.
    pub fn threshold(&self) -> Duration {
        Duration::from_nanos(self.handle.shared.threshold_ns)
    }

    /// A tower layer that watches every request of an axum router, labelled by method and route
    /// template (`GET /instruments/{id}`); requests that match no route are `<unmatched>`.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    ///
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// let app: Router = Router::new()
    ///     .route("/instruments/{id}", get(|| async { "details" }))
    ///     .layer(detector.layer());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn layer(&self) -> crate::layer::HogLayer {
        crate::layer::HogLayer::new(self.clone())
    }

    /// The debug endpoint: `GET /debug/hogs` (JSON, `?format=text`), `GET /debug/hogs/metrics`
    /// (Prometheus). See [the endpoint's docs](crate::endpoint) before exposing it.
    ///
    /// ```
    /// use axum::Router;
    ///
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// let app: Router = Router::new().merge(detector.router());
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn router<S>(&self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        crate::endpoint::router(self.clone())
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }
}
