//! Plans and apply reports as people read them (Terraform-like) and as
//! machines read them (JSON). Pure.

use std::borrow::Borrow;
use std::fmt::Write;

use serde::Serialize;

use super::HostResult;
use super::plan::{Action, HostPlan};
use crate::cloud::plan::{CloudAction, CloudPlan};

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
    pub run: usize,
    pub errors: usize,
    /// Hosts whose plan may not be carried out as it stands (a planted
    /// symlink, a mass delete): never "no changes".
    #[serde(skip_serializing_if = "is_zero")]
    pub blocked: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Totals {
    /// One host's plan, counted as everywhere: a replace is one add and
    /// one destroy (as Terraform counts it), a handler is one run.
    pub fn of(p: &HostPlan) -> Totals {
        Totals {
            add: p.count(Action::Create) + p.count(Action::Replace),
            change: p.count(Action::Update),
            destroy: p.count(Action::Delete) + p.count(Action::Replace),
            run: p.count(Action::Run) + p.handlers.len(),
            errors: 0,
            blocked: 0,
        }
    }

    fn add_up(&mut self, o: &Totals) {
        self.add += o.add;
        self.change += o.change;
        self.destroy += o.destroy;
        self.run += o.run;
        self.errors += o.errors;
        self.blocked += o.blocked;
    }

    pub fn is_empty(&self) -> bool {
        self.add + self.change + self.destroy + self.run == 0
    }

    /// After the work: `6 added, 0 changed, 0 destroyed, 1 run`.
    pub fn done(&self) -> String {
        format!(
            "{} added, {} changed, {} destroyed, {} run",
            self.add, self.change, self.destroy, self.run
        )
    }

    /// The same, only what is not zero (`6 added, 1 run`), for one host.
    pub fn done_short(&self) -> String {
        self.parts(["added", "changed", "destroyed", "run"])
    }

    /// Before the work, only what is not zero: `6 to add, 1 to run`.
    pub fn pending_short(&self) -> String {
        self.parts(["to add", "to change", "to destroy", "to run"])
    }

    fn parts(&self, words: [&str; 4]) -> String {
        let n = [self.add, self.change, self.destroy, self.run];
        let parts: Vec<String> = n
            .iter()
            .zip(words)
            .filter(|(n, _)| **n > 0)
            .map(|(n, w)| format!("{n} {w}"))
            .collect();
        if parts.is_empty() {
            "no changes".into()
        } else {
            parts.join(", ")
        }
    }
}

/// What plans would do, over the hosts planned.
pub(crate) fn totals<R: Borrow<HostResult>>(results: &[R]) -> Totals {
    sum(results, |r| {
        r.plan.as_ref().map(|p| Totals {
            blocked: usize::from(!p.blocked.is_empty()),
            ..Totals::of(p)
        })
    })
}

/// What applies did, over hosts that failed too: counted from the steps
/// each host reported done.
pub(crate) fn done_totals<R: Borrow<HostResult>>(results: &[R]) -> Totals {
    sum(results, |r| r.done)
}

/// Each host's figures added up, and the hosts that failed counted.
fn sum<R: Borrow<HostResult>>(results: &[R], of: impl Fn(&HostResult) -> Option<Totals>) -> Totals {
    let mut t = Totals::default();
    for r in results {
        let r = r.borrow();
        if r.error.is_some() {
            t.errors += 1;
        }
        if let Some(one) = of(r) {
            t.add_up(&one);
        }
    }
    t
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

pub(crate) fn host_plan(p: &HostPlan, color: bool) -> String {
    let (green, yellow, red, cyan, bold, reset) = if color {
        (
            "\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[36m", "\x1b[1m", "\x1b[0m",
        )
    } else {
        ("", "", "", "", "", "")
    };
    let mut s = String::new();
    for c in &p.changes {
        let col = match c.action {
            Action::Create => green,
            Action::Update | Action::Run => yellow,
            Action::Delete | Action::Replace => red,
        };
        let _ = write!(
            s,
            "  {col}{:>3}{reset} {bold}{} {} {}{reset}",
            c.action.symbol(),
            p.host,
            c.kind,
            c.id
        );
        if let Some(n) = &c.note {
            let _ = write!(s, "  {n}");
        }
        s.push('\n');
        for a in &c.attrs {
            let line = match (&a.before, &a.after) {
                (Some(b), Some(x)) => format!("{}: {b} → {x}", a.name),
                (None, Some(x)) => format!("+ {}: {x}", a.name),
                (Some(b), None) => format!("- {}: {b}", a.name),
                (None, None) => a.name.clone(),
            };
            let _ = writeln!(s, "        {line}");
        }
        if let Some(d) = &c.diff {
            for l in d.lines() {
                let col = if l.starts_with("+++") || l.starts_with("---") {
                    bold
                } else if l.starts_with('+') {
                    green
                } else if l.starts_with('-') {
                    red
                } else if l.starts_with("@@") {
                    cyan
                } else {
                    ""
                };
                let _ = writeln!(s, "        {col}{l}{reset}");
            }
        }
    }
    for h in &p.handlers {
        let _ = writeln!(
            s,
            "  {yellow}  >{reset} {} handler {}: {}  ({})",
            p.host, h.name, h.command, h.reason
        );
    }
    if p.daemon_reload {
        let _ = writeln!(
            s,
            "  {yellow}  >{reset} {} systemctl daemon-reload  (unit files change)",
            p.host
        );
    }
    for w in &p.warnings {
        let _ = writeln!(s, "  {yellow}warning:{reset} {w}");
    }
    for b in &p.blocked {
        let _ = writeln!(s, "  {red}blocked:{reset} {b}");
    }
    s
}

/// Cloud changes count like the hosts' (a replace is one add and one destroy).
pub(crate) fn with_cloud(mut t: Totals, cloud: Option<&CloudPlan>) -> Totals {
    for c in cloud.map(|c| c.changes.as_slice()).unwrap_or_default() {
        match c.action {
            CloudAction::Create => t.add += 1,
            CloudAction::Update | CloudAction::Resize => t.change += 1,
            CloudAction::Replace => {
                t.add += 1;
                t.destroy += 1
            }
            CloudAction::Delete => t.destroy += 1,
        }
    }
    // Networks count as changes too: a plan that only adds a subnet or
    // removes a NAT gateway has something to apply.
    for n in cloud.map(|c| c.networks.as_slice()).unwrap_or_default() {
        match n.action {
            CloudAction::Create => t.add += 1,
            CloudAction::Delete => t.destroy += 1,
            _ => t.change += 1,
        }
    }
    if let Some(c) = cloud {
        t.errors += c.errors.len() + usize::from(c.unavailable.is_some());
    }
    t
}

/// A header and the changes of each host that has any (errors and skips too).
pub(crate) fn hosts_text<R: Borrow<HostResult>>(results: &[R], color: bool) -> String {
    let mut s = String::new();
    for r in results {
        let r = r.borrow();
        if let Some(line) = &r.learned_host_key {
            let _ = writeln!(
                s,
                "{}: host key accepted on first use (ssh.trust_on_first_use); pin it by adding this line to known_hosts:\n  {line}\n",
                r.host
            );
        }
        match (&r.plan, &r.error) {
            (_, Some(e)) => {
                let _ = writeln!(s, "{}: error: {}\n", r.host, e.trim_end());
                continue;
            }
            (Some(p), None)
                if p.has_changes() || !p.warnings.is_empty() || !p.blocked.is_empty() =>
            {
                let _ = writeln!(s, "{} ({})", r.host, r.address);
                s.push_str(&host_plan(p, color));
                s.push('\n');
            }
            _ => {}
        }
        if let Some(why) = &r.skipped {
            let _ = writeln!(s, "{}: skipped: {why}\n", r.host);
        }
    }
    s
}

pub(crate) fn summary_line(t: &Totals) -> String {
    let mut s = if t.add + t.change + t.destroy + t.run == 0 && t.blocked > 0 {
        format!(
            "Nothing can be applied: {} host{} blocked (see above); the configuration is not met.\n",
            t.blocked,
            if t.blocked == 1 { " is" } else { "s are" }
        )
    } else if t.add + t.change + t.destroy + t.run == 0 {
        if t.errors == 0 {
            "No changes. Hosts match the configuration.\n".to_string()
        } else {
            "No changes on the hosts that answered.\n".to_string()
        }
    } else {
        let mut line = format!(
            "Plan: {} to add, {} to change, {} to destroy",
            t.add, t.change, t.destroy
        );
        if t.run > 0 {
            let _ = write!(line, ", {} to run", t.run);
        }
        line.push_str(".\n");
        line
    };
    if t.errors > 0 {
        let _ = writeln!(
            s,
            "{} host{} or server{} could not be planned; see the errors above.",
            t.errors,
            if t.errors == 1 { "" } else { "s" },
            if t.errors == 1 { "" } else { "s" }
        );
    }
    s
}

/// After an apply: one line per host.
pub(crate) fn apply_summary(results: &[HostResult]) -> String {
    let mut s = String::new();
    for r in results {
        let secs = r.elapsed.as_secs_f64();
        let line = match (&r.error, &r.plan) {
            (Some(e), _) => {
                // What it did before it stopped, so the totals add up.
                let done = r
                    .done
                    .filter(|d| !d.is_empty())
                    .map(|d| format!("done before it stopped: {}\n", d.done_short()))
                    .unwrap_or_default();
                format!(
                    "{:<16} FAILED  {}",
                    r.host,
                    indent(&format!("{done}{e}"), "                 ").trim_start()
                )
            }
            (None, Some(p)) if !p.has_changes() => {
                format!("{:<16} ok      no changes ({secs:.1}s)", r.host)
            }
            (None, Some(p)) => format!(
                "{:<16} ok      {} ({secs:.1}s)",
                r.host,
                Totals::of(p).done_short()
            ),
            (None, None) => format!(
                "{:<16} skipped {}",
                r.host,
                r.skipped.as_deref().unwrap_or("")
            ),
        };
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

#[derive(Serialize)]
struct JsonHost<'a> {
    host: &'a str,
    address: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<&'a HostPlan>,
}

pub(crate) fn json<R: Borrow<HostResult>>(results: &[R]) -> serde_json::Value {
    let hosts: Vec<JsonHost> = results
        .iter()
        .map(|r| r.borrow())
        .map(|r| JsonHost {
            host: &r.host,
            address: &r.address,
            status: match (&r.error, &r.plan) {
                (Some(_), _) => "error",
                (None, Some(p)) if !p.blocked.is_empty() => "blocked",
                (None, Some(p)) if p.has_changes() => "changes",
                (None, None) if r.skipped.is_some() => "skipped",
                _ => "no-changes",
            },
            error: r.error.as_deref(),
            skipped: r.skipped.as_deref(),
            plan: r.plan.as_ref(),
        })
        .collect();
    serde_json::json!({ "hosts": hosts, "summary": totals(results) })
}
