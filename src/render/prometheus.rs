//! Prometheus text exposition (format 0.0.4): what a fleet's Prometheus scrapes.
//!
//! Durations are in seconds and counters end in `_total`, following Prometheus' naming
//! conventions. Every series carries the hogwatch label as `label="..."`.
//!
//! Nothing here needs axum: [`Report::to_prometheus`] serves any HTTP stack (or a push
//! gateway, or a file for node_exporter's textfile collector), and the `/debug/hogs/metrics`
//! endpoint is one caller of it.

use std::fmt::Write;

use crate::report::{Entry, Report};
use crate::schema::{self, Metric, Unit};

impl Report {
    /// The report in the Prometheus text exposition format (0.0.4), as `/debug/hogs/metrics`
    /// serves it: per-label poll-duration histograms (seconds), poll, slow-poll, stall, request
    /// and response counters, the threshold, and the watchdog's and lag probe's series when the
    /// detector has them. Label values are escaped. Needs no feature: serve it from any HTTP
    /// stack.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// detector.watch("parse-blob", async {}).await;
    /// # });
    /// let metrics = detector.report().to_prometheus();
    /// assert!(metrics.contains("# TYPE hogwatch_poll_duration_seconds histogram\n"));
    /// assert!(metrics.contains("hogwatch_polls_total{label=\"parse-blob\"} 1\n"));
    /// # Ok(()) }
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        render(self, &mut out);
        out
    }
}

/// Writes `report` in the Prometheus text format into `out`: every metric of the schema, by its
/// Prometheus name, type and help.
pub(crate) fn render(report: &Report, out: &mut String) {
    let entries = &report.entries;

    header(out, &schema::THRESHOLD);
    let _ = writeln!(
        out,
        "{} {}",
        schema::THRESHOLD.name,
        seconds(report.threshold_us)
    );

    header(out, &schema::FOLDED_LABELS);
    let _ = writeln!(
        out,
        "{} {}",
        schema::FOLDED_LABELS.name,
        report.folded_labels
    );

    header(out, &schema::LABEL_INFO);
    for entry in entries {
        let _ = writeln!(
            out,
            "{}{{label=\"{}\",kind=\"{}\"}} 1",
            schema::LABEL_INFO.name,
            escape(&entry.label),
            super::text::kind(entry.kind)
        );
    }
    render_runtime(report, out);
    render_histograms(report, out);
    render_label_series(entries, out);
    render_samples(entries, out);
    render_watchdog(report, out);
}

/// The poll-duration histogram of every label, with the schema's bucket bounds.
fn render_histograms(report: &Report, out: &mut String) {
    let name = schema::POLL_DURATION.name;
    header(out, &schema::POLL_DURATION);
    let bounds: Vec<(u64, String)> = schema::poll_duration_bounds_us(report.threshold_us)
        .into_iter()
        .map(|us| (us, seconds(us)))
        .collect();
    for entry in &report.entries {
        let label = escape(&entry.label);
        for (le_us, le) in &bounds {
            let count = count_up_to(entry, *le_us);
            let _ = writeln!(
                out,
                "{name}_bucket{{label=\"{label}\",le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{label=\"{label}\",le=\"+Inf\"}} {}",
            entry.polls
        );
        let _ = writeln!(
            out,
            "{name}_sum{{label=\"{label}\"}} {}",
            seconds(entry.busy_us)
        );
        let _ = writeln!(out, "{name}_count{{label=\"{label}\"}} {}", entry.polls);
    }
}

/// The schema's per-label series ([`schema::LABEL_SERIES`]), one metric after the other.
fn render_label_series(entries: &[Entry], out: &mut String) {
    let mut last: Option<&str> = None;
    for series in &schema::LABEL_SERIES {
        let metric = series.metric;
        if last != Some(metric.name) {
            header(out, metric);
            last = Some(metric.name);
        }
        for entry in entries.iter().filter(|entry| series.shown.includes(entry)) {
            let _ = write!(out, "{}{{label=\"{}\"", metric.name, escape(&entry.label));
            if let Some((key, value)) = series.extra {
                let _ = write!(out, ",{key}=\"{value}\"");
            }
            let _ = writeln!(out, "}} {}", value(metric, (series.value)(entry)));
        }
    }
}

/// A schema value as Prometheus text: seconds for a metric in seconds, else the count.
fn value(metric: &Metric, raw: u64) -> String {
    match metric.unit {
        Unit::Seconds => seconds(raw),
        _ => raw.to_string(),
    }
}

/// The lag probe as a summary (and the delay it suffered, as counters) and the tokio-metrics
/// figures as gauges, when the report has them.
fn render_runtime(report: &Report, out: &mut String) {
    if let Some(lag) = &report.event_loop_lag {
        let name = schema::EVENT_LOOP_LAG.name;
        header(out, &schema::EVENT_LOOP_LAG);
        for (quantile, us) in [
            ("0", lag.min_us),
            ("0.5", lag.p50_us),
            ("0.99", lag.p99_us),
            ("1", lag.max_us),
        ] {
            let _ = writeln!(out, "{name}{{quantile=\"{quantile}\"}} {}", seconds(us));
        }
        let _ = writeln!(
            out,
            "{name}_sum {}",
            seconds(lag.mean_us.saturating_mul(lag.samples))
        );
        let _ = writeln!(out, "{name}_count {}", lag.samples);
        for (metric, us) in [
            (&schema::DELAY, lag.delay_us),
            (&schema::UNATTRIBUTED_DELAY, lag.unattributed_delay_us),
        ] {
            header(out, metric);
            let _ = writeln!(out, "{} {}", metric.name, seconds(us));
        }
    }
    if let Some(runtime) = &report.runtime {
        let gauges = [
            (&schema::RUNTIME_WORKERS, Some(runtime.workers as f64)),
            (&schema::RUNTIME_LIVE_TASKS, Some(runtime.live_tasks as f64)),
            (&schema::RUNTIME_BUSY, Some(runtime.busy_ratio)),
            (
                &schema::RUNTIME_GLOBAL_QUEUE_DEPTH,
                Some(runtime.global_queue_depth as f64),
            ),
            (
                &schema::RUNTIME_PARKS,
                Some(runtime.total_park_count as f64),
            ),
            (
                &schema::RUNTIME_MEAN_POLL,
                runtime.mean_poll_us.map(|us| us as f64 / 1e6),
            ),
            (
                &schema::RUNTIME_LOCAL_QUEUE_DEPTH,
                runtime.total_local_queue_depth.map(|depth| depth as f64),
            ),
        ];
        for (metric, value) in gauges {
            if let Some(value) = value {
                header(out, metric);
                let _ = writeln!(out, "{} {value}", metric.name);
            }
        }
    }
}

/// The watchdog's samples of stalled polls by label and cause (summed over system calls, so at
/// most seven series per label).
fn render_samples(entries: &[Entry], out: &mut String) {
    let stalled: Vec<&Entry> = entries.iter().filter(|entry| entry.samples > 0).collect();
    if stalled.is_empty() {
        return;
    }
    let name = schema::STALL_SAMPLES.name;
    header(out, &schema::STALL_SAMPLES);
    for entry in &stalled {
        let label = escape(&entry.label);
        for (cause, count) in super::by_cause(&entry.causes) {
            let _ = writeln!(out, "{name}{{label=\"{label}\",cause=\"{cause}\"}} {count}");
        }
    }
}

/// The watchdog's threshold and capture counters, when the detector has a watchdog.
fn render_watchdog(report: &Report, out: &mut String) {
    let Some(watchdog) = &report.watchdog else {
        return;
    };
    header(out, &schema::WATCHDOG_THRESHOLD);
    let _ = writeln!(
        out,
        "{} {}",
        schema::WATCHDOG_THRESHOLD.name,
        seconds(watchdog.threshold_us)
    );
    let name = schema::WATCHDOG_CAPTURES.name;
    header(out, &schema::WATCHDOG_CAPTURES);
    // Timeouts apart: a sample between two reports waits one check interval at most, so a
    // loaded machine times some out, which is no fault of the setup an alert should page on.
    for (result, count) in [
        ("completed", watchdog.captures_completed),
        ("timeout", watchdog.captures_timeout),
        (
            "failed",
            watchdog
                .captures_failed
                .saturating_sub(watchdog.captures_timeout),
        ),
    ] {
        let _ = writeln!(out, "{name}{{result=\"{result}\"}} {count}");
    }
}

fn header(out: &mut String, metric: &Metric) {
    let _ = writeln!(out, "# HELP {} {}", metric.name, metric.help);
    let _ = writeln!(out, "# TYPE {} {}", metric.name, metric.kind.prometheus());
}

/// Polls of at most `le_us` microseconds (cumulative, as Prometheus buckets are).
fn count_up_to(entry: &Entry, le_us: u64) -> u64 {
    entry.histogram.count_up_to(le_us)
}

/// Microseconds as a decimal number of seconds, without float noise (`0.00025`, `1`, `2.5`).
fn seconds(us: u64) -> String {
    let whole = us / 1_000_000;
    let fraction = us % 1_000_000;
    if fraction == 0 {
        whole.to_string()
    } else {
        let digits = format!("{fraction:06}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Escapes a label value: backslash, double quote and line feed, as the text format requires.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_samples_are_counted_by_cause_summed_over_system_calls() {
        let detector = crate::Detector::builder().build().unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(detector.watch("route", async {}));
        let mut report = detector.report();
        let mut out = String::new();
        render(&report, &mut out);
        assert!(
            !out.contains("hogwatch_stall_samples_total"),
            "no samples, no series"
        );
        let cause = |cause, count, syscall: Option<&str>| crate::CauseCount {
            cause,
            count,
            syscall: syscall.map(str::to_string),
        };
        let entry = &mut report.entries[0];
        entry.samples = 9;
        entry.causes = vec![
            cause(crate::StallCause::Io, 4, Some("read")),
            cause(crate::StallCause::Cpu, 3, None),
            cause(crate::StallCause::Io, 2, Some("poll")),
        ];
        entry.stall_wall_us = 1_500_000;
        entry.stall_cpu_us = 250_000;
        let mut out = String::new();
        render(&report, &mut out);
        assert!(
            out.contains("# TYPE hogwatch_stall_samples_total counter\n"),
            "{out}"
        );
        assert!(
            out.contains("hogwatch_stall_samples_total{label=\"route\",cause=\"io\"} 6\n"),
            "{out}"
        );
        assert!(
            out.contains("hogwatch_stall_samples_total{label=\"route\",cause=\"cpu\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("hogwatch_stall_sampled_seconds_total{label=\"route\"} 1.5\n"),
            "{out}"
        );
        assert!(
            out.contains("hogwatch_stall_cpu_seconds_total{label=\"route\"} 0.25\n"),
            "{out}"
        );
    }

    #[test]
    fn stalls_and_watchdog_captures_are_counters() {
        let detector = crate::Detector::builder().build().unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(detector.watch("a \"stalled\" label", async {}));
        let mut report = detector.report();
        report.entries[0].stalls = 3;

        let mut out = String::new();
        render(&report, &mut out);
        assert!(
            out.contains("# TYPE hogwatch_stalls_total counter\n"),
            "{out}"
        );
        assert!(out.contains("hogwatch_stalls_total{label=\"a \\\"stalled\\\" label\"} 3\n"));
        assert!(
            !out.contains("hogwatch_watchdog_"),
            "no watchdog, no watchdog series"
        );

        report.watchdog = Some(crate::WatchdogStats {
            threshold_us: 30_000,
            captures_completed: 2,
            captures_failed: 4,
            captures_timeout: 3,
            ..Default::default()
        });
        let mut out = String::new();
        render(&report, &mut out);
        assert!(
            out.contains("hogwatch_watchdog_threshold_seconds 0.03\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE hogwatch_watchdog_captures_total counter\n"));
        assert!(out.contains("hogwatch_watchdog_captures_total{result=\"completed\"} 2\n"));
        assert!(out.contains("hogwatch_watchdog_captures_total{result=\"timeout\"} 3\n"));
        assert!(out.contains("hogwatch_watchdog_captures_total{result=\"failed\"} 1\n"));
    }

    /// One schema: every metric it describes is written with its type and help, the
    /// longest stall among them.
    #[test]
    fn every_metric_of_the_schema_is_written() {
        let detector = crate::Detector::builder().build().unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(detector.watch("route", async {}));
        let mut report = detector.report();
        report.event_loop_lag = Some(crate::EventLoopLag::default());
        report.runtime = Some(crate::RuntimeFigures {
            mean_poll_us: Some(5),
            total_local_queue_depth: Some(1),
            ..Default::default()
        });
        report.watchdog = Some(crate::WatchdogStats::default());
        let entry = &mut report.entries[0];
        entry.requests = 1;
        entry.samples = 1;
        entry.stalls = 1;
        entry.longest_stall_us = 1_250_000;
        let out = report.to_prometheus();
        for metric in schema::ALL {
            let help = format!("# HELP {} {}\n", metric.name, metric.help);
            let kind = format!("# TYPE {} {}\n", metric.name, metric.kind.prometheus());
            assert!(
                out.contains(&help) && out.contains(&kind),
                "{}\n{out}",
                metric.name
            );
        }
        assert!(
            out.contains("hogwatch_longest_stall_seconds{label=\"route\"} 1.25\n"),
            "{out}"
        );
        assert!(
            out.contains("hogwatch_busy_seconds_total{label=\"route\"} "),
            "{out}"
        );
    }

    /// Issue 27: the delay the lag probe suffered is two unlabelled counters, written only with
    /// the probe on; each label's share of it is a labelled one.
    #[test]
    fn the_lag_probe_delay_and_each_label_share_of_it_are_counters() {
        let detector = crate::Detector::builder().build().unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(detector.watch("route", async {}));
        let mut report = detector.report();
        report.entries[0].inflicted_delay_us = 1_235_000;
        let out = report.to_prometheus();
        assert!(
            out.contains("hogwatch_inflicted_delay_seconds_total{label=\"route\"} 1.235\n"),
            "{out}"
        );
        assert!(
            !out.contains("hogwatch_delay_"),
            "no probe, no delay: {out}"
        );
        assert!(!out.contains("hogwatch_unattributed_delay_"), "{out}");

        report.event_loop_lag = Some(crate::EventLoopLag {
            resolution_us: 10_000,
            samples: 100,
            delay_us: 1_300_000,
            unattributed_delay_us: 65_000,
            ..Default::default()
        });
        let out = report.to_prometheus();
        for line in [
            "# TYPE hogwatch_delay_seconds_total counter\n",
            "hogwatch_delay_seconds_total 1.3\n",
            "# TYPE hogwatch_unattributed_delay_seconds_total counter\n",
            "hogwatch_unattributed_delay_seconds_total 0.065\n",
            "# TYPE hogwatch_inflicted_delay_seconds_total counter\n",
            "hogwatch_inflicted_delay_seconds_total{label=\"route\"} 1.235\n",
        ] {
            assert!(out.contains(line), "{line}{out}");
        }
    }

    /// Issue 15: the Prometheus text needs no axum. This test runs in the
    /// `--no-default-features` build too, where it did not compile before.
    #[test]
    fn a_report_renders_prometheus_without_any_feature() {
        let detector = crate::Detector::builder()
            .threshold(std::time::Duration::from_millis(10))
            .build()
            .unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(detector.watch("blob", async {
                std::thread::sleep(std::time::Duration::from_millis(60));
            }));
        let out = detector.report().to_prometheus();
        assert!(out.contains("hogwatch_threshold_seconds 0.01\n"), "{out}");
        assert!(
            out.contains("hogwatch_slow_polls_total{label=\"blob\"} 1\n"),
            "{out}"
        );
        // A poll of at least 60 ms is in no bucket up to 50 ms, and in the 10 s one (a loaded
        // machine may stretch the sleep, so no tighter upper bucket).
        assert!(
            out.contains("hogwatch_poll_duration_seconds_bucket{label=\"blob\",le=\"0.05\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("hogwatch_poll_duration_seconds_bucket{label=\"blob\",le=\"10\"} 1\n"),
            "{out}"
        );
        assert!(out.ends_with('\n'), "{out}");
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(10), "0.00001");
        assert_eq!(seconds(250_000), "0.25");
        assert_eq!(seconds(10_000_000), "10");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(0), "0");
    }

    #[test]
    fn escaping_round_trips_every_awkward_character() {
        for value in [
            "plain",
            "a\"b",
            "back\\slash",
            "new\nline",
            "}{,=",
            "ünï\u{1F600}",
            "",
        ] {
            let escaped = escape(value);
            assert!(!escaped.contains('\n'), "{escaped}");
            // Undo the escaping the way a parser does and get the value back.
            let mut unescaped = String::new();
            let mut chars = escaped.chars();
            while let Some(character) = chars.next() {
                if character == '\\' {
                    match chars.next() {
                        Some('n') => unescaped.push('\n'),
                        Some(other) => unescaped.push(other),
                        None => panic!("dangling backslash in {escaped}"),
                    }
                } else {
                    assert_ne!(character, '"', "unescaped quote in {escaped}");
                    unescaped.push(character);
                }
            }
            assert_eq!(unescaped, value);
        }
    }
}
