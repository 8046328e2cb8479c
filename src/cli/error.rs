//! How a command ends: an [`Outcome`] when it ran to the end, a
//! [`CliError`] when it could not (what went wrong, what to do about it,
//! and the exit code). `cli::run` prints the error and maps both to the
//! process's exit code, once.

use std::fmt;
use std::process::ExitCode;

use super::{EXIT_ERROR, EXIT_INVALID, EXIT_OK};

/// A command that ran to the end, as scripts read it from the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0: done, nothing to do, or cancelled by the person asked.
    Done,
    /// 1: it ran, and what it reports is a failure: a policy denies, a
    /// host failed, a test failed.
    Failed,
    /// 2: `plan --detailed-exitcode` found something to change.
    Changes,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Done => EXIT_OK,
            Outcome::Failed => EXIT_INVALID,
            Outcome::Changes => 2,
        }
    }

    /// Done unless `failed`.
    pub fn failed_if(failed: bool) -> Outcome {
        if failed {
            Outcome::Failed
        } else {
            Outcome::Done
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(o.code())
    }
}

/// Why a command could not do what it was asked.
#[derive(Debug)]
pub(super) struct CliError {
    said: Said,
    code: u8,
}

#[derive(Debug)]
enum Said {
    /// `error: what`, then `  help: …` when there is something to do.
    Error { what: String, help: Option<String> },
    /// The config repo's diagnostics, laid out for the format asked for
    /// (JSON goes to stdout, where a script reads it).
    Diagnostics { stdout: String, stderr: String },
}

impl CliError {
    /// Something failed: a missing repo or ref, an unknown name, an
    /// unreachable host or service, a file that cannot be written.
    pub(super) fn new(what: impl fmt::Display) -> CliError {
        CliError {
            said: Said::Error {
                what: what.to_string(),
                help: None,
            },
            code: EXIT_ERROR,
        }
    }

    /// What the command worked on is wrong: a config, a secret that does
    /// not open, a host that refused or failed what it was asked.
    pub(super) fn invalid(what: impl fmt::Display) -> CliError {
        CliError {
            code: EXIT_INVALID,
            ..CliError::new(what)
        }
    }

    /// The config repo does not load: its diagnostics, already laid out.
    pub(super) fn diagnostics(stdout: String, stderr: String) -> CliError {
        CliError {
            said: Said::Diagnostics { stdout, stderr },
            code: EXIT_INVALID,
        }
    }

    /// What the person can do about it.
    pub(super) fn help(mut self, text: impl Into<String>) -> CliError {
        if let Said::Error { help, .. } = &mut self.said {
            *help = Some(text.into());
        }
        self
    }

    pub(super) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }

    /// What goes to stdout (only a JSON report of diagnostics).
    pub(super) fn stdout(&self) -> &str {
        match &self.said {
            Said::Diagnostics { stdout, .. } => stdout,
            Said::Error { .. } => "",
        }
    }

    /// Print it: the one place a command's error reaches the terminal;
    /// `json` (`-o json`): also on stdout, as a JSON object, for the script
    /// that reads it there.
    pub(super) fn report(&self, json: bool) {
        if !self.stdout().is_empty() {
            print!("{}", self.stdout());
        } else if json {
            println!("{}", self.json());
        }
        eprint!("{self}");
    }

    /// The error as `-o json` prints it: the fields of a config
    /// diagnostic that it has (message, help).
    pub(super) fn json(&self) -> serde_json::Value {
        let (message, help) = match &self.said {
            Said::Error { what, help } => (what.as_str(), help.as_deref()),
            Said::Diagnostics { stderr, .. } => (stderr.trim_end(), None),
        };
        serde_json::json!({
            "format_version": super::JSON_FORMAT_VERSION,
            "ok": false,
            "errors": [{ "code": "error", "message": message, "help": help }],
        })
    }
}

/// The text for stderr, final newline included.
impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.said {
            Said::Error { what, help } => {
                writeln!(f, "error: {what}")?;
                match help {
                    Some(h) => writeln!(f, "  help: {h}"),
                    None => Ok(()),
                }
            }
            Said::Diagnostics { stderr, .. } => f.write_str(stderr),
        }
    }
}

impl std::error::Error for CliError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_says_what_failed_then_what_to_do() {
        let e = CliError::new("no host named \"x\" in fleet \"acme\"").help("hosts are: a, b");
        assert_eq!(
            e.to_string(),
            "error: no host named \"x\" in fleet \"acme\"\n  help: hosts are: a, b\n"
        );
        assert_eq!(CliError::new("boom").to_string(), "error: boom\n");
        assert_eq!(e.code, EXIT_ERROR);
        assert_eq!(CliError::invalid("bad").code, EXIT_INVALID);
    }

    #[test]
    fn diagnostics_are_printed_as_laid_out() {
        let e = CliError::diagnostics("{}\n".into(), "1 error in the config repo\n".into());
        assert_eq!(e.to_string(), "1 error in the config repo\n");
        assert_eq!(e.stdout(), "{}\n");
        // No help line is made up for them.
        assert_eq!(e.help("x").to_string(), "1 error in the config repo\n");
    }

    #[test]
    fn outcomes_are_the_exit_codes_scripts_rely_on() {
        assert_eq!(Outcome::Done.code(), 0);
        assert_eq!(Outcome::Failed.code(), 1);
        assert_eq!(Outcome::Changes.code(), 2);
        assert_eq!(Outcome::failed_if(true), Outcome::Failed);
        assert_eq!(Outcome::failed_if(false), Outcome::Done);
    }
}
