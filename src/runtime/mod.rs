//! The runtime-wide view: what hogwatch sees beyond the futures it wraps. (tokio's task hooks,
//! which time every poll of every task, are `crate::hooks`.)
//!
//! - `lag`: the event-loop lag probe, a task that asks to wake every few milliseconds and records
//!   how late it ran ([`Builder::lag_probe`]), and tells the recorder each delay to attribute to
//!   the labels that caused it.
//! - `metrics` (feature `runtime-metrics`): tokio-metrics' `RuntimeMonitor`, sampled on an interval
//!   ([`Builder::runtime_metrics`]).
//!
//! The probe and the sampler are tokio tasks on the runtime they measure. They start with
//! [`Detector::start_probes`], which hogwatch calls for you the first time the detector is built,
//! or asked to `watch` or make a `layer`, inside a runtime; they stop by themselves once the last
//! [`Detector`] clone is dropped.
//!
//! [`Detector`]: crate::Detector
//! [`Detector::start_probes`]: crate::Detector::start_probes
//! [`Builder::lag_probe`]: crate::Builder::lag_probe
//! [`Builder::runtime_metrics`]: crate::Builder::runtime_metrics

mod lag;
#[cfg(feature = "runtime-metrics")]
mod metrics;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;

use crate::recorder::Recorder;

/// How late the lag probe woke up, in one report window: the delay every task on the runtime
/// suffers, whoever causes it (the idea of Node's `monitorEventLoopDelay`).
///
/// An idle runtime shows a lag under a millisecond or two (tokio's timer ticks in whole
/// milliseconds); a poll that blocks the probe's worker for 60 ms shows as a lag near 60 ms.
///
/// ```
/// use std::time::Duration;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
/// rt.block_on(async {
///     let detector = hogwatch::Detector::builder()
///         .lag_probe(Duration::from_millis(5))
///         .build()?; // inside a runtime: the probe starts here
///     tokio::time::sleep(Duration::from_millis(50)).await;
/// #   // A loaded machine may wake this thread late, before the probe's first wake-up: wait for it.
/// #   let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
/// #   while detector.report().event_loop_lag.map_or(0, |lag| lag.samples) == 0 {
/// #       assert!(tokio::time::Instant::now() < deadline, "no lag sample within 10 s");
/// #       tokio::time::sleep(Duration::from_millis(5)).await;
/// #   }
///     let lag = detector.report().event_loop_lag.expect("the probe is on");
///     assert!(lag.samples > 0);
///     assert!(lag.min_us <= lag.p50_us && lag.p50_us <= lag.max_us);
///     Ok::<_, hogwatch::ConfigError>(())
/// })?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EventLoopLag {
    /// The probe's resolution: how long it asks to sleep each time.
    pub resolution_us: u64,
    /// Samples taken (one per wake-up).
    pub samples: u64,
    /// The smallest lag.
    pub min_us: u64,
    /// The mean lag.
    pub mean_us: u64,
    /// The median lag.
    pub p50_us: u64,
    /// The 99th percentile lag.
    pub p99_us: u64,
    /// The largest lag.
    pub max_us: u64,
    /// The lateness of the wake-ups more than a threshold late, summed: the scheduling delay a
    /// task woken by the runtime's driver suffered in the window. It is attributed to the labels
    /// holding workers meanwhile (their [`inflicted_delay_us`](crate::Entry::inflicted_delay_us))
    /// or to nobody (below). A delay is attributed a few thresholds after it ends, so it counts
    /// in the window it is attributed in.
    pub delay_us: u64,
    /// The part of `delay_us` during which no label held a worker with a slow poll or a stall:
    /// many short polls back to back, code hogwatch does not watch, or a machine that did not
    /// run the workers.
    pub unattributed_delay_us: u64,
}

/// The runtime's own figures over the last sampling interval, from tokio-metrics'
/// [`RuntimeMonitor`](https://docs.rs/tokio-metrics/0.5/tokio_metrics/struct.RuntimeMonitor.html)
/// (feature `runtime-metrics`, `Builder::runtime_metrics`).
///
/// The fields that are `Option`s need the application to be built with `--cfg tokio_unstable`
/// (tokio only counts them there); they are `None` otherwise and left out of the JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RuntimeFigures {
    /// How long the interval these figures cover lasted.
    pub interval_us: u64,
    /// Worker threads.
    pub workers: u64,
    /// Tasks alive at the end of the interval.
    pub live_tasks: u64,
    /// Share of the interval the workers spent busy (0 to 1), summed over workers and divided by
    /// their number.
    pub busy_ratio: f64,
    /// Tasks waiting in the global (injection) queue at the end of the interval.
    pub global_queue_depth: u64,
    /// Times the workers parked (went idle) in the interval, over all workers.
    pub total_park_count: u64,
    /// The most any one worker parked.
    pub max_park_count: u64,
    /// The least any one worker parked.
    pub min_park_count: u64,
    /// Mean duration of a task poll (`tokio_unstable` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_poll_us: Option<u64>,
    /// Task polls in the interval, over all workers (`tokio_unstable` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_polls: Option<u64>,
    /// Tasks waiting in the workers' local queues, summed (`tokio_unstable` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_local_queue_depth: Option<u64>,
    /// The deepest local queue (`tokio_unstable` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_local_queue_depth: Option<u64>,
}

/// The file every hogwatch background task is spawned from, as `Location::file` spells it: the
/// task hooks label those tasks `task <hogwatch>`.
#[cfg_attr(not(tokio_unstable), allow(dead_code))]
pub(crate) const SPAWN_FILE: &str = file!();

/// The runtime-wide state a detector carries: the probes' configuration and their results.
pub(crate) struct RuntimeState {
    lag: Option<lag::LagProbe>,
    #[cfg(feature = "runtime-metrics")]
    metrics: Option<metrics::Sampler>,
    /// Set once the background tasks were spawned (or when there are none to spawn), so the check
    /// in `watch` is one relaxed load.
    started: AtomicBool,
}

impl RuntimeState {
    /// `metrics_interval` is ignored without the `runtime-metrics` feature.
    pub(crate) fn new(
        lag_resolution: Option<Duration>,
        metrics_interval: Option<Duration>,
    ) -> Self {
        let lag = lag_resolution.map(lag::LagProbe::new);
        #[cfg(feature = "runtime-metrics")]
        let metrics = metrics_interval.map(metrics::Sampler::new);
        #[cfg(not(feature = "runtime-metrics"))]
        let _ = metrics_interval;
        #[cfg(feature = "runtime-metrics")]
        let nothing_to_start = lag.is_none() && metrics.is_none();
        #[cfg(not(feature = "runtime-metrics"))]
        let nothing_to_start = lag.is_none();
        Self {
            lag,
            #[cfg(feature = "runtime-metrics")]
            metrics,
            started: AtomicBool::new(nothing_to_start),
        }
    }

    /// True while there are probes configured that have not been spawned yet.
    #[inline]
    pub(crate) fn waiting_to_start(&self) -> bool {
        !self.started.load(Ordering::Relaxed)
    }

    /// The lag summary for the report (resetting the histogram with `reset`).
    pub(crate) fn event_loop_lag(&self, reset: bool) -> Option<EventLoopLag> {
        self.lag.as_ref().and_then(|probe| probe.summary(reset))
    }

    /// The latest runtime figures for the report.
    pub(crate) fn figures(&self) -> Option<RuntimeFigures> {
        #[cfg(feature = "runtime-metrics")]
        {
            self.metrics.as_ref().and_then(metrics::Sampler::latest)
        }
        #[cfg(not(feature = "runtime-metrics"))]
        {
            None
        }
    }
}

/// Spawns the configured probes on `runtime`, once per detector. They hold `alive` (a weak
/// reference to what the `Detector` clones share) and stop at their next wake-up after it dies.
/// Returns whether they were spawned by this call.
pub(crate) fn start<H>(
    state: &Arc<RuntimeState>,
    recorder: &Arc<Recorder>,
    alive: Weak<H>,
    runtime: &tokio::runtime::Handle,
) -> bool
where
    H: Send + Sync + 'static,
{
    if state.started.swap(true, Ordering::AcqRel) {
        return false;
    }
    if state.lag.is_some() {
        runtime.spawn(lag::run(state.clone(), recorder.clone(), alive.clone()));
    }
    #[cfg(feature = "runtime-metrics")]
    if state.metrics.is_some() {
        let monitor = tokio_metrics::RuntimeMonitor::new(runtime);
        runtime.spawn(metrics::run(state.clone(), alive, monitor));
    }
    true
}

/// Like [`start`], on the runtime the caller is in, if any.
pub(crate) fn start_if_in_runtime<H>(
    state: &Arc<RuntimeState>,
    recorder: &Arc<Recorder>,
    alive: Weak<H>,
) -> bool
where
    H: Send + Sync + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => start(state, recorder, alive, &runtime),
        Err(_) => false,
    }
}

/// The figures as integers that never overflow.
fn micros(duration: Duration) -> u64 {
    duration.as_micros().try_into().unwrap_or(u64::MAX)
}
