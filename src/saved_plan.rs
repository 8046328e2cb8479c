//! A saved plan (`plan --out FILE`, `apply FILE`, `show FILE`): the plan of
//! one commit as a versioned, self-describing JSON file with a digest over
//! all of it. It holds what each change does (a file's new content only as
//! its SHA-256, never the content), what each host's probe and the cloud
//! listing saw (as digests), the costs and the policies' verdict, and the
//! plan as people read it (text, markdown, JSON).
//!
//! A saved plan is never executed from the file: `apply FILE` plans the
//! commit again and applies only when the fresh plan is the saved one
//! ([`differences`] names what moved otherwise). So a forged file can at most
//! make apply refuse; the digest catches a file edited by hand or corrupted.
//! Pure: reading and writing the file is the caller's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::HostResult;
use crate::engine::item::Item;
use crate::reconcile::FleetPlan;

/// The version of the file's layout; a file of another version is refused.
pub const FORMAT_VERSION: u32 = 1;

/// What a saved plan file says of itself.
const KIND: &str = "tidekeeper saved plan";

/// Files larger than this are not saved plans (a guard against reading a
/// huge file given by mistake or on purpose).
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// A saved plan, as the file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPlan {
    pub kind: String,
    pub format_version: u32,
    /// The tidekeeper that wrote it.
    pub written_by: String,
    pub plan: Planned,
    pub shown: Shown,
    /// SHA-256 over `kind`, `format_version`, `written_by`, `plan` and
    /// `shown` (see [`SavedPlan::compute_digest`]).
    pub digest: String,
}

/// What was planned: everything `apply FILE` compares with a fresh plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Planned {
    pub fleet: String,
    pub commit: String,
    /// The hosts asked for (`--host`), empty for the whole fleet.
    pub selected: Vec<String>,
    pub allow_destroy: bool,
    pub allow_mass_delete: bool,
    pub hosts: Vec<SavedHost>,
    pub cloud: Option<SavedCloud>,
    /// The policies' verdict, and the cloud stage's refusals.
    pub verdict: Value,
    pub refusals: Vec<String>,
}

/// One host's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedHost {
    pub host: String,
    /// SHA-256 of what the host's probe saw; None when it was not probed
    /// (a new server, planned against an empty machine).
    pub observed: Option<String>,
    pub changes: Vec<SavedChange>,
    pub handlers: Vec<String>,
    pub blocked: Vec<String>,
    pub skipped: Option<String>,
    pub error: Option<String>,
}

/// One planned change to a resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedChange {
    pub kind: String,
    pub id: String,
    pub action: String,
    /// Attributes before and after, as the plan shows them.
    pub attrs: Value,
    /// SHA-256 of a file's new content.
    pub content: Option<String>,
    pub prune: bool,
}

/// The cloud stage's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedCloud {
    /// SHA-256 of the fleet's servers and networks as listed.
    pub observed: Option<String>,
    pub changes: Value,
    pub networks: Value,
    pub cost: Value,
    pub errors: Vec<String>,
    pub unavailable: Option<String>,
}

/// The plan as people read it, rendered when it was saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shown {
    pub text: String,
    pub markdown: String,
    pub json: Value,
}

/// Why a file is not a saved plan that may be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("not a saved plan: {0}")]
    Unreadable(String),
    #[error(
        "a saved plan of format version {found}; this tidekeeper reads version {FORMAT_VERSION}"
    )]
    Version { found: u64 },
    #[error("the saved plan was edited or is corrupt: its digest does not match its content")]
    Digest,
}

/// What a saved plan is made of, besides the plan itself.
pub struct Parts<'a> {
    pub selected: &'a [String],
    pub allow_destroy: bool,
    pub allow_mass_delete: bool,
    pub gate: &'a crate::reconcile::Gate,
    pub redact: &'a dyn Fn(&str) -> String,
}

impl SavedPlan {
    /// The saved plan of `fp`, every string passed through `parts.redact`.
    pub fn new(fp: &FleetPlan, parts: &Parts<'_>) -> SavedPlan {
        let plan = planned(fp, parts);
        let results = fp.results();
        let commit = plan.commit.clone();
        let review = crate::report::Review {
            fleet: &fp.fleet.name,
            commit: &commit,
            cloud: fp.cloud.as_ref(),
            results: &results,
            verdict: &parts.gate.verdict,
            after_merge: &[],
        };
        let mut json = crate::report::plan_json(&review, false);
        redact_all(&mut json, parts.redact);
        let shown = Shown {
            text: (parts.redact)(&crate::reconcile::text(fp.cloud.as_ref(), &results, false)),
            markdown: (parts.redact)(&crate::report::markdown(
                &review,
                crate::report::GITHUB_LIMIT,
            )),
            json,
        };
        let mut saved = SavedPlan {
            kind: KIND.to_string(),
            format_version: FORMAT_VERSION,
            written_by: env!("CARGO_PKG_VERSION").to_string(),
            plan,
            shown,
            digest: String::new(),
        };
        saved.digest = saved.compute_digest();
        saved
    }

    /// SHA-256 of everything but the digest, as the file's JSON writes it.
    pub fn compute_digest(&self) -> String {
        let body = serde_json::json!({
            "kind": self.kind,
            "format_version": self.format_version,
            "written_by": self.written_by,
            "plan": self.plan,
            "shown": self.shown,
        });
        crate::digest::sha256_hex(body.to_string().as_bytes())
    }

    /// The file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a saved plan serializes") + "\n"
    }

    /// Read a saved plan: of this format version, and as it was written.
    pub fn from_json(text: &[u8]) -> Result<SavedPlan, LoadError> {
        let doc: Value =
            serde_json::from_slice(text).map_err(|e| LoadError::Unreadable(e.to_string()))?;
        if doc.get("kind").and_then(Value::as_str) != Some(KIND) {
            return Err(LoadError::Unreadable(format!(
                "it does not say \"kind\": \"{KIND}\""
            )));
        }
        match doc.get("format_version").and_then(Value::as_u64) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(found) => return Err(LoadError::Version { found }),
            None => return Err(LoadError::Unreadable("no format_version".into())),
        }
        let saved: SavedPlan =
            serde_json::from_value(doc).map_err(|e| LoadError::Unreadable(e.to_string()))?;
        if saved.digest != saved.compute_digest() {
            return Err(LoadError::Digest);
        }
        Ok(saved)
    }
}

/// The comparable part of a plan.
fn planned(fp: &FleetPlan, parts: &Parts<'_>) -> Planned {
    let r = parts.redact;
    let mut verdict = serde_json::to_value(&parts.gate.verdict).unwrap_or_default();
    redact_all(&mut verdict, r);
    let mut cloud = fp.cloud.as_ref().map(|c| SavedCloud {
        observed: c.observed.clone(),
        changes: serde_json::to_value(&c.changes).unwrap_or_default(),
        networks: serde_json::to_value(&c.networks).unwrap_or_default(),
        cost: serde_json::to_value(&c.cost).unwrap_or_default(),
        errors: c.errors.iter().map(|e| r(e)).collect(),
        unavailable: c.unavailable.as_deref().map(r),
    });
    if let Some(c) = cloud.as_mut() {
        for v in [&mut c.changes, &mut c.networks, &mut c.cost] {
            redact_all(v, r);
        }
    }
    Planned {
        fleet: fp.fleet.name.clone(),
        commit: fp.fleet.commit.clone().unwrap_or_default(),
        selected: parts.selected.to_vec(),
        allow_destroy: parts.allow_destroy,
        allow_mass_delete: parts.allow_mass_delete,
        hosts: fp.hosts.iter().map(|h| saved_host(h, r)).collect(),
        cloud,
        verdict,
        refusals: parts.gate.refusals.iter().map(|x| r(x)).collect(),
    }
}

fn saved_host(h: &HostResult, r: &dyn Fn(&str) -> String) -> SavedHost {
    let plan = h.plan.as_ref();
    let changes = plan
        .map(|p| {
            p.changes
                .iter()
                .map(|c| {
                    let mut attrs = serde_json::to_value(&c.attrs).unwrap_or_default();
                    redact_all(&mut attrs, r);
                    SavedChange {
                        kind: c.kind.word().to_string(),
                        id: r(&c.id),
                        action: serde_json::to_value(c.action)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        attrs,
                        content: match &c.item {
                            Some(Item::File(f)) if !c.prune => Some(f.sha256.clone()),
                            _ => None,
                        },
                        prune: c.prune,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    SavedHost {
        host: h.host.clone(),
        observed: plan.and_then(|p| p.observed.clone()),
        changes,
        handlers: plan
            .map(|p| p.handlers.iter().map(|x| x.name.clone()).collect())
            .unwrap_or_default(),
        blocked: plan
            .map(|p| p.blocked.iter().map(|x| r(x)).collect())
            .unwrap_or_default(),
        skipped: h.skipped.as_deref().map(r),
        error: h.error.as_deref().map(r),
    }
}

/// Every string in `v` passed through `r`.
fn redact_all(v: &mut Value, r: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = r(s),
        Value::Array(a) => a.iter_mut().for_each(|x| redact_all(x, r)),
        Value::Object(o) => o.values_mut().for_each(|x| redact_all(x, r)),
        _ => {}
    }
}

/// Text from a saved plan made safe for a terminal: no control character
/// but line breaks and tabs. The file may have been written by anyone (its
/// digest proves nothing of its author), and an escape sequence in it must
/// not act on the terminal of the person reviewing it.
pub fn terminal_safe(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

/// What moved between the `saved` plan and a `fresh` plan of the same
/// config, a line each (none: the fresh plan is the saved plan).
pub fn differences(saved: &SavedPlan, fresh: &SavedPlan) -> Vec<String> {
    let (s, f) = (&saved.plan, &fresh.plan);
    let mut out = Vec::new();
    if s.fleet != f.fleet {
        out.push(format!(
            "the fleet differs: the plan is of {:?}, the config names {:?}",
            s.fleet, f.fleet
        ));
    }
    if s.commit != f.commit {
        out.push(format!(
            "the commit differs: the plan is of {}, the config repo is at {}",
            short(&s.commit),
            short(&f.commit)
        ));
    }
    out.extend(host_differences(&s.hosts, &f.hosts));
    out.extend(cloud_differences(s.cloud.as_ref(), f.cloud.as_ref()));
    if s.verdict != f.verdict || s.refusals != f.refusals {
        out.push("the policies' verdict differs from the plan's".into());
    }
    if out.is_empty() && (s != f || saved.shown != fresh.shown) {
        out.push("the plan differs from the saved plan".into());
    }
    out
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn host_differences(saved: &[SavedHost], fresh: &[SavedHost]) -> Vec<String> {
    let by_name = |hs: &[SavedHost]| -> BTreeMap<String, SavedHost> {
        hs.iter().map(|h| (h.host.clone(), h.clone())).collect()
    };
    let (saved, fresh) = (by_name(saved), by_name(fresh));
    let mut out = Vec::new();
    for name in saved
        .keys()
        .chain(fresh.keys().filter(|n| !saved.contains_key(*n)))
    {
        match (saved.get(name), fresh.get(name)) {
            (Some(_), None) => out.push(format!("host {name}: in the plan, not planned now")),
            (None, Some(_)) => out.push(format!("host {name}: planned now, not in the plan")),
            (Some(s), Some(f)) => out.extend(one_host(name, s, f)),
            (None, None) => {}
        }
    }
    out
}

fn one_host(name: &str, s: &SavedHost, f: &SavedHost) -> Vec<String> {
    let mut out = Vec::new();
    let key = |c: &SavedChange| (c.kind.clone(), c.id.clone());
    let saved: BTreeMap<_, _> = s.changes.iter().map(|c| (key(c), c)).collect();
    let fresh: BTreeMap<_, _> = f.changes.iter().map(|c| (key(c), c)).collect();
    for k in saved
        .keys()
        .chain(fresh.keys().filter(|k| !saved.contains_key(*k)))
    {
        let (kind, id) = k;
        let line = match (saved.get(k), fresh.get(k)) {
            (Some(_), None) => "in the plan, now nothing to do".to_string(),
            (None, Some(c)) => format!("not in the plan, now to {}", c.action),
            (Some(a), Some(b)) if a.content != b.content => {
                "content differs from the plan".to_string()
            }
            (Some(a), Some(b)) if a != b => "the change differs from the plan".to_string(),
            _ => continue,
        };
        out.push(format!("host {name}: {kind} {id}: {line}"));
    }
    if s.observed != f.observed {
        out.push(format!(
            "host {name}: its observed state changed since the plan"
        ));
    }
    if s.handlers != f.handlers {
        out.push(format!(
            "host {name}: the handlers to run differ from the plan"
        ));
    }
    if s.blocked != f.blocked || s.skipped != f.skipped || s.error != f.error {
        out.push(format!(
            "host {name}: {}",
            f.error
                .as_deref()
                .or(f.skipped.as_deref())
                .map(|e| format!("now: {e}"))
                .unwrap_or_else(|| "what stops it differs from the plan".into())
        ));
    }
    out
}

fn cloud_differences(s: Option<&SavedCloud>, f: Option<&SavedCloud>) -> Vec<String> {
    let mut out = Vec::new();
    match (s, f) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            out.push("cloud: the servers planned differ from the plan".into())
        }
        (Some(s), Some(f)) => {
            if s.observed != f.observed {
                out.push("cloud: the servers or networks changed since the plan".into());
            }
            if s.changes != f.changes || s.networks != f.networks {
                out.push("cloud: the server changes differ from the plan".into());
            }
            if s.cost != f.cost {
                out.push("cloud: the monthly cost differs from the plan".into());
            }
            if s.errors != f.errors || s.unavailable != f.unavailable {
                out.push("cloud: what stops the cloud plan differs from the plan".into());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cost summed from parts (EC2: compute, volume, address) reads back
    /// as the same number: the digest is taken over what is read.
    #[test]
    fn every_float_reads_back_as_written_so_the_digest_holds() {
        let sums = [17.52 + 1.904 + 3.65, 0.1 + 0.2, 35.04 + 1.904 + 3.65];
        for x in sums {
            let text = serde_json::json!({ "cost": x }).to_string();
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back["cost"].as_f64(), Some(x), "{text}");
            assert_eq!(back.to_string(), text);
        }
    }

    fn change(id: &str, content: &str) -> SavedChange {
        SavedChange {
            kind: "file".into(),
            id: id.into(),
            action: "update".into(),
            attrs: Value::Array(vec![]),
            content: Some(content.into()),
            prune: false,
        }
    }

    fn host(name: &str, observed: &str, changes: Vec<SavedChange>) -> SavedHost {
        SavedHost {
            host: name.into(),
            observed: Some(observed.into()),
            changes,
            handlers: vec![],
            blocked: vec![],
            skipped: None,
            error: None,
        }
    }

    fn saved(commit: &str, hosts: Vec<SavedHost>) -> SavedPlan {
        let mut p = SavedPlan {
            kind: KIND.into(),
            format_version: FORMAT_VERSION,
            written_by: "test".into(),
            plan: Planned {
                fleet: "acme".into(),
                commit: commit.into(),
                selected: vec![],
                allow_destroy: false,
                allow_mass_delete: false,
                hosts,
                cloud: None,
                verdict: serde_json::json!({"deny": []}),
                refusals: vec![],
            },
            shown: Shown {
                text: "web\n  ~ file /etc/motd\n".into(),
                markdown: "### web".into(),
                json: serde_json::json!({}),
            },
            digest: String::new(),
        };
        p.digest = p.compute_digest();
        p
    }

    #[test]
    fn a_saved_plan_reads_back_as_it_was_written() {
        let p = saved(
            "a".repeat(40).as_str(),
            vec![host("web", "o1", vec![change("/etc/motd", "c1")])],
        );
        let back = SavedPlan::from_json(p.to_json().as_bytes()).unwrap();
        assert_eq!(back, p);
        assert!(differences(&p, &back).is_empty());
    }

    #[test]
    fn a_saved_plan_edited_by_hand_is_refused_as_edited_or_corrupt() {
        let p = saved(
            "abc",
            vec![host("web", "o1", vec![change("/etc/motd", "c1")])],
        );
        let edited = p.to_json().replace("/etc/motd", "/etc/shadow");
        assert_eq!(
            SavedPlan::from_json(edited.as_bytes()),
            Err(LoadError::Digest)
        );
        let shown = p.to_json().replace("~ file", "no change");
        assert_eq!(
            SavedPlan::from_json(shown.as_bytes()),
            Err(LoadError::Digest)
        );
        let mut extra: Value = serde_json::from_str(&p.to_json()).unwrap();
        extra["plan"]["run"] = Value::String("rm -rf /".into());
        assert!(matches!(
            SavedPlan::from_json(extra.to_string().as_bytes()),
            Err(LoadError::Unreadable(_))
        ));
    }

    #[test]
    fn a_saved_plan_of_another_format_version_or_kind_is_refused() {
        let p = saved("abc", vec![]);
        let mut doc: Value = serde_json::from_str(&p.to_json()).unwrap();
        doc["format_version"] = 2.into();
        assert_eq!(
            SavedPlan::from_json(doc.to_string().as_bytes()),
            Err(LoadError::Version { found: 2 })
        );
        assert!(matches!(
            SavedPlan::from_json(b"{\"kind\": \"terraform\"}"),
            Err(LoadError::Unreadable(_))
        ));
        assert!(matches!(
            SavedPlan::from_json(b"not json"),
            Err(LoadError::Unreadable(_))
        ));
    }

    #[test]
    fn differences_name_the_commit_the_host_the_path_and_what_was_observed() {
        let p = saved(
            "1111111111111111",
            vec![host("web", "o1", vec![change("/etc/motd", "c1")])],
        );
        let commit = saved("2222222222222222", p.plan.hosts.clone());
        assert_eq!(
            differences(&p, &commit),
            ["the commit differs: the plan is of 111111111111, the config repo is at 222222222222"]
        );
        let edited = saved(
            "1111111111111111",
            vec![host(
                "web",
                "o2",
                vec![change("/etc/motd", "c1"), change("/etc/issue", "c2")],
            )],
        );
        assert_eq!(
            differences(&p, &edited),
            [
                "host web: file /etc/issue: not in the plan, now to update",
                "host web: its observed state changed since the plan",
            ]
        );
        let content = saved(
            "1111111111111111",
            vec![host("web", "o1", vec![change("/etc/motd", "c9")])],
        );
        assert_eq!(
            differences(&p, &content),
            ["host web: file /etc/motd: content differs from the plan"]
        );
        let gone = saved("1111111111111111", vec![]);
        assert_eq!(
            differences(&p, &gone),
            ["host web: in the plan, not planned now"]
        );
    }

    #[test]
    fn a_plan_that_differs_only_as_shown_is_still_a_difference() {
        let p = saved("abc", vec![]);
        let mut other = p.clone();
        other.shown.text = "something else".into();
        assert_eq!(
            differences(&p, &other),
            ["the plan differs from the saved plan"]
        );
    }

    #[test]
    fn a_saved_plans_text_cannot_act_on_a_terminal() {
        assert_eq!(
            terminal_safe("~ file /etc/x\u{1b}]0;owned\u{7}\r\n\tok\u{9b}2J"),
            "~ file /etc/x]0;owned\n\tok2J"
        );
    }

    #[test]
    fn every_string_is_redacted() {
        let mut v = serde_json::json!({"a": ["s3cret", {"b": "x s3cret y"}], "n": 1});
        redact_all(&mut v, &|s: &str| s.replace("s3cret", "***"));
        assert_eq!(
            v,
            serde_json::json!({"a": ["***", {"b": "x *** y"}], "n": 1})
        );
    }
}
