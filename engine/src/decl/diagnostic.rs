//! One problem in one declaration file, as a miette diagnostic.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub struct DeclError {
    pub message: String,
    #[source_code]
    pub src: NamedSource<Arc<String>>,
    #[label("{label}")]
    pub span: SourceSpan,
    pub label: String,
    #[help]
    pub help: Option<String>,
    #[diagnostic(severity)]
    pub severity: miette::Severity,
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

/// Where an offset falls: 1-based line and column (in characters).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where each line starts, so that a position costs a binary search instead of a scan
/// from the start of the file (a file with many mistakes must not cost n^2).
struct LineIndex {
    starts: Vec<usize>,
    ascii: bool,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex {
            starts,
            ascii: text.is_ascii(),
        }
    }

    /// 1-based (line, column in characters), as [`line_col`].
    fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut end = offset.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= end);
        let start = self.starts[line.saturating_sub(1)];
        let column = if self.ascii {
            end - start
        } else {
            text[start..end].chars().count()
        };
        (line, column + 1)
    }
}

/// Builds diagnostics for one file.
#[derive(Clone)]
pub struct Reporter {
    file: PathBuf,
    text: Arc<String>,
    index: Arc<std::sync::OnceLock<LineIndex>>,
}

impl Reporter {
    pub fn new(file: &Path, text: Arc<String>) -> Self {
        Reporter {
            file: file.to_path_buf(),
            text,
            index: Arc::default(),
        }
    }

    /// 1-based line and column of a byte offset in this file.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        self.index
            .get_or_init(|| LineIndex::new(&self.text))
            .line_col(&self.text, offset)
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn error(
        &self,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> DeclError {
        self.build(span, message.into(), label.into(), help, miette::Severity::Error)
    }

    pub fn warning(&self, span: SourceSpan, message: impl Into<String>, help: Option<String>) -> DeclError {
        self.build(span, message.into(), "here".into(), help, miette::Severity::Warning)
    }

    fn build(
        &self,
        span: SourceSpan,
        message: String,
        label: String,
        help: Option<String>,
        severity: miette::Severity,
    ) -> DeclError {
        let (line, column) = self.line_col(span.offset());
        DeclError {
            message,
            src: NamedSource::new(self.file.display().to_string(), self.text.clone()),
            span,
            label,
            help,
            severity,
            file: self.file.clone(),
            line,
            column,
        }
    }
}

impl DeclError {
    pub fn is_error(&self) -> bool {
        self.severity == miette::Severity::Error
    }

    /// `file:line:col: message`, for logs and D-Bus.
    pub fn one_line(&self) -> String {
        crate::status::DeclarationError::from(self).to_string()
    }
}

/// A "did you mean" suggestion among `known`, if one is close.
pub fn did_you_mean(word: &str, known: &[&str]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!("did you mean `{k}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4)); // after 'é' (2 bytes)
        assert_eq!(line_col(t, 8), (3, 1));
        assert_eq!(line_col(t, 6), (2, 3), "inside a character: where it starts");
        assert_eq!(line_col(t, 99), (3, 2), "past the end: the end");
        let r = Reporter::new(Path::new("/t.kdl"), Arc::new(t.to_string()));
        for offset in [0, 3, 6, 7, 8, 99] {
            assert_eq!(r.line_col(offset), line_col(t, offset), "indexed = scanned at {offset}");
        }
        let ascii = "ab\ncd\n\nef";
        let r = Reporter::new(Path::new("/t.kdl"), Arc::new(ascii.to_string()));
        for offset in 0..=ascii.len() + 1 {
            assert_eq!(r.line_col(offset), line_col(ascii, offset), "at {offset}");
        }
    }

    #[test]
    fn suggestions_are_close_ones_only() {
        assert_eq!(
            did_you_mean("memroy", &["memory", "image"]).as_deref(),
            Some("did you mean `memory`?")
        );
        assert_eq!(did_you_mean("zzz", &["memory", "image"]), None);
    }
}
