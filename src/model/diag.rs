//! Located configuration errors.
//!
//! Every problem found in a config repo becomes a [`Diagnostic`] that names the
//! file, line and column it is about and says what to do. Validation collects
//! all of them before giving up, so one run shows every error in the repo.

use std::fmt;

use serde::Serialize;

/// One problem in the config repo, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Path of the file inside the config repo, e.g. `hosts/web.yaml`.
    pub file: String,
    /// 1-based line; 0 when the problem is about the file as a whole.
    pub line: u64,
    /// 1-based column in characters; 0 when unknown.
    pub column: u64,
    /// Short, stable machine name of the check, e.g. `unknown-role`.
    pub code: &'static str,
    pub message: String,
    /// What the user can do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// A place in a file of the config repo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Origin {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl Origin {
    pub fn new(file: impl Into<String>, line: u64, column: u64) -> Self {
        Origin {
            file: file.into(),
            line,
            column,
        }
    }

    /// The whole file, no particular line.
    pub fn file(file: impl Into<String>) -> Self {
        Origin::new(file, 0, 0)
    }

    pub fn error(&self, code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            code,
            message: message.into(),
            help: None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}", self.file),
            (l, 0) => write!(f, "{}:{l}", self.file),
            (l, c) => write!(f, "{}:{l}:{c}", self.file),
        }
    }
}

impl Diagnostic {
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn origin(&self) -> Origin {
        Origin::new(self.file.clone(), self.line, self.column)
    }

    /// `file:line:column` as editors and terminals link it.
    pub fn location(&self) -> String {
        self.origin().to_string()
    }
}

impl Diagnostic {
    /// The diagnostic as a warning: `file:line:col: warning[code]: …`.
    pub fn warning_text(&self) -> String {
        let mut s = format!(
            "{}: warning[{}]: {}",
            self.location(),
            self.code,
            self.message
        );
        if let Some(help) = &self.help {
            s.push_str(&format!("\n  help: {help}"));
        }
        s
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: error[{}]: {}",
            self.location(),
            self.code,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// All problems found in one validation run, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
    /// Stable order for output: by file, then position, then message.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message))
        });
        self.0.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Byte offset of a 1-based (line, character column) in `text`, for snippets.
pub(crate) fn byte_offset(text: &str, line: u64, column: u64) -> Option<usize> {
    if line == 0 {
        return None;
    }
    let mut offset = 0usize;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            let col = column.saturating_sub(1) as usize;
            let within = l.char_indices().nth(col).map(|(b, _)| b).unwrap_or(l.len());
            return Some(offset + within);
        }
        offset += l.len();
    }
    None
}

/// Render diagnostics with source snippets, as the CLI shows them.
pub(crate) fn render(
    diags: &Diagnostics,
    source: &dyn Fn(&str) -> Option<String>,
    color: bool,
) -> String {
    use miette::{
        GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource,
    };
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_context_lines(1);
    let mut out = String::new();
    for d in diags.iter() {
        out.push_str(&format!("error[{}]: {}\n", d.code, d.location()));
        let mut md = MietteDiagnostic::new(d.message.clone());
        if let Some(h) = &d.help {
            md = md.with_help(h.clone());
        }
        let text = source(&d.file);
        let offset = text
            .as_deref()
            .and_then(|t| byte_offset(t, d.line, d.column));
        let rendered = match (text, offset) {
            (Some(text), Some(off)) => {
                let len = text[off..]
                    .chars()
                    .next()
                    .map(|c| c.len_utf8())
                    .unwrap_or(0);
                let md = md.with_label(LabeledSpan::at(off..off + len, "here"));
                let report =
                    miette::Report::new(md).with_source_code(NamedSource::new(&d.file, text));
                let mut s = String::new();
                let _ = handler.render_report(&mut s, report.as_ref());
                s
            }
            _ => {
                let mut s = String::new();
                let _ = handler.render_report(&mut s, &md);
                s
            }
        };
        out.push_str(&rendered);
        out.push('\n');
    }
    out
}
