//! One module per resource kind: what the probe asks about it, how its
//! record is read back, when it needs a change, what the apply runs, and
//! whether a change to it risks tidekeeper's own access. The shared stages
//! (probe, plan, apply, guard) only call into these, so a kind's rules live
//! in one file. The kinds depend on the items, the observed state and the
//! shell helpers; nothing here depends on the stages that call it.

pub mod absent;
pub mod apt_repo;
pub mod command;
pub mod cron;
pub mod directory;
pub mod file;
pub mod firewall;
pub mod group;
pub mod mount;
pub mod package;
pub mod path;
pub mod service;
pub mod stack;
pub mod symlink;
pub mod sysctl;
pub mod timer;
pub mod user;

use crate::change::{Action, Attr};
use crate::engine::observed::PathKind;

/// A probe record that does not read as its tag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garbled;

/// What a kind's plan rule says an item needs. The planner turns it into a
/// change of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub action: Action,
    pub attrs: Vec<Attr>,
    pub note: Option<String>,
    /// Unified diff of a text file's content.
    pub diff: Option<String>,
    /// What the host has there now, for deletions and replacements.
    pub was: Option<PathKind>,
}

impl Need {
    pub fn new(action: Action) -> Need {
        Need {
            action,
            attrs: vec![],
            note: None,
            diff: None,
            was: None,
        }
    }

    /// Add an attribute: its value before and after.
    pub fn attr(mut self, name: &str, before: Option<String>, after: Option<String>) -> Need {
        self.attrs.push(attr(name, before, after));
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Need {
        self.note = Some(note.into());
        self
    }

    /// The need, if it has any attribute to change.
    pub fn if_any(self) -> Option<Need> {
        (!self.attrs.is_empty()).then_some(self)
    }
}

pub fn attr(name: &str, before: Option<String>, after: Option<String>) -> Attr {
    Attr {
        name: name.to_string(),
        before,
        after,
    }
}

/// `sh -n` over a generated fragment: it must at least parse.
#[cfg(test)]
pub(crate) fn sh_n(script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sh -n` over a step body (which uses `return`, so it lives in a function).
#[cfg(test)]
pub(crate) fn sh_n_step(body: &str) {
    sh_n(&format!("f() {{\n:\n{body}}}"));
}
