//! The OpenTelemetry bridge: each label's figures as instruments of an OpenTelemetry [`Meter`],
//! so whatever exporter the app's `MeterProvider` has (OTLP, Prometheus, stdout) carries them.
//! It depends on the `opentelemetry` API only, never on an SDK: the app picks the SDK, as
//! OpenTelemetry asks of libraries. Names, units, help and buckets come from the crate's metric
//! schema, as `/debug/hogs/metrics` has them: every duration in seconds.
//!
//! Counters are observable counters: a report holds totals, and an observable counter is a
//! total read when the SDK collects. The reporter keeps, per label, the sum of what every report
//! added since it started (a report's totals minus the last report's, or a reset window's totals
//! whole, as the `metrics` bridge does), and the counters' callbacks read those sums. So a
//! counter never goes down when the detector's window is reset (`report_and_reset`), and a
//! window's polls are counted once however often it is published. Gauges (the longest stall)
//! are observed as the last report has them.
//!
//! The poll-duration distribution is the hard part: OpenTelemetry has no asynchronous histogram,
//! and its synchronous `Histogram` has no way to record a value with a count. A library cannot
//! hand the SDK a ready-made histogram either, short of depending on one SDK's exporter
//! internals. So the reporter records, into a `Histogram<f64>`, each report bucket's value (its
//! middle, within 1.6 % of every poll in it) once for each poll the bucket gained. That is one
//! call per poll, off the hot path but not free (50 to 210 ns each with `opentelemetry_sdk` 0.33
//! in a release build here), so a publish records at most a budget of samples
//! ([`OpenTelemetryReporter::sample_budget`], 100,000 by default) plus one per bucket with polls
//! waiting. Polls over the budget wait for the next publish (a count per bucket, so the memory
//! stays bounded), and each bucket gets a share of the budget in proportion to what it holds.
//! Under sustained load beyond the budget the histogram lags behind the counters, but no poll is
//! lost or counted twice, the samples of each publish keep the shape of the distribution, and a
//! publish's cost stays bounded. The histogram's explicit bucket bounds are those of
//! `/debug/hogs/metrics`, the detector's threshold among them, so "polls over the threshold" is
//! a bucket boundary in any backend.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::opentelemetry::metrics::{AsyncInstrument, Histogram, Meter};
use ::opentelemetry::KeyValue;

use super::added_polls;
use crate::detector::Detector;
use crate::recorder::PollHistogram;
use crate::report::{Entry, Report};
use crate::schema::{self, Kind, Metric, Shown, Unit, LABEL_SERIES};

/// Histogram samples a publish records by default, beyond which polls wait for the next one.
const DEFAULT_SAMPLE_BUDGET: usize = 100_000;

/// The series of a label, indexed as [`LABEL_SERIES`].
const SERIES: usize = LABEL_SERIES.len();

/// Whether a series is left out while it is zero. Series that stay zero (no request on a
/// `watch` label, no 1xx response, no stall sampled) are not observed, so the streams per
/// instrument stay near the number of labels, under the SDK's default cardinality limit (2,000)
/// at the default `max_labels` (1,024).
fn skip_zero(series: &schema::Series) -> bool {
    series.extra.is_some() || series.shown != Shown::Always
}

/// What the instruments' callbacks read: per label, the sum of everything published for a
/// counter, the last value for a gauge.
type Totals = Arc<Mutex<BTreeMap<String, LabelTotals>>>;

struct LabelTotals {
    attribute: KeyValue,
    values: [u64; SERIES],
}

/// Publishes a [`Detector`]'s per-label figures as OpenTelemetry instruments (feature
/// `opentelemetry`), named and described by the crate's metric schema as `/debug/hogs/metrics`
/// is: observable counters of polls, slow polls, stalls, futures by `outcome`, requests and
/// responses by status `class`, and of the time in polls, in slow polls, the delay the label
/// inflicted on the runtime (`hogwatch.inflicted_delay`, with the lag probe) and the stalls'
/// watched and CPU time (seconds); the observable gauges `hogwatch.longest_stall` and, without
/// attributes, `hogwatch.threshold` (seconds); all with the attribute `label` but the threshold;
/// and the histogram `hogwatch.poll_duration` (seconds) with explicit bucket bounds from 10 µs
/// to 10 s that include the detector's threshold. Through an OpenTelemetry-to-Prometheus
/// exporter they become the Prometheus names (`hogwatch_polls_total`,
/// `hogwatch_slow_poll_seconds_total`, `hogwatch_poll_duration_seconds`, ...).
///
/// Build one with [`Detector::opentelemetry_reporter`] from the app's [`Meter`], then either
/// call [`publish`](Self::publish) before each collection or spawn [`run`](Self::run). The
/// counters show the figures as of the last publish. Label values are the report's labels, so
/// their number is bounded by `max_labels` (labels past it are counted under `<other>`). Build
/// one reporter per meter: a second one registers the same instruments again.
///
/// ```
/// use opentelemetry::metrics::MeterProvider as _;
/// use opentelemetry_sdk::metrics::SdkMeterProvider;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let detector = hogwatch::Detector::builder().build()?;
/// # let rt = tokio::runtime::Builder::new_current_thread().build()?;
/// # rt.block_on(async {
/// detector.watch("parse-blob", async {}).await;
/// # });
/// # let exporter = opentelemetry_sdk::metrics::InMemoryMetricExporter::default();
/// // The app's provider, with its exporter (OTLP, Prometheus, ...).
/// let provider = SdkMeterProvider::builder()
/// #   .with_periodic_exporter(exporter.clone())
///     .build();
/// let mut reporter = detector.opentelemetry_reporter(&provider.meter("hogwatch"));
/// reporter.publish(); // hogwatch.polls{label="parse-blob"} is 1 from the next collection on
/// provider.force_flush()?;
/// # let names: Vec<String> = exporter.get_finished_metrics()?.iter()
/// #     .flat_map(|exported| exported.scope_metrics()).flat_map(|scope| scope.metrics())
/// #     .map(|metric| metric.name().to_owned()).collect();
/// # assert!(names.iter().any(|name| name == "hogwatch.polls"), "{names:?}");
/// # assert!(names.iter().any(|name| name == "hogwatch.poll_duration"), "{names:?}");
/// # Ok(()) }
/// ```
pub struct OpenTelemetryReporter {
    detector: Detector,
    totals: Totals,
    /// What the reporter saw of the current window, per label.
    seen: HashMap<String, Seen>,
    /// The last report's window length: a shorter one means the window was reset since.
    window_us: u64,
    histogram: Histogram<f64>,
    budget: usize,
    /// The observable instruments, whose callbacks read `totals`, kept with the reporter they
    /// report for.
    _instruments: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

/// A label as the reporter last saw it, in the current window.
struct Seen {
    attribute: KeyValue,
    values: [u64; SERIES],
    histogram: PollHistogram,
    /// Polls not yet recorded in the histogram: bucket value (µs) -> polls.
    backlog: BTreeMap<u64, u64>,
}

impl fmt::Debug for OpenTelemetryReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenTelemetryReporter")
            .field("detector", &self.detector)
            .field("labels", &self.seen.len())
            .field("sample_budget", &self.budget)
            .finish()
    }
}

impl Detector {
    /// A reporter that publishes this detector's figures as instruments of `meter` (feature
    /// `opentelemetry`); see [`OpenTelemetryReporter`]. Registers the instruments now. A meter
    /// that rejects an instrument (an SDK's validation, a view that drops it) leaves it a no-op;
    /// nothing panics.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    /// # rt.block_on(async {
    /// // Publishes into the globally installed meter provider, every 10 s.
    /// let meter = opentelemetry::global::meter("hogwatch");
    /// let reporter = detector.opentelemetry_reporter(&meter);
    /// let publishing = tokio::spawn(reporter.run(std::time::Duration::from_secs(10)));
    /// # publishing.abort();
    /// # });
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn opentelemetry_reporter(&self, meter: &Meter) -> OpenTelemetryReporter {
        let totals = Totals::default();
        let threshold_us = u64::try_from(self.threshold().as_micros()).unwrap_or(u64::MAX);
        let mut instruments = instruments(meter, &totals);
        let threshold = &schema::THRESHOLD;
        instruments.push(Box::new(
            meter
                .f64_observable_gauge(threshold.otel_name)
                .with_unit(threshold.otel_unit())
                .with_description(threshold.help)
                .with_callback(move |observer| {
                    observer.observe(schema::seconds_f64(threshold_us), &[]);
                })
                .build(),
        ));
        let duration = &schema::POLL_DURATION;
        let histogram = meter
            .f64_histogram(duration.otel_name)
            .with_unit(duration.otel_unit())
            .with_description(duration.help)
            .with_boundaries(bounds(threshold_us))
            .build();
        OpenTelemetryReporter {
            detector: self.clone(),
            totals,
            seen: HashMap::new(),
            window_us: 0,
            histogram,
            budget: DEFAULT_SAMPLE_BUDGET,
            _instruments: instruments,
        }
    }
}

/// One observable instrument for each metric of [`LABEL_SERIES`], whose callback observes that
/// metric's series of every label in `totals`: counts as `u64`, seconds as `f64`.
fn instruments(meter: &Meter, totals: &Totals) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
    let mut instruments: Vec<Box<dyn std::any::Any + Send + Sync>> = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for series in &LABEL_SERIES {
        let metric: &'static Metric = series.metric;
        if done.contains(&metric.name) {
            continue;
        }
        done.push(metric.name);
        let indexes: Vec<usize> = (0..SERIES)
            .filter(|&at| LABEL_SERIES[at].metric.name == metric.name)
            .collect();
        let (name, unit, help) = (metric.otel_name, metric.otel_unit(), metric.help);
        let totals = totals.clone();
        let instrument: Box<dyn std::any::Any + Send + Sync> = match (metric.kind, metric.unit) {
            (Kind::Counter, Unit::Seconds) => Box::new(
                meter
                    .f64_observable_counter(name)
                    .with_unit(unit)
                    .with_description(help)
                    .with_callback(observe(totals, indexes, schema::seconds_f64))
                    .build(),
            ),
            (Kind::Counter, _) => Box::new(
                meter
                    .u64_observable_counter(name)
                    .with_unit(unit)
                    .with_description(help)
                    .with_callback(observe(totals, indexes, |value| value))
                    .build(),
            ),
            (Kind::Gauge, Unit::Seconds) => Box::new(
                meter
                    .f64_observable_gauge(name)
                    .with_unit(unit)
                    .with_description(help)
                    .with_callback(observe(totals, indexes, schema::seconds_f64))
                    .build(),
            ),
            _ => Box::new(
                meter
                    .u64_observable_gauge(name)
                    .with_unit(unit)
                    .with_description(help)
                    .with_callback(observe(totals, indexes, |value| value))
                    .build(),
            ),
        };
        instruments.push(instrument);
    }
    instruments
}

/// The histogram's bucket bounds in seconds: the schema's, with the threshold among them.
fn bounds(threshold_us: u64) -> Vec<f64> {
    schema::poll_duration_bounds_us(threshold_us)
        .into_iter()
        .map(schema::seconds_f64)
        .collect()
}

/// A callback that observes the series at `indexes` of every label in `totals`, converted by
/// `value`.
fn observe<T: 'static>(
    totals: Totals,
    indexes: Vec<usize>,
    value: fn(u64) -> T,
) -> impl Fn(&dyn AsyncInstrument<T>) + Send + Sync + 'static {
    move |observer| {
        // Nothing panics while the lock is held; a poisoned lock still holds whole totals.
        let totals = totals.lock().unwrap_or_else(PoisonError::into_inner);
        for label in totals.values() {
            for &at in &indexes {
                let series = &LABEL_SERIES[at];
                let total = label.values[at];
                if total == 0 && skip_zero(series) {
                    continue;
                }
                match series.extra {
                    None => observer.observe(value(total), std::slice::from_ref(&label.attribute)),
                    Some((key, class)) => observer.observe(
                        value(total),
                        &[label.attribute.clone(), KeyValue::new(key, class)],
                    ),
                }
            }
        }
    }
}

impl OpenTelemetryReporter {
    /// At most how many histogram samples one [`publish`](Self::publish) records (plus one per
    /// bucket with polls waiting); polls beyond it wait for the next publish. 100,000 by
    /// default, 5 to 20 ms of recording with `opentelemetry_sdk`. Raise it if the histogram
    /// lags behind the counters at your poll rate and publish interval.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// # let detector = hogwatch::Detector::builder().build()?;
    /// # let meter = opentelemetry::global::meter("hogwatch");
    /// let budget = std::num::NonZeroUsize::new(1_000_000).unwrap();
    /// let reporter = detector.opentelemetry_reporter(&meter).sample_budget(budget);
    /// # Ok(()) }
    /// ```
    pub fn sample_budget(mut self, budget: NonZeroUsize) -> Self {
        self.budget = budget.get();
        self
    }

    /// Takes a report, adds what changed since the last call to the counters' totals, and
    /// records the new polls (within the sample budget) in the poll-duration histogram. Costs a
    /// report (see [`Detector::report`]) plus at most the budget's histogram samples; nothing on
    /// the hot path. Never panics.
    pub fn publish(&mut self) {
        let report = self.detector.report();
        self.publish_report(&report);
    }

    fn publish_report(&mut self, report: &Report) {
        if report.window_us < self.window_us {
            self.seen.values_mut().for_each(Seen::new_window);
        }
        self.window_us = report.window_us;
        {
            let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
            for entry in &report.entries {
                let seen = self
                    .seen
                    .entry(entry.label.clone())
                    .or_insert_with(|| Seen::new(&entry.label));
                let added = seen.add(entry);
                let label = totals
                    .entry(entry.label.clone())
                    .or_insert_with(|| LabelTotals {
                        attribute: seen.attribute.clone(),
                        values: [0; SERIES],
                    });
                for (at, series) in LABEL_SERIES.iter().enumerate() {
                    let total = &mut label.values[at];
                    *total = match series.metric.kind {
                        Kind::Gauge => seen.values[at],
                        _ => total.saturating_add(added[at]),
                    };
                }
            }
        }
        self.record_backlog();
    }

    /// Records the waiting polls in the histogram, all of them if they fit in the budget, else
    /// each bucket's share of it (rounded up, so every bucket moves).
    fn record_backlog(&mut self) {
        let waiting = self
            .seen
            .values()
            .flat_map(|seen| seen.backlog.values())
            .fold(0u64, |sum, &count| sum.saturating_add(count));
        let budget = u64::try_from(self.budget).unwrap_or(u64::MAX);
        for seen in self.seen.values_mut() {
            let attributes = std::slice::from_ref(&seen.attribute);
            seen.backlog.retain(|&value_us, count| {
                let take = if waiting <= budget {
                    *count
                } else {
                    share(*count, budget, waiting)
                };
                let seconds = schema::seconds_f64(value_us);
                for _ in 0..take {
                    self.histogram.record(seconds, attributes);
                }
                *count -= take;
                *count > 0
            });
        }
    }

    /// Publishes every `interval` until the future is dropped (spawn it on the runtime:
    /// `tokio::spawn(reporter.run(Duration::from_secs(10)))`). The runtime needs its timer.
    /// Publish at least as often as the meter provider collects, or its exports repeat the
    /// last figures.
    pub async fn run(mut self, interval: Duration) {
        loop {
            self.publish();
            tokio::time::sleep(interval).await;
        }
    }
}

/// `count`'s share of `budget` when `waiting` polls wait in all, rounded up, at most `count`.
fn share(count: u64, budget: u64, waiting: u64) -> u64 {
    let share = (u128::from(count) * u128::from(budget)).div_ceil(u128::from(waiting.max(1)));
    u64::try_from(share).unwrap_or(u64::MAX).min(count)
}

impl Seen {
    fn new(label: &str) -> Self {
        Self {
            attribute: KeyValue::new("label", label.to_owned()),
            values: [0; SERIES],
            histogram: PollHistogram::default(),
            backlog: BTreeMap::new(),
        }
    }

    /// The window was reset: everything in the next report is new. The backlog stays: those
    /// polls happened, and the histogram has not had them yet.
    fn new_window(&mut self) {
        self.values = [0; SERIES];
        self.histogram = PollHistogram::default();
    }

    /// Takes in the label's entry of a new report: returns what each counter gained (a gauge's
    /// value is left in `values`) and puts the polls each bucket gained in the backlog.
    fn add(&mut self, entry: &Entry) -> [u64; SERIES] {
        let now: [u64; SERIES] = std::array::from_fn(|at| (LABEL_SERIES[at].value)(entry));
        // A counter below its last total means a new window (also caught by the window's
        // length, unless the new window already lasted longer than the old one). Gauges go
        // down as they like.
        let reset = entry.histogram.len() < self.histogram.len()
            || LABEL_SERIES
                .iter()
                .zip(now.iter().zip(&self.values))
                .any(|(series, (now, last))| series.metric.kind == Kind::Counter && now < last);
        if reset {
            self.new_window();
        }
        let mut added = [0; SERIES];
        for ((added, now), last) in added.iter_mut().zip(&now).zip(&self.values) {
            *added = now.saturating_sub(*last);
        }
        for (value_us, polls) in added_polls(&entry.histogram, &self.histogram) {
            let waiting = self.backlog.entry(value_us).or_default();
            *waiting = waiting.saturating_add(polls);
        }
        self.values = now;
        self.histogram = entry.histogram.clone();
        added
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use ::opentelemetry::metrics::{InstrumentProvider, MeterProvider as _};
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::{
        Aggregation, InMemoryMetricExporter, Instrument, PeriodicReader, SdkMeterProvider, Stream,
    };

    use super::*;
    use crate::schema::{
        BUSY, FUTURES, INFLICTED_DELAY, LONGEST_STALL, POLLS, POLL_DURATION, REQUESTS, SLOW_POLL,
        SLOW_POLLS, STALLS, STALL_SAMPLED, THRESHOLD,
    };
    use crate::OTHER_LABEL;

    /// A meter provider whose only reader exports into memory when flushed (its period is
    /// longer than any test), with cumulative temporality: each export holds the totals.
    fn pipeline() -> (SdkMeterProvider, InMemoryMetricExporter) {
        let exporter = InMemoryMetricExporter::default();
        let reader = PeriodicReader::builder(exporter.clone())
            .with_interval(Duration::from_secs(3600))
            .build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        (provider, exporter)
    }

    /// Collects and exports now; the last export.
    fn collect(provider: &SdkMeterProvider, exporter: &InMemoryMetricExporter) -> ResourceMetrics {
        exporter.reset();
        provider.force_flush().unwrap();
        exporter.get_finished_metrics().unwrap().pop().unwrap()
    }

    type Attributes = Vec<(String, String)>;

    fn attributes<'a>(keys: impl Iterator<Item = &'a KeyValue>) -> Attributes {
        let mut attributes: Attributes = keys
            .map(|kv| (kv.key.as_str().to_owned(), kv.value.as_str().into_owned()))
            .collect();
        attributes.sort();
        attributes
    }

    fn metric<'a>(metrics: &'a ResourceMetrics, name: &str) -> Option<&'a AggregatedMetrics> {
        metrics
            .scope_metrics()
            .flat_map(|scope| scope.metrics())
            .find(|metric| metric.name() == name)
            .map(|metric| metric.data())
    }

    /// The unit an instrument was exported with.
    fn unit_of<'a>(metrics: &'a ResourceMetrics, name: &str) -> Option<&'a str> {
        metrics
            .scope_metrics()
            .flat_map(|scope| scope.metrics())
            .find(|metric| metric.name() == name)
            .map(|metric| metric.unit())
    }

    /// A counter's data points, by attributes (u64 counters as they are, f64 ones in µs).
    fn sums(metrics: &ResourceMetrics, name: &str) -> BTreeMap<Attributes, u64> {
        match metric(metrics, name) {
            Some(AggregatedMetrics::U64(MetricData::Sum(sum))) => {
                assert!(sum.is_monotonic(), "{name}");
                sum.data_points()
                    .map(|point| (attributes(point.attributes()), point.value()))
                    .collect()
            }
            Some(AggregatedMetrics::F64(MetricData::Sum(sum))) => sum
                .data_points()
                .map(|point| {
                    let us = (point.value() * 1e6).round() as u64;
                    (attributes(point.attributes()), us)
                })
                .collect(),
            None => BTreeMap::new(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn sum_of(metrics: &ResourceMetrics, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let mut wanted: Attributes = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted.sort();
        sums(metrics, name).get(&wanted).copied()
    }

    /// The histogram of `label`: (bounds, count per bucket, count, sum).
    fn histogram_of(metrics: &ResourceMetrics, label: &str) -> (Vec<f64>, Vec<u64>, u64, f64) {
        let Some(AggregatedMetrics::F64(MetricData::Histogram(histogram))) =
            metric(metrics, POLL_DURATION.otel_name)
        else {
            panic!("no histogram: {metrics:?}");
        };
        let wanted = vec![("label".to_owned(), label.to_owned())];
        let point = histogram
            .data_points()
            .find(|point| attributes(point.attributes()) == wanted)
            .unwrap_or_else(|| panic!("no histogram for {label}"));
        (
            point.bounds().collect(),
            point.bucket_counts().collect(),
            point.count(),
            point.sum(),
        )
    }

    fn histogram_count(metrics: &ResourceMetrics, label: &str) -> u64 {
        histogram_of(metrics, label).2
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn detector(threshold: Duration) -> Detector {
        Detector::builder().threshold(threshold).build().unwrap()
    }

    #[test]
    fn counters_and_histogram_buckets_match_what_was_recorded() {
        let (provider, exporter) = pipeline();
        // 20 ms is not one of the default bounds: the threshold must be added to them.
        let detector = detector(Duration::from_millis(20));
        let mut reporter = detector.opentelemetry_reporter(&provider.meter("hogwatch"));
        block_on(async {
            detector
                .watch("parse", async {
                    std::thread::sleep(Duration::from_millis(60))
                })
                .await;
            for _ in 0..3 {
                detector.watch("parse", async {}).await;
            }
        });
        reporter.publish();
        let metrics = collect(&provider, &exporter);
        let parse = [("label", "parse")];
        assert_eq!(sum_of(&metrics, POLLS.otel_name, &parse), Some(4));
        assert_eq!(sum_of(&metrics, SLOW_POLLS.otel_name, &parse), Some(1));
        assert_eq!(sum_of(&metrics, STALLS.otel_name, &parse), Some(0));
        assert_eq!(
            sum_of(
                &metrics,
                FUTURES.otel_name,
                &[("label", "parse"), ("outcome", "completed")]
            ),
            Some(4)
        );
        // Series that stayed zero are left out: no request, no cancelled future.
        assert_eq!(sum_of(&metrics, REQUESTS.otel_name, &parse), None);
        assert_eq!(
            sum_of(
                &metrics,
                FUTURES.otel_name,
                &[("label", "parse"), ("outcome", "cancelled")]
            ),
            None
        );
        let busy_us = sum_of(&metrics, BUSY.otel_name, &parse).unwrap();
        let slow_us = sum_of(&metrics, SLOW_POLL.otel_name, &parse).unwrap();
        assert!(
            slow_us >= 60_000 && busy_us >= slow_us,
            "{busy_us} {slow_us}"
        );
        assert_eq!(busy_us, detector.report().entry("parse").unwrap().busy_us);

        let (bounds, counts, count, sum) = histogram_of(&metrics, "parse");
        assert!(
            bounds.contains(&0.02),
            "the threshold is a bound: {bounds:?}"
        );
        assert_eq!(
            bounds.len(),
            schema::poll_duration_bounds_us(0).len() + 1,
            "{bounds:?}"
        );
        assert_eq!(count, 4);
        assert_eq!(counts.iter().sum::<u64>(), 4);
        let at_most = |bound: f64| {
            bounds
                .iter()
                .zip(&counts)
                .filter(|(upper, _)| **upper <= bound)
                .map(|(_, count)| count)
                .sum::<u64>()
        };
        assert_eq!(at_most(0.02), 3, "the fast polls: {bounds:?} {counts:?}");
        assert_eq!(at_most(0.05), 3, "none in 20..50 ms: {bounds:?} {counts:?}");
        assert_eq!(at_most(0.1), 4, "the 60 ms poll: {bounds:?} {counts:?}");
        assert!((0.059..0.2).contains(&sum), "{sum}");
    }

    /// A gauge's data points, by attributes.
    fn gauge_of(metrics: &ResourceMetrics, name: &str) -> BTreeMap<Attributes, f64> {
        match metric(metrics, name) {
            Some(AggregatedMetrics::F64(MetricData::Gauge(gauge))) => gauge
                .data_points()
                .map(|point| (attributes(point.attributes()), point.value()))
                .collect(),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn every_series_of_the_schema_is_an_instrument_in_seconds_or_counts() {
        let (provider, exporter) = pipeline();
        let detector = detector(Duration::from_millis(20));
        let mut reporter = detector.opentelemetry_reporter(&provider.meter("hogwatch"));
        block_on(detector.watch("stalled", async {}));
        let mut report = detector.report();
        let entry = &mut report.entries[0];
        entry.requests = 1;
        entry.responses.success = 1;
        entry.cancelled = 1;
        entry.panicked = 1;
        entry.stalls = 1;
        entry.samples = 4;
        entry.stall_wall_us = 1_000_000;
        entry.stall_cpu_us = 500_000;
        entry.longest_stall_us = 1_250_000;
        entry.inflicted_delay_us = 250_000;
        reporter.publish_report(&report);
        let metrics = collect(&provider, &exporter);
        for series in &LABEL_SERIES {
            let mut wanted = vec![("label".to_owned(), "stalled".to_owned())];
            if let Some((key, value)) = series.extra {
                wanted.push((key.to_owned(), value.to_owned()));
            }
            wanted.sort();
            let name = series.metric.otel_name;
            let found = match series.metric.kind {
                Kind::Gauge => gauge_of(&metrics, name).contains_key(&wanted),
                _ => sums(&metrics, name).contains_key(&wanted),
            };
            assert!(
                found || (series.value)(&report.entries[0]) == 0,
                "{name} {wanted:?}"
            );
        }
        let stalled = vec![("label".to_owned(), "stalled".to_owned())];
        assert_eq!(gauge_of(&metrics, LONGEST_STALL.otel_name)[&stalled], 1.25);
        assert_eq!(gauge_of(&metrics, THRESHOLD.otel_name)[&Vec::new()], 0.02);
        assert_eq!(
            sum_of(&metrics, STALL_SAMPLED.otel_name, &[("label", "stalled")]),
            Some(1_000_000)
        );
        assert_eq!(INFLICTED_DELAY.otel_name, "hogwatch.inflicted_delay");
        assert_eq!(
            sum_of(&metrics, INFLICTED_DELAY.otel_name, &[("label", "stalled")]),
            Some(250_000)
        );
        assert_eq!(unit_of(&metrics, INFLICTED_DELAY.otel_name), Some("s"));
        // A gauge follows the report down (a new window), where a counter would not.
        report.entries[0].longest_stall_us = 0;
        reporter.publish_report(&report);
        let metrics = collect(&provider, &exporter);
        assert_eq!(gauge_of(&metrics, LONGEST_STALL.otel_name)[&stalled], 0.0);
        assert_eq!(
            sum_of(&metrics, STALL_SAMPLED.otel_name, &[("label", "stalled")]),
            Some(1_000_000)
        );
    }

    #[test]
    fn each_window_is_published_once_and_counters_never_go_down() {
        let (provider, exporter) = pipeline();
        let detector = detector(Duration::from_millis(10));
        let mut reporter = detector.opentelemetry_reporter(&provider.meter("hogwatch"));
        let parse = [("label", "parse")];
        let poll = |times: usize| {
            block_on(async {
                for _ in 0..times {
                    detector.watch("parse", async {}).await;
                }
            })
        };

        poll(2);
        reporter.publish();
        let first = collect(&provider, &exporter);
        assert_eq!(sum_of(&first, POLLS.otel_name, &parse), Some(2));
        assert_eq!(histogram_count(&first, "parse"), 2);

        // Published again with nothing new: the same totals.
        reporter.publish();
        let again = collect(&provider, &exporter);
        assert_eq!(sum_of(&again, POLLS.otel_name, &parse), Some(2));
        assert_eq!(histogram_count(&again, "parse"), 2);

        poll(1);
        reporter.publish();
        let second = collect(&provider, &exporter);
        assert_eq!(sum_of(&second, POLLS.otel_name, &parse), Some(3));
        assert_eq!(histogram_count(&second, "parse"), 3);

        // A reset window holds one poll: it is added to what was published, once.
        detector.report_and_reset();
        poll(1);
        reporter.publish();
        reporter.publish();
        let third = collect(&provider, &exporter);
        assert_eq!(sum_of(&third, POLLS.otel_name, &parse), Some(4));
        assert_eq!(
            sum_of(
                &third,
                FUTURES.otel_name,
                &[("label", "parse"), ("outcome", "completed")]
            ),
            Some(4)
        );
        assert_eq!(histogram_count(&third, "parse"), 4);
    }

    #[test]
    fn labels_beyond_max_labels_stay_folded() {
        let (provider, exporter) = pipeline();
        let detector = Detector::builder().max_labels(2).build().unwrap();
        let mut reporter = detector.opentelemetry_reporter(&provider.meter("hogwatch"));
        block_on(async {
            for label in ["a", "b", "c", "d", "e"] {
                detector.watch(label, async {}).await;
            }
        });
        reporter.publish();
        let metrics = collect(&provider, &exporter);
        let polls = sums(&metrics, POLLS.otel_name);
        let labels: Vec<&str> = polls.keys().map(|key| key[0].1.as_str()).collect();
        assert_eq!(labels, [OTHER_LABEL, "a", "b"], "{polls:?}");
        assert_eq!(
            sum_of(&metrics, POLLS.otel_name, &[("label", OTHER_LABEL)]),
            Some(3)
        );
        assert_eq!(histogram_count(&metrics, OTHER_LABEL), 3);
        let Some(AggregatedMetrics::F64(MetricData::Histogram(histogram))) =
            metric(&metrics, POLL_DURATION.otel_name)
        else {
            panic!("no histogram");
        };
        assert_eq!(histogram.data_points().count(), 3);
    }

    #[test]
    fn a_publish_records_at_most_its_budget_and_the_rest_follows() {
        let (provider, exporter) = pipeline();
        let detector = detector(Duration::from_millis(10));
        let budget = NonZeroUsize::new(100).unwrap();
        let mut reporter = detector
            .opentelemetry_reporter(&provider.meter("hogwatch"))
            .sample_budget(budget);
        block_on(async {
            for _ in 0..1_000 {
                detector.watch("tick", async {}).await;
            }
        });
        let buckets = detector
            .report()
            .entry("tick")
            .unwrap()
            .histogram
            .buckets()
            .count() as u64;
        reporter.publish();
        let first = collect(&provider, &exporter);
        assert_eq!(
            sum_of(&first, POLLS.otel_name, &[("label", "tick")]),
            Some(1_000)
        );
        let recorded = histogram_count(&first, "tick");
        assert!(
            (100..=100 + buckets).contains(&recorded),
            "{recorded} samples for a budget of 100 over {buckets} buckets"
        );
        let mut publishes = 1;
        while histogram_count(&collect(&provider, &exporter), "tick") < 1_000 {
            assert!(publishes < 20, "the backlog drains");
            reporter.publish();
            publishes += 1;
        }
        let last = collect(&provider, &exporter);
        assert_eq!(
            histogram_count(&last, "tick"),
            1_000,
            "no poll lost or doubled"
        );
        assert!(publishes >= 9, "{publishes} publishes of at most ~100");
    }

    #[test]
    fn a_share_of_the_budget_is_proportional_and_rounded_up() {
        assert_eq!(share(500, 100, 1_000), 50);
        assert_eq!(share(1, 100, 1_000), 1, "every bucket moves");
        assert_eq!(share(3, 1, 1_000_000), 1);
        assert_eq!(share(u64::MAX, u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(share(7, 100, 0), 7, "never more than the bucket holds");
    }

    /// An instrument provider that turns down every instrument (the API's defaults: no-ops),
    /// as an SDK does with a name it rejects.
    struct Rejecting;

    impl InstrumentProvider for Rejecting {}

    #[test]
    fn a_meter_that_rejects_the_instruments_does_not_panic() {
        let detector = detector(Duration::from_millis(10));
        let meter = Meter::new(Arc::new(Rejecting));
        let mut reporter = detector.opentelemetry_reporter(&meter);
        block_on(detector.watch("quiet", async {}));
        reporter.publish();
        reporter.publish();
        let totals = reporter.totals.lock().unwrap();
        assert_eq!(totals["quiet"].values[0], 1);
        drop(totals);

        // An SDK whose view drops every hogwatch instrument.
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .with_view(|instrument: &Instrument| {
                instrument
                    .name()
                    .starts_with("hogwatch.")
                    .then(|| {
                        Stream::builder()
                            .with_aggregation(Aggregation::Drop)
                            .build()
                            .ok()
                    })
                    .flatten()
            })
            .build();
        let mut reporter = detector.opentelemetry_reporter(&provider.meter("hogwatch"));
        reporter.publish();
        provider.force_flush().unwrap();
        // With every instrument dropped there may be nothing to export at all.
        for metrics in exporter.get_finished_metrics().unwrap() {
            assert!(metric(&metrics, POLLS.otel_name).is_none(), "{metrics:?}");
            assert!(
                metric(&metrics, POLL_DURATION.otel_name).is_none(),
                "{metrics:?}"
            );
        }
        assert_eq!(reporter.totals.lock().unwrap()["quiet"].values[0], 1);
    }
}
