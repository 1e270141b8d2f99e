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

/// Upper bounds of the poll-duration histogram buckets, in microseconds: 10 µs .. 10 s (the
/// OpenTelemetry bridge uses the same, so both exports bucket alike).
#[cfg_attr(not(feature = "opentelemetry"), allow(unreachable_pub))]
pub(crate) const BUCKETS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Writes `report` in the Prometheus text format into `out`.
pub(crate) fn render(report: &Report, out: &mut String) {
    let entries = &report.entries;

    header(
        out,
        "hogwatch_threshold_seconds",
        "gauge",
        "Polls longer than this are counted as slow polls.",
    );
    let _ = writeln!(
        out,
        "hogwatch_threshold_seconds {}",
        seconds(report.threshold_us)
    );

    header(
        out,
        "hogwatch_folded_labels_total",
        "counter",
        "Watched futures whose label did not fit under max_labels and were counted as <other>.",
    );
    let _ = writeln!(out, "hogwatch_folded_labels_total {}", report.folded_labels);

    header(
        out,
        "hogwatch_label_info",
        "gauge",
        "What made each label: watch, route, task or other (always 1).",
    );
    for entry in entries {
        let _ = writeln!(
            out,
            "hogwatch_label_info{{label=\"{}\",kind=\"{}\"}} 1",
            escape(&entry.label),
            super::text::kind(entry.kind)
        );
    }
    render_runtime(report, out);

    header(
        out,
        "hogwatch_poll_duration_seconds",
        "histogram",
        "Duration of each poll of a watched future.",
    );
    for entry in entries {
        let label = escape(&entry.label);
        for le in BUCKETS_US {
            let count = count_up_to(entry, le);
            let _ = writeln!(
                out,
                "hogwatch_poll_duration_seconds_bucket{{label=\"{label}\",le=\"{}\"}} {count}",
                seconds(le)
            );
        }
        let _ = writeln!(
            out,
            "hogwatch_poll_duration_seconds_bucket{{label=\"{label}\",le=\"+Inf\"}} {}",
            entry.polls
        );
        let _ = writeln!(
            out,
            "hogwatch_poll_duration_seconds_sum{{label=\"{label}\"}} {}",
            seconds(entry.busy_us)
        );
        let _ = writeln!(
            out,
            "hogwatch_poll_duration_seconds_count{{label=\"{label}\"}} {}",
            entry.polls
        );
    }

    counter(
        out,
        "hogwatch_polls_total",
        "Polls of watched futures.",
        entries,
        |entry| entry.polls,
    );
    counter(
        out,
        "hogwatch_slow_polls_total",
        "Polls longer than the threshold.",
        entries,
        |entry| entry.slow_polls,
    );
    header(
        out,
        "hogwatch_slow_poll_seconds_total",
        "counter",
        "Time spent in polls longer than the threshold.",
    );
    for entry in entries {
        let _ = writeln!(
            out,
            "hogwatch_slow_poll_seconds_total{{label=\"{}\"}} {}",
            escape(&entry.label),
            seconds(entry.slow_busy_us)
        );
    }

    header(
        out,
        "hogwatch_futures_total",
        "counter",
        "Watched futures that ended, by outcome.",
    );
    for entry in entries {
        let label = escape(&entry.label);
        for (outcome, count) in [
            ("completed", entry.completed),
            ("cancelled", entry.cancelled),
            ("panicked", entry.panicked),
        ] {
            let _ = writeln!(
                out,
                "hogwatch_futures_total{{label=\"{label}\",outcome=\"{outcome}\"}} {count}"
            );
        }
    }

    counter(
        out,
        "hogwatch_stalls_total",
        "Polls the stall watchdog caught still running past its threshold (0 without a watchdog).",
        entries,
        |entry| entry.stalls,
    );
    render_samples(entries, out);
    render_watchdog(report, out);

    let routes: Vec<&Entry> = entries.iter().filter(|entry| entry.requests > 0).collect();
    header(
        out,
        "hogwatch_requests_total",
        "counter",
        "HTTP requests seen by the layer.",
    );
    for entry in &routes {
        let _ = writeln!(
            out,
            "hogwatch_requests_total{{label=\"{}\"}} {}",
            escape(&entry.label),
            entry.requests
        );
    }
    header(
        out,
        "hogwatch_responses_total",
        "counter",
        "HTTP responses by status class.",
    );
    for entry in &routes {
        let label = escape(&entry.label);
        let responses = &entry.responses;
        for (class, count) in [
            ("1xx", responses.informational),
            ("2xx", responses.success),
            ("3xx", responses.redirection),
            ("4xx", responses.client_error),
            ("5xx", responses.server_error),
        ] {
            let _ = writeln!(
                out,
                "hogwatch_responses_total{{label=\"{label}\",class=\"{class}\"}} {count}"
            );
        }
    }
}

/// The lag probe as a summary and the tokio-metrics figures as gauges, when the report has them.
fn render_runtime(report: &Report, out: &mut String) {
    if let Some(lag) = &report.event_loop_lag {
        header(
            out,
            "hogwatch_event_loop_lag_seconds",
            "summary",
            "How late the lag probe woke up: the delay every task on the runtime suffered.",
        );
        for (quantile, us) in [
            ("0", lag.min_us),
            ("0.5", lag.p50_us),
            ("0.99", lag.p99_us),
            ("1", lag.max_us),
        ] {
            let _ = writeln!(
                out,
                "hogwatch_event_loop_lag_seconds{{quantile=\"{quantile}\"}} {}",
                seconds(us)
            );
        }
        let _ = writeln!(
            out,
            "hogwatch_event_loop_lag_seconds_sum {}",
            seconds(lag.mean_us.saturating_mul(lag.samples))
        );
        let _ = writeln!(out, "hogwatch_event_loop_lag_seconds_count {}", lag.samples);
    }
    if let Some(runtime) = &report.runtime {
        let gauges = [
            ("hogwatch_runtime_workers", "Worker threads of the runtime.", Some(runtime.workers as f64)),
            ("hogwatch_runtime_live_tasks", "Tasks alive at the end of the last interval.", Some(runtime.live_tasks as f64)),
            ("hogwatch_runtime_busy_ratio", "Share of the last interval the workers were busy (0 to 1).", Some(runtime.busy_ratio)),
            ("hogwatch_runtime_global_queue_depth", "Tasks in the global queue at the end of the last interval.", Some(runtime.global_queue_depth as f64)),
            ("hogwatch_runtime_parks", "Times the workers parked in the last interval.", Some(runtime.total_park_count as f64)),
            ("hogwatch_runtime_mean_poll_seconds", "Mean task poll duration in the last interval (tokio_unstable).", runtime.mean_poll_us.map(|us| us as f64 / 1e6)),
            ("hogwatch_runtime_local_queue_depth", "Tasks in the workers' local queues at the end of the last interval (tokio_unstable).", runtime.total_local_queue_depth.map(|depth| depth as f64)),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                header(out, name, "gauge", help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
    }
}

/// The watchdog's samples of stalled polls by label and cause (summed over system calls, so at
/// most seven series per label), and the stalls' CPU and watched time.
fn render_samples(entries: &[Entry], out: &mut String) {
    let stalled: Vec<&Entry> = entries.iter().filter(|entry| entry.samples > 0).collect();
    if stalled.is_empty() {
        return;
    }
    header(
        out,
        "hogwatch_stall_samples_total",
        "counter",
        "Samples of stalled polls by what the thread was doing: cpu, sleep, lock, io, wait, preempted or syscall.",
    );
    for entry in &stalled {
        let label = escape(&entry.label);
        for (cause, count) in super::by_cause(&entry.causes) {
            let _ = writeln!(
                out,
                "hogwatch_stall_samples_total{{label=\"{label}\",cause=\"{cause}\"}} {count}"
            );
        }
    }
    header(
        out,
        "hogwatch_stall_sampled_seconds_total",
        "counter",
        "Time from each stall's first sample to its last: the part of the stalls the watchdog watched.",
    );
    for entry in &stalled {
        let _ = writeln!(
            out,
            "hogwatch_stall_sampled_seconds_total{{label=\"{}\"}} {}",
            escape(&entry.label),
            seconds(entry.stall_wall_us)
        );
    }
    header(
        out,
        "hogwatch_stall_cpu_seconds_total",
        "counter",
        "The stalled threads' CPU time over that same time: near it for CPU work, near zero for waiting.",
    );
    for entry in &stalled {
        let _ = writeln!(
            out,
            "hogwatch_stall_cpu_seconds_total{{label=\"{}\"}} {}",
            escape(&entry.label),
            seconds(entry.stall_cpu_us)
        );
    }
}

/// The watchdog's threshold and capture counters, when the detector has a watchdog.
fn render_watchdog(report: &Report, out: &mut String) {
    let Some(watchdog) = &report.watchdog else {
        return;
    };
    header(
        out,
        "hogwatch_watchdog_threshold_seconds",
        "gauge",
        "Polls running longer than this are stalls: the watchdog captures their stacks.",
    );
    let _ = writeln!(
        out,
        "hogwatch_watchdog_threshold_seconds {}",
        seconds(watchdog.threshold_us)
    );
    header(
        out,
        "hogwatch_watchdog_captures_total",
        "counter",
        "Stack captures of stalled polls, by result: completed (a stack), timeout (the thread did \
         not answer in time: a loaded machine) or failed (the signal taken by another handler, \
         not sent, or a capture stuck or overlapping another).",
    );
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
        let _ = writeln!(
            out,
            "hogwatch_watchdog_captures_total{{result=\"{result}\"}} {count}"
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    entries: &[Entry],
    value: impl Fn(&Entry) -> u64,
) {
    header(out, name, "counter", help);
    for entry in entries {
        let _ = writeln!(
            out,
            "{name}{{label=\"{}\"}} {}",
            escape(&entry.label),
            value(entry)
        );
    }
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
            cause("io", 4, Some("read")),
            cause("cpu", 3, None),
            cause("io", 2, Some("poll")),
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
