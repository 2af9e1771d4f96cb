//! The output formats of the verdict verbs (`check`, `compare`): text for a
//! terminal, markdown for a CI step summary, JSON for scripts, JUnit XML so CI
//! systems show each gate or figure as a test.

/// `--format` of `check` and `compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for a terminal (`table` is accepted too).
    #[value(alias = "table")]
    Text,
    /// A markdown document, fit for `$GITHUB_STEP_SUMMARY`.
    Markdown,
    /// One JSON document (shapes in the README, "Output formats").
    Json,
    /// JUnit XML: one test case per gate (check) or per figure (compare).
    Junit,
}

impl Format {
    /// Where the settings warnings of `compare` go, once each: a markdown
    /// document (a CI step summary, a PR comment) and a JUnit report carry them
    /// themselves; with text (read on a terminal) and JSON (data) they go to
    /// stderr, which stays on the screen when stdout is piped.
    pub fn warnings_on_stderr(self) -> bool {
        matches!(self, Format::Text | Format::Json)
    }
}

/// One `<testcase>` of a JUnit report.
pub struct TestCase {
    pub name: String,
    /// `Some(message)` for a miss or a regression.
    pub failure: Option<String>,
    /// What the case measured, shown by CI beside the case.
    pub detail: String,
}

/// A JUnit XML document of one suite. Every text is escaped, and characters XML
/// 1.0 cannot carry are dropped, so the document stays well-formed whatever a
/// file name or a message holds.
pub fn junit(suite: &str, cases: &[TestCase], suite_out: &str) -> String {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"stampede\" tests=\"{}\" failures=\"{failures}\">\n",
        cases.len()
    ));
    x.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\">\n",
        escape(suite),
        cases.len()
    ));
    for c in cases {
        x.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\">\n",
            escape(suite),
            escape(&c.name)
        ));
        if let Some(message) = &c.failure {
            x.push_str(&format!(
                "      <failure message=\"{}\" type=\"stampede\">{}</failure>\n",
                escape(message),
                escape(&c.detail)
            ));
        }
        x.push_str(&format!(
            "      <system-out>{}</system-out>\n",
            escape(&c.detail)
        ));
        x.push_str("    </testcase>\n");
    }
    if !suite_out.is_empty() {
        x.push_str(&format!(
            "    <system-out>{}</system-out>\n",
            escape(suite_out)
        ));
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// Escapes text for an XML attribute or element.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Newlines and tabs kept as references so attributes keep them too.
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
    out
}

/// The characters XML 1.0 allows (production `Char`).
fn is_xml_char(c: char) -> bool {
    matches!(c as u32, 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// A markdown table cell: pipes would end the cell, newlines the row.
pub fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_drops_what_xml_cannot_hold() {
        assert_eq!(
            escape("p99 <= 25 & \"x\" 'y' >"),
            "p99 &lt;= 25 &amp; &quot;x&quot; &apos;y&apos; &gt;"
        );
        assert_eq!(escape("a\u{1}b\nc"), "a\u{FFFD}b&#10;c");
    }
}
