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
            // An empty stack: the poll itself was running (everything inlined into it).
            if stack.stack.is_empty() {
                lines.push(format!("{label} {}", stack.count));
            } else {
                lines.push(format!("{label};{} {}", stack.stack, stack.count));
            }
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
        options.count_name = "samples".to_string();
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

impl Report {
    /// A flame graph (SVG) of the stacks the watchdog captured during stalls, one tower per
    /// label; a placeholder image if there were none.
    ///
    /// ```
    /// # fn main() -> Result<(), hogwatch::ConfigError> {
    /// let detector = hogwatch::Detector::builder()
    ///     .watchdog(std::time::Duration::from_millis(50))
    ///     .build()?;
    /// let svg = detector.report().flamegraph_svg();
    /// assert!(svg.contains("<svg"));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "watchdog")]
    #[cfg_attr(docsrs, doc(cfg(feature = "watchdog")))]
    pub fn flamegraph_svg(&self) -> String {
        render(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::StackCount;
    use crate::Detector;

    fn report_with_stack(label: &str, stack: &str) -> Report {
        let detector = Detector::builder().build().unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(detector.watch(label, async {}));
        let mut report = detector.report();
        report.entries[0].top_stacks = vec![StackCount {
            stack: stack.to_string(),
            count: 3,
        }];
        report
    }

    #[test]
    fn stacks_become_a_flame_graph_rooted_at_the_label() {
        let report = report_with_stack("GET /a;b", "main;my_app::handler;my_app::crunch");
        assert_eq!(
            folded_lines(&report),
            ["GET /a,b;main;my_app::handler;my_app::crunch 3"]
        );
        let svg = render(&report);
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("my_app::crunch"));
        assert!(svg.contains("GET /a,b"));
    }

    #[test]
    fn no_stacks_draw_a_placeholder() {
        let detector = Detector::builder().build().unwrap();
        let svg = render(&detector.report());
        assert!(
            svg.contains("<svg") && svg.contains("no stall stacks"),
            "{svg}"
        );
        assert!(svg.contains("watchdog off"));
    }
}
