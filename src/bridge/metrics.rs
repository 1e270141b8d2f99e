//! The `metrics` facade bridge: what `tokio-metrics`' metrics-rs integration does for runtime
//! figures, for hogwatch's per-label ones. Any `metrics` exporter (Prometheus, StatsD, ...) then
//! carries them.
//!
//! A report holds totals for the detector's window; the facade wants increments and samples. So
//! the reporter remembers what it last published for each label and publishes the difference:
//! counters are incremented by it, and each poll-duration bucket that gained polls is recorded
//! that many times at the bucket's value (within 1.6 % of every poll in it). A window that was
//! reset (`report_and_reset`) shows smaller totals than last time: the reporter then publishes
//! the new window's totals whole, as a counter reset would.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_histogram, histogram, Unit};

use super::added_polls;
use crate::detector::Detector;
use crate::recorder::PollHistogram;
use crate::report::Entry;

/// Counter names, as `/debug/hogs/metrics` names the same figures where units allow (the
/// facade's counters are whole numbers, so busy times are in microseconds).
const POLLS: &str = "hogwatch_polls_total";
const SLOW_POLLS: &str = "hogwatch_slow_polls_total";
const BUSY: &str = "hogwatch_busy_microseconds_total";
const SLOW_BUSY: &str = "hogwatch_slow_poll_microseconds_total";
const STALLS: &str = "hogwatch_stalls_total";
const FUTURES: &str = "hogwatch_futures_total";
const REQUESTS: &str = "hogwatch_requests_total";
const RESPONSES: &str = "hogwatch_responses_total";
/// The poll-duration histogram, in seconds.
const POLL_DURATION: &str = "hogwatch_poll_duration_seconds";

/// Publishes a [`Detector`]'s per-label figures through the [`metrics`](::metrics) facade
/// (feature `metrics`): counters of polls, slow polls, busy and slow time, stalls, futures by
/// outcome, requests and responses by status class, all labelled `label`, and the poll-duration
/// distribution as the histogram `hogwatch_poll_duration_seconds`.
///
/// Build one with [`Detector::metrics_reporter`], then either call [`publish`](Self::publish)
/// when you like (before each scrape of a pull exporter, say) or spawn [`run`](Self::run).
/// Label values are the report's labels, so their number is bounded by `max_labels`.
///
/// ```
/// # fn main() -> Result<(), hogwatch::ConfigError> {
/// let detector = hogwatch::Detector::builder().build()?;
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// detector.watch("parse-blob", async {}).await;
/// # });
/// let mut reporter = detector.metrics_reporter();
/// reporter.describe();
/// reporter.publish(); // hogwatch_polls_total{label="parse-blob"} += 1, and the rest
/// # Ok(()) }
/// ```
pub struct MetricsReporter {
    detector: Detector,
    /// What was published last, per label: the totals the next report is compared with.
    published: HashMap<String, Published>,
    /// The last report's window length: a shorter one means the window was reset since.
    window_us: u64,
}

/// A label's totals as last published.
#[derive(Default)]
struct Published {
    counters: [u64; COUNTERS],
    histogram: PollHistogram,
}

const COUNTERS: usize = 14;

impl fmt::Debug for MetricsReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsReporter")
            .field("detector", &self.detector)
            .field("labels", &self.published.len())
            .finish()
    }
}

impl Detector {
    /// A reporter that publishes this detector's figures through the `metrics` facade (feature
    /// `metrics`); see [`MetricsReporter`].
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// # rt.block_on(async {
    /// // Publishes into whatever `metrics` recorder the app installed, every 10 s.
    /// let publishing = tokio::spawn(detector.metrics_reporter().run(std::time::Duration::from_secs(10)));
    /// # publishing.abort();
    /// # });
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_reporter(&self) -> MetricsReporter {
        MetricsReporter {
            detector: self.clone(),
            published: HashMap::new(),
            window_us: 0,
        }
    }
}

impl MetricsReporter {
    /// Registers each metric's description and unit with the installed recorder (exporters show
    /// them as `# HELP`). Optional; [`run`](Self::run) calls it.
    pub fn describe(&self) {
        describe_counter!(POLLS, Unit::Count, "Polls of watched futures.");
        describe_counter!(SLOW_POLLS, Unit::Count, "Polls longer than the threshold.");
        describe_counter!(BUSY, Unit::Microseconds, "Time spent inside polls.");
        describe_counter!(
            SLOW_BUSY,
            Unit::Microseconds,
            "Time spent inside polls longer than the threshold."
        );
        describe_counter!(
            STALLS,
            Unit::Count,
            "Polls the stall watchdog caught still running past its threshold."
        );
        describe_counter!(
            FUTURES,
            Unit::Count,
            "Watched futures that ended, by outcome."
        );
        describe_counter!(REQUESTS, Unit::Count, "HTTP requests seen by the layer.");
        describe_counter!(RESPONSES, Unit::Count, "HTTP responses by status class.");
        describe_histogram!(
            POLL_DURATION,
            Unit::Seconds,
            "Duration of each poll of a watched future."
        );
    }

    /// Takes a report and publishes what changed since the last call, into the recorder
    /// installed for this thread or process. Costs a report (see [`Detector::report`]) plus one
    /// histogram sample per poll since the last call; nothing on the hot path. Never panics: a
    /// recorder that ignores a name just drops it.
    pub fn publish(&mut self) {
        let report = self.detector.report();
        if report.window_us < self.window_us {
            self.published.clear();
        }
        self.window_us = report.window_us;
        for entry in &report.entries {
            let last = self.published.entry(entry.label.clone()).or_default();
            publish_entry(entry, last);
        }
    }

    /// Describes the metrics, then publishes every `interval` until the future is dropped
    /// (spawn it on the runtime: `tokio::spawn(reporter.run(Duration::from_secs(10)))`). The
    /// runtime needs its timer.
    pub async fn run(mut self, interval: Duration) {
        self.describe();
        loop {
            self.publish();
            tokio::time::sleep(interval).await;
        }
    }
}

/// A counter of a label: its name, an extra label (key, value) if it has one, and its total.
type Counter = (&'static str, Option<(&'static str, &'static str)>, u64);

/// The label's counters, in a fixed order.
fn counters(entry: &Entry) -> [Counter; COUNTERS] {
    let responses = &entry.responses;
    [
        (POLLS, None, entry.polls),
        (SLOW_POLLS, None, entry.slow_polls),
        (BUSY, None, entry.busy_us),
        (SLOW_BUSY, None, entry.slow_busy_us),
        (STALLS, None, entry.stalls),
        (FUTURES, Some(("outcome", "completed")), entry.completed),
        (FUTURES, Some(("outcome", "cancelled")), entry.cancelled),
        (FUTURES, Some(("outcome", "panicked")), entry.panicked),
        (REQUESTS, None, entry.requests),
        (RESPONSES, Some(("class", "1xx")), responses.informational),
        (RESPONSES, Some(("class", "2xx")), responses.success),
        (RESPONSES, Some(("class", "3xx")), responses.redirection),
        (RESPONSES, Some(("class", "4xx")), responses.client_error),
        (RESPONSES, Some(("class", "5xx")), responses.server_error),
    ]
}

fn publish_entry(entry: &Entry, last: &mut Published) {
    let now = counters(entry);
    // A reset window starts again from zero: any total below the last one means the report
    // covers a new window (also caught by the window's length), and everything in it is new.
    let reset = entry.histogram.len() < last.histogram.len()
        || now
            .iter()
            .zip(&last.counters)
            .any(|((_, _, value), previous)| value < previous);
    if reset {
        *last = Published::default();
    }
    for ((name, extra, value), previous) in now.iter().zip(&last.counters) {
        let delta = value.saturating_sub(*previous);
        if delta == 0 {
            continue;
        }
        let label = entry.label.clone();
        match extra {
            None => counter!(*name, "label" => label).increment(delta),
            Some((key, class)) => {
                counter!(*name, "label" => label, *key => *class).increment(delta)
            }
        }
    }
    let histogram = histogram!(POLL_DURATION, "label" => entry.label.clone());
    for (value_us, added) in added_polls(&entry.histogram, &last.histogram) {
        histogram.record_many(
            value_us as f64 / 1e6,
            usize::try_from(added).unwrap_or(usize::MAX),
        );
    }
    last.counters = now.map(|(_, _, value)| value);
    last.histogram = entry.histogram.clone();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;

    /// A snapshot of the debugging recorder: (name, labels, value).
    type Metrics = Vec<(String, Vec<(String, String)>, DebugValue)>;

    fn detector() -> Detector {
        Detector::builder()
            .threshold(Duration::from_millis(10))
            .build()
            .unwrap()
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// A counter's value, or a histogram's samples, for `name` with `label` (and `extra`).
    fn find(snapshot: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<DebugValue> {
        snapshot.iter().find_map(|(key, key_labels, value)| {
            let wanted: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            if key == name && *key_labels == wanted {
                // DebugValue is not Clone.
                Some(match value {
                    DebugValue::Counter(value) => DebugValue::Counter(*value),
                    DebugValue::Gauge(value) => DebugValue::Gauge(*value),
                    DebugValue::Histogram(values) => DebugValue::Histogram(values.clone()),
                })
            } else {
                None
            }
        })
    }

    fn snapshot(snapshotter: &Snapshotter) -> Metrics {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|label| (label.key().to_string(), label.value().to_string()))
                    .collect();
                (key.name().to_string(), labels, value)
            })
            .collect()
    }

    fn counter_of(snapshot: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
        match find(snapshot, name, labels) {
            Some(DebugValue::Counter(value)) => value,
            other => panic!("{name} {labels:?}: {other:?}"),
        }
    }

    fn samples_of(snapshot: &Metrics, label: &str) -> Vec<f64> {
        match find(snapshot, POLL_DURATION, &[("label", label)]) {
            Some(DebugValue::Histogram(values)) => values.into_iter().map(|v| v.0).collect(),
            None => Vec::new(),
            other => panic!("{label}: {other:?}"),
        }
    }

    #[test]
    fn counters_and_poll_durations_reach_the_recorder_once_each() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let detector = detector();
        let mut reporter = detector.metrics_reporter();
        block_on(async {
            detector
                .watch("parse", async {
                    std::thread::sleep(Duration::from_millis(30))
                })
                .await;
            detector.watch("parse", async {}).await;
        });
        ::metrics::with_local_recorder(&recorder, || reporter.publish());
        let first = snapshot(&snapshotter);
        assert_eq!(counter_of(&first, POLLS, &[("label", "parse")]), 2);
        assert_eq!(counter_of(&first, SLOW_POLLS, &[("label", "parse")]), 1);
        assert_eq!(
            counter_of(
                &first,
                FUTURES,
                &[("label", "parse"), ("outcome", "completed")]
            ),
            2
        );
        assert!(counter_of(&first, BUSY, &[("label", "parse")]) >= 30_000);
        let samples = samples_of(&first, "parse");
        assert_eq!(samples.len(), 2, "{samples:?}");
        assert!(
            samples.iter().any(|&s| s >= 0.029),
            "the 30 ms poll: {samples:?}"
        );

        // Published again with one more poll: only the difference is added (the debugging
        // recorder's snapshot hands over what counters gained since the last snapshot).
        block_on(detector.watch("parse", async {}));
        ::metrics::with_local_recorder(&recorder, || reporter.publish());
        let second = snapshot(&snapshotter);
        assert_eq!(counter_of(&second, POLLS, &[("label", "parse")]), 1);
        assert_eq!(counter_of(&second, SLOW_POLLS, &[("label", "parse")]), 0);
        let samples = samples_of(&second, "parse");
        assert_eq!(samples.len(), 1, "only the new poll: {samples:?}");
        assert!(samples[0] < 0.01, "{samples:?}");

        // A reset window: its polls are new, whatever the totals before.
        detector.report_and_reset();
        block_on(detector.watch("parse", async {}));
        ::metrics::with_local_recorder(&recorder, || reporter.publish());
        let third = snapshot(&snapshotter);
        assert_eq!(counter_of(&third, POLLS, &[("label", "parse")]), 1);
        assert_eq!(samples_of(&third, "parse").len(), 1);
    }

    #[test]
    fn a_real_exporter_renders_the_bridged_figures() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(POLL_DURATION.to_string()),
                &[0.001, 0.01, 0.1, 1.0],
            )
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        let detector = detector();
        block_on(async {
            detector
                .watch("parse \"json\"", async {
                    std::thread::sleep(Duration::from_millis(30))
                })
                .await;
            for _ in 0..3 {
                detector.watch("parse \"json\"", async {}).await;
            }
        });
        let mut reporter = detector.metrics_reporter();
        ::metrics::with_local_recorder(&recorder, || {
            reporter.describe();
            reporter.publish();
        });
        let text = handle.render();
        assert!(
            text.contains("# TYPE hogwatch_polls_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("hogwatch_polls_total{label=\"parse \\\"json\\\"\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("hogwatch_slow_polls_total{label=\"parse \\\"json\\\"\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE hogwatch_poll_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("hogwatch_poll_duration_seconds_bucket{label=\"parse \\\"json\\\"\",le=\"0.01\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("hogwatch_poll_duration_seconds_count{label=\"parse \\\"json\\\"\"} 4\n"),
            "{text}"
        );
    }

    #[test]
    fn publishing_without_a_recorder_is_a_no_op() {
        let detector = detector();
        block_on(detector.watch("quiet", async {}));
        let mut reporter = detector.metrics_reporter();
        reporter.describe();
        reporter.publish();
        assert_eq!(reporter.published.len(), 1);
    }
}
