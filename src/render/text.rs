//! The aligned text table, worst first, in the spirit of cProfile's output.

use std::fmt::Write;

use crate::report::{LabelKind, Report};

const COLUMNS: [&str; 16] = [
    "label",
    "kind",
    "polls",
    "slow_polls",
    "busy_us",
    "inflicted_us",
    "wall_us",
    "max_poll_us",
    "p50_poll_us",
    "p90_poll_us",
    "p99_poll_us",
    "p999_poll_us",
    "completed",
    "cancelled",
    "panicked",
    "non_2xx",
];

impl Report {
    /// The report as an aligned text table, worst first.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// let text = detector.report().to_text();
    /// assert!(text.contains("label"));
    /// # Ok(()) }
    /// ```
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        render(self, &mut out);
        out
    }
}

/// Writes `report` as a table into `out`: a header line, then one row per entry.
pub(crate) fn render(report: &Report, out: &mut String) {
    let rows: Vec<[String; 16]> = report
        .entries
        .iter()
        .map(|entry| {
            [
                // Control characters would break the table's alignment (and a terminal).
                entry.label.escape_debug().to_string(),
                kind(entry.kind).to_string(),
                entry.polls.to_string(),
                entry.slow_polls.to_string(),
                entry.busy_us.to_string(),
                entry.inflicted_delay_us.to_string(),
                entry.wall_us.to_string(),
                entry.max_poll_us.to_string(),
                entry.p50_poll_us.to_string(),
                entry.p90_poll_us.to_string(),
                entry.p99_poll_us.to_string(),
                entry.p999_poll_us.to_string(),
                entry.completed.to_string(),
                entry.cancelled.to_string(),
                entry.panicked.to_string(),
                if entry.requests > 0 {
                    entry.responses.non_success().to_string()
                } else {
                    "-".to_string()
                },
            ]
        })
        .collect();
    let mut widths = COLUMNS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let _ = writeln!(
        out,
        "hogwatch: threshold {} us, window {} ms, {} labels, {} folded into <other>",
        report.threshold_us,
        report.window_us / 1_000,
        report.entries.len(),
        report.folded_labels
    );
    write_row(out, &COLUMNS.map(str::to_string), &widths);
    for row in &rows {
        write_row(out, row, &widths);
    }
    if let Some(lag) = &report.event_loop_lag {
        let _ = writeln!(
            out,
            "event-loop lag: min {} us, mean {} us, p50 {} us, p99 {} us, max {} us ({} samples every {} us)",
            lag.min_us, lag.mean_us, lag.p50_us, lag.p99_us, lag.max_us, lag.samples, lag.resolution_us
        );
        // The labels' inflicted_us and this unattributed part add up to the delay.
        let _ = writeln!(
            out,
            "event-loop delay: {} us late in all, {} us of it unattributed (no label held a worker)",
            lag.delay_us, lag.unattributed_delay_us
        );
    }
    if let Some(runtime) = &report.runtime {
        let _ = write!(
            out,
            "runtime: {} workers, busy {:.1}%, {} live tasks, global queue {}, {} parks",
            runtime.workers,
            runtime.busy_ratio * 100.0,
            runtime.live_tasks,
            runtime.global_queue_depth,
            runtime.total_park_count,
        );
        if let Some(mean_poll_us) = runtime.mean_poll_us {
            let _ = write!(out, ", mean poll {mean_poll_us} us");
        }
        if let Some(depth) = runtime.total_local_queue_depth {
            let _ = write!(out, ", local queues {depth}");
        }
        let _ = writeln!(out, " (over {} ms)", runtime.interval_us / 1_000);
    }
    write_stalls(report, out);
}

/// Per label the watchdog caught stalling: a line with its most frequent culprits, its causes
/// (with the CPU share and a fix hint for each) and its function table, cProfile-style.
fn write_stalls(report: &Report, out: &mut String) {
    for entry in report.entries.iter().filter(|entry| entry.stalls > 0) {
        let _ = write!(
            out,
            "stalls {}: {}",
            entry.label.escape_debug(),
            entry.stalls
        );
        for (i, culprit) in entry.top_culprits.iter().take(3).enumerate() {
            let separator = if i == 0 { ", in " } else { ", " };
            let _ = write!(out, "{separator}{} ({})", culprit.culprit, culprit.count);
            if let Some(caller) = &culprit.called_from {
                let _ = write!(out, " called from {caller}");
            }
        }
        out.push('\n');
        write_causes(entry, out);
        write_functions(entry, out);
    }
}

/// The causes of a label's samples, the CPU share of its stalls, and a fix hint per cause.
fn write_causes(entry: &crate::Entry, out: &mut String) {
    if entry.samples == 0 {
        return;
    }
    let _ = write!(out, "  {} samples", entry.samples);
    if entry.stall_wall_us > 0 {
        let _ = write!(
            out,
            ", on a CPU {:.0}% of {:.1} ms",
            entry.stall_cpu_us as f64 * 100.0 / entry.stall_wall_us as f64,
            entry.stall_wall_us as f64 / 1e3
        );
    }
    out.push_str("; causes:");
    for (i, cause) in entry.causes.iter().enumerate() {
        let separator = if i == 0 { " " } else { ", " };
        let _ = write!(out, "{separator}{} {}", cause.cause, cause.count);
        if let Some(syscall) = &cause.syscall {
            let _ = write!(out, " ({})", syscall.escape_debug());
        }
    }
    out.push('\n');
    for (cause, _) in super::by_cause(&entry.causes) {
        if let Some(hint) = cause.hint() {
            let _ = writeln!(out, "  fix ({cause}): {hint}");
        }
    }
}

/// The label's sampled profile: self and total samples per function, by self samples.
fn write_functions(entry: &crate::Entry, out: &mut String) {
    if entry.functions.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  {:>6}  {:>6}  {:>6}  {:>6}  function",
        "self%", "total%", "self", "total"
    );
    for function in &entry.functions {
        let _ = writeln!(
            out,
            "  {:>6.1}  {:>6.1}  {:>6}  {:>6}  {}",
            function.self_percent,
            function.total_percent,
            function.self_samples,
            function.total_samples,
            function.function.escape_debug()
        );
    }
}

/// The kind as it appears in the JSON.
pub(crate) fn kind(kind: LabelKind) -> &'static str {
    match kind {
        LabelKind::Watch => "watch",
        LabelKind::Route => "route",
        LabelKind::Task => "task",
        LabelKind::Other => "other",
    }
}

fn write_row(out: &mut String, cells: &[String; 16], widths: &[usize; 16]) {
    for (column, (cell, width)) in cells.iter().zip(widths).enumerate() {
        let separator = if column == 0 { "" } else { "  " };
        if column == 0 {
            let _ = write!(out, "{separator}{cell:<width$}");
        } else {
            let _ = write!(out, "{separator}{cell:>width$}");
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use crate::Detector;

    #[test]
    fn columns_are_aligned_and_labels_escaped() {
        let detector = Detector::builder().build().unwrap();
        futures_lite_block_on(detector.watch("a\nb", async {}));
        futures_lite_block_on(detector.watch("long-label-name", async {}));
        let text = detector.report().to_text();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines.iter().all(|line| line.len() == lines[0].len()),
            "{text}"
        );
        assert!(text.contains("a\\nb"), "{text}");
    }

    #[test]
    fn stalled_labels_show_causes_hints_and_the_function_table() {
        let detector = Detector::builder().build().unwrap();
        futures_lite_block_on(detector.watch("GET /slow", async {}));
        let mut report = detector.report();
        let entry = &mut report.entries[0];
        entry.stalls = 1;
        entry.samples = 10;
        entry.stall_wall_us = 500_000;
        entry.stall_cpu_us = 450_000;
        entry.causes = vec![
            crate::CauseCount {
                cause: crate::StallCause::Cpu,
                count: 9,
                syscall: None,
            },
            crate::CauseCount {
                cause: crate::StallCause::Sleep,
                count: 1,
                syscall: Some("clock_nanosleep".to_string()),
            },
        ];
        entry.functions = vec![crate::FunctionSamples {
            function: "app::encode".to_string(),
            self_samples: 9,
            total_samples: 10,
            self_percent: 90.0,
            total_percent: 100.0,
        }];
        let text = report.to_text();
        assert!(
            text.contains("  10 samples, on a CPU 90% of 500.0 ms; causes: cpu 9, sleep 1 (clock_nanosleep)\n"),
            "{text}"
        );
        assert!(text.contains("  fix (cpu): send the cached bytes as they are, or move the work to spawn_blocking / a thread pool\n"), "{text}");
        assert!(
            text.contains("  fix (sleep): use tokio::time::sleep\n"),
            "{text}"
        );
        assert!(
            text.contains("    90.0   100.0       9      10  app::encode\n"),
            "{text}"
        );
    }

    #[test]
    fn inflicted_delay_is_a_column_after_busy_time_and_the_lag_line_has_the_delay() {
        let detector = Detector::builder().build().unwrap();
        // A label without spaces, so the table splits on whitespace.
        futures_lite_block_on(detector.watch("slow", async {}));
        let mut report = detector.report();
        report.entries[0].inflicted_delay_us = 123_456;
        report.event_loop_lag = Some(crate::EventLoopLag {
            resolution_us: 10_000,
            samples: 100,
            delay_us: 130_000,
            unattributed_delay_us: 6_544,
            ..Default::default()
        });
        let text = report.to_text();
        let mut lines = text.lines().skip(1);
        let columns: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let at = columns.iter().position(|&name| name == "inflicted_us");
        assert_eq!(at, Some(5), "{text}");
        assert_eq!(columns[4], "busy_us", "{text}");
        assert_eq!(row[5], "123456", "{text}");
        assert!(
            text.contains(
                "event-loop delay: 130000 us late in all, 6544 us of it unattributed (no label held a worker)\n"
            ),
            "{text}"
        );
    }

    fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }
}
