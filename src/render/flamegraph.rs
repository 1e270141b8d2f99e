//! The flame graph of stall stacks: a static SVG drawn here (one `<rect>` per frame, its full
//! name and sample count in a `<title>` tooltip), with no script and no style sheet, so it runs
//! nothing and its `Content-Security-Policy` locks everything. `inferno` drew it before, at the
//! cost of six crates in every default build and an inline zoom script.

use std::fmt::Write;

use crate::report::Report;

/// The folded lines of the stall stacks: `label;outer;...;inner count`, one per distinct stack
/// (the format flame graph tools read).
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

/// The image's width, a frame's height and the room for the title, in pixels.
const WIDTH: f64 = 1200.0;
const FRAME_HEIGHT: f64 = 16.0;
const TOP: f64 = 40.0;
const MARGIN: f64 = 10.0;
/// The width of a character of the 12 px monospace font, for cutting names to their frame.
const CHAR_WIDTH: f64 = 7.2;

/// One frame of the merged stacks: a function and the samples of every stack through it here.
#[derive(Default)]
struct Node {
    name: String,
    samples: u64,
    /// By name, as flame graphs order them (the x axis is not time).
    children: Vec<Node>,
}

impl Node {
    fn add(&mut self, frames: &[&str], samples: u64) {
        self.samples = self.samples.saturating_add(samples);
        let Some((first, rest)) = frames.split_first() else {
            return;
        };
        let at = match self
            .children
            .binary_search_by(|child| child.name.as_str().cmp(first))
        {
            Ok(at) => at,
            Err(at) => {
                self.children.insert(
                    at,
                    Node {
                        name: (*first).to_string(),
                        ..Node::default()
                    },
                );
                at
            }
        };
        self.children[at].add(rest, samples);
    }

    fn depth(&self) -> usize {
        self.children
            .iter()
            .map(Node::depth)
            .max()
            .map_or(0, |d| d + 1)
    }
}

/// `text` escaped for XML text and attributes, control characters shown as Rust escapes (as
/// the page shows labels).
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    super::html::escape_label(text, &mut escaped);
    escaped
}

/// A warm colour of its own for each name (the same function, the same colour).
fn colour(name: &str) -> (u8, u8, u8) {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (
        205 + (hash % 50) as u8,
        90 + ((hash >> 8) % 130) as u8,
        ((hash >> 16) % 55) as u8,
    )
}

/// Draws `node` (its children first above it) at depth `depth`, from `x`, into `svg`.
fn draw(svg: &mut String, node: &Node, depth: usize, x: f64, scale: f64, bottom: f64, total: u64) {
    let width = node.samples as f64 * scale;
    if width < 0.5 {
        return;
    }
    let y = bottom - (depth as f64 + 1.0) * FRAME_HEIGHT;
    let (r, g, b) = colour(&node.name);
    let name = escape(&node.name);
    let share = node.samples as f64 * 100.0 / total.max(1) as f64;
    // Writing into a String cannot fail.
    let _ = write!(
        svg,
        "<g><title>{name} ({} samples, {share:.1}%)</title>\
         <rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" rx=\"2\" \
         fill=\"rgb({r},{g},{b})\"/>",
        node.samples,
        w = (width - 0.5).max(0.1),
        h = FRAME_HEIGHT - 1.0,
    );
    let fits = ((width - 6.0) / CHAR_WIDTH).floor().max(0.0) as usize;
    if fits >= 3 {
        let shown: String = match node.name.chars().count() > fits {
            true => node
                .name
                .chars()
                .take(fits - 2)
                .chain("..".chars())
                .collect(),
            false => node.name.clone(),
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x + 3.0,
            y + FRAME_HEIGHT - 4.5,
            escape(&shown)
        );
    }
    svg.push_str("</g>\n");
    let mut child_x = x;
    for child in &node.children {
        draw(svg, child, depth + 1, child_x, scale, bottom, total);
        child_x += child.samples as f64 * scale;
    }
}

/// Writes the flame graph of `report`'s stall stacks as SVG.
pub(crate) fn render(report: &Report) -> String {
    let mut root = Node::default();
    for line in folded_lines(report) {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let frames: Vec<&str> = stack.split(';').collect();
        root.add(&frames, count);
    }
    let mut svg = String::new();
    if root.samples == 0 {
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
        return svg;
    }
    // The labels are the root's children: the root itself (all samples) is not drawn.
    let depth = root.depth();
    let height = TOP + depth as f64 * FRAME_HEIGHT + MARGIN;
    let bottom = height - MARGIN;
    let scale = (WIDTH - 2.0 * MARGIN) / root.samples as f64;
    let _ = write!(
        svg,
        concat!(
            r#"<?xml version="1.0" standalone="no"?>"#,
            "\n",
            r#"<svg version="1.1" width="{width}" height="{height}" "#,
            r#"viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" "#,
            r#"font-family="monospace" font-size="12">"#,
            "\n",
            r#"<rect width="100%" height="100%" fill="rgb(250,250,240)"/>"#,
            r#"<text x="{center}" y="24" font-size="16" text-anchor="middle">"#,
            "hogwatch: stacks of stalled polls ({samples} samples; hover a frame for its name)",
            "</text>\n"
        ),
        width = WIDTH,
        height = height,
        center = WIDTH / 2.0,
        samples = root.samples,
    );
    let mut x = MARGIN;
    for label in &root.children {
        draw(&mut svg, label, 0, x, scale, bottom, root.samples);
        x += label.samples as f64 * scale;
    }
    svg.push_str("</svg>\n");
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
        // One frame per function, the label at the bottom (the largest y), each with its
        // tooltip; no script, nothing loaded.
        assert_eq!(svg.matches("<rect x=").count(), 4, "{svg}");
        assert!(
            svg.contains("<title>my_app::crunch (3 samples, 100.0%)</title>"),
            "{svg}"
        );
        assert!(!svg.contains("<script") && !svg.contains("href"), "{svg}");
    }

    #[test]
    fn names_are_escaped_and_stacks_merge() {
        let detector = Detector::builder().build().unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(detector.watch("a<b>&\"c'", async {}));
        let mut report = detector.report();
        report.entries[0].top_stacks = vec![
            StackCount {
                stack: "main;<T as x::Y>::f".to_string(),
                count: 2,
            },
            StackCount {
                stack: "main;g".to_string(),
                count: 1,
            },
        ];
        let svg = render(&report);
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&#39;"), "{svg}");
        assert!(
            svg.contains("&lt;T as x::Y&gt;::f (2 samples, 66.7%)"),
            "{svg}"
        );
        // `main` merged: label, main, f, g.
        assert_eq!(svg.matches("<rect x=").count(), 4, "{svg}");
        assert!(
            svg.contains("<title>main (3 samples, 100.0%)</title>"),
            "{svg}"
        );
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
