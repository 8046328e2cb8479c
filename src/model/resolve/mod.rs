//! Resolution: raw spec → desired state, with every semantic check.
//!
//! A pipeline of section resolvers, each in its own file and each using
//! only what the ones before it produced: `settings` (tidekeeper.yaml),
//! `secrets`, `templates`, `roles`, `hosts` (host files, with their
//! roles instantiated), `jobs` (schedules.yaml). This file holds the
//! loader they share (file parsing, diagnostics, the checks every section
//! uses) and `run`, which calls them in order. `render` makes the hosts'
//! templated resources again once providers have assigned addresses, from
//! what loading kept in [`Fleet::source`].
//!
//! Variable precedence, lowest first: `tidekeeper.yaml` `defaults.vars`, then
//! each role's `vars` in the order the host lists its roles, then the host's
//! own `vars`. Merging is per top-level key: a later level replaces the whole
//! value of a key.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use minijinja::{Environment, UndefinedBehavior};
use serde::de::DeserializeOwned;
use serde_saphyr::Spanned;

mod ec2;
mod hosts;
mod jobs;
mod notify;
mod render;
mod roles;
mod secrets;
mod settings;
mod templates;

pub use render::{assign_addresses, render_with, render_with_facts};
pub(crate) use secrets::decrypt_secret;
pub use secrets::{RECIPIENTS_FILE, parse_recipients};

use crate::model::check;
use crate::model::desired::*;
use crate::model::diag::{Diagnostic, Diagnostics, Origin};
use crate::model::raw::{self, S, Vars};
use crate::schedule::{self, Window};
use crate::source::{ConfigTree, Entry};

/// Config files (YAML) larger than this are refused before parsing.
pub(crate) const MAX_YAML_BYTES: usize = 1024 * 1024;
/// Deepest nesting accepted in a config file.
pub(crate) const MAX_YAML_DEPTH: usize = 32;
/// Most nodes an alias may expand to across a file (defuses "billion laughs").
pub(crate) const MAX_ALIAS_EVENTS: usize = 100_000;
/// Instructions one template render may execute.
pub(crate) const TEMPLATE_FUEL: u64 = 2_000_000;

const FLEET_FILE: &str = "tidekeeper.yaml";
const SCHEDULES_FILE: &str = "schedules.yaml";
const KNOWN_HOSTS_FILE: &str = "known_hosts";

/// Load, check and resolve the config repo in `tree`.
pub fn load(tree: &ConfigTree) -> Result<Fleet, Diagnostics> {
    load_with_identity(tree, None)
}

/// Load with the age identity (the text of an identity file: one or more
/// `AGE-SECRET-KEY-1…` lines), so secrets are decrypted, in memory only:
/// the fleet keeps the secrets' values, never the identity.
/// Without one, secret values stay `(sensitive)` placeholders.
pub fn load_with_identity(tree: &ConfigTree, identity: Option<&str>) -> Result<Fleet, Diagnostics> {
    load_knowing(tree, identity, &AddressBook::new())
}

/// Load an untrusted config (a proposal) within the budgets of one
/// proposal: hosts after `count:`, bytes rendered, variables after merging,
/// resources. Over a budget is an error naming it, found before the work
/// it would cost is done where it can be.
pub fn load_within(
    tree: &ConfigTree,
    limits: &crate::model::desired::ProposalLimits,
) -> Result<Fleet, Diagnostics> {
    let mut diags = Diagnostics::default();
    let fleet = load_budgeted(tree, None, &AddressBook::new(), Some(limits), &mut diags);
    match fleet {
        Some(f) if diags.is_empty() => Ok(f),
        _ => Err(diags),
    }
}

/// Load a config repo that may define no hosts yet: `import` writes the
/// first one.
pub fn load_before_the_first_host(tree: &ConfigTree) -> Result<Fleet, Diagnostics> {
    let mut diags = Diagnostics::default();
    let book = AddressBook::new();
    let mut l = Loader::new(tree, None, &book, None);
    l.no_hosts_yet = true;
    match finish_loading(tree, l, &mut diags) {
        Some(f) if diags.is_empty() => Ok(f),
        _ => Err(diags),
    }
}

/// Load as if the providers' addresses in `book` were known from the start.
fn load_knowing(
    tree: &ConfigTree,
    identity: Option<&str>,
    book: &AddressBook,
) -> Result<Fleet, Diagnostics> {
    let mut diags = Diagnostics::default();
    match load_budgeted(tree, identity, book, None, &mut diags) {
        Some(f) if diags.is_empty() => Ok(f),
        _ => Err(diags),
    }
}

fn load_budgeted(
    tree: &ConfigTree,
    identity: Option<&str>,
    book: &AddressBook,
    budget: Option<&crate::model::desired::ProposalLimits>,
    out: &mut Diagnostics,
) -> Option<Fleet> {
    let l = Loader::new(tree, identity, book, budget.cloned());
    finish_loading(tree, l, out)
}

fn finish_loading(tree: &ConfigTree, mut l: Loader<'_>, out: &mut Diagnostics) -> Option<Fleet> {
    let resolved = l.run();
    let mut diags = std::mem::take(&mut l.diags);
    if l.fleet_unparsed {
        // One typo in tidekeeper.yaml would otherwise come back as errors
        // about providers, networks and variables all over the repo.
        diags = Diagnostics(std::mem::take(&mut l.unparsed));
    }
    if diags.is_empty()
        && let Some(Resolved {
            mut fleet,
            roles,
            secrets,
        }) = resolved
    {
        fleet.commit = tree.commit.clone();
        // Only a fleet whose servers get their addresses from a provider and
        // that has templates, or whose templates read facts, can render
        // differently once they are known.
        let assigned = fleet.hosts.iter().any(|h| {
            matches!(
                h.provider,
                ProviderKind::Hetzner | ProviderKind::Lightsail | ProviderKind::Ec2
            )
        });
        let facts = fleet.hosts.iter().any(|h| !h.facts_used.is_empty());
        if (assigned && tree.under("templates").next().is_some()) || facts {
            fleet.source = Some(Source {
                tree: Arc::new(tree.clone()),
                roles: Arc::new(roles),
                secrets: Arc::new(secrets),
                undecryptable: Arc::new(l.undecryptable.clone().into_iter().collect()),
                book: l.known.clone(),
            });
        }
        fleet.secrets_decrypted = l.identity.is_some();
        fleet.redactions = secrets::redactions(l.plain.values());
        fleet.secret_values =
            crate::model::desired::SecretValues(l.plain.clone().into_iter().collect());
        if let Some(b) = &l.budget {
            let resources: usize = fleet.hosts.iter().map(|h| h.resources.len()).sum();
            if resources > b.max_resources {
                out.push(Origin::file(FLEET_FILE).error(
                    "proposal-budget",
                    format!("this proposal declares {resources} resources over its hosts; a proposal may declare at most {} (proposals.max_resources)", b.max_resources),
                ));
                return None;
            }
        }
        return Some(fleet);
    }
    diags.sort();
    // A template can push a secret into an error ("template … not found").
    let hide = secrets::redactions(l.plain.values());
    for d in diags.0.iter_mut() {
        d.message = crate::model::desired::redact(&hide, &d.message);
        d.help = d
            .help
            .take()
            .map(|h| crate::model::desired::redact(&hide, &h));
    }
    *out = diags;
    None
}

/// What an untrusted config has used of its budgets so far.
#[derive(Default)]
struct Spent {
    hosts: usize,
    rendered: u64,
    var_nodes: u64,
}

impl Loader<'_> {
    /// Count `n` more hosts with `vars` each; false (and one error) once a
    /// budget is exceeded: the caller stops expanding.
    fn spend_hosts(
        &mut self,
        file: &str,
        n: usize,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        let Some(b) = self.budget.clone() else {
            return true;
        };
        fn nodes(v: &serde_json::Value, budget: u64) -> u64 {
            match v {
                serde_json::Value::Array(a) => {
                    let mut n = 1;
                    for x in a {
                        n += nodes(x, budget);
                        if n > budget {
                            break;
                        }
                    }
                    n
                }
                serde_json::Value::Object(o) => {
                    let mut n = 1;
                    for x in o.values() {
                        n += nodes(x, budget);
                        if n > budget {
                            break;
                        }
                    }
                    n
                }
                serde_json::Value::String(s) => 1 + s.len() as u64 / 64,
                _ => 1,
            }
        }
        let per_host: u64 = vars.values().map(|v| nodes(v, b.max_var_nodes)).sum();
        self.spent.hosts += n;
        self.spent.var_nodes = self
            .spent
            .var_nodes
            .saturating_add(per_host.saturating_mul(n as u64));
        if self.spent.hosts > b.max_hosts {
            self.err_once(
                "budget:hosts".into(),
                Origin::file(file).error(
                    "proposal-budget",
                    format!(
                        "this proposal has more than {} hosts after count: (proposals.max_hosts)",
                        b.max_hosts
                    ),
                ),
            );
            return false;
        }
        if self.spent.var_nodes > b.max_var_nodes {
            self.err_once("budget:vars".into(), Origin::file(file).error(
                "proposal-budget",
                format!("this proposal's variables, merged into every host, exceed {} values (aliases expanded)", b.max_var_nodes),
            ));
            return false;
        }
        true
    }

    /// Count `n` bytes rendered; false (and one error) over the budget.
    fn spend_rendered(&mut self, file: &str, n: usize) -> bool {
        let Some(max) = self.budget.as_ref().map(|b| b.max_rendered_bytes) else {
            return true;
        };
        self.spent.rendered = self.spent.rendered.saturating_add(n as u64);
        if self.spent.rendered > max {
            self.err_once("budget:rendered".into(), Origin::file(file).error(
                "proposal-budget",
                format!("this proposal renders more than {} MiB from templates over its hosts (proposals.max_rendered_mib)", max >> 20),
            ));
            return false;
        }
        true
    }

    /// Over a budget already: render nothing more.
    fn over_budget(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| {
            self.spent.rendered > b.max_rendered_bytes
                || self.spent.hosts > b.max_hosts
                || self.spent.var_nodes > b.max_var_nodes
        })
    }
}

/// Shorter secrets are refused: they could not be redacted from output
/// without blanking ordinary words.
pub(crate) const MIN_SECRET_LEN: usize = 8;

fn yaml_options() -> serde_saphyr::Options {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    alias_limits.max_replay_stack_depth = MAX_YAML_DEPTH;
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MAX_YAML_DEPTH,
            max_events: 500_000,
            max_nodes: 200_000,
            max_aliases: 10_000,
        },
        alias_limits: alias_limits,
    }
}

pub(crate) fn at<T>(file: &str, s: &Spanned<T>) -> Origin {
    Origin::new(file, s.referenced.line(), s.referenced.column())
}

/// The YAML reader's type errors ("invalid u16", "expected sequence start")
/// said in config terms, with how to write the value.
fn expected_in_config_terms(msg: &str) -> Option<(&'static str, &'static str)> {
    Some(match msg.trim() {
        "invalid u16" => (
            "expected a whole number from 0 to 65535",
            "a port is 1 to 65535, written as digits without quotes",
        ),
        "invalid u8" | "invalid u32" | "invalid u64" | "invalid usize" => (
            "expected a whole number (0 or more)",
            "write digits only, e.g. 3",
        ),
        "invalid i8" | "invalid i16" | "invalid i32" | "invalid i64" => {
            ("expected a whole number", "write digits only, e.g. 3")
        }
        "invalid f32" | "invalid f64" => ("expected a number", "e.g. 12.5"),
        "invalid boolean" => (
            "expected true or false",
            "write true or false (yes, no, on and off are not booleans here)",
        ),
        "expected sequence start" => (
            "expected a list here",
            "write it as [a, b], or as lines that start with \"- \"",
        ),
        "expected mapping start" => (
            "expected a mapping (key: value) here",
            "write it as {key: value}, or as indented key: value lines",
        ),
        "expected string scalar" => (
            "expected one value here, not a list or a mapping",
            "quote it if it has special characters: key: \"value\"",
        ),
        _ => return None,
    })
}

/// Turn a YAML/serde error into a diagnostic in the user's words.
/// A `[` or `{` left open is found by the parser only where the next key
/// starts, a line or more later: the error is moved to the bracket.
fn unclosed_flow(text: &str, d: Diagnostic) -> Diagnostic {
    if d.code != "yaml" || d.line < 2 {
        return d;
    }
    let mut open: Vec<(u64, u64, char)> = vec![];
    for (i, line) in text.lines().take(d.line as usize - 1).enumerate() {
        let mut quote: Option<char> = None;
        for (col, c) in line.chars().enumerate() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '#') if col == 0 || line[..].chars().nth(col - 1) == Some(' ') => break,
                (None, '"' | '\'') if !open.is_empty() => quote = Some(c),
                (None, '[' | '{') => open.push((i as u64 + 1, col as u64 + 1, c)),
                (None, ']' | '}') => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    let starts_a_key = text.lines().nth(d.line as usize - 1).is_some_and(|l| {
        l.trim_start()
            .split_once(':')
            .is_some_and(|(k, _)| !k.contains([' ', '[', '{', ',']) && !k.is_empty())
    });
    match open.last() {
        Some(&(line, column, c)) if starts_a_key => Origin::new(d.file.clone(), line, column)
            .error("yaml", format!("unclosed bracket '{c}'"))
            .with_help(format!(
                "close it with '{}' on line {line} (the next key, on line {}, was read as inside it: {})",
                if c == '[' { ']' } else { '}' },
                d.line,
                d.message
            )),
        _ => d,
    }
}

fn yaml_diagnostic(file: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let origin = match e.location() {
        Some(l) if l.line() > 0 => Origin::new(file, l.line(), l.column()),
        _ => Origin::file(file),
    };
    let mut msg = e.without_snippet().to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    let tick = |s: &str| s.split('`').nth(1).unwrap_or("").to_string();
    // "did you mean `packages`? " for a typo of one of the `expected` names.
    let guess = |word: &str, expected: &str| -> String {
        let names: Vec<&str> = expected
            .trim_start_matches("one of ")
            .split(',')
            .map(|n| n.trim().trim_matches('`'))
            .filter(|n| !n.is_empty())
            .collect();
        crate::suggest::closest(word, &names)
            .map(|n| format!("did you mean `{n}`? "))
            .unwrap_or_default()
    };
    if msg.starts_with("unknown field") {
        let expected = msg
            .split_once("expected ")
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
        let key = tick(&msg);
        origin
            .error("unknown-key", format!("unknown key `{key}`"))
            .with_help(format!(
                "{}{expected}; see docs/config.md",
                guess(&key, &expected)
            ))
    } else if msg.starts_with("missing field") {
        origin
            .error(
                "missing-key",
                format!("missing required key `{}`", tick(&msg)),
            )
            .with_help("add it; see docs/config.md")
    } else if msg.starts_with("unknown variant") {
        let expected = msg
            .split_once("expected ")
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
        let value = tick(&msg);
        origin
            .error("invalid-value", format!("`{value}` is not allowed here"))
            .with_help(format!("{}{expected}", guess(&value, &expected)))
    } else if let Some(rest) = msg.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest);
        origin
            .error(
                "duplicate-key",
                format!("key `{key}` appears twice in the same mapping"),
            )
            .with_help("remove one of them")
    } else if let Some((what, help)) = expected_in_config_terms(&msg) {
        origin.error("invalid-type", what).with_help(help)
    } else if msg.contains("budget") || msg.contains("limit") || msg.contains("recursion") {
        origin.error("too-complex", format!("the YAML is too deeply nested or expands too many aliases ({msg})")).with_help(
            format!("config files may nest at most {MAX_YAML_DEPTH} levels and aliases may expand to at most {MAX_ALIAS_EVENTS} nodes"),
        )
    } else {
        origin.error("yaml", msg)
    }
}

struct Loader<'a> {
    tree: &'a ConfigTree,
    diags: Diagnostics,
    /// Keys of problems already reported, so a role used by 500 hosts reports once.
    reported: HashSet<String>,
    identity: Option<&'a str>,
    /// Decrypted secrets by name (only with an identity).
    plain: HashMap<String, String>,
    /// The budgets of an untrusted config, and what it has used of them.
    budget: Option<crate::model::desired::ProposalLimits>,
    spent: Spent,
    /// Secrets the identity cannot open: an error only where one is used,
    /// so an unused secret never stops a plan (issue 33).
    undecryptable: HashMap<String, String>,
    /// `hosts` in templates: every host's name, group, index, labels and
    /// addresses, by name (see [`hosts::facts`]).
    host_facts: minijinja::Value,
    /// Addresses providers assigned, where known.
    known: &'a AddressBook,
    /// Which `facts.*` the host being rendered read.
    facts_seen: crate::model::facts::Seen,
    /// The errors of files that did not parse (their own YAML or keys).
    unparsed: Vec<Diagnostic>,
    /// tidekeeper.yaml is there but did not parse: what the other files
    /// are checked against is a guess, and their errors only echo it.
    fleet_unparsed: bool,
    /// A repo without hosts is not an error (`import` adds its first).
    no_hosts_yet: bool,
}

/// What resolving produced: the fleet, and what rendering it again needs.
struct Resolved {
    fleet: Fleet,
    roles: BTreeMap<String, RoleDef>,
    /// The names under secrets/.
    secrets: BTreeSet<String>,
}

/// A server setting and its key, for provider-specific checks.
type NamedSetting<'s> = (&'static str, &'s Option<S<String>>);

struct Templates {
    env: Environment<'static>,
    used_secret: Arc<AtomicBool>,
    /// Template name → repo path, for error locations.
    paths: HashMap<String, String>,
}

impl<'a> Loader<'a> {
    fn new(
        tree: &'a ConfigTree,
        identity: Option<&'a str>,
        known: &'a AddressBook,
        budget: Option<crate::model::desired::ProposalLimits>,
    ) -> Self {
        Loader {
            tree,
            diags: Diagnostics::default(),
            reported: HashSet::new(),
            identity,
            plain: HashMap::new(),
            undecryptable: HashMap::new(),
            unparsed: Vec::new(),
            fleet_unparsed: false,
            no_hosts_yet: false,
            budget,
            spent: Spent::default(),
            host_facts: minijinja::Value::UNDEFINED,
            known,
            facts_seen: Default::default(),
        }
    }

    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Report `d` only the first time `key` is seen.
    fn err_once(&mut self, key: String, d: Diagnostic) {
        if self.reported.insert(key) {
            self.diags.push(d);
        }
    }

    fn parse<T: DeserializeOwned>(&mut self, path: &str) -> Option<T> {
        let bytes = match self.tree.get(path) {
            Some(Entry::File { bytes, .. }) => bytes,
            Some(Entry::Symlink(t)) => {
                self.unparsable(Origin::file(path).error("symlink", format!("{path} is a symlink (to {t:?})"))
                    .with_help("config files must be regular files in the repo; replace the link with the file"));
                return None;
            }
            Some(Entry::TooLarge(n)) => {
                self.unparsable(too_large(path, *n as usize));
                return None;
            }
            _ => return None,
        };
        if bytes.len() > MAX_YAML_BYTES {
            self.unparsable(too_large(path, bytes.len()));
            return None;
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let before = &bytes[..e.valid_up_to()];
                let line = before.iter().filter(|b| **b == b'\n').count() as u64 + 1;
                let col = before
                    .rsplit(|b| *b == b'\n')
                    .next()
                    .map(|l| String::from_utf8_lossy(l).chars().count())
                    .unwrap_or(0) as u64
                    + 1;
                self.unparsable(
                    Origin::new(path, line, col)
                        .error("not-utf8", "the file is not valid UTF-8")
                        .with_help("save it as UTF-8"),
                );
                return None;
            }
        };
        match serde_saphyr::from_str_with_options::<T>(text, yaml_options()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.unparsable(unclosed_flow(text, yaml_diagnostic(path, &e)));
                None
            }
        }
    }

    /// An error that keeps a file from being read at all.
    fn unparsable(&mut self, d: Diagnostic) {
        self.unparsed.push(d.clone());
        self.err(d);
    }

    /// tidekeeper.yaml without the lines its errors are on, when that
    /// parses: the other files are then checked against the settings
    /// it does have, not defaults that would make errors of their own.
    fn fleet_file_without_errors(&self) -> Option<raw::FleetFile> {
        let Some(Entry::File { bytes, .. }) = self.tree.get(FLEET_FILE) else {
            return None;
        };
        let mut lines: Vec<&str> = std::str::from_utf8(bytes).ok()?.lines().collect();
        let indent = |l: &str| l.len() - l.trim_start().len();
        for _ in 0..20 {
            let e = match serde_saphyr::from_str_with_options::<raw::FleetFile>(
                &lines.join("\n"),
                yaml_options(),
            ) {
                Ok(f) => return Some(f),
                Err(e) => e,
            };
            let i = e.location().map(|l| l.line() as usize)?.checked_sub(1)?;
            let line = *lines.get(i)?;
            // Only a `key: value` line; a parent's children would go with it.
            let next = lines[i + 1..].iter().find(|l| !l.trim().is_empty());
            if !line.contains(':') || next.is_some_and(|n| indent(n) > indent(line)) {
                return None;
            }
            lines[i] = "";
        }
        None
    }

    /// YAML files directly in `dir`, as (stem, path).
    fn yaml_files(&mut self, dir: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (path, _) in self.tree.under(dir) {
            let rel = &path[dir.len() + 1..];
            let Some(stem) = rel
                .strip_suffix(".yaml")
                .or_else(|| rel.strip_suffix(".yml"))
            else {
                continue;
            };
            if rel.contains('/') {
                self.err(
                    Origin::file(path)
                        .error(
                            "misplaced-file",
                            format!("{path} is in a subdirectory of {dir}/"),
                        )
                        .with_help(format!("put it directly in {dir}/")),
                );
                continue;
            }
            if let Some(first) = seen.insert(stem.to_string(), path.to_string()) {
                self.err(
                    Origin::file(path)
                        .error(
                            "duplicate-name",
                            format!("{path} and {first} both define {stem:?}"),
                        )
                        .with_help("remove or rename one of them"),
                );
                continue;
            }
            out.push((stem.to_string(), path.to_string()));
        }
        out
    }

    fn mode(&mut self, file: &str, m: &Option<S<String>>) -> Option<u32> {
        let m = m.as_ref()?;
        match check::mode(&m.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(at(file, m).error("invalid-mode", e));
                None
            }
        }
    }

    fn host_path(&mut self, file: &str, p: &S<String>) {
        if let Err(e) = check::host_path(&p.value) {
            self.err(at(file, p).error("invalid-path", e));
        }
    }

    fn account(&mut self, file: &str, n: &Option<S<String>>) {
        if let Some(n) = n
            && let Err(e) = check::account_name(&n.value)
        {
            self.err(at(file, n).error("invalid-name", e));
        }
    }

    /// Health checks as written (`unit`, `command`, `http` or `container`,
    /// exactly one each); `stack` names the compose project of a stack's checks.
    fn health_checks(
        &mut self,
        file: &str,
        o: &Origin,
        specs: &[raw::HealthSpec],
        stack: Option<&str>,
    ) -> Vec<HealthCheck> {
        let mut health = Vec::new();
        for hc in specs {
            let set: Vec<HealthCheck> = [
                hc.unit.as_ref().map(|v| HealthCheck::Unit(v.value.clone())),
                hc.command
                    .as_ref()
                    .map(|v| HealthCheck::Command(v.value.clone())),
                hc.http.as_ref().map(|v| HealthCheck::Http(v.value.clone())),
                hc.container.as_ref().map(|v| {
                    HealthCheck::Container(match stack {
                        Some(p) => format!("{p}/{}", v.value),
                        None => v.value.clone(),
                    })
                }),
            ]
            .into_iter()
            .flatten()
            .collect();
            if set.len() != 1 {
                self.err(o.clone().error(
                    "invalid-health",
                    "each health check needs exactly one of unit, command, http, container",
                ));
                continue;
            }
            if let Some(u) = &hc.http
                && !(u.value.starts_with("http://") || u.value.starts_with("https://"))
            {
                self.err(at(file, u).error(
                    "invalid-value",
                    format!("{:?} is not an http:// or https:// URL", u.value),
                ));
            }
            health.extend(set);
        }
        health
    }

    /// The whole pipeline, section by section; None when tidekeeper.yaml
    /// (or what every section needs) is missing. Errors are in `diags`.
    fn run(&mut self) -> Option<Resolved> {
        let fleet_file = self.fleet_file();
        // With a broken tidekeeper.yaml, the rest is still checked against defaults
        // so that one run shows every error.
        let settings = Some(match fleet_file.as_ref() {
            Some(f) => self.settings(f),
            None => settings::default_settings(),
        });

        let secrets = self.secrets();
        let templates = self.templates(&secrets);
        let (roles, broken_roles) = self.roles(&secrets);

        let hosts::Loaded {
            hosts,
            groups,
            group_rollouts,
            broken_hosts,
        } = self.all_hosts(
            fleet_file.as_ref(),
            settings.as_ref(),
            &roles,
            &broken_roles,
            &templates,
        );
        let known_hosts = self.known_hosts();
        let fleetwide = jobs::Fleetwide {
            hosts: &hosts,
            groups: &groups,
            secrets: &secrets,
            broken_hosts: &broken_hosts,
        };
        let jobs = self.schedules(&fleetwide);
        let policies = self
            .tree
            .under("policies")
            .filter(|(p, _)| p.ends_with(".rego"))
            .map(|(p, _)| p.to_string())
            .collect();

        let mut settings = settings?;
        if let Some(n) = fleet_file.as_ref().and_then(|f| f.notify.as_ref()) {
            settings.notify = self.notify(n, &secrets, &hosts, &broken_hosts);
        }
        if let Some(f) = &fleet_file {
            self.check_canaries(&settings, f, &hosts, &broken_hosts);
            settings.apply_windows = self.apply_windows(f, &fleetwide);
        }
        let mut fleet = Fleet {
            name: fleet_file?.fleet.value,
            commit: None,
            hosts,
            jobs,
            known_hosts,
            policies,
            secrets_decrypted: false,
            redactions: vec![],
            secret_values: Default::default(),
            networks: settings.networks.clone(),
            settings,
            group_rollouts,
            source: None,
            warnings: vec![],
        };
        // Only for a config that is otherwise sound: a broken rule is
        // reported as itself, not as a lockout too.
        if self.diags.is_empty() {
            for d in crate::model::lockout::check(&fleet) {
                self.err(d);
            }
            fleet.warnings = crate::model::lockout::warnings(&fleet);
        }
        Some(Resolved {
            fleet,
            roles,
            secrets,
        })
    }

    /// tidekeeper.yaml, parsed; its absence is an error.
    fn fleet_file(&mut self) -> Option<raw::FleetFile> {
        if self.tree.get(FLEET_FILE).is_none() {
            self.err(
                Origin::file(FLEET_FILE)
                    .error(
                        "missing-file",
                        "the config repo has no tidekeeper.yaml at its top level",
                    )
                    .with_help(
                        "create it with at least `fleet: <name>`, or start from `tidekeeper init`",
                    ),
            );
        }
        let parsed = self.parse(FLEET_FILE);
        if parsed.is_some() || self.tree.get(FLEET_FILE).is_none() {
            return parsed;
        }
        let without = self.fleet_file_without_errors();
        self.fleet_unparsed = without.is_none();
        without
    }

    /// Every role under roles/, checked; and the names of those that did
    /// not parse (hosts naming them get no second error).
    fn roles(
        &mut self,
        secrets: &BTreeSet<String>,
    ) -> (BTreeMap<String, RoleDef>, BTreeSet<String>) {
        let mut roles: BTreeMap<String, RoleDef> = BTreeMap::new();
        let mut broken_roles: BTreeSet<String> = BTreeSet::new();
        for (name, path) in self.yaml_files("roles") {
            match self.parse::<raw::RoleFile>(&path) {
                Some(r) => {
                    let def = self.role(&path, r, secrets);
                    roles.insert(name, def);
                }
                None => {
                    broken_roles.insert(name);
                }
            }
        }
        (roles, broken_roles)
    }

    /// The jobs of schedules.yaml, when there is one.
    fn schedules(&mut self, fleet: &jobs::Fleetwide) -> Vec<Job> {
        match self.tree.get(SCHEDULES_FILE) {
            Some(_) => self
                .parse::<raw::SchedulesFile>(SCHEDULES_FILE)
                .map(|s| self.jobs(s, fleet))
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Every canary of tidekeeper.yaml's `rollout:` is a host of the fleet.
    fn check_canaries(
        &mut self,
        settings: &Settings,
        f: &raw::FleetFile,
        hosts: &[Host],
        broken_hosts: &BTreeSet<String>,
    ) {
        let (Some(r), Some(spec)) = (&settings.rollout, &f.rollout) else {
            return;
        };
        for (name, s) in r.canary.iter().zip(&spec.canary) {
            if !hosts.iter().any(|h| h.name == *name) && !broken_hosts.contains(name) {
                let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                let d = at(FLEET_FILE, s).error(
                    "unknown-host",
                    format!("rollout canary {name:?} is not a host of the fleet"),
                );
                self.err(match closest(name, &names) {
                    Some(c) => d.with_help(format!("did you mean {c:?}?")),
                    None => d,
                });
            }
        }
    }
}

fn entry_bytes(e: &Entry) -> Option<Vec<u8>> {
    match e {
        Entry::File { bytes, .. } => Some(bytes.clone()),
        _ => None,
    }
}

fn opt(s: &Option<S<String>>) -> Option<String> {
    s.as_ref().map(|s| s.value.clone())
}

fn clone_s(s: &S<String>) -> S<String> {
    Spanned {
        value: s.value.clone(),
        referenced: s.referenced,
        defined: s.defined,
    }
}

fn provider_name(p: ProviderKind) -> &'static str {
    match p {
        ProviderKind::Hetzner => "hetzner",
        ProviderKind::Lightsail => "lightsail",
        ProviderKind::Ec2 => "ec2",
        ProviderKind::Existing => "existing",
        ProviderKind::Local => "local",
    }
}

fn too_large(path: &str, n: usize) -> Diagnostic {
    Origin::file(path)
        .error(
            "file-too-large",
            format!("{path} is {n} bytes; config files may be at most {MAX_YAML_BYTES} bytes"),
        )
        .with_help("split it into several files (one per host or role)")
}

impl Loader<'_> {
    /// A reference to secret `s` from `file`: an error if it does not exist
    /// or if it is used but the identity cannot open it.
    fn use_secret(&mut self, file: &str, s: &S<String>, secrets: &BTreeSet<String>) -> bool {
        if !secrets.contains(&s.value) {
            self.err(missing_secret(file, s));
            return false;
        }
        if let Some(why) = self.undecryptable.get(&s.value).cloned() {
            self.err(undecryptable_secret(file, s, &why));
            return false;
        }
        true
    }
}

fn undecryptable_secret(file: &str, s: &S<String>, why: &str) -> Diagnostic {
    at(file, s)
        .error(
            "secret-decrypt",
            format!("secret {:?} is used here but secrets/{}.age cannot be decrypted: {why}", s.value, s.value),
        )
        .with_help("encrypt it to a recipient whose identity tidekeeper has (secrets/.recipients, then `tidekeeper secrets rekey`)")
}

fn missing_secret(file: &str, s: &S<String>) -> Diagnostic {
    at(file, s)
        .error(
            "missing-secret",
            format!(
                "secret {:?} is referenced but secrets/{}.age does not exist",
                s.value, s.value
            ),
        )
        .with_help(format!(
            "create it with `tidekeeper secrets encrypt {}`, or fix the name",
            s.value
        ))
}

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
fn closest<'b>(word: &str, candidates: &[&'b str]) -> Option<&'b str> {
    crate::suggest::closest(word, candidates)
}
