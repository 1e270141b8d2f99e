//! The page's markup writer: markup only from `&'static str`, everything else escaped.
//!
//! The data of a report (labels, frame and culprit names) are owned `String`s, so they can never
//! reach [`Html::raw`], which takes only `'static` text: they go through [`Html::text`] or
//! [`Html::attr`], which always escape. A call site cannot forget to escape, only fail to compile.

use std::fmt::{self, Display, Write};

/// Writes HTML into a `String`.
pub(crate) struct Html<'a> {
    out: &'a mut String,
}

impl<'a> Html<'a> {
    pub(crate) fn new(out: &'a mut String) -> Self {
        Self { out }
    }

    /// Literal markup, written as is. `'static` so that a label or any other text of the report
    /// cannot be passed here; it must go through [`Html::text`] or [`Html::attr`].
    pub(crate) fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.out.push_str(markup);
        self
    }

    /// Text content, escaped (see [`escape_label`]). Takes any `Display`, so numbers and
    /// `format_args!` are written without an intermediate `String`.
    pub(crate) fn text(&mut self, text: impl Display) -> &mut Self {
        // Writing into a `String` cannot fail.
        let _ = write!(Escaping(self.out), "{text}");
        self
    }

    /// An attribute, ` name="value"`, its value escaped like text (quotes included).
    pub(crate) fn attr(&mut self, name: &'static str, value: impl Display) -> &mut Self {
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        self.text(value);
        self.out.push('"');
        self
    }
}

/// A `fmt::Write` that escapes everything written through it.
struct Escaping<'a>(&'a mut String);

impl Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Per character, so it does not matter where `Display` splits its output.
        escape_label(text, self.0);
        Ok(())
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

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn unescape(text: &str) -> String {
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
    pub(crate) fn tricky_strings() -> Vec<String> {
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
    fn text_and_attr_escape_and_raw_is_literal() {
        let mut out = String::new();
        let label = String::from("<a href='x'>\"&\u{202E}</a>");
        Html::new(&mut out)
            .raw("<p")
            .attr("title", &label)
            .raw(">")
            .text(&label)
            .text(format_args!(" {} of {label}", 3))
            .raw("</p>");
        let escaped = "&lt;a href=&#39;x&#39;&gt;&quot;&amp;\\u{202e}&lt;/a&gt;";
        assert_eq!(
            out,
            format!("<p title=\"{escaped}\">{escaped} 3 of {escaped}</p>")
        );
    }

    proptest! {
        /// Whatever goes through `text` and `attr`, the page has exactly the markup written with
        /// `raw`: every `<`, `>` and quote of the output is one of `raw`'s.
        #[test]
        fn text_and_attr_never_add_markup(text in any::<String>(), value in any::<String>()) {
            let mut out = String::new();
            Html::new(&mut out)
                .raw("<p")
                .attr("title", &value)
                .raw(">")
                .text(&text)
                .raw("</p>");
            let inner = &out["<p title=\"".len()..out.len() - "</p>".len()];
            let (title, body) = inner.split_once("\">").expect("the attribute is closed");
            for part in [title, body] {
                prop_assert!(!part.contains(['<', '>', '"', '\'']), "{out:?}");
                prop_assert!(!part.contains(|c: char| c.is_control()), "{out:?}");
            }
        }
    }
}
