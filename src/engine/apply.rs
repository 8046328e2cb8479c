//! Turn a host plan into ONE shell script that carries all changed content
//! and applies exactly the plan, step by step, under a lock on the host:
//! the order (APT sources, packages, the guard, the changes, checks,
//! handlers, prunes) is this module's; each change's steps are its kind's.
//! Building the script and reading its report are pure.
//!
//! Every file is written to a temporary file in its own directory, synced,
//! validated, the old file backed up under the state directory, then renamed
//! over the original: a crash at any point leaves each file wholly old or
//! wholly new. Handlers a step owes are recorded on the host before the step
//! runs, so a restart owed by a failed run is still done by the next one.

use super::item::{FileItem, Item};
use super::kinds;
use super::observed::{Inventory, STATE_DIR};
use super::plan::{Action, Change, HostPlan, ResourceKind};
use crate::transport::shell_quote as q;

/// Backups of this many runs are kept on each host.
pub const BACKUP_RUNS: usize = 10;

use super::sh::HEREDOC as EOF;

/// One step of the script, and the plan entries it carries out.
#[derive(Debug, Clone)]
pub struct Step {
    pub what: String,
    /// The planned changes this step completes (kind, id): what a failed
    /// run counts as done when the step reported success.
    pub carries: Vec<(ResourceKind, String)>,
    /// The handler this step runs, if it is one.
    pub handler: Option<String>,
}

pub struct Script {
    pub text: String,
    pub steps: Vec<Step>,
}

struct Builder {
    root: String,
    text: String,
    steps: Vec<Step>,
    /// Files written, to verify at the end: (sha256, path).
    written: Vec<(String, String)>,
    /// Files whose new content was staged (see [`kinds::file::stage`]):
    /// path → the number of its staging directory `$tk_d<k>`.
    staged: std::collections::HashMap<String, usize>,
    /// How many staging directories there are.
    staging_dirs: usize,
    /// The changes the next step completes (taken by [`Builder::step`]).
    carry: Vec<(ResourceKind, String)>,
}

impl Builder {
    /// Add a step: `body` is shell code where each command ends in `|| return`.
    fn step(&mut self, what: String, body: String) {
        let n = self.steps.len();
        self.text
            .push_str(&format!("s{n}() {{\n{body}}}\nrun {n} s{n}\n"));
        self.steps.push(Step {
            what,
            carries: std::mem::take(&mut self.carry),
            handler: None,
        });
    }

    /// The next step completes these changes.
    fn carrying<'c>(&mut self, changes: impl IntoIterator<Item = &'c Change>) {
        self.carry = changes
            .into_iter()
            .map(|c| (c.kind, c.id.clone()))
            .collect();
    }
}

/// What a run that stopped after its first `completed` steps did of the
/// plan, counted as the plan counts: a change is done when every step that
/// carries it reported success (steps run in order and stop at the first
/// failure); a handler when its step did.
pub fn done(plan: &HostPlan, steps: &[Step], completed: usize) -> super::render::Totals {
    let completed = completed.min(steps.len());
    let (ok, not) = steps.split_at(completed);
    let carried = |set: &[Step], c: &Change| {
        set.iter()
            .any(|s| s.carries.iter().any(|(k, id)| *k == c.kind && *id == c.id))
    };
    let mut done = plan.clone();
    done.changes.retain(|c| carried(ok, c) && !carried(not, c));
    done.handlers.retain(|h| {
        ok.iter()
            .any(|s| s.handler.as_deref() == Some(h.name.as_str()))
    });
    super::render::Totals::of(&done)
}

/// The inventory as JSON, written atomically by the script.
/// Also a plain list of managed paths, which the probe stats without parsing JSON.
fn write_inventory(state: &str, inv: &Inventory) -> String {
    let json = serde_json::to_string_pretty(inv).expect("inventory serializes");
    let paths: String = inv
        .resources
        .iter()
        .filter(|e| e.kind.is_path())
        .map(|e| format!("{}\n", e.id))
        .collect();
    let digest = kinds::path::managed_digest(
        inv.resources
            .iter()
            .filter(|e| e.kind.is_path())
            .map(|e| e.id.as_str()),
    );
    // The digest goes first and comes back last: one that is there always
    // speaks for the list beside it.
    let mut s = format!("rm -f {state}/{} || return\n", kinds::path::MANAGED_DIGEST);
    for (name, data) in [
        ("inventory.json", json),
        ("managed-paths", paths),
        (kinds::path::MANAGED_DIGEST, format!("{digest}\n")),
    ] {
        s.push_str(&format!(
            "t=$(mktemp {state}/.inventory.XXXXXX) && printf %s {} >\"$t\" && mv -f \"$t\" {state}/{name} || return\n",
            super::sh::Word::quoted(&data)
        ));
    }
    s
}

fn same_entries(a: &Inventory, b: &Inventory) -> bool {
    a.resources.iter().all(|e| b.resources.contains(e))
        && b.resources.iter().all(|e| a.resources.contains(e))
}

/// Build the apply script for a plan. `run_id` names the backup directory.
/// Arm the lockout guard for risky changes: the login user and the deadline.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    pub login_user: String,
    pub deadline_secs: u64,
}

pub fn script(plan: &HostPlan, root: &str, run_id: &str, guard: Option<&GuardSettings>) -> Script {
    let state = q(&format!("{root}{STATE_DIR}"));
    let mut b = Builder {
        root: root.to_string(),
        text: String::new(),
        steps: vec![],
        written: vec![],
        staged: Default::default(),
        staging_dirs: 0,
        carry: vec![],
    };
    b.text
        .push_str(&super::sh::apply_prelude(root, &state, run_id));

    // First record that everything about to be touched is managed, so a run
    // cut short can still prune what it created.
    let union = touched(plan);
    if !same_entries(&union, &plan.previous_inventory) {
        b.step(
            "record the inventory".into(),
            write_inventory("\"$S\"", &union),
        );
    }

    let desired: Vec<&Change> = plan.changes.iter().filter(|c| !c.prune).collect();

    // APT's sources and keys go before packages, and a change to them is
    // followed by `apt-get update` (and only then).
    let (apt, desired): (Vec<&Change>, Vec<&Change>) = desired.into_iter().partition(
        |c| matches!(&c.item, Some(Item::File(f)) if kinds::apt_repo::is_apt_config(&f.path)),
    );
    for c in &apt {
        if let Some(item) = &c.item {
            item_steps(&mut b, c, item, &owes(c));
        }
    }
    if !apt.is_empty() {
        b.step(
            "apt-get update (APT sources changed)".into(),
            kinds::package::update(),
        );
    }
    package_steps(&mut b, &desired, !apt.is_empty());

    // Packages first (they can take long and are not risky), then the guard
    // is armed before anything access depends on changes.
    let guarded = guard.filter(|g| !super::guard::risky(plan, &g.login_user).is_empty());
    if let Some(g) = guarded {
        b.step(
            "arm the lockout guard".into(),
            super::guard::arm(plan, &g.login_user, run_id, g.deadline_secs),
        );
    }

    change_steps(&mut b, plan, &desired);
    check_and_prune_steps(&mut b, plan);
    // The whole inventory folds in the steps recorded one by one.
    let mut final_inv = if plan.inventory == plan.previous_inventory {
        String::new()
    } else {
        format!(
            "{}rm -f \"$S/{}\" \"$S/{}\" || return\n",
            write_inventory("\"$S\"", &plan.inventory),
            super::observed::RAN,
            super::observed::FAILED
        )
    };
    for h in &plan.settled_handlers {
        final_inv.push_str(&format!("paid {} || return\n", q(h)));
    }
    b.step(
        "record the inventory".into(),
        format!(
            // Run ids sort by time; the glob lists them oldest first. Never
            // parse `ls` or word-split: the root may hold spaces.
            "{final_inv}if [ -d \"$B\" ]; then set -- \"$S\"/backups/*/; n=$(( $# - {keep} )); \
             for d in \"$@\"; do [ \"$n\" -gt 0 ] || break; rm -rf -- \"$d\" || return; n=$((n - 1)); done; fi\n",
            keep = BACKUP_RUNS
        ),
    );
    if let Some(g) = guarded {
        // The countdown starts again now that everything is applied, so a
        // long apply never eats the time left to prove access.
        b.step(
            "restart the lockout countdown".into(),
            super::guard::rearm(run_id, g.deadline_secs),
        );
    }
    b.text.push_str("echo '@@done'\n");
    Script {
        text: b.text,
        steps: b.steps,
    }
}

/// Handlers a change notifies, recorded as owed before it runs.
fn owes(c: &Change) -> String {
    c.notify
        .iter()
        .map(|n| format!("owe {} || return\n", q(n)))
        .collect()
}

/// The desired changes in order, with `daemon-reload` once unit files are
/// written and before any unit is touched, and the files kinds persist
/// their state in written last.
fn change_steps(b: &mut Builder, plan: &HostPlan, desired: &[&Change]) {
    let mut reloaded = false;
    let mut files_done = false;
    // Every new content is written and synced once, before the first file
    // is renamed into place.
    let staged: Vec<kinds::file::ToStage> = desired
        .iter()
        .filter_map(|c| match &c.item {
            Some(Item::File(f)) if kinds::file::writes_content(c) => Some(kinds::file::ToStage {
                file: f,
                new: c.action != Action::Update,
            }),
            _ => None,
        })
        .collect();
    let first_staged = desired
        .iter()
        .position(|c| matches!(&c.item, Some(Item::File(_))) && kinds::file::writes_content(c));
    let mut i = 0;
    while i < desired.len() {
        let c = desired[i];
        i += 1;
        let Some(item) = &c.item else { continue };
        if Some(i - 1) == first_staged {
            let (body, ks) = kinds::file::stage(&b.root, &staged);
            for (f, k) in staged.iter().zip(&ks) {
                b.staged.insert(f.file.path.clone(), *k);
            }
            b.staging_dirs = ks.iter().max().map_or(0, |k| k + 1);
            b.step(
                format!("write {} new file content(s), one sync", staged.len()),
                body,
            );
        }
        // New files in a row (nothing to validate) go into place together.
        if new_file(b, c).is_some() {
            let run = 1 + desired[i..]
                .iter()
                .take_while(|c| new_file(b, c).is_some())
                .count();
            if run > 1 {
                new_files_step(b, &desired[i - 1..i - 1 + run]);
                i += run - 1;
                continue;
            }
        }
        // systemd must see new unit files before services are touched.
        if !item.kind_impl().on_filesystem() && !files_done {
            files_done = true;
            if plan.daemon_reload && !reloaded {
                reloaded = true;
                b.step(
                    "systemctl daemon-reload".into(),
                    "systemctl daemon-reload || return\n".into(),
                );
            }
        }
        item_steps(b, c, item, &owes(c));
    }
    if plan.daemon_reload && !reloaded {
        b.step(
            "systemctl daemon-reload".into(),
            "systemctl daemon-reload || return\n".into(),
        );
    }
    for f in &plan.persist {
        let body = kinds::file::write(&b.root, f, false, None);
        b.written
            .push((f.sha256.clone(), format!("{}{}", b.root, f.path)));
        b.step(format!("file {}", f.path), body);
    }
}

/// A new file whose content was staged and that has nothing to validate.
fn new_file<'a>(b: &Builder, c: &'a Change) -> Option<&'a FileItem> {
    match &c.item {
        Some(Item::File(f))
            if c.action == Action::Create
                && f.validate.is_none()
                && b.staged.contains_key(&f.path) =>
        {
            Some(f)
        }
        _ => None,
    }
}

/// One step that renames new files into place, one `mv` per directory
/// instead of one per file: their content, mode and owner were staged.
fn new_files_step(b: &mut Builder, changes: &[&Change]) {
    let mut body: String = changes.iter().map(|c| owes(c)).collect();
    let mut moves = Vec::with_capacity(changes.len());
    for c in changes {
        let f = new_file(b, c).expect("only new files");
        moves.push((f.path.as_str(), b.staged[&f.path]));
    }
    body.push_str(&kinds::file::move_new(&b.root, &moves));
    let (first, last) = (moves[0].0, moves[moves.len() - 1].0);
    let what = format!("{} new files: {first} … {last}", moves.len());
    let written: Vec<(String, String)> = changes
        .iter()
        .filter_map(|c| new_file(b, c))
        .map(|f| (f.sha256.clone(), format!("{}{}", b.root, f.path)))
        .collect();
    b.written.extend(written);
    b.carrying(changes.iter().copied());
    b.step(what, body);
}

/// What follows the changes: written files checked, handlers, then (only
/// when everything else succeeded) what left the config.
fn check_and_prune_steps(b: &mut Builder, plan: &HostPlan) {
    if !b.written.is_empty() {
        let mut body = format!("sha256sum -c --quiet >&2 <<'{EOF}' || return\n");
        for (h, p) in &b.written {
            body.push_str(&format!("{h}  {p}\n"));
        }
        body.push_str(EOF);
        body.push('\n');
        body.push_str(&kinds::file::unstage(b.staging_dirs));
        b.step("verify written files".into(), body);
    }
    for h in &plan.handlers {
        b.step(
            format!("handler {} ({})", h.name, h.command),
            format!("{} || return\npaid {} || return\n", h.command, q(&h.name)),
        );
        if let Some(last) = b.steps.last_mut() {
            last.handler = Some(h.name.clone());
        }
    }
    // Prune only once everything else succeeded.
    for c in plan.changes.iter().filter(|c| c.prune) {
        if let Some(body) = prune(&b.root, c.kind, &c.id) {
            b.carrying([c]);
            b.step(
                format!("{} {} (no longer in the config)", c.kind, c.id),
                body,
            );
        }
    }
    // systemd forgets units whose files went.
    if plan
        .changes
        .iter()
        .any(|c| c.prune && c.kind == ResourceKind::File && kinds::service::is_unit_path(&c.id))
    {
        b.step(
            "systemctl daemon-reload".into(),
            "systemctl daemon-reload || return\n".into(),
        );
    }
}

/// The inventory as it must be recorded before anything is touched: what
/// the plan will manage, what it prunes, and what was managed before.
fn touched(plan: &HostPlan) -> Inventory {
    let mut union = plan.inventory.clone();
    // Which commands ran and which stacks are up is recorded by each step
    // once it succeeded, never ahead of it (issue 33).
    union.commands = plan.previous_inventory.commands.clone();
    union.stacks = plan.previous_inventory.stacks.clone();
    // One entry per resource: what the host recorded keeps its `created`
    // (a prune of something adopted must not turn into a second entry that
    // claims tidekeeper made it).
    let pruned = plan
        .changes
        .iter()
        .filter(|c| c.prune)
        .map(|c| super::observed::InventoryEntry {
            kind: c.kind,
            id: c.id.clone(),
            created: true,
        });
    for e in plan
        .previous_inventory
        .resources
        .iter()
        .cloned()
        .chain(pruned)
    {
        if !union
            .resources
            .iter()
            .any(|u| u.kind == e.kind && u.id == e.id)
        {
            union.resources.push(e);
        }
    }
    union
}

/// Packages: one install (with ufw when a firewall is new) and one removal
/// for all of them.
fn package_steps(b: &mut Builder, desired: &[&Change], updated: bool) {
    for (what, body, carries) in kinds::package::steps(desired, updated) {
        b.carrying(carries);
        b.step(what, body);
    }
}

/// The steps of one planned change, by its kind. `owes` records the
/// handlers it notifies before it runs.
fn item_steps(b: &mut Builder, c: &Change, item: &Item, owes: &str) {
    let root = b.root.clone();
    let mut cx = kinds::ApplyCx {
        root: &root,
        owes,
        staged: &b.staged,
        written: &mut b.written,
    };
    let steps = item.kind_impl().apply(c, item, &mut cx);
    for (what, body) in steps {
        b.carrying([c]);
        b.step(what, body);
    }
}

/// Removing what left the config, by its kind; None for kinds that are
/// never removed that way.
fn prune(root: &str, kind: ResourceKind, id: &str) -> Option<String> {
    kinds::of(kind, id).remove(root, id)
}

/// How an apply went on one host, read from the script's markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done {
        steps: usize,
        warnings: Vec<String>,
    },
    Failed {
        step: usize,
        what: String,
        error: String,
        completed: usize,
    },
    Locked,
    /// The script stopped without saying how (connection cut, host crashed).
    Interrupted {
        completed: usize,
    },
}

/// Did the script arm the lockout guard?
pub fn armed(stdout: &str) -> bool {
    stdout.lines().any(|l| l.starts_with("@@armed "))
}

pub fn read_report(stdout: &str, stderr: &str, steps: &[Step]) -> Outcome {
    let mut completed = 0;
    let mut warnings = Vec::new();
    let mut lines = stdout.lines();
    while let Some(line) = lines.next() {
        if line == "@@locked" {
            return Outcome::Locked;
        }
        if line == "@@done" {
            return Outcome::Done {
                steps: completed,
                warnings,
            };
        }
        if let Some(w) = line.strip_prefix("@@warn ") {
            warnings.push(w.to_string());
        } else if line.starts_with("@@ok ") {
            completed += 1;
        } else if let Some(n) = line.strip_prefix("@@fail ") {
            let step: usize = n.trim().parse().unwrap_or(0);
            let mut error = String::new();
            for l in lines.by_ref() {
                if l == "@@end" {
                    break;
                }
                error.push_str(l);
                error.push('\n');
            }
            let error = if error.trim().is_empty() {
                stderr.trim().to_string()
            } else {
                error.trim().to_string()
            };
            return Outcome::Failed {
                step,
                what: steps.get(step).map(|s| s.what.clone()).unwrap_or_default(),
                error,
                completed,
            };
        }
    }
    Outcome::Interrupted { completed }
}
