//! Aligned plain-text tables for the examples' side-by-side results.
//!
//! ```ignore
//! let mut table = Table::new(["variant", "req/s", "p99"]);
//! table.row(["passthrough", "9120", &duration(Duration::from_micros(2400))]);
//! print!("{table}");
//! ```
//! The first column is left-aligned (names), the others right-aligned (figures).

// Each example compiles its own copy of this module and may not use all of it.
#![allow(dead_code)]

use std::fmt;
use std::time::Duration;

/// A table of text cells with a header row.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub fn new<I: IntoIterator<Item = S>, S: ToString>(header: I) -> Self {
        Table {
            header: header.into_iter().map(|cell| cell.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells print empty, extra cells widen the table.
    pub fn row<I: IntoIterator<Item = S>, S: ToString>(&mut self, cells: I) -> &mut Self {
        self.rows
            .push(cells.into_iter().map(|cell| cell.to_string()).collect());
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = || std::iter::once(&self.header).chain(&self.rows);
        let columns = lines().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                lines()
                    .filter_map(|line| line.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let write_line = |f: &mut fmt::Formatter<'_>, line: &[String]| -> fmt::Result {
            for (column, width) in widths.iter().enumerate() {
                let cell = line.get(column).map_or("", String::as_str);
                match column {
                    0 => write!(f, "{cell:<width$}")?,
                    _ => write!(f, "  {cell:>width$}")?,
                }
            }
            writeln!(f)
        };
        write_line(f, &self.header)?;
        let rule: usize = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
        writeln!(f, "{}", "-".repeat(rule))?;
        for row in &self.rows {
            write_line(f, row)?;
        }
        Ok(())
    }
}

/// A duration for a table cell with three significant figures: `850 µs`, `12.3 ms`, `1.20 s`.
pub fn duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    let (value, unit) = match micros {
        m if m < 1_000.0 => (m, "µs"),
        m if m < 1_000_000.0 => (m / 1e3, "ms"),
        m => (m / 1e6, "s"),
    };
    match value {
        v if v >= 100.0 => format!("{v:.0} {unit}"),
        v if v >= 10.0 => format!("{v:.1} {unit}"),
        v => format!("{v:.2} {unit}"),
    }
}

/// The headings of [`verdict`]'s cells.
pub const VERDICT_HEADER: [&str; 4] = ["slow polls", "longest poll", "p99 poll", "hogwatch"];

/// hogwatch's verdict on one route, as table cells: slow polls out of all polls, the longest
/// poll, the 99th-percentile poll, and `BLOCKS` if any poll ran over the threshold (else `ok`).
/// A route with no entry yet (no request reached it) prints `-`.
pub fn verdict(entry: Option<&hogwatch::Entry>) -> [String; 4] {
    match entry {
        Some(entry) => [
            format!("{}/{}", entry.slow_polls, entry.polls),
            duration(Duration::from_micros(entry.max_poll_us)),
            duration(Duration::from_micros(entry.p99_poll_us)),
            if entry.slow_polls > 0 { "BLOCKS" } else { "ok" }.to_owned(),
        ],
        None => [
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
        ],
    }
}

/// The headings of [`diagnosis`]'s cells.
pub const DIAGNOSIS_HEADER: [&str; 2] = ["culprit", "cause"];

/// The watchdog's diagnosis of one route's stalls, as table cells: the culprit it named most
/// often, and the most frequent cause of its samples with that cause's most frequent system
/// call (`io (recvfrom)`). A route that never stalled prints `-` twice.
pub fn diagnosis(entry: Option<&hogwatch::Entry>) -> [String; 2] {
    let Some(entry) = entry.filter(|entry| entry.stalls > 0) else {
        return ["-".to_owned(), "-".to_owned()];
    };
    let culprit = entry
        .top_culprits
        .first()
        .map_or("?".to_owned(), |culprit| short(&culprit.culprit, 56));
    let mut causes: Vec<(hogwatch::StallCause, u64)> = Vec::new();
    for cause in &entry.causes {
        match causes.iter_mut().find(|(name, _)| *name == cause.cause) {
            Some((_, count)) => *count += cause.count,
            None => causes.push((cause.cause, cause.count)),
        }
    }
    causes.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let cause = match causes.first() {
        None => "?".to_owned(),
        Some((cause, _)) => {
            // `entry.causes` is most frequent first: the first of this cause is its top call.
            match entry
                .causes
                .iter()
                .find(|counted| counted.cause == *cause)
                .and_then(|counted| counted.syscall.as_deref())
            {
                Some(syscall) => format!("{cause} ({syscall})"),
                None => cause.to_string(),
            }
        }
    };
    [culprit, cause]
}

/// `name` cut to its last `max` characters, with `…` in front if it was cut.
fn short(name: &str, max: usize) -> String {
    let chars = name.chars().count();
    if chars <= max {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(chars - (max - 1)).collect();
    format!("…{tail}")
}

/// The heading of [`inflicted`]'s cell.
pub const INFLICTED_HEADER: &str = "inflicted";

/// The delay one route's slow polls and stalls made the rest of the runtime suffer, as the lag
/// probe measured it (`Entry::inflicted_delay_us`): what the canary measures from outside, seen
/// from inside without a canary. A total over the run for one waiting task, not a percentile. A
/// route with no entry yet prints `-`; without the lag probe it is 0.
pub fn inflicted(entry: Option<&hogwatch::Entry>) -> String {
    entry.map_or("-".to_owned(), |entry| {
        duration(Duration::from_micros(entry.inflicted_delay_us))
    })
}

/// The lag probe's delay over `report`'s window, in one line: in all, and the part nobody is
/// charged with; then what `victim` (the canary's route, which does nothing) inflicted, which
/// should be next to nothing. Empty without the lag probe.
pub fn delay_summary(report: &hogwatch::Report, victim: &str) -> String {
    let Some(lag) = &report.event_loop_lag else {
        return String::new();
    };
    let micros = |us| duration(Duration::from_micros(us));
    format!(
        "lag probe: {} of delay in all, {} of it unattributed (no slow poll or stall meanwhile); \
         {victim}, the canary's route, inflicted {}",
        micros(lag.delay_us),
        micros(lag.unattributed_delay_us),
        inflicted(report.entry(victim)),
    )
}

/// Headings of the columns [`load_cells`] fills, after a variant's name.
pub const LOAD_HEADER: [&str; 5] = ["req/s", "p50", "p99", "non-2xx", "canary p99"];

/// One variant's load columns: its throughput and latency, its non-2xx answers (and errors, if
/// any), and the canary's p99 while it ran.
pub fn load_cells(load: &super::load::LoadResult, canary: &super::load::LoadResult) -> [String; 5] {
    [
        format!("{:.0}", load.requests_per_sec),
        duration(load.p50()),
        duration(load.p99()),
        match load.errors {
            0 => load.non_2xx.to_string(),
            errors => format!("{} (+{errors} errors)", load.non_2xx),
        },
        duration(canary.p99()),
    ]
}
