//! One self-contained HTML page: a summary line, then one row per label, worst first.
//!
//! The page carries its own styles (`page.css`), its SVG histograms (`chart.rs`) and a small
//! refresh script (`page.js`), all inline; it loads nothing from anywhere (it must work on an
//! air-gapped server). Markup is written through [`Html`](writer::Html), whose `text` and `attr`
//! always escape and whose `raw` takes only `'static` text, so no label, frame or culprit name
//! can reach the page unescaped, and none ever reaches the script.
//!
//! Hooks for whoever serves or extends the page:
//! - the data lives in `<main id="hw-main">`; the refresh script fetches
//!   `location.pathname + "?format=html"` (with `Accept: text/html`) and swaps that element's
//!   children, so the endpoint must answer that URL with this same page;
//! - the page's only inline style and script are [`STYLE`] and [`SCRIPT`]; a server that sends a
//!   `Content-Security-Policy` allows exactly those two by hash (`csp.rs`);
//! - the refresh control is `hidden` until the script shows it;
//! - each label is a `<details class="entry">` whose `data-key` attribute is the (escaped) label;
//! - `render_stalls` draws the watchdog's stall count, culprits and stacks (innermost frame
//!   first) for each label, or says why there are none; the flame graph link appears only when
//!   the report has a watchdog.

mod chart;
#[cfg(feature = "axum")]
pub(crate) mod csp;
mod writer;

use crate::report::{Entry, Report};
use crate::OTHER_LABEL;
/// Escaping for markup, which the flame graph's SVG needs too.
#[cfg(feature = "watchdog")]
pub(crate) use writer::escape_label;
use writer::Html;

/// The page's style sheet, inline in its `<style>` element.
pub(crate) const STYLE: &str = include_str!("page.css");
/// The page's refresh control, inline in its `<script>` element. It holds no data from the
/// report.
pub(crate) const SCRIPT: &str = include_str!("page.js");

impl Report {
    /// The report as one self-contained HTML page (styles, SVG histograms and the refresh script
    /// inline; it loads nothing from elsewhere), worst first. Labels are HTML-escaped.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder().build()?;
    /// let html = detector.report().to_html();
    /// assert!(html.starts_with("<!DOCTYPE html>"));
    /// assert!(html.contains("<main id=\"hw-main\">"));
    /// # Ok(()) }
    /// ```
    pub fn to_html(&self) -> String {
        let mut out = String::new();
        render(self, &mut out);
        out
    }
}

/// Writes `report` into `out` as a complete HTML document.
pub(crate) fn render(report: &Report, out: &mut String) {
    let hogs = report.hogs().count();
    let html = &mut Html::new(out);
    html.raw(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n<title>",
    )
    .text(format_args!("hogwatch: {hogs} hogging"))
    .raw("</title>\n<style>")
    .raw(STYLE)
    .raw("</style>\n</head>\n<body>\n<header>\n<h1>hogwatch</h1>\n")
    .raw(
        "<div class=\"controls\" id=\"hw-controls\" hidden><label><input type=\"checkbox\" \
         id=\"hw-refresh\" autocomplete=\"off\"> refresh every 2 s</label> \
         <span id=\"hw-status\" class=\"muted\" aria-live=\"polite\"></span></div>\n</header>\n",
    )
    .raw("<main id=\"hw-main\">\n");
    render_summary(report, hogs, html);
    render_table(report, html);
    html.raw("</main>\n<script>")
        .raw(SCRIPT)
        .raw("</script>\n</body>\n</html>\n");
}

/// The line on top: how many labels hog, the worst one, and the window's settings.
fn render_summary(report: &Report, hogs: usize, html: &mut Html<'_>) {
    let threshold = duration(report.threshold_us);
    let labels = report.entries.len();
    html.raw("<p class=\"summary\">");
    match report.hogs().next() {
        Some(worst) => {
            html.raw("<strong class=\"hot\">")
                .text(hogs)
                .raw("</strong>")
                .text(format_args!(
                    " of {labels} {} hogging (a poll over {threshold}). Worst: ",
                    plural(labels as u64, "label", "labels"),
                ))
                .raw("<code>")
                .text(&worst.label)
                .raw("</code>")
                .text(format_args!(
                    ", {} slow {} holding a worker for {} in all, the longest {}.",
                    worst.slow_polls,
                    plural(worst.slow_polls, "poll", "polls"),
                    duration(worst.slow_busy_us),
                    duration(worst.max_poll_us),
                ));
        }
        None if report.entries.is_empty() => {
            html.text("Nothing recorded in this window yet.");
        }
        None => {
            html.text(format_args!(
                "No hogs: no poll took longer than {threshold}."
            ));
        }
    }
    render_stall_summary(report, html);
    if let Some(lag) = &report.event_loop_lag {
        html.text(" Event-loop lag p99 ")
            .raw(if lag.p99_us > report.threshold_us {
                "<strong class=\"hot\">"
            } else {
                "<strong>"
            })
            .text(duration(lag.p99_us))
            .raw("</strong>")
            .text(format_args!(
                " (max {}, {} {}); late by {} in all, {} of it unattributed (no label held a \
                 worker).",
                duration(lag.max_us),
                lag.samples,
                plural(lag.samples, "sample", "samples"),
                duration(lag.delay_us),
                duration(lag.unattributed_delay_us),
            ));
    }
    html.raw("</p>\n<p class=\"meta muted\">")
        .text(format_args!(
            "threshold {threshold} · window {} · {labels} {}",
            duration(report.window_us),
            plural(labels as u64, "label", "labels"),
        ));
    if report.folded_labels > 0 {
        html.text(format_args!(
            " · {} futures counted under {OTHER_LABEL} (too many labels)",
            report.folded_labels
        ));
    }
    if let Some(watchdog) = &report.watchdog {
        html.text(format_args!(
            " · watchdog {}: {} {} captured",
            duration(watchdog.threshold_us),
            watchdog.captures_completed,
            plural(watchdog.captures_completed, "stack", "stacks"),
        ));
        if watchdog.captures_failed > 0 {
            html.text(format_args!(", {} failed", watchdog.captures_failed));
        }
    }
    if let Some(runtime) = &report.runtime {
        html.text(format_args!(
            " · runtime: {} {}, busy {}, global queue {}",
            runtime.workers,
            plural(runtime.workers, "worker", "workers"),
            percent(runtime.busy_ratio),
            runtime.global_queue_depth,
        ));
    }
    html.raw("</p>\n");
}

/// The stalls in the summary line, when the watchdog caught any: how many, and the culprit
/// named most often over all labels.
fn render_stall_summary(report: &Report, html: &mut Html<'_>) {
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
    html.text(" ")
        .raw("<strong class=\"hot\">")
        .text(stalls)
        .raw("</strong>")
        .text(format_args!(
            " {} caught in {labels} {}",
            plural(stalls, "stall", "stalls"),
            plural(labels as u64, "label", "labels"),
        ));
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
            html.text("; top culprit ").raw("<code>");
            name(culprit, html);
            html.raw("</code>").text(format_args!(
                " ({count} {}).",
                plural(count, "sample", "samples")
            ));
        }
        None => {
            html.text(".");
        }
    }
}

/// Column headings; the cells of a row repeat them as `data-k` for the narrow layout.
const COLUMNS: [&str; 8] = [
    "requests / polls",
    "slow polls",
    "longest poll",
    "p99 poll",
    "busy / wall",
    "inflicted",
    "non-2xx",
    "poll durations",
];

fn render_table(report: &Report, html: &mut Html<'_>) {
    html.raw(
        "<div class=\"scroll\"><div class=\"table\">\n<div class=\"row head\"><span>label</span>",
    );
    for column in COLUMNS {
        html.raw(if column == "poll durations" {
            "<span>"
        } else {
            "<span class=\"num\">"
        })
        .text(column)
        .raw("</span>");
    }
    html.raw("</div>\n");
    if report.entries.is_empty() {
        html.raw("<p class=\"empty muted\">")
            .text("No watched future has been polled yet.")
            .raw("</p>\n");
    }
    for (rank, entry) in report.entries.iter().enumerate() {
        render_entry(report, rank + 1, entry, html);
    }
    html.raw("</div></div>\n");
}

fn render_entry(report: &Report, rank: usize, entry: &Entry, html: &mut Html<'_>) {
    let hog = entry.slow_polls > 0;
    html.raw(if hog {
        "<details class=\"entry hog\""
    } else {
        "<details class=\"entry\""
    })
    .attr("data-key", &entry.label)
    .raw(">\n<summary class=\"row\"><span class=\"label\"><span class=\"rank\">")
    .text(rank)
    .raw("</span><span class=\"name\">")
    .text(&entry.label)
    .raw("</span></span>");

    let requests = if entry.requests > 0 {
        entry.requests.to_string()
    } else {
        "–".to_string()
    };
    cell(
        html,
        COLUMNS[0],
        "",
        None,
        format_args!("{requests} / {}", entry.polls),
    );
    cell(
        html,
        COLUMNS[1],
        if hog { " hot" } else { "" },
        None,
        entry.slow_polls,
    );
    let long = if entry.max_poll_us > report.threshold_us {
        " hot"
    } else {
        ""
    };
    cell(
        html,
        COLUMNS[2],
        long,
        Some(entry.max_poll_us),
        poll_duration(entry, entry.max_poll_us),
    );
    let p99 = if entry.p99_poll_us > report.threshold_us {
        " hot"
    } else {
        ""
    };
    cell(
        html,
        COLUMNS[3],
        p99,
        Some(entry.p99_poll_us),
        poll_duration(entry, entry.p99_poll_us),
    );
    let busy = match busy_share(entry.busy_us, entry.wall_us) {
        Some(share) => percent(share),
        None => "–".to_string(),
    };
    cell(html, COLUMNS[4], "", None, busy);
    // Without the lag probe nothing measures it: a dash, not a 0 that reads as "harmless".
    if report.event_loop_lag.is_some() {
        let us = entry.inflicted_delay_us;
        let class = if us > 0 { " hot" } else { "" };
        cell(html, COLUMNS[5], class, Some(us), duration(us));
    } else {
        cell(html, COLUMNS[5], "", None, "–");
    }
    let (non_success, class) = if entry.requests > 0 {
        let count = entry.responses.non_success();
        (count.to_string(), if count > 0 { " hot" } else { "" })
    } else {
        ("–".to_string(), "")
    };
    cell(html, COLUMNS[6], class, None, non_success);
    html.raw("<span class=\"chart\"")
        .attr("data-k", COLUMNS[7])
        .raw(">");
    chart::render_histogram(&entry.label, &entry.histogram, report.threshold_us, html);
    html.raw("</span></summary>\n");

    render_details(report, entry, html);
    html.raw("</details>\n");
}

/// A right-aligned number cell; `exact_us` adds the exact value as a tooltip.
fn cell(
    html: &mut Html<'_>,
    name: &str,
    class: &'static str,
    exact_us: Option<u64>,
    text: impl std::fmt::Display,
) {
    html.raw("<span class=\"num")
        .raw(class)
        .raw("\"")
        .attr("data-k", name);
    if let Some(us) = exact_us {
        html.attr("title", format_args!("{us} µs"));
    }
    html.raw(">").text(text).raw("</span>");
}

/// What a label opens to: the full numbers, the watchdog's stacks and the flame graph link.
fn render_details(report: &Report, entry: &Entry, html: &mut Html<'_>) {
    html.raw("<div class=\"more\">\n<dl>");
    let durations = [
        ("p50 poll", entry.p50_poll_us),
        ("p90 poll", entry.p90_poll_us),
        ("p99 poll", entry.p99_poll_us),
        ("p99.9 poll", entry.p999_poll_us),
        ("longest poll", entry.max_poll_us),
        ("busy", entry.busy_us),
        ("busy in slow polls", entry.slow_busy_us),
        ("inflicted delay", entry.inflicted_delay_us),
        ("wall (ended futures)", entry.wall_us),
    ];
    for (name, us) in durations {
        html.raw("<div><dt>")
            .text(name)
            .raw("</dt><dd")
            .attr("title", format_args!("{us} µs"))
            .raw(">")
            .text(duration(us))
            .raw("</dd></div>");
    }
    let mut counts = vec![
        ("polls", entry.polls),
        ("completed", entry.completed),
        ("cancelled", entry.cancelled),
        ("panicked", entry.panicked),
    ];
    if entry.requests > 0 {
        let responses = entry.responses;
        counts.extend([
            ("requests", entry.requests),
            ("1xx", responses.informational),
            ("2xx", responses.success),
            ("3xx", responses.redirection),
            ("4xx", responses.client_error),
            ("5xx", responses.server_error),
        ]);
    }
    for (name, count) in counts {
        html.raw("<div><dt>")
            .text(name)
            .raw("</dt><dd>")
            .text(count)
            .raw("</dd></div>");
    }
    html.raw("</dl>\n");
    render_stalls(report, entry, html);
    if report.watchdog.is_some() {
        html.raw(
            "<p class=\"links\"><a href=\"hogs/flamegraph.svg\">flame graph of the stall stacks \
             (all labels)</a></p>\n",
        );
    }
    html.raw("</div>\n");
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
fn render_stalls(report: &Report, entry: &Entry, html: &mut Html<'_>) {
    html.raw("<section class=\"stalls\">\n<h3>Stalls</h3>\n");
    let Some(watchdog) = &report.watchdog else {
        html.raw(
            "<p class=\"muted\">No stall captured: the watchdog is off. Enable it with \
             <code>Builder::watchdog</code>",
        );
        if !cfg!(feature = "watchdog") {
            html.raw(" (feature <code>watchdog</code>)");
        }
        html.raw(
            " to catch polls while they block, with their stacks and culprits.</p>\n</section>\n",
        );
        return;
    };
    let threshold = duration(watchdog.threshold_us);
    if entry.stalls == 0 {
        html.raw(
            "<p class=\"muted\">No stall caught: no poll of this label ran past the watchdog's ",
        )
        .text(threshold)
        .raw(".</p>\n</section>\n");
        return;
    }
    html.raw("<p><strong class=\"hot\">")
        .text(entry.stalls)
        .raw("</strong>")
        .text(format_args!(
            " {} caught (a poll still running after {threshold}).",
            plural(entry.stalls, "stall", "stalls"),
        ))
        .raw("</p>\n");
    render_causes(entry, html);
    render_functions(entry, html);
    if entry.top_stacks.is_empty() && entry.top_culprits.is_empty() {
        html.raw("<p class=\"muted\">")
            .text("No stack was captured: ")
            .text(if watchdog.stack_mode == "unsupported" {
                "no stack on this platform."
            } else {
                "the blocked thread did not answer in time."
            })
            .raw("</p>\n</section>\n");
        return;
    }
    if !entry.top_culprits.is_empty() {
        html.raw("<h4>Top culprits</h4>\n<ol class=\"culprits\">");
        for culprit in entry.top_culprits.iter().take(MAX_CULPRITS) {
            html.raw("<li><code>");
            name(&culprit.culprit, html);
            html.raw("</code> <span class=\"muted\">")
                .text(format_args!("× {}", culprit.count))
                .raw("</span></li>");
        }
        html.raw("</ol>\n");
    }
    if !entry.top_stacks.is_empty() {
        html.raw(
            "<h4>Top stacks <span class=\"muted\">(innermost frame first, where the poll was \
             stuck; outermost last, the watched poll)</span></h4>\n<ol class=\"stacks\">",
        );
        for stack in entry.top_stacks.iter().take(MAX_STACKS) {
            html.raw("<li><span class=\"muted\">")
                .text(format_args!(
                    "{} {}",
                    stack.count,
                    plural(stack.count, "sample", "samples")
                ))
                .raw("</span>");
            render_stack(entry, &stack.stack, html);
            html.raw("</li>");
        }
        html.raw("</ol>\n");
        let more = entry.top_stacks.len().saturating_sub(MAX_STACKS);
        if more > 0 {
            html.raw("<p class=\"muted\">")
                .text(format_args!(
                    "{more} more {} in the JSON report and the flame graph.",
                    plural(more as u64, "stack", "stacks"),
                ))
                .raw("</p>\n");
        }
    }
    html.raw("</section>\n");
}

/// What the blocked thread was doing in the label's samples: each cause with its share of the
/// samples and a fix hint, and how much of the watched stall time was on a CPU.
fn render_causes(entry: &Entry, html: &mut Html<'_>) {
    if entry.samples == 0 {
        return;
    }
    html.raw("<h4>Causes <span class=\"muted\">(")
        .text(format_args!(
            "{} {}",
            entry.samples,
            plural(entry.samples, "sample", "samples")
        ));
    if entry.stall_wall_us > 0 {
        html.text(format_args!(
            "; on a CPU {} of {}",
            percent(entry.stall_cpu_us as f64 / entry.stall_wall_us as f64),
            duration(entry.stall_wall_us)
        ));
    }
    html.raw(
        ")</span></h4>\n<table class=\"causes\"><thead><tr><th>cause</th><th>samples</th>\
              <th>system calls</th><th>what to do</th></tr></thead><tbody>",
    );
    for (cause, count) in super::by_cause(&entry.causes) {
        html.raw("<tr><td><strong>")
            .text(cause.as_str())
            .raw("</strong></td><td class=\"num\">")
            .text(format_args!(
                "{count} ({})",
                percent(count as f64 / entry.samples as f64)
            ))
            .raw("</td><td><code>");
        let calls: Vec<&str> = entry
            .causes
            .iter()
            .filter(|counted| counted.cause == cause)
            .filter_map(|counted| counted.syscall.as_deref())
            .collect();
        html.text(calls.join(", "))
            .raw("</code></td><td>")
            .text(cause.hint().unwrap_or("see the system call"))
            .raw("</td></tr>");
    }
    html.raw("</tbody></table>\n");
}

/// The label's sampled profile, cProfile-style: self and total samples per function.
fn render_functions(entry: &Entry, html: &mut Html<'_>) {
    if entry.functions.is_empty() {
        return;
    }
    html.raw(
        "<h4>Functions <span class=\"muted\">(by self samples: the sample's innermost frame \
         outside the runtime; total: anywhere on its stack)</span></h4>\n<table class=\"functions\">\
         <thead><tr><th>self</th><th>total</th><th>function</th></tr></thead><tbody>",
    );
    for function in &entry.functions {
        html.raw("<tr><td class=\"num\">")
            .text(format_args!(
                "{:.1} % ({})",
                function.self_percent, function.self_samples
            ))
            .raw("</td><td class=\"num\">")
            .text(format_args!(
                "{:.1} % ({})",
                function.total_percent, function.total_samples
            ))
            .raw("</td><td><code>");
        name(&function.function, html);
        html.raw("</code></td></tr>");
    }
    html.raw("</tbody></table>\n");
}

/// One folded stack (`outer;...;inner`) as a list of frames, innermost first; a long stack keeps
/// its innermost and outermost frames and says how many it leaves out. Culprits are marked.
fn render_stack(entry: &Entry, stack: &str, html: &mut Html<'_>) {
    if stack.is_empty() {
        html.raw(
            "<p class=\"muted\">No frame inside the watched poll: the poll itself was running \
             (its callees were inlined).</p>",
        );
        return;
    }
    let frames: Vec<&str> = stack.split(';').rev().collect();
    html.raw("<ol class=\"frames\">");
    let gap = frames.len() > INNER_FRAMES + OUTER_FRAMES + 1;
    for (depth, frame) in frames.iter().enumerate() {
        if gap && depth == INNER_FRAMES {
            let hidden = frames.len() - INNER_FRAMES - OUTER_FRAMES;
            html.raw("<li class=\"gap muted\">")
                .text(format_args!("… {hidden} frames …"))
                .raw("</li>");
        }
        if gap && (INNER_FRAMES..frames.len() - OUTER_FRAMES).contains(&depth) {
            continue;
        }
        let culprit = entry
            .top_culprits
            .iter()
            .any(|culprit| culprit.culprit == *frame);
        html.raw(if culprit {
            "<li class=\"culprit\"><code>"
        } else {
            "<li><code>"
        });
        name(frame, html);
        html.raw("</code></li>");
    }
    html.raw("</ol>");
}

/// A frame or culprit name; a very long one is cut short, with the whole name in a tooltip.
fn name(text: &str, html: &mut Html<'_>) {
    match text.char_indices().nth(MAX_NAME_CHARS) {
        None => {
            html.text(text);
        }
        Some((cut, _)) => {
            html.raw("<span")
                .attr("title", text)
                .raw(">")
                .text(&text[..cut])
                .raw("…</span>");
        }
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::writer::escape_label;
    use super::writer::tests::tricky_strings;
    use super::*;
    use crate::Detector;

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
            let mut text = String::new();
            escape_label(label, &mut text);
            assert!(page.contains(&format!("data-key=\"{text}\"")), "{label:?}");
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
                called_from: None,
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
    fn stalls_section_shows_causes_with_hints_and_the_function_table() {
        let mut report = with_stalls(
            report(&[("slow", Duration::from_millis(120))]),
            1,
            &[("app::<load>", 3)],
            &[("app::<load>", 3)],
        );
        let entry = &mut report.entries[0];
        entry.samples = 4;
        entry.stall_wall_us = 200_000;
        entry.stall_cpu_us = 2_000;
        let cause = |cause, count, syscall: &str| crate::CauseCount {
            cause,
            count,
            syscall: Some(syscall.to_string()),
        };
        entry.causes = vec![
            cause(crate::StallCause::Io, 2, "read"),
            cause(crate::StallCause::Lock, 1, "futex"),
            cause(crate::StallCause::Io, 1, "poll"),
        ];
        entry.functions = vec![crate::FunctionSamples {
            function: "app::<load>".to_string(),
            self_samples: 3,
            total_samples: 4,
            self_percent: 75.0,
            total_percent: 100.0,
        }];
        let page = report.to_html();
        let section = stalls_section(&page);
        assert!(
            section.contains("4 samples; on a CPU 1.0 % of 200 ms"),
            "{section}"
        );
        assert!(
            section.contains("<tr><td><strong>io</strong></td><td class=\"num\">3 (75 %)</td><td><code>read, poll</code></td><td>use the async API (tokio::fs, an async client), or spawn_blocking</td></tr>"),
            "{section}"
        );
        assert!(
            section.contains("shorten the critical section, or use tokio::sync::Mutex"),
            "{section}"
        );
        assert!(
            section.contains("<td class=\"num\">75.0 % (3)</td><td class=\"num\">100.0 % (4)</td><td><code>app::&lt;load&gt;</code>"),
            "{section}"
        );
        let causes = section.find("<h4>Causes").unwrap();
        let functions = section.find("<h4>Functions").unwrap();
        assert!(causes < functions && functions < section.find("<h4>Top culprits").unwrap());
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
                "<span class=\"muted\">2 samples</span><ol class=\"frames\">\
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
             <code>serde_json::ser::to_string</code> (2 samples)."
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
    fn inflicted_delay_is_a_column_next_to_busy_time_and_the_summary_has_the_unattributed_part() {
        let mut report = report(&[
            ("slow", Duration::from_millis(120)),
            ("calm", Duration::ZERO),
        ]);
        // Without the lag probe nothing measured it.
        let page = report.to_html();
        assert!(
            page.contains("<span class=\"num\" data-k=\"inflicted\">–</span>"),
            "{page}"
        );
        report.entries[0].inflicted_delay_us = 123_456;
        report.event_loop_lag = Some(crate::EventLoopLag {
            resolution_us: 10_000,
            samples: 100,
            delay_us: 130_000,
            unattributed_delay_us: 6_544,
            ..Default::default()
        });
        let page = report.to_html();
        let heads: Vec<&str> = page
            .split("<span class=\"num\">")
            .skip(1)
            .map(|rest| &rest[..rest.find('<').unwrap()])
            .collect();
        let busy = heads
            .iter()
            .position(|&head| head == "busy / wall")
            .unwrap();
        assert_eq!(heads[busy + 1], "inflicted", "{heads:?}");
        assert!(
            page.contains(
                "<span class=\"num hot\" data-k=\"inflicted\" title=\"123456 µs\">123 ms</span>"
            ),
            "{page}"
        );
        assert!(
            page.contains("<span class=\"num\" data-k=\"inflicted\" title=\"0 µs\">0 µs</span>"),
            "{page}"
        );
        assert!(
            page.contains("<dt>inflicted delay</dt><dd title=\"123456 µs\">123 ms</dd>"),
            "{page}"
        );
        assert!(
            page.contains(
                "; late by 130 ms in all, 6.54 ms of it unattributed (no label held a worker)."
            ),
            "{page}"
        );
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
