//! One self-contained HTML page: a summary line, then one row per label, worst first.
//!
//! The page carries its own styles, its SVG histograms and a small refresh script; it loads
//! nothing from anywhere (it must work on an air-gapped server). Every label is escaped where it
//! lands (text, attribute or SVG `<title>`), and no label ever reaches the script.
//!
//! Hooks for whoever serves or extends the page:
//! - the data lives in `<main id="hw-main">`; the refresh script fetches
//!   `location.pathname + "?format=html"` (with `Accept: text/html`) and swaps that element's
//!   children, so the endpoint must answer that URL with this same page;
//! - each label is a `<details class="entry">` whose `data-key` attribute is the (escaped) label;
//! - `render_stalls` draws the watchdog's stall count, culprits and stacks (innermost frame
//!   first) for each label, or says why there are none; the flame graph link appears only when
//!   the report has a watchdog.

use std::fmt::Write;

use crate::recorder::PollHistogram;
use crate::report::{Entry, Report};
use crate::OTHER_LABEL;

/// Writes `report` into `out` as a complete HTML document.
pub(crate) fn render(report: &Report, out: &mut String) {
    let hogs = report.hogs().count();
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n",
    );
    let _ = writeln!(out, "<title>hogwatch: {hogs} hogging</title>");
    out.push_str("<style>");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<header>\n<h1>hogwatch</h1>\n");
    out.push_str(
        "<div class=\"controls\"><label><input type=\"checkbox\" id=\"hw-refresh\" \
         autocomplete=\"off\"> refresh every 2 s</label> \
         <span id=\"hw-status\" class=\"muted\" aria-live=\"polite\"></span></div>\n</header>\n",
    );
    out.push_str("<main id=\"hw-main\">\n");
    render_summary(report, hogs, out);
    render_table(report, out);
    out.push_str("</main>\n<script>");
    out.push_str(SCRIPT);
    out.push_str("</script>\n</body>\n</html>\n");
}

/// The line on top: how many labels hog, the worst one, and the window's settings.
fn render_summary(report: &Report, hogs: usize, out: &mut String) {
    let threshold = duration(report.threshold_us);
    out.push_str("<p class=\"summary\">");
    match report.hogs().next() {
        Some(worst) => {
            let _ = write!(
                out,
                "<strong class=\"hot\">{hogs}</strong> of {} {} hogging (a poll over {threshold}). \
                 Worst: <code>",
                report.entries.len(),
                plural(report.entries.len() as u64, "label", "labels"),
            );
            escape_label(&worst.label, out);
            let _ = write!(
                out,
                "</code>, {} slow {} holding a worker for {} in all, the longest {}.",
                worst.slow_polls,
                plural(worst.slow_polls, "poll", "polls"),
                duration(worst.slow_busy_us),
                duration(worst.max_poll_us),
            );
        }
        None if report.entries.is_empty() => out.push_str("Nothing recorded in this window yet."),
        None => {
            let _ = write!(out, "No hogs: no poll took longer than {threshold}.");
        }
    }
    render_stall_summary(report, out);
    if let Some(lag) = &report.event_loop_lag {
        let class = if lag.p99_us > report.threshold_us {
            " class=\"hot\""
        } else {
            ""
        };
        let _ = write!(
            out,
            " Event-loop lag p99 <strong{class}>{}</strong> (max {}, {} {}).",
            duration(lag.p99_us),
            duration(lag.max_us),
            lag.samples,
            plural(lag.samples, "sample", "samples"),
        );
    }
    out.push_str("</p>\n<p class=\"meta muted\">");
    let _ = write!(
        out,
        "threshold {threshold} · window {} · {} {}",
        duration(report.window_us),
        report.entries.len(),
        plural(report.entries.len() as u64, "label", "labels"),
    );
    if report.folded_labels > 0 {
        let _ = write!(out, " · {} futures counted under ", report.folded_labels);
        escape(OTHER_LABEL, out);
        out.push_str(" (too many labels)");
    }
    if let Some(watchdog) = &report.watchdog {
        let _ = write!(
            out,
            " · watchdog {}: {} {} captured",
            duration(watchdog.threshold_us),
            watchdog.captures_completed,
            plural(watchdog.captures_completed, "stack", "stacks"),
        );
        if watchdog.captures_failed > 0 {
            let _ = write!(out, ", {} failed", watchdog.captures_failed);
        }
    }
    if let Some(runtime) = &report.runtime {
        let _ = write!(
            out,
            " · runtime: {} {}, busy {}, global queue {}",
            runtime.workers,
            plural(runtime.workers, "worker", "workers"),
            percent(runtime.busy_ratio),
            runtime.global_queue_depth,
        );
    }
    out.push_str("</p>\n");
}

/// The stalls in the summary line, when the watchdog caught any: how many, and the culprit
/// named most often over all labels.
fn render_stall_summary(report: &Report, out: &mut String) {
    let stalls = report
        .entries
        .iter()
        .fold(0u64, |sum, entry| sum.saturating_add(entry.stalls));
    if stalls == 0 {
        return;
    }
    let labels = report
        .entries
        .iter()
        .filter(|entry| entry.stalls > 0)
        .count();
    let _ = write!(
        out,
        " <strong class=\"hot\">{stalls}</strong> {} caught in {labels} {}",
        plural(stalls, "stall", "stalls"),
        plural(labels as u64, "label", "labels"),
    );
    let mut culprits: Vec<(&str, u64)> = Vec::new();
    for culprit in report.entries.iter().flat_map(|entry| &entry.top_culprits) {
        match culprits
            .iter_mut()
            .find(|(name, _)| *name == culprit.culprit)
        {
            Some((_, count)) => *count = count.saturating_add(culprit.count),
            None => culprits.push((&culprit.culprit, culprit.count)),
        }
    }
    // The most captures, then the first seen (the worst label's) on a tie.
    let mut top: Option<(&str, u64)> = None;
    for (name, count) in culprits {
        if top.is_none_or(|(_, best)| count > best) {
            top = Some((name, count));
        }
    }
    match top {
        Some((culprit, count)) => {
            out.push_str("; top culprit <code>");
            self::name(culprit, out);
            let _ = write!(
                out,
                "</code> ({count} {}).",
                plural(count, "capture", "captures")
            );
        }
        None => out.push('.'),
    }
}

/// Column headings; the cells of a row repeat them as `data-k` for the narrow layout.
const COLUMNS: [&str; 7] = [
    "requests / polls",
    "slow polls",
    "longest poll",
    "p99 poll",
    "busy / wall",
    "non-2xx",
    "poll durations",
];

fn render_table(report: &Report, out: &mut String) {
    out.push_str(
        "<div class=\"scroll\"><div class=\"table\">\n<div class=\"row head\"><span>label</span>",
    );
    for column in COLUMNS {
        let class = if column == "poll durations" {
            ""
        } else {
            " class=\"num\""
        };
        let _ = write!(out, "<span{class}>{column}</span>");
    }
    out.push_str("</div>\n");
    if report.entries.is_empty() {
        out.push_str("<p class=\"empty muted\">No watched future has been polled yet.</p>\n");
    }
    for (rank, entry) in report.entries.iter().enumerate() {
        render_entry(report, rank + 1, entry, out);
    }
    out.push_str("</div></div>\n");
}

fn render_entry(report: &Report, rank: usize, entry: &Entry, out: &mut String) {
    let hog = entry.slow_polls > 0;
    out.push_str(if hog {
        "<details class=\"entry hog\" data-key=\""
    } else {
        "<details class=\"entry\" data-key=\""
    });
    escape(&entry.label, out);
    let _ = write!(
        out,
        "\">\n<summary class=\"row\"><span class=\"label\"><span class=\"rank\">{rank}</span>\
         <span class=\"name\">"
    );
    escape_label(&entry.label, out);
    out.push_str("</span></span>");

    let requests = if entry.requests > 0 {
        entry.requests.to_string()
    } else {
        "–".to_string()
    };
    cell(
        COLUMNS[0],
        "",
        None,
        &format!("{requests} / {}", entry.polls),
        out,
    );
    cell(
        COLUMNS[1],
        if hog { " hot" } else { "" },
        None,
        &entry.slow_polls.to_string(),
        out,
    );
    let long = if entry.max_poll_us > report.threshold_us {
        " hot"
    } else {
        ""
    };
    cell(
        COLUMNS[2],
        long,
        Some(entry.max_poll_us),
        &poll_duration(entry, entry.max_poll_us),
        out,
    );
    let p99 = if entry.p99_poll_us > report.threshold_us {
        " hot"
    } else {
        ""
    };
    cell(
        COLUMNS[3],
        p99,
        Some(entry.p99_poll_us),
        &poll_duration(entry, entry.p99_poll_us),
        out,
    );
    let busy = match busy_share(entry.busy_us, entry.wall_us) {
        Some(share) => percent(share),
        None => "–".to_string(),
    };
    cell(COLUMNS[4], "", None, &busy, out);
    let (non_success, class) = if entry.requests > 0 {
        let count = entry.responses.non_success();
        (count.to_string(), if count > 0 { " hot" } else { "" })
    } else {
        ("–".to_string(), "")
    };
    cell(COLUMNS[5], class, None, &non_success, out);
    let _ = write!(out, "<span class=\"chart\" data-k=\"{}\">", COLUMNS[6]);
    render_histogram(&entry.label, &entry.histogram, report.threshold_us, out);
    out.push_str("</span></summary>\n");

    render_details(report, entry, out);
    out.push_str("</details>\n");
}

/// A right-aligned number cell; `exact_us` adds the exact value as a tooltip.
fn cell(name: &str, class: &str, exact_us: Option<u64>, text: &str, out: &mut String) {
    let _ = write!(out, "<span class=\"num{class}\" data-k=\"{name}\"");
    if let Some(us) = exact_us {
        let _ = write!(out, " title=\"{us} µs\"");
    }
    let _ = write!(out, ">{text}</span>");
}

/// What a label opens to: the full numbers, the watchdog's stacks and the flame graph link.
fn render_details(report: &Report, entry: &Entry, out: &mut String) {
    out.push_str("<div class=\"more\">\n<dl>");
    let durations = [
        ("p50 poll", entry.p50_poll_us),
        ("p90 poll", entry.p90_poll_us),
        ("p99 poll", entry.p99_poll_us),
        ("p99.9 poll", entry.p999_poll_us),
        ("longest poll", entry.max_poll_us),
        ("busy", entry.busy_us),
        ("busy in slow polls", entry.slow_busy_us),
        ("wall (ended futures)", entry.wall_us),
    ];
    for (name, us) in durations {
        let _ = write!(
            out,
            "<div><dt>{name}</dt><dd title=\"{us} µs\">{}</dd></div>",
            duration(us)
        );
    }
    let counts = [
        ("polls", entry.polls),
        ("completed", entry.completed),
        ("cancelled", entry.cancelled),
        ("panicked", entry.panicked),
    ];
    for (name, count) in counts {
        let _ = write!(out, "<div><dt>{name}</dt><dd>{count}</dd></div>");
    }
    if entry.requests > 0 {
        let responses = entry.responses;
        let classes = [
            ("requests", entry.requests),
            ("1xx", responses.informational),
            ("2xx", responses.success),
            ("3xx", responses.redirection),
            ("4xx", responses.client_error),
            ("5xx", responses.server_error),
        ];
        for (name, count) in classes {
            let _ = write!(out, "<div><dt>{name}</dt><dd>{count}</dd></div>");
        }
    }
    out.push_str("</dl>\n");
    render_stalls(report, entry, out);
    if report.watchdog.is_some() {
        out.push_str(
            "<p class=\"links\"><a href=\"hogs/flamegraph.svg\">flame graph of the stall stacks \
             (all labels)</a></p>\n",
        );
    }
    out.push_str("</div>\n");
}

/// Stacks shown per label; the report keeps a few more (see the JSON and the flame graph).
const MAX_STACKS: usize = 5;
/// Culprits shown per label.
const MAX_CULPRITS: usize = 5;
/// Frames shown per stack: the innermost ones, then the outermost, with a gap between.
const INNER_FRAMES: usize = 10;
const OUTER_FRAMES: usize = 2;
/// Characters shown of one frame or culprit name; the whole name is in its tooltip.
const MAX_NAME_CHARS: usize = 160;

/// The watchdog's view of `entry`: its stall count, top culprits and top stacks, or why there
/// are none.
fn render_stalls(report: &Report, entry: &Entry, out: &mut String) {
    out.push_str("<section class=\"stalls\">\n<h3>Stalls</h3>\n");
    let Some(watchdog) = &report.watchdog else {
        out.push_str(
            "<p class=\"muted\">No stall captured: the watchdog is off. Enable it with \
             <code>Builder::watchdog</code>",
        );
        if !cfg!(feature = "watchdog") {
            out.push_str(" (feature <code>watchdog</code>)");
        }
        out.push_str(
            " to catch polls while they block, with their stacks and culprits.</p>\n</section>\n",
        );
        return;
    };
    let threshold = duration(watchdog.threshold_us);
    if entry.stalls == 0 {
        let _ = write!(
            out,
            "<p class=\"muted\">No stall caught: no poll of this label ran past the watchdog's \
             {threshold}.</p>\n</section>\n"
        );
        return;
    }
    let _ = writeln!(
        out,
        "<p><strong class=\"hot\">{}</strong> {} caught (a poll still running after {threshold}).</p>",
        entry.stalls,
        plural(entry.stalls, "stall", "stalls"),
    );
    if entry.top_stacks.is_empty() && entry.top_culprits.is_empty() {
        out.push_str("<p class=\"muted\">No stack was captured: ");
        out.push_str(if watchdog.stack_mode == "unsupported" {
            "no stack on this platform."
        } else {
            "the blocked thread did not answer in time."
        });
        out.push_str("</p>\n</section>\n");
        return;
    }
    if !entry.top_culprits.is_empty() {
        out.push_str("<h4>Top culprits</h4>\n<ol class=\"culprits\">");
        for culprit in entry.top_culprits.iter().take(MAX_CULPRITS) {
            out.push_str("<li><code>");
            name(&culprit.culprit, out);
            let _ = write!(
                out,
                "</code> <span class=\"muted\">× {}</span></li>",
                culprit.count
            );
        }
        out.push_str("</ol>\n");
    }
    if !entry.top_stacks.is_empty() {
        out.push_str(
            "<h4>Top stacks <span class=\"muted\">(innermost frame first, where the poll was \
             stuck; outermost last, the watched poll)</span></h4>\n<ol class=\"stacks\">",
        );
        for stack in entry.top_stacks.iter().take(MAX_STACKS) {
            let _ = write!(
                out,
                "<li><span class=\"muted\">{} {}</span>",
                stack.count,
                plural(stack.count, "capture", "captures"),
            );
            render_stack(entry, &stack.stack, out);
            out.push_str("</li>");
        }
        out.push_str("</ol>\n");
        let more = entry.top_stacks.len().saturating_sub(MAX_STACKS);
        if more > 0 {
            let _ = writeln!(
                out,
                "<p class=\"muted\">{more} more {} in the JSON report and the flame graph.</p>",
                plural(more as u64, "stack", "stacks"),
            );
        }
    }
    out.push_str("</section>\n");
}

/// One folded stack (`outer;...;inner`) as a list of frames, innermost first; a long stack keeps
/// its innermost and outermost frames and says how many it leaves out. Culprits are marked.
fn render_stack(entry: &Entry, stack: &str, out: &mut String) {
    if stack.is_empty() {
        out.push_str(
            "<p class=\"muted\">No frame inside the watched poll: the poll itself was running \
             (its callees were inlined).</p>",
        );
        return;
    }
    let frames: Vec<&str> = stack.split(';').rev().collect();
    out.push_str("<ol class=\"frames\">");
    let gap = frames.len() > INNER_FRAMES + OUTER_FRAMES + 1;
    for (depth, frame) in frames.iter().enumerate() {
        if gap && depth == INNER_FRAMES {
            let hidden = frames.len() - INNER_FRAMES - OUTER_FRAMES;
            let _ = write!(out, "<li class=\"gap muted\">… {hidden} frames …</li>");
        }
        if gap && (INNER_FRAMES..frames.len() - OUTER_FRAMES).contains(&depth) {
            continue;
        }
        let culprit = entry
            .top_culprits
            .iter()
            .any(|culprit| culprit.culprit == *frame);
        out.push_str(if culprit {
            "<li class=\"culprit\"><code>"
        } else {
            "<li><code>"
        });
        name(frame, out);
        out.push_str("</code></li>");
    }
    out.push_str("</ol>");
}

/// A frame or culprit name, escaped like a label; a very long one is cut short, with the whole
/// name in a tooltip.
fn name(text: &str, out: &mut String) {
    match text.char_indices().nth(MAX_NAME_CHARS) {
        None => escape_label(text, out),
        Some((cut, _)) => {
            out.push_str("<span title=\"");
            escape_label(text, out);
            out.push_str("\">");
            escape_label(&text[..cut], out);
            out.push_str("…</span>");
        }
    }
}

/// Histogram buckets: bucket `i` holds polls of `2^i` to `2^(i+1)` µs; the last one runs on to
/// 60 s, the largest value a poll histogram records.
pub(crate) const BUCKETS: usize = 26;
/// Width of one bucket in the SVG, in pixels.
const BAR_WIDTH: u32 = 5;
const CHART_WIDTH: u32 = BUCKETS as u32 * BAR_WIDTH;
const CHART_HEIGHT: u32 = 28;

/// One non-empty bucket of the histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bar {
    /// Index of the bucket, 0 .. `BUCKETS`.
    pub(crate) bucket: usize,
    /// Polls in it.
    pub(crate) count: u64,
}

/// The bucket a duration of `us` microseconds falls in.
pub(crate) fn bucket_of(us: u64) -> usize {
    let log2 = 63 - us.max(1).leading_zeros() as usize;
    log2.min(BUCKETS - 1)
}

/// The smallest duration in `bucket`, and the smallest in the next one (the last bucket ends at 60 s).
fn bucket_range(bucket: usize) -> (u64, u64) {
    let low = 1u64 << bucket;
    let high = if bucket + 1 >= BUCKETS {
        60_000_000
    } else {
        low << 1
    };
    (low, high)
}

/// The non-empty log2 buckets of `histogram`, shortest first; their counts sum to its `len()`.
pub(crate) fn bars(histogram: &PollHistogram) -> Vec<Bar> {
    let mut counts = [0u64; BUCKETS];
    for bucket in histogram.buckets() {
        // The histogram's buckets never straddle a power of two, so every poll of a bucket
        // lands in the same bar.
        let count = &mut counts[bucket_of(bucket.low_us)];
        *count = count.saturating_add(bucket.count);
    }
    counts
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(bucket, count)| Bar {
            bucket,
            count: *count,
        })
        .collect()
}

/// Where the threshold line goes, in pixels from the left: `log2(threshold)` bucket widths.
fn threshold_x(threshold_us: u64) -> f64 {
    let x = (threshold_us.max(1) as f64).log2() * f64::from(BAR_WIDTH);
    x.min(f64::from(CHART_WIDTH))
}

/// The inline SVG histogram: bars on log-scaled durations (and counts), the threshold as a line.
fn render_histogram(label: &str, histogram: &PollHistogram, threshold_us: u64, out: &mut String) {
    let _ = write!(
        out,
        "<svg class=\"hist\" width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" \
         viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\" aria-label=\"poll durations of "
    );
    escape(label, out);
    out.push_str("\"><title>Poll durations of ");
    escape_label(label, out);
    let _ = write!(
        out,
        ", 1 µs to 60 s on a log scale; the line is the threshold, {}</title>",
        duration(threshold_us)
    );
    let bars = bars(histogram);
    let tallest = bars.iter().map(|bar| bar.count).max().unwrap_or(0);
    let threshold_bucket = bucket_of(threshold_us);
    let usable = f64::from(CHART_HEIGHT - 1);
    for bar in &bars {
        // Log-scaled heights, at least 2 px: one slow poll among millions must still show.
        let scale = ((bar.count as f64).ln_1p() / (tallest as f64).ln_1p()).clamp(0.0, 1.0);
        let height = (2.0 + (usable - 2.0) * scale).min(usable);
        let class = match bar.bucket.cmp(&threshold_bucket) {
            std::cmp::Ordering::Less => "fast",
            std::cmp::Ordering::Equal => "near",
            std::cmp::Ordering::Greater => "slow",
        };
        let (low, high) = bucket_range(bar.bucket);
        let _ = write!(
            out,
            "<rect class=\"{class}\" x=\"{}\" y=\"{:.1}\" width=\"{}\" height=\"{height:.1}\">\
             <title>{} to {}: {} {}</title></rect>",
            bar.bucket as u32 * BAR_WIDTH,
            usable - height,
            BAR_WIDTH - 1,
            duration(low),
            duration(high),
            bar.count,
            plural(bar.count, "poll", "polls"),
        );
    }
    // Faint ticks at 1 ms and 1 s.
    for tick_us in [1_000, 1_000_000] {
        let _ = write!(
            out,
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{CHART_HEIGHT}\"/>",
            CHART_HEIGHT - 4,
            x = threshold_x(tick_us),
        );
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"0\" y1=\"{CHART_HEIGHT}\" x2=\"{CHART_WIDTH}\" y2=\"{CHART_HEIGHT}\"/>\
         <line class=\"thr\" x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{CHART_HEIGHT}\"/></svg>",
        x = threshold_x(threshold_us),
    );
}

/// Busy time as a share of wall time, `None` when no future ended (no wall time).
fn busy_share(busy_us: u64, wall_us: u64) -> Option<f64> {
    (wall_us > 0).then(|| busy_us as f64 / wall_us as f64)
}

fn percent(share: f64) -> String {
    let percent = share * 100.0;
    if percent < 10.0 {
        format!("{percent:.1} %")
    } else {
        format!("{percent:.0} %")
    }
}

/// A duration in µs, ms or s, to about three significant figures.
fn duration(us: u64) -> String {
    fn scaled(value: f64, unit: &str) -> String {
        if value < 10.0 {
            format!("{value:.2} {unit}")
        } else if value < 100.0 {
            format!("{value:.1} {unit}")
        } else {
            format!("{value:.0} {unit}")
        }
    }
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        scaled(us as f64 / 1e3, "ms")
    } else {
        scaled(us as f64 / 1e6, "s")
    }
}

/// A poll duration, or a dash for a label that was never polled.
fn poll_duration(entry: &Entry, us: u64) -> String {
    if entry.polls == 0 {
        "–".to_string()
    } else {
        duration(us)
    }
}

fn plural<'a>(count: u64, one: &'a str, many: &'a str) -> &'a str {
    if count == 1 {
        one
    } else {
        many
    }
}

/// Escapes `text` for HTML text and for quoted attribute values (both `"` and `'`).
pub(crate) fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

/// Escapes a label for display: as [`escape`], and control and bidirectional-override
/// characters shown as Rust escapes (`\n`, `\u{202e}`), so a label cannot hide or disguise itself.
pub(crate) fn escape_label(label: &str, out: &mut String) {
    let mut buffer = [0u8; 4];
    for c in label.chars() {
        let invisible = c.is_control()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if invisible {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            escape(c.encode_utf8(&mut buffer), out);
        }
    }
}

const STYLE: &str = r#"
:root{color-scheme:light dark;--bg:#fff;--fg:#1c2128;--muted:#59636e;--line:#d1d9e0;--alt:#f6f8fa;--bar:#8c959f;--near:#bf8700;--hot:#cf222e;--link:#0969da}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9198a1;--line:#30363d;--alt:#161b22;--bar:#7d8590;--near:#d29922;--hot:#ff7b72;--link:#4493f8}}
*{box-sizing:border-box}
body{margin:0;padding:1rem;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:baseline;justify-content:space-between}
h1{font-size:1.25rem;margin:0}
h3{font-size:1rem;margin:.75rem 0 .25rem}
a{color:var(--link)}
code,.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.muted{color:var(--muted)}
.hot{color:var(--hot);font-weight:600}
.summary{font-size:1.05rem;margin:.75rem 0 .25rem}
.meta{margin:0 0 .75rem}
.scroll{overflow-x:auto}
.table{min-width:60rem}
.row{display:grid;grid-template-columns:minmax(14rem,1fr) repeat(6,6.75rem) 8.5rem;gap:0 .75rem;align-items:center;padding:.4rem .5rem;border-bottom:1px solid var(--line)}
.head{font-weight:600;color:var(--muted);font-size:.85rem}
summary.row{cursor:pointer;list-style:none}
summary.row::-webkit-details-marker{display:none}
summary.row:hover,details[open]>summary.row{background:var(--alt)}
.label{display:flex;gap:.5rem;align-items:baseline;min-width:0}
.label::before{content:"\25B8";color:var(--muted)}
details[open] .label::before{content:"\25BE"}
.rank{color:var(--muted);font-size:.8rem;font-variant-numeric:tabular-nums}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.hist{display:block}
.hist rect{fill:var(--bar)}
.hist rect.near{fill:var(--near)}
.hist rect.slow{fill:var(--hot)}
.hist .axis,.hist .tick{stroke:var(--line);stroke-width:2}
.hist .tick{stroke:var(--muted);stroke-width:1}
.hist .thr{stroke:var(--hot);stroke-width:1;stroke-dasharray:2 1}
.more{padding:.5rem 1rem 1rem 2rem;border-bottom:1px solid var(--line)}
.more dl{display:grid;grid-template-columns:repeat(auto-fill,minmax(10rem,1fr));gap:.25rem 1rem;margin:0}
.more dt{color:var(--muted);font-size:.8rem}
.more dd{margin:0;font-variant-numeric:tabular-nums}
.empty{padding:.5rem}
h4{font-size:.9rem;margin:.5rem 0 .25rem}
h4 .muted{font-weight:400;font-size:.8rem}
.stalls ol{margin:0;padding-left:1.5rem}
.stalls .stacks>li{margin:.25rem 0}
.stalls .frames{font-size:.85rem;list-style:none;padding-left:.75rem;border-left:2px solid var(--line)}
.stalls .frames .culprit code{color:var(--hot);font-weight:600}
@media (max-width:46rem){
body{padding:.5rem}
.table{min-width:0}
.head{display:none}
.row{grid-template-columns:repeat(3,minmax(0,1fr));gap:.35rem .75rem}
.label,.chart{grid-column:1/-1}
.num{text-align:left}
[data-k]::before{content:attr(data-k);display:block;font-size:.75rem;font-weight:400;color:var(--muted)}
.more{padding:.5rem}
}
"#;

/// The refresh control. It holds no data from the report: it fetches this page again and moves
/// the new `<main>` in, keeping the opened rows open.
const SCRIPT: &str = r#"
(function () {
  "use strict";
  var box = document.getElementById("hw-refresh");
  var status = document.getElementById("hw-status");
  var timer = null;
  var inFlight = false;
  box.checked = false;
  function refresh() {
    if (inFlight || document.hidden) return;
    inFlight = true;
    fetch(location.pathname + "?format=html", {
      headers: { Accept: "text/html" },
      cache: "no-store",
      credentials: "same-origin"
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.text();
    }).then(function (text) {
      var page = new DOMParser().parseFromString(text, "text/html");
      var fresh = page.getElementById("hw-main");
      var main = document.getElementById("hw-main");
      if (!fresh || !main) throw new Error("not a hogwatch page");
      var open = new Set();
      main.querySelectorAll("details[open]").forEach(function (row) {
        open.add(row.getAttribute("data-key"));
      });
      var scroller = main.querySelector(".scroll");
      var left = scroller ? scroller.scrollLeft : 0;
      main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
      main.querySelectorAll("details").forEach(function (row) {
        if (open.has(row.getAttribute("data-key"))) row.open = true;
      });
      scroller = main.querySelector(".scroll");
      if (scroller) scroller.scrollLeft = left;
      document.title = page.title;
      status.textContent = "updated " + new Date().toLocaleTimeString();
    }).catch(function (error) {
      status.textContent = "refresh failed: " + error.message;
    }).then(function () {
      inFlight = false;
    });
  }
  box.addEventListener("change", function () {
    clearInterval(timer);
    timer = null;
    if (box.checked) {
      refresh();
      timer = setInterval(refresh, 2000);
    } else {
      status.textContent = "";
    }
  });
})();
"#;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Detector;

    fn histogram(values: &[u64]) -> PollHistogram {
        PollHistogram::from_values(values.iter().copied())
    }

    /// A report with one label per `(label, poll duration)`, with a 100 ms threshold: a
    /// zero-length poll stays far below it even on a loaded machine.
    fn report(polls: &[(&str, Duration)]) -> Report {
        let detector = Detector::builder()
            .threshold(Duration::from_millis(100))
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            for &(label, duration) in polls {
                detector
                    .watch(label, async move { std::thread::sleep(duration) })
                    .await;
            }
        });
        detector.report()
    }

    fn unescape(text: &str) -> String {
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    }

    const TRICKY: [&str; 16] = [
        "",
        "a",
        "<script>alert(1)</script>",
        "</script>",
        "\"",
        "'",
        "&amp;",
        "&",
        "<!--",
        "\n",
        "\r\n\t",
        "\\",
        "\\u003c",
        "ünïcödé ✓ 🦀",
        "\u{202E}evil",
        "\0",
    ];

    /// Every tricky string, and every pair of them.
    fn tricky_strings() -> Vec<String> {
        let mut strings: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
        for a in TRICKY {
            for b in TRICKY {
                strings.push(format!("{a}{b}"));
            }
        }
        strings
    }

    #[test]
    fn escape_round_trips_and_leaves_no_markup() {
        for text in tricky_strings() {
            let mut escaped = String::new();
            escape(&text, &mut escaped);
            assert!(
                !escaped.contains(['<', '>', '"', '\'']),
                "{text:?} -> {escaped:?}"
            );
            let mut rest = escaped.as_str();
            while let Some(at) = rest.find('&') {
                rest = &rest[at..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                        .iter()
                        .any(|entity| rest.starts_with(entity)),
                    "{text:?} -> {escaped:?}"
                );
                rest = &rest[1..];
            }
            assert_eq!(unescape(&escaped), text);
        }
    }

    #[test]
    fn labels_show_control_and_bidi_characters() {
        let mut out = String::new();
        escape_label("a\nb\u{202E}c\0<d>", &mut out);
        assert_eq!(out, "a\\nb\\u{202e}c\\u{0}&lt;d&gt;");
        for text in tricky_strings() {
            let mut out = String::new();
            escape_label(&text, &mut out);
            assert!(
                !out.contains(|c: char| c.is_control() || c == '\u{202E}'),
                "{out:?}"
            );
            assert!(!out.contains(['<', '>', '"', '\'']), "{out:?}");
        }
    }

    #[test]
    fn tricky_labels_render_as_text_and_never_reach_the_script() {
        let labels = tricky_strings();
        let polls: Vec<(&str, Duration)> = labels
            .iter()
            .map(|label| (label.as_str(), Duration::ZERO))
            .collect();
        let report = report(&polls);
        let page = report.to_html();
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        assert_eq!(page.matches("</script>").count(), 1);
        assert!(page.contains(&format!("<script>{SCRIPT}</script>")));
        for label in &labels {
            let mut attribute = String::new();
            escape(label, &mut attribute);
            assert!(
                page.contains(&format!("data-key=\"{attribute}\"")),
                "{label:?}"
            );
            let mut text = String::new();
            escape_label(label, &mut text);
            assert!(
                page.contains(&format!("<span class=\"name\">{text}</span>")),
                "{label:?}"
            );
            assert!(
                page.contains(&format!("<title>Poll durations of {text}, ")),
                "{label:?}"
            );
        }
    }

    #[test]
    fn script_label_is_escaped_in_summary_rows_and_titles() {
        let page = report(&[("<script>alert(1)</script>", Duration::from_millis(150))]).to_html();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        // The worst offender in the summary line, the row, the SVG's aria-label and title.
        assert_eq!(
            page.matches("&lt;script&gt;alert(1)&lt;/script&gt;")
                .count(),
            5,
            "{page}"
        );
    }

    #[test]
    fn page_loads_nothing_from_outside() {
        let page = report(&[
            ("GET /a", Duration::from_millis(150)),
            ("GET /b", Duration::ZERO),
        ])
        .to_html();
        let lower = page.to_ascii_lowercase();
        for forbidden in [
            "http://", "https://", "<link", "src=", "@import", "url(", "//fonts", "xmlns",
        ] {
            assert!(!lower.contains(forbidden), "{forbidden} in {page}");
        }
        // The only link is relative: from /debug/hogs it resolves to /debug/hogs/flamegraph.svg.
        let hrefs: Vec<&str> = lower
            .split("href=\"")
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        assert!(hrefs.iter().all(|href| *href == "hogs/flamegraph.svg"));
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.ends_with("</html>\n"));
    }

    /// `report` with a 30 ms watchdog and, on its first entry, these stalls.
    fn with_stalls(
        mut report: Report,
        stalls: u64,
        culprits: &[(&str, u64)],
        stacks: &[(&str, u64)],
    ) -> Report {
        report.watchdog = Some(crate::WatchdogStats {
            threshold_us: 30_000,
            stack_mode: "unwind",
            stalls,
            captures_requested: stalls,
            captures_completed: stalls,
            ..Default::default()
        });
        let entry = &mut report.entries[0];
        entry.stalls = stalls;
        entry.top_culprits = culprits
            .iter()
            .map(|&(culprit, count)| crate::CulpritCount {
                culprit: culprit.to_string(),
                count,
            })
            .collect();
        entry.top_stacks = stacks
            .iter()
            .map(|&(stack, count)| crate::StackCount {
                stack: stack.to_string(),
                count,
            })
            .collect();
        report
    }

    /// The stalls section of the page's first row.
    fn stalls_section(page: &str) -> &str {
        let start = page.find("<section class=\"stalls\">").unwrap();
        let end = start + page[start..].find("</section>").unwrap();
        &page[start..end]
    }

    #[test]
    fn stall_frames_and_culprits_are_escaped() {
        let hostile = [
            "<script>alert(1)</script>",
            "a&b",
            "say \"hi\"",
            "it's",
            "<Vec<T> as Drop>::drop",
            "x\u{202E}y\n",
        ];
        for text in hostile {
            let stack = format!("outer::poll;{text}");
            let report = with_stalls(
                report(&[("label", Duration::from_millis(120))]),
                1,
                &[(text, 1)],
                &[(&stack, 1)],
            );
            let page = report.to_html();
            assert_eq!(page.matches("<script").count(), 1, "{page}");
            let mut escaped = String::new();
            escape_label(text, &mut escaped);
            let section = stalls_section(&page);
            // The culprit list, the culprit frame and the summary line.
            assert!(
                section.contains(&format!(
                    "<li><code>{escaped}</code> <span class=\"muted\">× 1</span></li>"
                )),
                "{section}"
            );
            assert!(
                section.contains(&format!(
                    "<li class=\"culprit\"><code>{escaped}</code></li>"
                )),
                "{section}"
            );
            assert!(page.contains(&format!("top culprit <code>{escaped}</code>")));
        }
        // Every tricky string as a culprit and a frame: no markup survives.
        for text in tricky_strings() {
            let stack = format!("{text};{text}");
            let page = with_stalls(
                report(&[("label", Duration::ZERO)]),
                2,
                &[(&text, 2)],
                &[(&stack, 2)],
            )
            .to_html();
            let section = stalls_section(&page);
            let text_only: String = section
                .split('<')
                .skip(1)
                .map(|tag| &tag[tag.find('>').unwrap() + 1..])
                .collect();
            assert!(
                !text_only.contains(['<', '>', '"', '\'']),
                "{text:?}: {section}"
            );
            assert_eq!(page.matches("<script").count(), 1);
        }
        // A very long name is cut, whole in its tooltip.
        let long = format!("{}<&>", "a".repeat(300));
        let page =
            with_stalls(report(&[("label", Duration::ZERO)]), 1, &[(&long, 1)], &[]).to_html();
        let section = stalls_section(&page);
        assert!(
            section.contains(&format!(
                "<span title=\"{}&lt;&amp;&gt;\">{}…</span>",
                "a".repeat(300),
                "a".repeat(160)
            )),
            "{section}"
        );
    }

    #[test]
    fn stalls_section_shows_count_culprits_and_stacks_innermost_first() {
        let deep: Vec<String> = (0..20).map(|i| format!("frame{i}")).collect();
        let deep = deep.join(";");
        let report = with_stalls(
            report(&[
                ("slow", Duration::from_millis(120)),
                ("calm", Duration::ZERO),
            ]),
            3,
            &[
                ("serde_json::ser::to_string", 2),
                ("app::crunch_numbers", 1),
            ],
            &[
                (
                    "app::handler;serde_json::ser::to_string;core::fmt::write",
                    2,
                ),
                (&deep, 1),
                ("", 1),
            ],
        );
        let page = report.to_html();
        let section = stalls_section(&page);
        assert!(section.contains("<strong class=\"hot\">3</strong> stalls caught (a poll still running after 30.0 ms)"), "{section}");
        let culprits = section.find("<h4>Top culprits</h4>").unwrap();
        let stacks = section.find("<h4>Top stacks").unwrap();
        assert!(culprits < stacks);
        assert!(section.contains("<li><code>serde_json::ser::to_string</code> <span class=\"muted\">× 2</span></li><li><code>app::crunch_numbers</code> <span class=\"muted\">× 1</span></li>"));
        assert!(section.contains("innermost frame first"));
        // Innermost first, the culprit marked.
        assert!(
            section.contains(
                "<span class=\"muted\">2 captures</span><ol class=\"frames\">\
             <li><code>core::fmt::write</code></li>\
             <li class=\"culprit\"><code>serde_json::ser::to_string</code></li>\
             <li><code>app::handler</code></li></ol>"
            ),
            "{section}"
        );
        // 20 frames: the 10 innermost, a gap, the 2 outermost.
        assert!(section.contains("<li><code>frame19</code></li>"));
        assert!(section.contains("<li><code>frame10</code></li><li class=\"gap muted\">… 8 frames …</li><li><code>frame1</code></li><li><code>frame0</code></li></ol>"), "{section}");
        assert!(!section.contains("frame9<") && !section.contains("frame2<"));
        assert!(section.contains("No frame inside the watched poll"));
        // The summary names the stalls and the top culprit; the calm row says none were caught.
        assert!(
            page.contains(
                " <strong class=\"hot\">3</strong> stalls caught in 1 label; top culprit \
             <code>serde_json::ser::to_string</code> (2 captures)."
            ),
            "{page}"
        );
        assert!(page
            .contains("No stall caught: no poll of this label ran past the watchdog's 30.0 ms."));
        assert!(page.contains("watchdog 30.0 ms: 3 stacks captured"));
        assert_eq!(page.matches("<a href=\"hogs/flamegraph.svg\">").count(), 2);
    }

    #[test]
    fn without_a_watchdog_the_page_says_how_to_enable_it() {
        let page = report(&[("slow", Duration::from_millis(120))]).to_html();
        let section = stalls_section(&page);
        assert!(
            section.contains("the watchdog is off. Enable it with <code>Builder::watchdog</code>"),
            "{section}"
        );
        assert!(
            !page.contains("flamegraph.svg"),
            "no flame graph without a watchdog"
        );
        assert!(!page.contains("stalls caught"));
    }

    #[test]
    fn rows_follow_report_order() {
        let report = report(&[
            ("quick", Duration::ZERO),
            ("slowest", Duration::from_millis(400)),
            ("slow", Duration::from_millis(150)),
            ("also-quick", Duration::ZERO),
        ]);
        let order: Vec<&str> = report
            .entries
            .iter()
            .map(|entry| entry.label.as_str())
            .collect();
        assert_eq!(&order[..2], ["slowest", "slow"]);
        let page = report.to_html();
        let positions: Vec<usize> = order
            .iter()
            .map(|label| page.find(&format!("data-key=\"{label}\"")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{page}");
        assert!(page.contains("<span class=\"rank\">1</span><span class=\"name\">slowest</span>"));
        // Summary: two hogs of four, the worst named.
        assert!(
            page.contains("<strong class=\"hot\">2</strong> of 4 labels hogging"),
            "{page}"
        );
        assert!(page.contains("Worst: <code>slowest</code>"));
    }

    #[test]
    fn summary_of_an_empty_and_a_calm_report() {
        let empty = report(&[]).to_html();
        assert!(empty.contains("Nothing recorded in this window yet."));
        assert!(!empty.contains("<details"));
        let calm = report(&[("calm", Duration::ZERO)]).to_html();
        assert!(
            calm.contains("No hogs: no poll took longer than 100 ms."),
            "{calm}"
        );
    }

    #[test]
    fn bars_sum_to_the_histogram_and_land_in_log2_buckets() {
        let values = [
            1, 1, 2, 3, 1_000, 1_023, 1_024, 16_383, 16_384, 10_000, 10_000, 59_000_000, 60_000_000,
        ];
        let histogram = histogram(&values);
        let bars = bars(&histogram);
        assert_eq!(
            bars.iter().map(|bar| bar.count).sum::<u64>(),
            histogram.len()
        );
        let expected = [
            Bar {
                bucket: 0,
                count: 2,
            },
            Bar {
                bucket: 1,
                count: 2,
            },
            Bar {
                bucket: 9,
                count: 2,
            },
            Bar {
                bucket: 10,
                count: 1,
            },
            Bar {
                bucket: 13,
                count: 3,
            },
            Bar {
                bucket: 14,
                count: 1,
            },
            Bar {
                bucket: 25,
                count: 2,
            },
        ];
        assert_eq!(bars, expected);
        // Bars are sorted and distinct.
        assert!(bars.windows(2).all(|pair| pair[0].bucket < pair[1].bucket));
    }

    #[test]
    fn bars_of_many_values_sum_to_the_total() {
        let values: Vec<u64> = (0..5_000u64)
            .map(|i| ((1 + i.wrapping_mul(2_654_435_761) % 60_000_000) >> (i % 24)).max(1))
            .collect();
        let histogram = histogram(&values);
        let bars = bars(&histogram);
        assert_eq!(bars.iter().map(|bar| bar.count).sum::<u64>(), 5_000);
        for bar in &bars {
            let (low, high) = bucket_range(bar.bucket);
            let inside = values
                .iter()
                .filter(|&&v| bucket_of(v) == bar.bucket)
                .count() as u64;
            assert_eq!(inside, bar.count, "{low}..{high}");
        }
    }

    #[test]
    fn empty_histogram_has_no_bars() {
        let histogram = histogram(&[]);
        assert!(bars(&histogram).is_empty());
        let mut svg = String::new();
        render_histogram("x", &histogram, 10_000, &mut svg);
        assert!(!svg.contains("<rect"), "{svg}");
        assert!(svg.contains("class=\"thr\""), "{svg}");
    }

    #[test]
    fn threshold_marker_lands_in_its_bucket() {
        for (threshold_us, bucket) in [
            (1, 0),
            (2, 1),
            (1_000, 9),
            (8_191, 12),
            (8_192, 13),
            (10_000, 13),
            (16_383, 13),
            (59_999_999, 25),
        ] {
            assert_eq!(bucket_of(threshold_us), bucket, "{threshold_us}");
            let x = threshold_x(threshold_us);
            let drawn = (x / f64::from(BAR_WIDTH)).floor() as usize;
            assert_eq!(drawn, bucket, "{threshold_us} at x = {x}");
            let (low, high) = bucket_range(bucket);
            assert!(low <= threshold_us && threshold_us < high);
        }
        // Bars above the threshold's bucket are drawn as slow, its own bucket as near.
        let mut svg = String::new();
        render_histogram("x", &histogram(&[100, 10_000, 50_000]), 10_000, &mut svg);
        assert!(svg.contains("<rect class=\"fast\" x=\"30\""), "{svg}");
        assert!(svg.contains("<rect class=\"near\" x=\"65\""), "{svg}");
        assert!(svg.contains("<rect class=\"slow\" x=\"75\""), "{svg}");
        assert!(svg.contains("<line class=\"thr\" x1=\"66.4\""), "{svg}");
    }

    #[test]
    fn durations_and_shares_read_well() {
        assert_eq!(duration(0), "0 µs");
        assert_eq!(duration(999), "999 µs");
        assert_eq!(duration(1_234), "1.23 ms");
        assert_eq!(duration(12_345), "12.3 ms");
        assert_eq!(duration(123_456), "123 ms");
        assert_eq!(duration(60_000_000), "60.0 s");
        assert_eq!(busy_share(5, 0), None);
        assert_eq!(percent(busy_share(1, 20).unwrap()), "5.0 %");
        assert_eq!(percent(busy_share(1, 2).unwrap()), "50 %");
    }
}
