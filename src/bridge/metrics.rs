//! The `metrics` facade bridge: what `tokio-metrics`' metrics-rs integration does for runtime
//! figures, for hogwatch's per-label ones. Any `metrics` exporter (Prometheus, StatsD, ...) then
//! carries them.
//!
//! Names, units and help come from the crate's metric schema, as `/debug/hogs/metrics` writes
//! them, with one difference the facade forces: its counters are whole numbers, so a counter of
//! seconds is published in microseconds (`hogwatch_slow_poll_microseconds_total`, unit
//! `Unit::Microseconds`). Gauges and the histogram are `f64` and stay in seconds. The shipped
//! Prometheus rules read either unit.
//!
//! A report holds totals for the detector's window; the facade wants increments and samples. So
//! the reporter remembers what it last published for each label and publishes the difference:
//! counters are incremented by it, and each poll-duration bucket that gained polls is recorded
//! that many times at the bucket's value (within 1.6 % of every poll in it). A window that was
//! reset (`report_and_reset`) shows smaller totals than last time: the reporter then publishes
//! the new window's totals whole, as a counter reset would. Gauges are set to the report's value.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Label, Unit,
};

use super::added_polls;
use crate::detector::Detector;
use crate::recorder::PollHistogram;
use crate::report::{Entry, Report};
use crate::schema::{self, Kind, Metric, LABEL_SERIES};

/// Publishes a [`Detector`]'s per-label figures through the [`metrics`](::metrics) facade
/// (feature `metrics`), under the names `/debug/hogs/metrics` uses: counters of polls, slow
/// polls, stalls, futures by `outcome`, requests and responses by status `class`; the time in
/// polls, in slow polls, the delay the label inflicted on the runtime (with the lag probe) and
/// the stalls' watched and CPU time as counters of microseconds (the facade's counters are
/// integers: `hogwatch_busy_microseconds_total`, `hogwatch_slow_poll_microseconds_total`,
/// `hogwatch_inflicted_delay_microseconds_total`, `hogwatch_stall_sampled_microseconds_total`,
/// `hogwatch_stall_cpu_microseconds_total`); the gauges `hogwatch_longest_stall_seconds` and,
/// unlabelled, `hogwatch_threshold_seconds`; and the poll-duration distribution as the histogram
/// `hogwatch_poll_duration_seconds`. Every series but the threshold is labelled `label`.
///
/// For the shipped Prometheus rules (`prometheus/hogwatch.rules.yml`) to work on what a
/// Prometheus exporter makes of it, give the histogram the schema's buckets,
/// [`poll_duration_buckets`](Self::poll_duration_buckets) (metrics-exporter-prometheus renders
/// a histogram without buckets as a summary), and leave the exporter's names as they are.
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

/// The number of series per label ([`LABEL_SERIES`]).
const SERIES: usize = LABEL_SERIES.len();

/// A label's totals as last published.
#[derive(Default)]
struct Published {
    values: [u64; SERIES],
    histogram: PollHistogram,
}

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

/// The facade's unit for a metric of the schema.
fn unit(metric: &Metric) -> Unit {
    match metric.unit {
        schema::Unit::Seconds if metric.facade_in_microseconds() => Unit::Microseconds,
        schema::Unit::Seconds => Unit::Seconds,
        schema::Unit::Count(_) => Unit::Count,
        schema::Unit::Ratio => Unit::Percent,
    }
}

impl MetricsReporter {
    /// The upper bounds, in seconds, of the poll-duration histogram's buckets: those of
    /// `/debug/hogs/metrics`, 10 µs to 10 s, with this detector's threshold among them. Give
    /// them to your exporter for `hogwatch_poll_duration_seconds`, so that it exports a
    /// histogram the shipped rules read.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    ///
    /// let detector = hogwatch::Detector::builder().build()?;
    /// let reporter = detector.metrics_reporter();
    /// let recorder = PrometheusBuilder::new()
    ///     .set_buckets_for_metric(
    ///         Matcher::Full("hogwatch_poll_duration_seconds".to_owned()),
    ///         &reporter.poll_duration_buckets(),
    ///     )?
    ///     .build_recorder();
    /// # assert!(reporter.poll_duration_buckets().contains(&0.01)); // the default threshold
    /// # drop(recorder);
    /// # Ok(()) }
    /// ```
    pub fn poll_duration_buckets(&self) -> Vec<f64> {
        let threshold_us = u64::try_from(self.detector.threshold().as_micros()).unwrap_or(u64::MAX);
        schema::poll_duration_bounds_us(threshold_us)
            .into_iter()
            .map(schema::seconds_f64)
            .collect()
    }

    /// Registers each metric's description and unit with the installed recorder (exporters show
    /// them as `# HELP`). Optional; [`run`](Self::run) calls it.
    pub fn describe(&self) {
        let mut described: Vec<&str> = Vec::new();
        let metrics = LABEL_SERIES
            .iter()
            .map(|series| series.metric)
            .chain([&schema::THRESHOLD, &schema::POLL_DURATION]);
        for metric in metrics {
            if described.contains(&metric.facade_name) {
                continue;
            }
            described.push(metric.facade_name);
            let (name, unit, help) = (metric.facade_name, unit(metric), metric.help);
            match metric.kind {
                Kind::Counter => describe_counter!(name, unit, help),
                Kind::Gauge => describe_gauge!(name, unit, help),
                Kind::Histogram | Kind::Summary => describe_histogram!(name, unit, help),
            }
        }
    }

    /// Takes a report and publishes what changed since the last call, into the recorder
    /// installed for this thread or process. Costs a report (see [`Detector::report`]) plus one
    /// histogram sample per poll since the last call; nothing on the hot path. Never panics: a
    /// recorder that ignores a name just drops it.
    pub fn publish(&mut self) {
        let report = self.detector.report();
        self.publish_report(&report);
    }

    fn publish_report(&mut self, report: &Report) {
        if report.window_us < self.window_us {
            self.published.clear();
        }
        self.window_us = report.window_us;
        gauge!(schema::THRESHOLD.facade_name).set(schema::seconds_f64(report.threshold_us));
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

fn publish_entry(entry: &Entry, last: &mut Published) {
    let now: [u64; SERIES] = std::array::from_fn(|at| (LABEL_SERIES[at].value)(entry));
    // A reset window starts again from zero: any counter below its last total means the report
    // covers a new window (also caught by the window's length), and everything in it is new.
    // Gauges go down as they like.
    let reset = entry.histogram.len() < last.histogram.len()
        || LABEL_SERIES.iter().zip(now.iter().zip(&last.values)).any(
            |(series, (value, previous))| series.metric.kind == Kind::Counter && value < previous,
        );
    if reset {
        *last = Published::default();
    }
    for (series, (value, previous)) in LABEL_SERIES.iter().zip(now.iter().zip(&last.values)) {
        if !series.shown.includes(entry) {
            continue;
        }
        let metric = series.metric;
        let mut labels = vec![Label::new("label", entry.label.clone())];
        if let Some((key, value)) = series.extra {
            labels.push(Label::from_static_parts(key, value));
        }
        match metric.kind {
            Kind::Gauge => {
                let value = match metric.unit {
                    schema::Unit::Seconds => schema::seconds_f64(*value),
                    _ => *value as f64,
                };
                gauge!(metric.facade_name, labels).set(value);
            }
            // Incremented even by 0, so that a series that stays 0 is exported as 0 (the rules'
            // ratios need the zeros), as `/debug/hogs/metrics` writes it.
            _ => counter!(metric.facade_name, labels).increment(value.saturating_sub(*previous)),
        }
    }
    let histogram = histogram!(schema::POLL_DURATION.facade_name, "label" => entry.label.clone());
    for (value_us, added) in added_polls(&entry.histogram, &last.histogram) {
        histogram.record_many(
            schema::seconds_f64(value_us),
            usize::try_from(added).unwrap_or(usize::MAX),
        );
    }
    last.values = now;
    last.histogram = entry.histogram.clone();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::*;
    use crate::schema::{BUSY, FUTURES, POLLS, POLL_DURATION, SLOW_POLLS};

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
        match find(snapshot, POLL_DURATION.facade_name, &[("label", label)]) {
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
        assert_eq!(
            counter_of(&first, POLLS.facade_name, &[("label", "parse")]),
            2
        );
        assert_eq!(
            counter_of(&first, SLOW_POLLS.facade_name, &[("label", "parse")]),
            1
        );
        assert_eq!(
            counter_of(
                &first,
                FUTURES.facade_name,
                &[("label", "parse"), ("outcome", "completed")]
            ),
            2
        );
        assert!(counter_of(&first, BUSY.facade_name, &[("label", "parse")]) >= 30_000);
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
        assert_eq!(
            counter_of(&second, POLLS.facade_name, &[("label", "parse")]),
            1
        );
        assert_eq!(
            counter_of(&second, SLOW_POLLS.facade_name, &[("label", "parse")]),
            0
        );
        let samples = samples_of(&second, "parse");
        assert_eq!(samples.len(), 1, "only the new poll: {samples:?}");
        assert!(samples[0] < 0.01, "{samples:?}");

        // A reset window: its polls are new, whatever the totals before.
        detector.report_and_reset();
        block_on(detector.watch("parse", async {}));
        ::metrics::with_local_recorder(&recorder, || reporter.publish());
        let third = snapshot(&snapshotter);
        assert_eq!(
            counter_of(&third, POLLS.facade_name, &[("label", "parse")]),
            1
        );
        assert_eq!(samples_of(&third, "parse").len(), 1);
    }

    #[test]
    fn a_real_exporter_renders_the_bridged_figures() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(POLL_DURATION.facade_name.to_owned()),
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

    /// A Prometheus exporter whose poll-duration histogram has the schema's buckets.
    fn exporter(reporter: &MetricsReporter) -> metrics_exporter_prometheus::PrometheusRecorder {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(POLL_DURATION.facade_name.to_owned()),
                &reporter.poll_duration_buckets(),
            )
            .unwrap()
            .build_recorder()
    }

    /// An entry of `label` with these totals: `fast` polls of 2 ms and `slow` ones, half of
    /// 40 ms and half of 60 ms (threshold 10 ms; 30 of them take 1.5 s, for which promtool's
    /// rates come out as the decimals the test expects), one request each, and the slow polls'
    /// time as the delay they inflicted (one worker: the runtime was late as long); built from
    /// a real entry, so every other field is a real one.
    fn entry(template: &Entry, label: &str, fast: u64, slow: u64) -> Entry {
        let mut entry = template.clone();
        entry.label = label.to_owned();
        entry.polls = fast + slow;
        entry.slow_polls = slow;
        let (short, long) = (slow / 2, slow - slow / 2);
        entry.slow_busy_us = short * 40_000 + long * 60_000;
        entry.busy_us = fast * 2_000 + entry.slow_busy_us;
        entry.inflicted_delay_us = entry.slow_busy_us;
        entry.completed = fast + slow;
        entry.requests = fast + slow;
        entry.responses.success = fast + slow;
        entry.histogram = PollHistogram::from_values(
            std::iter::repeat_n(2_000, fast as usize)
                .chain(std::iter::repeat_n(40_000, short as usize))
                .chain(std::iter::repeat_n(60_000, long as usize)),
        );
        entry
    }

    #[test]
    fn every_series_of_the_schema_reaches_the_exporter_in_its_unit() {
        let detector = detector();
        block_on(detector.watch("stalled", async {}));
        let mut report = detector.report();
        let mut stalled = entry(&report.entries[0], "stalled", 3, 2);
        stalled.stalls = 1;
        stalled.samples = 4;
        stalled.stall_wall_us = 1_000_000;
        stalled.stall_cpu_us = 500_000;
        stalled.longest_stall_us = 1_250_000;
        report.entries = vec![stalled];
        let mut reporter = detector.metrics_reporter();
        let recorder = exporter(&reporter);
        ::metrics::with_local_recorder(&recorder, || {
            reporter.describe();
            reporter.publish_report(&report);
        });
        let text = recorder.handle().render();
        let metrics = LABEL_SERIES
            .iter()
            .map(|series| series.metric)
            .chain([&schema::THRESHOLD, &POLL_DURATION]);
        for metric in metrics {
            let kind = format!(
                "# TYPE {} {}\n",
                metric.facade_name,
                metric.kind.prometheus()
            );
            assert!(text.contains(&kind), "{kind}{text}");
        }
        for line in [
            "hogwatch_threshold_seconds 0.01\n",
            "hogwatch_longest_stall_seconds{label=\"stalled\"} 1.25\n",
            "hogwatch_slow_poll_microseconds_total{label=\"stalled\"} 100000\n",
            "hogwatch_busy_microseconds_total{label=\"stalled\"} 106000\n",
            "hogwatch_inflicted_delay_microseconds_total{label=\"stalled\"} 100000\n",
            "hogwatch_stall_sampled_microseconds_total{label=\"stalled\"} 1000000\n",
            "hogwatch_stall_cpu_microseconds_total{label=\"stalled\"} 500000\n",
            "hogwatch_futures_total{label=\"stalled\",outcome=\"cancelled\"} 0\n",
            "hogwatch_responses_total{label=\"stalled\",class=\"2xx\"} 5\n",
            "hogwatch_poll_duration_seconds_bucket{label=\"stalled\",le=\"0.01\"} 3\n",
        ] {
            assert!(text.contains(line), "{line}{text}");
        }
        // The gauge follows the report down (a new window), where a counter would not.
        report.entries[0].longest_stall_us = 0;
        ::metrics::with_local_recorder(&recorder, || reporter.publish_report(&report));
        let text = recorder.handle().render();
        assert!(
            text.contains("hogwatch_longest_stall_seconds{label=\"stalled\"} 0\n"),
            "{text}"
        );
    }

    /// The scenario of `prometheus/hogwatch.rules.test.yml`'s first test, as reports: two
    /// instances of job `api`; `a:1` serves `GET /blocking/{key}` (60 polls a minute, 30 of
    /// them 40 or 60 ms, threshold 10 ms); both serve `GET /users/{id}` (120 polls of 2 ms a minute);
    /// `b:1` has `GET /idle`, polled before the test and not since. One report per instance
    /// and minute, 0 to 20.
    fn scenario(template: &Report) -> Vec<(&'static str, Vec<Report>)> {
        let entry_template = &template.entries[0];
        let at = |minute: u64, entries: Vec<Entry>| {
            let mut report = template.clone();
            report.threshold_us = 10_000;
            report.window_us = minute * 60_000_000 + 1;
            report.entries = entries;
            report
        };
        let a = (0..=20)
            .map(|minute| {
                at(
                    minute,
                    vec![
                        entry(
                            entry_template,
                            "GET /blocking/{key}",
                            30 * minute,
                            30 * minute,
                        ),
                        entry(entry_template, "GET /users/{id}", 120 * minute, 0),
                    ],
                )
            })
            .collect();
        let b = (0..=20)
            .map(|minute| {
                at(
                    minute,
                    vec![
                        entry(entry_template, "GET /users/{id}", 120 * minute, 0),
                        entry(entry_template, "GET /idle", 5, 0),
                    ],
                )
            })
            .collect();
        vec![("a:1", a), ("b:1", b)]
    }

    /// A promtool unit test of the shipped rules over `scrapes` (per instance, one scrape a
    /// minute in the Prometheus text format), with the expectations of the shipped test's first
    /// group for this scenario.
    fn promtool_test(scrapes: &[(&str, Vec<String>)]) -> String {
        // series -> value per minute
        let mut series: std::collections::BTreeMap<String, Vec<Option<String>>> =
            std::collections::BTreeMap::new();
        for (instance, texts) in scrapes {
            for (minute, text) in texts.iter().enumerate() {
                for line in text.lines() {
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let (name, value) = line.rsplit_once(' ').unwrap();
                    let ours = format!("job=\"api\",instance=\"{instance}\"");
                    let name = match name.split_once('{') {
                        Some((name, labels)) => format!("{name}{{{ours},{labels}"),
                        None => format!("{name}{{{ours}}}"),
                    };
                    let values = series
                        .entry(name)
                        .or_insert_with(|| vec![None; texts.len()]);
                    values[minute] = Some(value.to_owned());
                }
            }
        }
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/prometheus/hogwatch.rules.test.yml"
        ))
        .unwrap();
        // The alerts' descriptions for the blocking route, as the shipped test expects them.
        let description = |start: &str| {
            shipped
                .lines()
                .find(|line| line.trim_start().starts_with(start))
                .unwrap()
                .trim()
                .to_owned()
        };
        let blocking_description = description("description: \"Over the last 5 minutes");
        let inflicted_description = description(
            "description: \"For 5 minutes, the slow polls and stalls of GET /blocking/",
        );
        let mut yaml = format!(
            "rule_files:\n  - {}/prometheus/hogwatch.rules.yml\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
            env!("CARGO_MANIFEST_DIR")
        );
        for (name, values) in &series {
            let values: Vec<&str> = values
                .iter()
                .map(|value| value.as_deref().unwrap_or("_"))
                .collect();
            yaml.push_str(&format!(
                "      - series: '{name}'\n        values: '{}'\n",
                values.join(" ")
            ));
        }
        let expect = |expr: &str, samples: &[(&str, &str)]| {
            let mut text =
                format!("      - expr: {expr}\n        eval_time: 10m\n        exp_samples:\n");
            for (label, value) in samples {
                text.push_str(&format!(
                    "          - labels: '{expr}{{job=\"api\",label=\"{label}\"}}'\n            value: {value}\n"
                ));
            }
            text
        };
        yaml.push_str("    promql_expr_test:\n");
        let blocking = "GET /blocking/{key}";
        let users = "GET /users/{id}";
        let idle = "GET /idle";
        yaml.push_str(&expect(
            "job_label:hogwatch_poll_duration_seconds:p99_rate5m",
            &[(blocking, "0.098"), (users, "0.0024850000000000002")],
        ));
        yaml.push_str(&expect(
            "job_label:hogwatch_slow_polls:rate5m",
            &[(blocking, "0.5"), (users, "0"), (idle, "0")],
        ));
        yaml.push_str(&expect(
            "job_label:hogwatch_slow_polls:ratio_rate5m",
            &[(blocking, "0.5"), (users, "0")],
        ));
        yaml.push_str(&expect(
            "job_label:hogwatch_slow_poll_seconds:rate5m",
            &[(blocking, "0.025"), (users, "0"), (idle, "0")],
        ));
        yaml.push_str(&expect(
            "job_label:hogwatch_stalls:rate5m",
            &[(blocking, "0"), (users, "0"), (idle, "0")],
        ));
        yaml.push_str(&expect(
            "job_label:hogwatch_inflicted_delay_seconds:rate5m",
            &[(blocking, "0.025"), (users, "0"), (idle, "0")],
        ));
        yaml.push_str(&format!(
            "    alert_rule_test:
      - eval_time: 4m
        alertname: HogwatchBlockingPolls
        exp_alerts: []
      - eval_time: 10m
        alertname: HogwatchBlockingPolls
        exp_alerts:
          - exp_labels:
              severity: warning
              job: api
              label: \"{blocking}\"
            exp_annotations:
              summary: \"{blocking} blocks the executor of api: p99 poll 98ms\"
              {blocking_description}
      - eval_time: 4m
        alertname: HogwatchInflictedDelay
        exp_alerts: []
      - eval_time: 10m
        alertname: HogwatchInflictedDelay
        exp_alerts:
          - exp_labels:
              severity: warning
              job: api
              label: \"{blocking}\"
            exp_annotations:
              summary: \"{blocking} makes a runtime of api late 2.5% of the time\"
              {inflicted_description}
      - eval_time: 10m
        alertname: HogwatchEventLoopLagHigh
        exp_alerts: []
      - eval_time: 10m
        alertname: HogwatchWatchdogCaptureFailures
        exp_alerts: []
"
        ));
        yaml
    }

    /// Runs `promtool test rules` on `yaml`; skipped without promtool unless
    /// `HOGWATCH_REQUIRE_PROMTOOL` is set (CI sets it).
    fn assert_promtool_passes(name: &str, yaml: &str) {
        let promtool = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("promtool"))
                .find(|candidate| candidate.is_file())
        });
        let Some(promtool) = promtool else {
            assert!(
                std::env::var_os("HOGWATCH_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here but not installed (Debian package `prometheus`)"
            );
            eprintln!(
                "promtool not found: install the Debian package `prometheus` to run this check"
            );
            return;
        };
        let dir = std::env::temp_dir().join(format!("hogwatch-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.test.yml"));
        std::fs::write(&file, yaml).unwrap();
        let output = std::process::Command::new(promtool)
            .args(["test", "rules"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool on {}: {}{}",
            file.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_dir(&dir);
    }

    /// Issue 23's target: the bridge's output, exported by metrics-exporter-prometheus, passes
    /// the shipped rules' promtool test, with the same answers as `/debug/hogs/metrics` gives
    /// for the same reports (there the slow time is in seconds, here in microseconds).
    #[test]
    fn the_shipped_rules_answer_alike_on_the_bridge_and_the_endpoint() {
        let detector = detector();
        block_on(detector.watch("template", async {}));
        let scenario = scenario(&detector.report());
        let mut bridged = Vec::new();
        let mut rendered = Vec::new();
        for (instance, reports) in &scenario {
            let mut reporter = detector.metrics_reporter();
            let recorder = exporter(&reporter);
            let handle = recorder.handle();
            let texts = reports
                .iter()
                .map(|report| {
                    ::metrics::with_local_recorder(&recorder, || {
                        reporter.describe();
                        reporter.publish_report(report);
                    });
                    handle.render()
                })
                .collect::<Vec<_>>();
            bridged.push((*instance, texts));
            rendered.push((
                *instance,
                reports
                    .iter()
                    .map(Report::to_prometheus)
                    .collect::<Vec<_>>(),
            ));
        }
        let slow = "_total{label=\"GET /blocking/{key}\"} ";
        assert!(
            bridged[0].1[20].contains(&format!("hogwatch_slow_poll_microseconds{slow}30000000\n"))
        );
        assert!(rendered[0].1[20].contains(&format!("hogwatch_slow_poll_seconds{slow}30\n")));
        assert!(bridged[0].1[20].contains(&format!(
            "hogwatch_inflicted_delay_microseconds{slow}30000000\n"
        )));
        assert!(rendered[0].1[20].contains(&format!("hogwatch_inflicted_delay_seconds{slow}30\n")));
        for (instance, texts) in [&bridged[0], &rendered[0]] {
            assert_eq!(*instance, "a:1");
            assert!(
                texts[20].contains("hogwatch_threshold_seconds 0.01\n"),
                "{}",
                texts[20]
            );
        }
        assert_promtool_passes("metrics-bridge", &promtool_test(&bridged));
        assert_promtool_passes("endpoint", &promtool_test(&rendered));
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
