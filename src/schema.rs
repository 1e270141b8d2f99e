//! The metric schema: every metric hogwatch exports, described once (name, kind, unit, help,
//! buckets) and read by `/debug/hogs/metrics` (`render::prometheus`), the `metrics` facade bridge
//! and the OpenTelemetry bridge, as metrics-exporter-prometheus reads what `describe_*` and
//! `Unit` said of a metric.
//!
//! Durations are in seconds wherever the sink allows: Prometheus text, every OpenTelemetry
//! instrument, the `metrics` facade's gauges and histograms. The facade's counters are whole
//! numbers (`u64`), so a counter of seconds goes through it in microseconds, named
//! `*_microseconds_total`; `prometheus/hogwatch.rules.yml` reads either unit.
//!
//! Each sink derives its names from one short name, by kind and unit:
//!
//! | short name      | kind, unit         | Prometheus text              | `metrics` facade                        | OpenTelemetry (unit)             |
//! |-----------------|--------------------|------------------------------|-----------------------------------------|----------------------------------|
//! | `slow_poll`     | counter, seconds   | `hogwatch_slow_poll_seconds_total` | `hogwatch_slow_poll_microseconds_total` | `hogwatch.slow_poll` (`s`)  |
//! | `polls`         | counter, count     | `hogwatch_polls_total`       | `hogwatch_polls_total`                  | `hogwatch.polls` (`{poll}`)      |
//! | `inflicted_delay` | counter, seconds | `hogwatch_inflicted_delay_seconds_total` | `hogwatch_inflicted_delay_microseconds_total` | `hogwatch.inflicted_delay` (`s`) |
//! | `longest_stall` | gauge, seconds     | `hogwatch_longest_stall_seconds` | `hogwatch_longest_stall_seconds`    | `hogwatch.longest_stall` (`s`)   |
//! | `poll_duration` | histogram, seconds | `hogwatch_poll_duration_seconds` | `hogwatch_poll_duration_seconds`    | `hogwatch.poll_duration` (`s`)   |
//!
//! An OpenTelemetry-to-Prometheus exporter adds the unit and `_total` to the OpenTelemetry names,
//! which gives the Prometheus names back.
//!
//! The schema imports the report only (the values it reads); the renderer and the bridges import
//! the schema.

use crate::report::Entry;

/// What kind of metric it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Kind {
    /// The `# TYPE` word of the Prometheus text format.
    pub(crate) fn prometheus(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
        }
    }
}

/// The unit of a metric's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Seconds; hogwatch holds them as whole microseconds.
    Seconds,
    /// A count of things (the singular names them for OpenTelemetry: `{poll}`).
    Count(&'static str),
    /// A share, 0 to 1.
    Ratio,
}

/// One metric: its names in every sink, kind, unit and help.
#[derive(Debug)]
pub(crate) struct Metric {
    /// The Prometheus name, as `/debug/hogs/metrics` writes it.
    pub(crate) name: &'static str,
    /// The name through the `metrics` facade: the Prometheus name but for a counter of seconds,
    /// which counts microseconds there (`*_microseconds_total`).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) facade_name: &'static str,
    /// The OpenTelemetry instrument name (`hogwatch.` and the short name).
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) otel_name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) unit: Unit,
    /// One sentence for `# HELP` and the instruments' descriptions.
    pub(crate) help: &'static str,
}

impl Metric {
    /// The OpenTelemetry unit: `s`, `1`, or the counted thing in braces (`{poll}`).
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) fn otel_unit(&self) -> String {
        match self.unit {
            Unit::Seconds => "s".to_owned(),
            Unit::Ratio => "1".to_owned(),
            Unit::Count(what) => format!("{{{what}}}"),
        }
    }

    /// Whether the `metrics` facade carries it in microseconds (a counter of seconds).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn facade_in_microseconds(&self) -> bool {
        self.kind == Kind::Counter && self.unit == Unit::Seconds
    }
}

/// Builds a [`Metric`] from its short name, deriving every sink's name by the schema's rules.
macro_rules! metric {
    (@kind gauge) => { Kind::Gauge };
    (@kind histogram) => { Kind::Histogram };
    (@kind summary) => { Kind::Summary };
    ($short:literal, counter, seconds, $help:expr) => {
        Metric {
            name: concat!("hogwatch_", $short, "_seconds_total"),
            facade_name: concat!("hogwatch_", $short, "_microseconds_total"),
            otel_name: concat!("hogwatch.", $short),
            kind: Kind::Counter,
            unit: Unit::Seconds,
            help: $help,
        }
    };
    ($short:literal, counter, $what:literal, $help:expr) => {
        Metric {
            name: concat!("hogwatch_", $short, "_total"),
            facade_name: concat!("hogwatch_", $short, "_total"),
            otel_name: concat!("hogwatch.", $short),
            kind: Kind::Counter,
            unit: Unit::Count($what),
            help: $help,
        }
    };
    ($short:literal, $kind:ident, seconds, $help:expr) => {
        Metric {
            name: concat!("hogwatch_", $short, "_seconds"),
            facade_name: concat!("hogwatch_", $short, "_seconds"),
            otel_name: concat!("hogwatch.", $short),
            kind: metric!(@kind $kind),
            unit: Unit::Seconds,
            help: $help,
        }
    };
    ($short:literal, gauge, ratio, $help:expr) => {
        Metric {
            name: concat!("hogwatch_", $short, "_ratio"),
            facade_name: concat!("hogwatch_", $short, "_ratio"),
            otel_name: concat!("hogwatch.", $short),
            kind: Kind::Gauge,
            unit: Unit::Ratio,
            help: $help,
        }
    };
    ($short:literal, gauge, $what:literal, $help:expr) => {
        Metric {
            name: concat!("hogwatch_", $short),
            facade_name: concat!("hogwatch_", $short),
            otel_name: concat!("hogwatch.", $short),
            kind: Kind::Gauge,
            unit: Unit::Count($what),
            help: $help,
        }
    };
}

// Per instance.

pub(crate) const THRESHOLD: Metric = metric!(
    "threshold",
    gauge,
    seconds,
    "Polls longer than this are counted as slow polls."
);
pub(crate) const FOLDED_LABELS: Metric = metric!(
    "folded_labels",
    counter,
    "label",
    "Watched futures whose label did not fit under max_labels and were counted as <other>."
);
pub(crate) const EVENT_LOOP_LAG: Metric = metric!(
    "event_loop_lag",
    summary,
    seconds,
    "How late the lag probe woke up: the delay every task on the runtime suffered."
);
pub(crate) const DELAY: Metric = metric!(
    "delay",
    counter,
    seconds,
    "The lag probe's lateness on wake-ups more than a threshold late: the scheduling delay a \
     task woken by the runtime suffered."
);
pub(crate) const UNATTRIBUTED_DELAY: Metric = metric!(
    "unattributed_delay",
    counter,
    seconds,
    "The part of that delay during which no label held a worker with a slow poll or a stall."
);
pub(crate) const RUNTIME_WORKERS: Metric = metric!(
    "runtime_workers",
    gauge,
    "thread",
    "Worker threads of the runtime."
);
pub(crate) const RUNTIME_LIVE_TASKS: Metric = metric!(
    "runtime_live_tasks",
    gauge,
    "task",
    "Tasks alive at the end of the last interval."
);
pub(crate) const RUNTIME_BUSY: Metric = metric!(
    "runtime_busy",
    gauge,
    ratio,
    "Share of the last interval the workers were busy (0 to 1)."
);
pub(crate) const RUNTIME_GLOBAL_QUEUE_DEPTH: Metric = metric!(
    "runtime_global_queue_depth",
    gauge,
    "task",
    "Tasks in the global queue at the end of the last interval."
);
pub(crate) const RUNTIME_PARKS: Metric = metric!(
    "runtime_parks",
    gauge,
    "park",
    "Times the workers parked in the last interval."
);
pub(crate) const RUNTIME_MEAN_POLL: Metric = metric!(
    "runtime_mean_poll",
    gauge,
    seconds,
    "Mean task poll duration in the last interval (tokio_unstable)."
);
pub(crate) const RUNTIME_LOCAL_QUEUE_DEPTH: Metric = metric!(
    "runtime_local_queue_depth",
    gauge,
    "task",
    "Tasks in the workers' local queues at the end of the last interval (tokio_unstable)."
);
pub(crate) const WATCHDOG_THRESHOLD: Metric = metric!(
    "watchdog_threshold",
    gauge,
    seconds,
    "Polls running longer than this are stalls: the watchdog captures their stacks."
);
pub(crate) const WATCHDOG_CAPTURES: Metric = metric!(
    "watchdog_captures",
    counter,
    "capture",
    "Stack captures of stalled polls, by result: completed (a stack), timeout (the thread did \
     not answer in time: a loaded machine) or failed (the signal taken by another handler, not \
     sent, or a capture stuck or overlapping another)."
);

// Per label.

pub(crate) const LABEL_INFO: Metric = metric!(
    "label_info",
    gauge,
    "label",
    "What made each label: watch, route, task or other (always 1)."
);
pub(crate) const POLL_DURATION: Metric = metric!(
    "poll_duration",
    histogram,
    seconds,
    "Duration of each poll of a watched future."
);
pub(crate) const POLLS: Metric = metric!("polls", counter, "poll", "Polls of watched futures.");
pub(crate) const SLOW_POLLS: Metric = metric!(
    "slow_polls",
    counter,
    "poll",
    "Polls longer than the threshold."
);
pub(crate) const BUSY: Metric = metric!(
    "busy",
    counter,
    seconds,
    "Time spent inside polls of watched futures."
);
pub(crate) const SLOW_POLL: Metric = metric!(
    "slow_poll",
    counter,
    seconds,
    "Time spent in polls longer than the threshold."
);
pub(crate) const INFLICTED_DELAY: Metric = metric!(
    "inflicted_delay",
    counter,
    seconds,
    "Scheduling delay the label's slow polls and stalls caused the rest of the runtime, as the \
     lag probe suffered it."
);
pub(crate) const FUTURES: Metric = metric!(
    "futures",
    counter,
    "future",
    "Watched futures that ended, by outcome."
);
pub(crate) const STALLS: Metric = metric!(
    "stalls",
    counter,
    "stall",
    "Polls the stall watchdog caught still running past its threshold (0 without a watchdog)."
);
pub(crate) const LONGEST_STALL: Metric = metric!(
    "longest_stall",
    gauge,
    seconds,
    "The longest stall the watchdog saw in the detector's window, so far for one still going \
     on (0 without a stall)."
);
pub(crate) const STALL_SAMPLES: Metric = metric!(
    "stall_samples",
    counter,
    "sample",
    "Samples of stalled polls by what the thread was doing: cpu, sleep, lock, io, wait, \
     preempted or syscall."
);
pub(crate) const STALL_SAMPLED: Metric = metric!(
    "stall_sampled",
    counter,
    seconds,
    "Time from each stall's first sample to its last: the part of the stalls the watchdog \
     watched."
);
pub(crate) const STALL_CPU: Metric = metric!(
    "stall_cpu",
    counter,
    seconds,
    "The stalled threads' CPU time over that same time: near it for CPU work, near zero for \
     waiting."
);
pub(crate) const REQUESTS: Metric = metric!(
    "requests",
    counter,
    "request",
    "HTTP requests seen by the layer."
);
pub(crate) const RESPONSES: Metric = metric!(
    "responses",
    counter,
    "response",
    "HTTP responses by status class."
);

/// Every metric, for tests that check the sinks against the schema.
#[cfg(test)]
pub(crate) static ALL: [&Metric; 29] = [
    &THRESHOLD,
    &FOLDED_LABELS,
    &EVENT_LOOP_LAG,
    &DELAY,
    &UNATTRIBUTED_DELAY,
    &RUNTIME_WORKERS,
    &RUNTIME_LIVE_TASKS,
    &RUNTIME_BUSY,
    &RUNTIME_GLOBAL_QUEUE_DEPTH,
    &RUNTIME_PARKS,
    &RUNTIME_MEAN_POLL,
    &RUNTIME_LOCAL_QUEUE_DEPTH,
    &WATCHDOG_THRESHOLD,
    &WATCHDOG_CAPTURES,
    &LABEL_INFO,
    &POLL_DURATION,
    &POLLS,
    &SLOW_POLLS,
    &BUSY,
    &SLOW_POLL,
    &INFLICTED_DELAY,
    &FUTURES,
    &STALLS,
    &LONGEST_STALL,
    &STALL_SAMPLES,
    &STALL_SAMPLED,
    &STALL_CPU,
    &REQUESTS,
    &RESPONSES,
];

/// Upper bounds of the poll-duration histogram's buckets, in microseconds: 10 µs .. 10 s. Every
/// sink adds the detector's threshold to them ([`poll_duration_bounds_us`]).
const POLL_DURATION_BUCKETS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// The poll-duration histogram's bucket bounds, in microseconds, for a detector with this
/// threshold: the schema's buckets with the threshold among them, so "polls over the threshold"
/// is a bucket boundary in every sink.
pub(crate) fn poll_duration_bounds_us(threshold_us: u64) -> Vec<u64> {
    let mut bounds = POLL_DURATION_BUCKETS_US.to_vec();
    if threshold_us > 0 {
        if let Err(at) = bounds.binary_search(&threshold_us) {
            bounds.insert(at, threshold_us);
        }
    }
    bounds
}

/// Microseconds as seconds (exact for every bucket bound: the division is correctly rounded).
#[cfg_attr(
    not(any(feature = "metrics", feature = "opentelemetry")),
    allow(dead_code)
)]
pub(crate) fn seconds_f64(us: u64) -> f64 {
    us as f64 / 1e6
}

/// Which labels have a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shown {
    /// Every label.
    Always,
    /// Labels the HTTP layer made a request for.
    Routes,
    /// Labels the watchdog sampled.
    Sampled,
}

impl Shown {
    pub(crate) fn includes(self, entry: &Entry) -> bool {
        match self {
            Self::Always => true,
            Self::Routes => entry.requests > 0,
            Self::Sampled => entry.samples > 0,
        }
    }
}

/// One series of a label: its metric, the label it adds to `label`, which labels have it, and
/// its value from the report's entry (microseconds for a metric in seconds, else a count).
pub(crate) struct Series {
    pub(crate) metric: &'static Metric,
    pub(crate) extra: Option<(&'static str, &'static str)>,
    pub(crate) shown: Shown,
    pub(crate) value: fn(&Entry) -> u64,
}

/// The label's series every sink exports (the poll-duration histogram and the samples by cause
/// apart), grouped by metric, in the order the sinks write them.
pub(crate) static LABEL_SERIES: [Series; 18] = [
    series(&POLLS, None, Shown::Always, |entry| entry.polls),
    series(&SLOW_POLLS, None, Shown::Always, |entry| entry.slow_polls),
    series(&BUSY, None, Shown::Always, |entry| entry.busy_us),
    series(&SLOW_POLL, None, Shown::Always, |entry| entry.slow_busy_us),
    series(&INFLICTED_DELAY, None, Shown::Always, |entry| {
        entry.inflicted_delay_us
    }),
    series(
        &FUTURES,
        Some(("outcome", "completed")),
        Shown::Always,
        |entry| entry.completed,
    ),
    series(
        &FUTURES,
        Some(("outcome", "cancelled")),
        Shown::Always,
        |entry| entry.cancelled,
    ),
    series(
        &FUTURES,
        Some(("outcome", "panicked")),
        Shown::Always,
        |entry| entry.panicked,
    ),
    series(&STALLS, None, Shown::Always, |entry| entry.stalls),
    series(&LONGEST_STALL, None, Shown::Always, |entry| {
        entry.longest_stall_us
    }),
    series(&STALL_SAMPLED, None, Shown::Sampled, |entry| {
        entry.stall_wall_us
    }),
    series(&STALL_CPU, None, Shown::Sampled, |entry| entry.stall_cpu_us),
    series(&REQUESTS, None, Shown::Routes, |entry| entry.requests),
    series(&RESPONSES, Some(("class", "1xx")), Shown::Routes, |entry| {
        entry.responses.informational
    }),
    series(&RESPONSES, Some(("class", "2xx")), Shown::Routes, |entry| {
        entry.responses.success
    }),
    series(&RESPONSES, Some(("class", "3xx")), Shown::Routes, |entry| {
        entry.responses.redirection
    }),
    series(&RESPONSES, Some(("class", "4xx")), Shown::Routes, |entry| {
        entry.responses.client_error
    }),
    series(&RESPONSES, Some(("class", "5xx")), Shown::Routes, |entry| {
        entry.responses.server_error
    }),
];

const fn series(
    metric: &'static Metric,
    extra: Option<(&'static str, &'static str)>,
    shown: Shown,
    value: fn(&Entry) -> u64,
) -> Series {
    Series {
        metric,
        extra,
        shown,
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an OpenTelemetry-to-Prometheus exporter makes of an instrument's name and unit
    /// (the specification's translation: dots to underscores, the unit's suffix, `_total` on a
    /// counter, annotations in braces dropped).
    fn otel_to_prometheus(metric: &Metric) -> String {
        let mut name = metric.otel_name.replace('.', "_");
        match metric.otel_unit().as_str() {
            "s" => name.push_str("_seconds"),
            "1" if metric.kind == Kind::Gauge => name.push_str("_ratio"),
            unit => assert!(unit.starts_with('{') && unit.ends_with('}'), "{unit}"),
        }
        if metric.kind == Kind::Counter {
            name.push_str("_total");
        }
        name
    }

    #[test]
    fn every_sink_names_a_metric_by_the_same_rules() {
        let mut names: Vec<&str> = ALL.iter().map(|metric| metric.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a name used twice: {names:?}");
        for metric in ALL {
            assert!(metric.name.starts_with("hogwatch_"), "{}", metric.name);
            assert_eq!(otel_to_prometheus(metric), metric.name);
            if metric.facade_in_microseconds() {
                assert_eq!(
                    metric.facade_name,
                    metric.name.replace("_seconds_total", "_microseconds_total"),
                );
            } else {
                assert_eq!(metric.facade_name, metric.name);
            }
            assert!(metric.help.ends_with('.'), "{}", metric.help);
            assert!(!metric.help.contains('\n'), "{}", metric.help);
        }
        assert_eq!(SLOW_POLL.name, "hogwatch_slow_poll_seconds_total");
        assert_eq!(
            SLOW_POLL.facade_name,
            "hogwatch_slow_poll_microseconds_total"
        );
        assert_eq!(SLOW_POLL.otel_name, "hogwatch.slow_poll");
        assert_eq!(LONGEST_STALL.name, "hogwatch_longest_stall_seconds");
        assert_eq!(POLL_DURATION.otel_name, "hogwatch.poll_duration");
        assert_eq!(POLLS.otel_unit(), "{poll}");
    }

    #[test]
    fn label_series_are_grouped_by_metric() {
        let mut seen: Vec<&str> = Vec::new();
        for series in &LABEL_SERIES {
            if seen.last() != Some(&series.metric.name) {
                assert!(
                    !seen.contains(&series.metric.name),
                    "{}",
                    series.metric.name
                );
                seen.push(series.metric.name);
            }
            assert!(
                matches!(series.metric.kind, Kind::Counter | Kind::Gauge),
                "{}",
                series.metric.name
            );
        }
        assert!(seen.contains(&LONGEST_STALL.name));
    }

    #[test]
    fn the_threshold_is_a_bucket_bound() {
        let bounds = poll_duration_bounds_us(20_000);
        assert_eq!(bounds.len(), POLL_DURATION_BUCKETS_US.len() + 1);
        assert!(
            bounds.windows(2).all(|pair| pair[0] < pair[1]),
            "{bounds:?}"
        );
        assert!(bounds.contains(&20_000));
        assert_eq!(poll_duration_bounds_us(10_000), POLL_DURATION_BUCKETS_US);
        assert_eq!(seconds_f64(25), 0.000025);
        assert_eq!(seconds_f64(25).to_string(), "0.000025");
    }
}
