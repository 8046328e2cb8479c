//! Policy-as-code: every plan is judged by the built-in pack (the project's
//! top-level `policies/`) and the config repo's `policies/*.rego`, evaluated
//! in-process with regorus. Conventions as in conftest: `deny` blocks, `warn`
//! annotates. The input document is stable and documented in docs/policies.md.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::cloud::plan::CloudPlan;
use crate::engine::HostResult;
use crate::engine::plan::Action;
use crate::model::desired::{Fleet, Host, Resource};

/// The built-in pack, compiled in.
pub const BUILTIN: [(&str, &str); 5] = [
    ("policies/ssh.rego", include_str!("../policies/ssh.rego")),
    (
        "policies/exposure.rego",
        include_str!("../policies/exposure.rego"),
    ),
    (
        "policies/budget.rego",
        include_str!("../policies/budget.rego"),
    ),
    (
        "policies/destroy.rego",
        include_str!("../policies/destroy.rego"),
    ),
    (
        "policies/upgrades.rego",
        include_str!("../policies/upgrades.rego"),
    ),
];

/// How long one evaluation may take.
pub const TIME_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub deny: Vec<String>,
    pub warn: Vec<String>,
    /// Policies that failed to load or evaluate (these also block).
    pub errors: Vec<String>,
    /// A proposal's own new or changed policies, judged apart from the
    /// base's (they take effect after merge and block nothing now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposed: Option<Box<Verdict>>,
    /// What the policies' `print` calls said: kept here (and redacted with
    /// everything else that is shown), never written raw to a log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prints: Vec<String>,
    /// Each policy denial, typed: which policy, which rule, what it said
    /// (`deny` holds the same as lines for people).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<Denial>,
}

/// One denial by one policy rule.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Denial {
    /// The policy's package, e.g. `guard` or `tidekeeper.builtin.ssh`.
    pub policy: String,
    pub rule: String,
    pub message: String,
}

impl Denial {
    /// The line people read in `deny`.
    pub fn line(&self) -> String {
        format!("{} (policy {})", self.message, self.policy)
    }
}

impl Verdict {
    /// The typed denial behind a line of `deny` (none for a refusal that
    /// no policy gave, such as a destroy without permission).
    pub fn denial_of(&self, line: &str) -> Option<&Denial> {
        self.denials.iter().find(|d| d.line() == line)
    }

    pub fn blocks(&self) -> bool {
        !self.deny.is_empty() || !self.errors.is_empty()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.deny.is_empty() && self.warn.is_empty() && self.errors.is_empty() {
            return "Policies: all passed.\n".into();
        }
        s.push_str(&format!(
            "Policies: {} denied, {} warning{}{}.\n",
            self.deny.len(),
            self.warn.len(),
            if self.warn.len() == 1 { "" } else { "s" },
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} error{}",
                    self.errors.len(),
                    if self.errors.len() == 1 { "" } else { "s" }
                )
            }
        ));
        for d in &self.deny {
            s.push_str(&format!("  deny: {d}\n"));
        }
        for w in &self.warn {
            s.push_str(&format!("  warn: {w}\n"));
        }
        for e in &self.errors {
            s.push_str(&format!("  error: {e}\n"));
        }
        s.push_str(&self.proposed_text());
        s
    }

    /// The proposal's own policies, as plain text lines.
    fn proposed_text(&self) -> String {
        let Some(p) = &self.proposed else {
            return String::new();
        };
        let mut s = String::from("Proposed policies (take effect after merge):\n");
        for (what, lines) in [("deny", &p.deny), ("warn", &p.warn), ("error", &p.errors)] {
            for l in lines {
                s.push_str(&format!("  {what}: {l}\n"));
            }
        }
        if p.deny.is_empty() && p.warn.is_empty() && p.errors.is_empty() {
            s.push_str("  all passed\n");
        }
        s
    }

    /// The proposal's own policies for a markdown comment (their messages
    /// are the proposal's text: escaped).
    pub fn proposed_markdown(&self) -> String {
        let Some(p) = &self.proposed else {
            return String::new();
        };
        let esc = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('`', "&#96;")
        };
        let mut s = String::from(
            "**Proposed policies** (take effect after merge; they judge nothing now):\n\n",
        );
        for (what, lines) in [("deny", &p.deny), ("warn", &p.warn), ("error", &p.errors)] {
            for l in lines {
                s.push_str(&format!("- {what}: {}\n", esc(l)));
            }
        }
        if p.deny.is_empty() && p.warn.is_empty() && p.errors.is_empty() {
            s.push_str("- all passed\n");
        }
        s.push('\n');
        s
    }
}

/// Judge a proposal's own new or changed policy files, in an engine that
/// holds nothing else: no base file, no built-in. A file that declares a
/// package the base's files or the built-ins declare is refused, never
/// loaded: a proposal cannot add rules to (or switch off) the base's.
pub fn judge_proposed(
    fleet: &Fleet,
    results: &[&HostResult],
    cloud: Option<&CloudPlan>,
    proposed: &[(String, String)],
    base: &[(String, String)],
) -> Verdict {
    let reserved: std::collections::BTreeSet<String> = {
        let all: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .chain(base.iter().cloned())
            .collect();
        engine(&all).1.into_iter().flatten().collect()
    };
    let mut kept = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in proposed {
        let (_, pkgs, errs) = engine(std::slice::from_ref(&(path.clone(), text.clone())));
        errors.extend(errs);
        match pkgs.into_iter().flatten().next() {
            Some(pkg) if reserved.contains(&pkg) || pkg.starts_with("data.tidekeeper") => {
                errors.push(format!(
                    "{path}: declares package {}, which the base's policies own; refused (a proposal cannot add rules to the base's policies)",
                    pkg.strip_prefix("data.").unwrap_or(&pkg)
                ));
            }
            Some(_) => kept.push((path.clone(), text.clone())),
            None => {}
        }
    }
    let mut v = if kept.is_empty() {
        Verdict::default()
    } else {
        evaluate_input(input(fleet, results, cloud), &kept, false)
    };
    v.errors.extend(errors);
    v
}

/// Effective sshd settings of a host, from the sshd config files it
/// manages (first occurrence wins, as in sshd; keys lowercased).
fn sshd_settings(host: &Host) -> BTreeMap<String, String> {
    let mut files: Vec<(&str, &[u8])> = host
        .resources
        .iter()
        .filter_map(|r| match r {
            Resource::File(f)
                if f.path == "/etc/ssh/sshd_config"
                    || (f.path.starts_with("/etc/ssh/sshd_config.d/")
                        && f.path.ends_with(".conf")) =>
            {
                Some((f.path.as_str(), f.content.bytes.as_slice()))
            }
            _ => None,
        })
        .collect();
    // sshd reads the drop-ins (included first in Debian's sshd_config) in order.
    files.sort_by_key(|(p, _)| (*p == "/etc/ssh/sshd_config", p.to_string()));
    let mut out = BTreeMap::new();
    for (_, bytes) in files {
        for line in String::from_utf8_lossy(bytes).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.to_lowercase().starts_with("match ")
            {
                continue;
            }
            if let Some((k, v)) = line.split_once(char::is_whitespace) {
                out.entry(k.to_lowercase())
                    .or_insert_with(|| v.trim().to_string());
            }
        }
    }
    out
}

/// `input.cost`: the fleet's monthly cost before and after the plan. With
/// servers billed in more than one currency, the top-level figures are those
/// of the currency with the larger proposed cost; `by_currency` has them all.
fn cost(cloud: Option<&CloudPlan>) -> Value {
    let lines = cloud.map(|c| c.cost.clone()).unwrap_or_default();
    let by_currency: serde_json::Map<String, Value> = lines
        .iter()
        .map(|(cur, l)| {
            (
                cur.to_string(),
                json!({"prior": round(l.prior), "proposed": round(l.proposed), "delta": round(l.delta())}),
            )
        })
        .collect();
    let main = lines
        .iter()
        .max_by(|a, b| a.1.proposed.total_cmp(&b.1.proposed));
    let (currency, line) = match main {
        Some((c, l)) => (*c, *l),
        None => ("EUR", Default::default()),
    };
    json!({
        "prior": round(line.prior),
        "proposed": round(line.proposed),
        "delta": round(line.delta()),
        "currency": currency,
        "by_currency": by_currency,
    })
}

/// Cents, so policies compare the figures people see.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The input document for a plan: the hosts' resources, the cloud servers,
/// the hosts' effective settings and the fleet's monthly cost.
/// The input document, made one resource at a time straight into the
/// engine's values: a first apply of 500 hosts has some 26,000 resources,
/// and neither a JSON tree of them all nor their text is ever held.
pub fn input(fleet: &Fleet, results: &[&HostResult], cloud: Option<&CloudPlan>) -> regorus::Value {
    let mut rego = Rego::default();
    let mut resources = Vec::new();
    // The address and host are the resource's own; what it is before and
    // after is shared with every host that has it the same.
    let mut push = |v: Value| {
        let Value::Object(o) = v else { return };
        let doc: BTreeMap<regorus::Value, regorus::Value> = o
            .iter()
            .map(|(k, x)| {
                let x = match k.as_str() {
                    "before" | "after" => rego.shared(x),
                    _ => rego.value(x),
                };
                (rego.string(k), x)
            })
            .collect();
        resources.push(regorus::Value::from(doc));
    };
    server_changes(cloud, &mut push);
    host_changes(fleet, results, &mut push);
    let hosts: Vec<Value> = fleet
        .hosts
        .iter()
        .map(|h| {
            json!({
                "name": h.name,
                "group": h.group,
                "index": h.index,
                "provider": format!("{:?}", h.provider).to_lowercase(),
                "labels": h.labels,
                "roles": h.roles,
                "allow_destroy": h.allow_destroy,
                "server": h.server,
                "sshd": sshd_settings(h),
                "ssh": h.ssh,
            })
        })
        .collect();
    let rest = json!({
        "fleet": fleet.name,
        "commit": fleet.commit,
        "hosts": hosts,
        "cost": cost(cloud),
    });
    let mut doc = BTreeMap::new();
    doc.insert(rego.string("resources"), regorus::Value::from(resources));
    if let Value::Object(rest) = rest {
        for (k, v) in rest {
            doc.insert(rego.string(&k), rego.value(&v));
        }
    }
    regorus::Value::from(doc)
}

/// One resource document per cloud server change.
fn server_changes(cloud: Option<&CloudPlan>, push: &mut impl FnMut(Value)) {
    for c in cloud.map(|c| c.changes.as_slice()).unwrap_or_default() {
        let before = c.observed.as_ref().map(|o| {
            json!({
                "size": o.size,
                "image": o.image,
                "location": o.location,
                "labels": o.labels,
                "firewall": o.firewall,
                "monthly": c.cost_before.map(|m| m.amount),
                "allow_destroy": c.allow_destroy,
            })
        });
        let after = c.desired.as_ref().map(|d| {
            let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
            v["monthly"] = json!(c.cost_after.map(|m| m.amount));
            v
        });
        push(json!({
            "address": c.address(),
            "host": c.host,
            "type": "server",
            "provider": format!("{:?}", c.provider).to_lowercase(),
            "action": c.action.word(),
            "new_server": c.new_server(),
            "before": before.unwrap_or(json!({"allow_destroy": c.allow_destroy})),
            "after": after,
        }));
    }
}

/// One resource document per change planned on a host.
fn host_changes(fleet: &Fleet, results: &[&HostResult], push: &mut impl FnMut(Value)) {
    for r in results {
        let Some(plan) = &r.plan else { continue };
        let host = fleet.host(&r.host);
        for c in &plan.changes {
            let desired = host.and_then(|h| {
                h.resources
                    .iter()
                    .find(|x| x.kind() == c.kind && x.id() == c.id)
            });
            let after = match c.action {
                Action::Delete if c.prune => Value::Null,
                _ => desired
                    .map(|d| serde_json::to_value(d).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null),
            };
            let before: serde_json::Map<String, Value> = c
                .attrs
                .iter()
                .filter_map(|a| a.before.clone().map(|b| (a.name.clone(), Value::String(b))))
                .collect();
            push(json!({
                "address": format!("{} {} {}", r.host, c.kind, c.id),
                "host": r.host,
                "type": c.kind,
                "action": c.action,
                "before": before,
                "after": after,
            }));
        }
    }
}

/// JSON as the policy engine's values, each distinct string stored once:
/// the keys of 26,000 resource objects, the hosts' names and contents
/// repeated across hosts are shared instead of allocated each time.
#[derive(Default)]
struct Rego {
    strings: std::collections::HashSet<regorus::Rc<str>>,
    /// Whole values by the SHA-256 of their JSON text: what a resource
    /// looks like after the change is the same on every host of a role.
    values: std::collections::HashMap<[u8; 32], regorus::Value>,
}

impl Rego {
    /// A value stored once however often it occurs.
    fn shared(&mut self, v: &Value) -> regorus::Value {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(v.to_string().as_bytes()).into();
        if let Some(x) = self.values.get(&key) {
            return x.clone();
        }
        let x = self.value(v);
        self.values.insert(key, x.clone());
        x
    }

    fn string(&mut self, s: &str) -> regorus::Value {
        if let Some(x) = self.strings.get(s) {
            return regorus::Value::String(x.clone());
        }
        let x: regorus::Rc<str> = regorus::Rc::from(s);
        self.strings.insert(x.clone());
        regorus::Value::String(x)
    }

    fn value(&mut self, v: &Value) -> regorus::Value {
        match v {
            Value::Null => regorus::Value::Null,
            Value::Bool(b) => regorus::Value::from(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => regorus::Value::from(u),
                (None, Some(i)) => regorus::Value::from(i),
                _ => regorus::Value::from(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => self.string(s),
            Value::Array(a) => {
                regorus::Value::from(a.iter().map(|x| self.value(x)).collect::<Vec<_>>())
            }
            Value::Object(o) => regorus::Value::from(
                o.iter()
                    .map(|(k, x)| (self.string(k), self.value(x)))
                    .collect::<BTreeMap<_, _>>(),
            ),
        }
    }
}

/// Judge a plan by the built-in pack and `repo_policies`. Policies judge
/// changes: a plan without any has nothing to judge.
pub fn judge(
    fleet: &Fleet,
    results: &[&HostResult],
    cloud: Option<&CloudPlan>,
    repo_policies: &[(String, String)],
) -> Verdict {
    let changes = cloud.is_some_and(|c| c.has_changes())
        || results
            .iter()
            .any(|r| r.plan.as_ref().is_some_and(|p| p.has_changes()));
    if !changes {
        return Verdict::default();
    }
    evaluate_input(input(fleet, results, cloud), repo_policies, true)
}

/// An engine with `policies` loaded; each file's package (None where the
/// file did not load, in the same order as `policies`); the load errors.
fn engine(policies: &[(String, String)]) -> (regorus::Engine, Vec<Option<String>>, Vec<String>) {
    let mut engine = regorus::Engine::new();
    // `print` output is gathered into the verdict, not sent to stderr where
    // it could pose as the daemon's own log lines.
    engine.set_gather_prints(true);
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: TIME_LIMIT,
        check_interval: NonZeroU32::new(100).expect("non-zero"),
    });
    let mut packages = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in policies {
        match engine.add_policy(path.clone(), text.clone()) {
            Ok(pkg) => packages.push(Some(pkg)),
            Err(e) => {
                packages.push(None);
                errors.push(format!("{path}: {e}"));
            }
        }
    }
    (engine, packages, errors)
}

fn strings(v: &regorus::Value) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        _ => vec![],
    }
}

/// Judge the input with the built-in pack (unless `builtin` is false) and
/// the repo's policies: `(path, text)` pairs.
pub fn evaluate(input: &Value, repo_policies: &[(String, String)], builtin: bool) -> Verdict {
    evaluate_input(Rego::default().value(input), repo_policies, builtin)
}

/// [`evaluate`] of an input already made the engine's value.
fn evaluate_input(
    input: regorus::Value,
    repo_policies: &[(String, String)],
    builtin: bool,
) -> Verdict {
    let mut all: Vec<(String, String)> = Vec::new();
    if builtin {
        all.extend(
            BUILTIN
                .iter()
                .map(|(p, t)| (format!("(built-in) {p}"), t.to_string())),
        );
    }
    all.extend(repo_policies.iter().cloned());
    let (mut engine, packages, errors) = engine(&all);
    let mut verdict = Verdict {
        errors,
        ..Default::default()
    };
    engine.set_input(input);
    let mut seen = std::collections::BTreeSet::new();
    let mut denials = Vec::new();
    for pkg in packages.into_iter().flatten() {
        if !seen.insert(pkg.clone()) {
            continue;
        }
        for (rule, out) in [("deny", &mut verdict.deny), ("warn", &mut verdict.warn)] {
            match engine.eval_rule(format!("{pkg}.{rule}")) {
                // Each message names the policy that gave it.
                Ok(v) => {
                    let name = pkg.strip_prefix("data.").unwrap_or(&pkg);
                    for m in strings(&v) {
                        let d = Denial {
                            policy: name.to_string(),
                            rule: rule.to_string(),
                            message: m,
                        };
                        out.push(d.line());
                        if rule == "deny" {
                            denials.push(d);
                        }
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    // A package without that rule is fine.
                    if !msg.contains("not a valid rule path")
                        && !msg.contains("not found")
                        && !msg.contains("no rule")
                    {
                        verdict.errors.push(format!("{pkg}.{rule}: {msg}"));
                    }
                }
            }
        }
    }
    verdict.prints = engine
        .take_prints()
        .unwrap_or_default()
        .into_iter()
        .take(100)
        .map(|p| p.chars().filter(|c| !c.is_control()).take(500).collect())
        .collect();
    denials.sort_by(|a: &Denial, b: &Denial| (&a.policy, &a.message).cmp(&(&b.policy, &b.message)));
    denials.dedup();
    verdict.denials = denials;
    verdict.deny.sort();
    verdict.deny.dedup();
    verdict.warn.sort();
    verdict.warn.dedup();
    verdict
}

/// `tidekeeper policy test`: every `test_*` rule in the repo's policies must be true.
pub fn run_tests(repo_policies: &[(String, String)]) -> Vec<(String, Result<(), String>)> {
    let (mut engine, packages, errors) = engine(repo_policies);
    let mut out: Vec<(String, Result<(), String>)> =
        errors.into_iter().map(|e| (e.clone(), Err(e))).collect();
    // A file that did not load is one failure; the others' tests still run.
    for ((_, text), pkg) in repo_policies.iter().zip(packages) {
        let Some(pkg) = pkg else { continue };
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                l.starts_with("test_").then(|| {
                    l.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
            })
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let rule = format!("{pkg}.{name}");
            let result = match engine.eval_rule(rule.clone()) {
                Ok(v) if v == regorus::Value::from(true) => Ok(()),
                Ok(v) => Err(format!(
                    "evaluated to {}",
                    serde_json::to_string(&v).unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            };
            out.push((rule, result));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_is_typed_with_its_policy_and_rule_and_never_parsed_back() {
        let policy = "package team.guard\n\nimport rego.v1\n\ndeny contains \"no (policy x) here\" if true\n";
        let v = evaluate(
            &serde_json::json!({"resources": []}),
            &[("policies/guard.rego".into(), policy.into())],
            false,
        );
        assert_eq!(
            v.denials,
            [Denial {
                policy: "team.guard".into(),
                rule: "deny".into(),
                message: "no (policy x) here".into(),
            }]
        );
        assert_eq!(v.deny, ["no (policy x) here (policy team.guard)"]);
        // A message that itself holds " (policy " names the right policy.
        assert_eq!(v.denial_of(&v.deny[0]).unwrap().policy, "team.guard");
        assert!(v.denial_of("the server would be destroyed").is_none());
    }

    #[test]
    fn the_builtin_pack_loads_and_judges() {
        let input = json!({
            "resources": [{
                "address": "web-1 firewall ufw", "host": "web-1", "type": "firewall", "action": "update",
                "before": {}, "after": {"rules": [{"action": "allow", "from_port": 22, "to_port": 22, "from": "0.0.0.0/0", "proto": "tcp"}]}
            }],
            "hosts": [{"name": "web-1", "labels": {}, "sshd": {"passwordauthentication": "yes"}}],
            "cost": {"prior": 0, "proposed": 0, "delta": 0, "currency": "EUR"}
        });
        let v = evaluate(&input, &[], true);
        assert!(v.errors.is_empty(), "{:?}", v.errors);
        assert_eq!(v.deny.len(), 2, "{v:?}");
        assert!(
            v.deny
                .iter()
                .any(|d| d.contains("opens port 22 to the whole internet"))
        );
        assert!(
            v.deny
                .iter()
                .any(|d| d.contains("allows SSH password login"))
        );
        // Labelled public and key-only: clean.
        let mut ok = input.clone();
        ok["hosts"][0]["labels"] = json!({"ssh_public": "true"});
        ok["hosts"][0]["sshd"] = json!({"passwordauthentication": "no"});
        assert!(!evaluate(&ok, &[], true).blocks());
    }

    fn costs(eur: f64, usd: f64) -> Value {
        json!({
            "resources": [], "hosts": [],
            "cost": {"prior": 0, "proposed": eur, "delta": eur, "currency": "EUR",
                     "by_currency": {"EUR": {"prior": 0, "proposed": eur, "delta": eur},
                                     "USD": {"prior": 0, "proposed": usd, "delta": usd}}}
        })
    }

    #[test]
    fn the_budget_is_judged_in_its_own_currency() {
        let usd = [(
            "policies/budget.rego".to_string(),
            "package tidekeeper.budget\nmonthly := 0.10\ncurrency := \"USD\"\n".to_string(),
        )];
        let v = evaluate(&costs(5.0, 3.5), &usd, true);
        assert_eq!(
            v.deny,
            [
                "monthly cost 3.50 USD exceeds the budget of 0.1 USD (policy tidekeeper.builtin.budget)"
            ],
            "{v:?}"
        );
        assert!(!evaluate(&costs(5.0, 0.05), &usd, true).blocks());
        // Without a currency, the fleet's main one.
        let plain = [(
            "policies/budget.rego".to_string(),
            "package tidekeeper.budget\nmonthly := 4\n".to_string(),
        )];
        let v = evaluate(&costs(5.0, 0.0), &plain, true);
        assert_eq!(
            v.deny,
            [
                "monthly cost 5.00 EUR exceeds the budget of 4 EUR (policy tidekeeper.builtin.budget)"
            ]
        );
        // No budget: nothing to exceed.
        assert!(!evaluate(&costs(500.0, 0.0), &[], true).blocks());
    }

    #[test]
    fn a_cloud_firewall_open_to_the_world_on_port_22_is_denied() {
        let server = |from: &str, labels: Value| {
            json!({"resources": [{"address": "web server", "host": "web", "type": "server",
                "action": "create", "before": {"allow_destroy": false},
                "after": {"firewall": [{"from_port": 22, "to_port": 22, "proto": "tcp", "from": [from]}]}}],
                "hosts": [{"name": "web", "labels": labels, "sshd": {}}],
                "cost": {"prior": 0, "proposed": 0, "delta": 0, "currency": "EUR", "by_currency": {}}})
        };
        let v = evaluate(&server("::/0", json!({})), &[], true);
        assert_eq!(v.deny.len(), 1, "{v:?}");
        assert!(v.deny[0].contains("lets port 22 in from ::/0"), "{v:?}");
        assert!(!evaluate(&server("10.0.0.2/32", json!({})), &[], true).blocks());
        assert!(
            !evaluate(
                &server("0.0.0.0/0", json!({"ssh_public": "true"})),
                &[],
                true
            )
            .blocks()
        );
    }

    #[test]
    fn the_input_written_one_resource_at_a_time_is_the_whole_document() {
        let mut t = crate::source::ConfigTree::default();
        t.insert_file("tidekeeper.yaml", "fleet: acme\n");
        t.insert_file(
            "roles/r.yaml",
            "files:\n  - {path: /etc/a, content: \"a\\n\"}\n  - {path: /etc/b, content: \"b\\n\"}\n",
        );
        for h in ["web-1", "web-2"] {
            t.insert_file(
                format!("hosts/{h}.yaml"),
                "provider: existing\naddress: 10.0.0.5\nroles: [r]\n",
            );
        }
        let fleet = crate::model::load(&t).unwrap();
        let opts = crate::engine::Options::default();
        let results: Vec<crate::engine::HostResult> = fleet
            .hosts
            .iter()
            .map(|h| crate::engine::preview(h, "-", "new", &opts))
            .collect();
        let refs: Vec<&crate::engine::HostResult> = results.iter().collect();
        let v: Value = serde_json::to_value(input(&fleet, &refs, None)).unwrap();
        let addresses: Vec<&str> = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["address"].as_str().unwrap())
            .collect();
        assert_eq!(
            addresses,
            [
                "web-1 file /etc/a",
                "web-1 file /etc/b",
                "web-2 file /etc/a",
                "web-2 file /etc/b"
            ]
        );
        assert_eq!(v["fleet"], "acme");
        assert_eq!(v["hosts"].as_array().unwrap().len(), 2);
        assert_eq!(v["resources"][0]["after"]["content"], "a\n");
        // No resources at all is still a document.
        let empty: Value = serde_json::to_value(input(&fleet, &[], None)).unwrap();
        assert_eq!(empty["resources"], json!([]));
    }

    #[test]
    fn destroying_a_server_needs_permission() {
        let delete = |allowed: bool| {
            json!({"resources": [{"address": "old server", "host": "old", "type": "server",
                "action": "delete", "before": {"allow_destroy": allowed}, "after": null}],
                "hosts": [], "cost": {"prior": 0, "proposed": 0, "delta": 0, "currency": "EUR", "by_currency": {}}})
        };
        let v = evaluate(&delete(false), &[], true);
        assert_eq!(v.deny.len(), 1, "{v:?}");
        assert!(v.deny[0].contains("old server would be destroyed"));
        assert!(!evaluate(&delete(true), &[], true).blocks());
        // A Lightsail resize deletes the old instance once its copy runs.
        let copy = |new_server: bool| {
            json!({"resources": [{"address": "agent server", "host": "agent", "type": "server",
                "action": "resize", "new_server": new_server, "before": {"allow_destroy": false}, "after": {}}],
                "hosts": [], "cost": {"prior": 0, "proposed": 0, "delta": 0, "currency": "USD", "by_currency": {}}})
        };
        let v = evaluate(&copy(true), &[], true);
        assert_eq!(v.deny.len(), 1, "{v:?}");
        assert!(v.deny[0].contains("copied to a new instance and the old one destroyed"));
        assert!(
            !evaluate(&copy(false), &[], true).blocks(),
            "a resize in place"
        );
    }

    #[test]
    fn a_runaway_policy_is_stopped() {
        let slow = "package slow\nimport rego.v1\ndeny contains x if { some a in numbers.range(1, 100000); some b in numbers.range(1, 100000); x := a * b; x < 0 }\n";
        let started = std::time::Instant::now();
        let v = evaluate(
            &json!({}),
            &[("policies/slow.rego".into(), slow.into())],
            false,
        );
        assert!(
            started.elapsed() < TIME_LIMIT * 3,
            "{:?}",
            started.elapsed()
        );
        assert!(v.blocks(), "a policy that cannot finish blocks: {v:?}");
    }
}
