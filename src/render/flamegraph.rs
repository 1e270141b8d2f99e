//! The flame graph of stall stacks, drawn by `inferno`.

use std::fmt::Write;

use crate::report::Report;

/// The folded lines inferno reads: `label;outer;...;inner count`, one per distinct stack.
pub(crate) fn folded_lines(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in &report.entries {
        // The label is the root frame; a `;` in it would split it.
        let label = entry.label.replace(';', ",");
        for stack in &entry.top_stacks {
            lines.push(format!("{label};{} {}", stack.stack, stack.count));
        }
    }
    lines
}

/// Writes the flame graph of `report`'s stall stacks as SVG.
pub(crate) fn render(report: &Report) -> String {
    let lines = folded_lines(report);
    if !lines.is_empty() {
        let mut options = inferno::flamegraph::Options::default();
        options.title = "hogwatch: stacks of stalled polls".to_string();
        options.count_name = "captures".to_string();
        let mut svg = Vec::new();
        if inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
            .is_ok()
        {
            return String::from_utf8_lossy(&svg).into_owned();
        }
    }
    let mut svg = String::new();
    let _ = write!(
        svg,
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            r#"<svg version="1.1" width="600" height="60" xmlns="http://www.w3.org/2000/svg">"#,
            r#"<text x="10" y="35" font-family="monospace" font-size="14">"#,
            "hogwatch: no stall stacks captured in this window (watchdog {})",
            "</text></svg>"
        ),
        if report.watchdog.is_some() {
            "on"
        } else {
            "off"
        }
    );
    svg
}
