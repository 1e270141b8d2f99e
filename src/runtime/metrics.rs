//! tokio-metrics' `RuntimeMonitor`, sampled on an interval by a background task.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{micros, RuntimeFigures};

pub(crate) struct Sampler {
    interval: Duration,
    latest: Mutex<Option<RuntimeFigures>>,
}

impl Sampler {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            latest: Mutex::new(None),
        }
    }

    pub(super) fn latest(&self) -> Option<RuntimeFigures> {
        // A panic cannot leave an `Option` half-written: keep using a poisoned lock.
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn store(&self, figures: RuntimeFigures) {
        *self
            .latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(figures);
    }
}

fn figures(metrics: &tokio_metrics::RuntimeMetrics) -> RuntimeFigures {
    let as_u64 = |value: usize| u64::try_from(value).unwrap_or(u64::MAX);
    let busy_ratio = if metrics.elapsed.is_zero() || metrics.workers_count == 0 {
        0.0
    } else {
        metrics.busy_ratio() / metrics.workers_count as f64
    };
    #[allow(unused_mut)]
    let mut figures = RuntimeFigures {
        interval_us: micros(metrics.elapsed),
        workers: as_u64(metrics.workers_count),
        live_tasks: as_u64(metrics.live_tasks_count),
        busy_ratio,
        global_queue_depth: as_u64(metrics.global_queue_depth),
        total_park_count: metrics.total_park_count,
        max_park_count: metrics.max_park_count,
        min_park_count: metrics.min_park_count,
        ..RuntimeFigures::default()
    };
    #[cfg(tokio_unstable)]
    {
        figures.mean_poll_us = Some(micros(metrics.mean_poll_duration));
        figures.total_polls = Some(metrics.total_polls_count);
        figures.total_local_queue_depth = Some(as_u64(metrics.total_local_queue_depth));
        figures.max_local_queue_depth = Some(as_u64(metrics.max_local_queue_depth));
    }
    figures
}

/// The sampler task: one `RuntimeMetrics` interval per `interval`, the latest kept for reports.
pub(super) async fn run<H>(
    state: Arc<super::RuntimeState>,
    alive: Weak<H>,
    monitor: tokio_metrics::RuntimeMonitor,
) {
    let Some(sampler) = state.metrics.as_ref() else {
        return;
    };
    let mut intervals = monitor.intervals();
    // The first interval starts now: discard what it says about the time before.
    let _ = intervals.next();
    loop {
        tokio::time::sleep(sampler.interval).await;
        if alive.strong_count() == 0 {
            return;
        }
        if let Some(metrics) = intervals.next() {
            sampler.store(figures(&metrics));
        }
    }
}
