//! The event-loop lag probe: a task that sleeps `resolution` and records how late it woke.
//!
//! One sample per wake-up, off every hot path, so the histogram sits behind a plain mutex.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::{micros, EventLoopLag, RuntimeState};
use crate::recorder::Recorder;

/// One sample per wake-up, a few hundred a second: a full HdrHistogram (1 µs .. 60 s, 3
/// significant figures) per detector is affordable here, unlike per label.
fn empty_histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 <= 2 * 1, 3 significant figures): this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

pub(crate) struct LagProbe {
    resolution: Duration,
    /// Lags in microseconds; `None` until the probe task starts.
    histogram: Mutex<Option<Histogram<u64>>>,
}

impl LagProbe {
    pub(super) fn new(resolution: Duration) -> Self {
        Self {
            resolution,
            histogram: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Histogram<u64>>> {
        // Nothing can be left half-written by a panic while the lock is held (`record` saturates).
        self.histogram
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn started(&self) {
        self.lock().get_or_insert_with(empty_histogram);
    }

    fn record(&self, lag: Duration) {
        if let Some(histogram) = self.lock().as_mut() {
            histogram.saturating_record(micros(lag).max(1));
        }
    }

    /// `None` until the probe has started; then the window's figures (zeros before the first
    /// sample), and with `reset` a new window.
    pub(super) fn summary(&self, reset: bool) -> Option<EventLoopLag> {
        let mut guard = self.lock();
        let histogram = guard.as_mut()?;
        let summary = if histogram.is_empty() {
            EventLoopLag {
                resolution_us: micros(self.resolution),
                ..EventLoopLag::default()
            }
        } else {
            EventLoopLag {
                resolution_us: micros(self.resolution),
                samples: histogram.len(),
                min_us: histogram.min(),
                mean_us: histogram.mean().round() as u64,
                p50_us: histogram.value_at_quantile(0.5),
                p99_us: histogram.value_at_quantile(0.99),
                max_us: histogram.max(),
                ..EventLoopLag::default()
            }
        };
        if reset {
            histogram.reset();
        }
        Some(summary)
    }
}

/// The probe task. Sleeps `resolution` from the moment it last woke (a late wake-up delays the
/// next one rather than bunching them, like `MissedTickBehavior::Delay`), and ends at the first
/// wake-up after the last `Detector` is gone. Each wake-up hands the recorder its lateness (to
/// attribute to whoever held the workers) and lets it attribute the delays old enough.
pub(super) async fn run<H>(state: Arc<RuntimeState>, recorder: Arc<Recorder>, alive: Weak<H>) {
    let Some(probe) = state.lag.as_ref() else {
        return;
    };
    probe.started();
    let resolution = probe.resolution;
    let resolution_ticks = recorder
        .ticks
        .of_ns(resolution.as_nanos().try_into().unwrap_or(u64::MAX));
    loop {
        // Wall-clock time, not tokio's: a paused test clock must not read as lag.
        let expected = Instant::now() + resolution;
        let expected_raw = recorder.clock.raw() + resolution_ticks;
        tokio::time::sleep(resolution).await;
        if alive.strong_count() == 0 {
            return;
        }
        probe.record(Instant::now().saturating_duration_since(expected));
        recorder.probe_woke(expected_raw, recorder.clock.raw());
        recorder.attribute_delays();
    }
}
