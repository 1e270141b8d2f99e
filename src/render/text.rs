//! The aligned text table, worst first, in the spirit of cProfile's output.

use std::fmt::Write;

use crate::report::{LabelKind, Report};

const COLUMNS: [&str; 15] = [
    "label",
    "kind",
    "polls",
    "slow_polls",
    "busy_us",
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
    let rows: Vec<[String; 15]> = report
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

/// One line per label the watchdog caught stalling, with its most frequent culprits.
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
        }
        out.push('\n');
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

fn write_row(out: &mut String, cells: &[String; 15], widths: &[usize; 15]) {
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

    fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }
}
