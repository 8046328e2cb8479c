//! The docs' `yaml` blocks are config files: each says which with a first
//! line such as `# hosts/web.yaml` (a block may hold several files, each
//! starting so). A doc's snippets go into one small repo, with only what
//! they need around them:
//!
//! - the hosts the doc's snippets name but do not define ([`context`]);
//! - `fleet: docs` when no snippet names the fleet;
//! - a stand-in file for each template, file, stack and secret they refer
//!   to (validate reads no secret's content), and an empty role for each
//!   role a host names that no snippet defines;
//! - a host `docs` with the roles no host has (or with none, when there is
//!   no host at all).
//!
//! Two snippets of the same file are merged, the later one's keys winning;
//! the repo is validated once per snippet, with that snippet's keys
//! winning, so every snippet is validated as written. A file only one
//! snippet writes is written as the doc has it, so errors point at its
//! lines. `jinja` blocks become templates of a role of host `docs`:
//! validated, then shown with the stand-in facts and compared with a
//! rendering of the block with those stand-ins.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Block, Repo, blocks};
use crate::support::fleet::text;
use crate::support::tidekeeper;

/// Hosts a doc's snippets select or pass through without defining them.
fn context(doc: &str) -> &'static [(&'static str, &'static str)] {
    const CLOUD: &str =
        "provider: hetzner\nserver: {type: cpx21, image: debian-12, location: fsn1}\n";
    match doc {
        // schedules.yaml selects platform, metal and group workspace; an
        // apply window group db; hosts/app.yaml goes through bastion.
        "docs/config.md" => &[
            (
                "hosts/platform.yaml",
                "provider: existing\naddress: 10.0.1.6\n",
            ),
            (
                "hosts/metal.yaml",
                "provider: existing\naddress: 10.0.1.7\n",
            ),
            (
                "hosts/bastion.yaml",
                "provider: existing\naddress: 10.0.1.5\n",
            ),
            (
                "hosts/workspace.yaml",
                "count: 2\nprovider: hetzner\nserver: {type: cpx21, image: debian-12, location: fsn1}\n",
            ),
            (
                "hosts/db.yaml",
                "count: 2\nprovider: hetzner\nserver: {type: cpx21, image: debian-12, location: fsn1}\n",
            ),
        ],
        // The private network snippet shows only the hosts' networks.
        "docs/cloud.md" => &[
            ("hosts/platform.yaml", CLOUD),
            ("hosts/workspace.yaml", CLOUD),
        ],
        _ => &[],
    }
}

/// One config file of a block.
#[derive(Debug, Clone)]
struct Snippet {
    at: String,
    path: String,
    text: String,
}

/// `# tidekeeper.yaml`, `# hosts/web.yaml (…)`: the file a line names.
fn header(line: &str) -> Option<&str> {
    let path = line.strip_prefix("# ")?.split_whitespace().next()?;
    let known = path == "tidekeeper.yaml"
        || path == "schedules.yaml"
        || ["hosts/", "roles/"]
            .iter()
            .any(|d| path.strip_prefix(d).is_some_and(|n| !n.contains('/')));
    (known && path.ends_with(".yaml")).then_some(path)
}

/// The files a yaml block declares.
fn declared(b: &Block) -> Vec<Snippet> {
    let mut out: Vec<Snippet> = Vec::new();
    for (i, line) in b.body.lines().enumerate() {
        if let Some(path) = header(line) {
            out.push(Snippet {
                at: format!("{}:{}", b.doc, b.line + 1 + i),
                path: path.to_string(),
                text: String::new(),
            });
        } else if out.is_empty() {
            assert!(
                line.trim().is_empty(),
                "{}: a yaml block says first which file it is, e.g. `# hosts/web.yaml`; it starts with {line:?}",
                b.at()
            );
            continue;
        }
        let s = out.last_mut().unwrap();
        s.text.push_str(line);
        s.text.push('\n');
    }
    assert!(!out.is_empty(), "{}: an empty yaml block", b.at());
    out
}

/// The template a jinja block becomes, and its entry in role `docs-templates`.
fn template(b: &Block) -> (Snippet, String) {
    let name = format!("docs-example-{}.j2", b.line);
    let entry = format!(
        "  - {{path: /etc/docs/example-{}, template: {name}}}\n",
        b.line
    );
    let s = Snippet {
        at: b.at(),
        path: format!("templates/{name}"),
        text: b.body.clone(),
    };
    (s, entry)
}

fn yaml(path: &str, text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text)
        .unwrap_or_else(|e| panic!("{path} is not YAML: {e}\n{text}"))
}

/// `b` merged into `a`: mappings key by key, anything else replaced.
fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(x) => merge(x, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (a, b) => *a = b,
    }
}

/// The file `path` from its layers: as written when there is one, else
/// merged (JSON is YAML). tidekeeper.yaml gets `fleet: docs` if it has none.
fn finish(path: &str, layers: &[String]) -> String {
    let fleetless = |v: &Value| path == "tidekeeper.yaml" && v.get("fleet").is_none();
    if !path.ends_with(".yaml") {
        return layers.last().unwrap().clone();
    }
    if let [one] = layers {
        return match fleetless(&yaml(path, one)) {
            true => format!("fleet: docs\n{one}"),
            false => one.clone(),
        };
    }
    let mut v = Value::Object(Default::default());
    for l in layers {
        merge(&mut v, yaml(path, l));
    }
    if fleetless(&v) {
        v["fleet"] = "docs".into();
    }
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

/// Files the snippets refer to (`templates/…`, `files/…`, `stacks/…`,
/// `secrets/….age`).
fn references(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if let Value::String(s) = x {
                    match k.as_str() {
                        "template" => out.insert(format!("templates/{s}")),
                        "source" => out.insert(format!("files/{s}")),
                        "key" if !s.starts_with('/') && !s.contains(' ') => {
                            out.insert(format!("files/{s}"))
                        }
                        "secret" | "password_secret" | "key_secret" => {
                            out.insert(format!("secrets/{s}.age"))
                        }
                        _ => false,
                    };
                }
                if let (Value::Array(a), "stacks") = (x, k.as_str()) {
                    for n in a.iter().filter_map(|s| s["name"].as_str()) {
                        out.insert(format!("stacks/{n}/compose.yaml"));
                    }
                }
                references(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

/// What the snippets need around them: stand-ins and host `docs`.
fn complete(files: &mut BTreeMap<String, String>) {
    let values: BTreeMap<String, Value> = files
        .iter()
        .filter(|(p, _)| p.ends_with(".yaml") && !p.starts_with("stacks/"))
        .map(|(p, t)| (p.clone(), yaml(p, t)))
        .collect();
    let mut refs = BTreeSet::new();
    values.values().for_each(|v| references(v, &mut refs));
    for r in refs {
        let stub = match r.ends_with("compose.yaml") {
            true => "services: {}\n",
            false => "stand-in for a docs example\n",
        };
        files.entry(r).or_insert_with(|| stub.into());
    }
    let hosts: Vec<&Value> = values
        .iter()
        .filter(|(p, _)| p.starts_with("hosts/"))
        .map(|(_, v)| v)
        .collect();
    let used: BTreeSet<String> = hosts
        .iter()
        .filter_map(|h| h["roles"].as_array())
        .flatten()
        .filter_map(|r| r.as_str().map(String::from))
        .collect();
    for r in &used {
        files
            .entry(format!("roles/{r}.yaml"))
            .or_insert_with(|| "description: stand-in for a role the docs name\n".into());
    }
    let unused: Vec<String> = values
        .keys()
        .filter_map(|p| p.strip_prefix("roles/")?.strip_suffix(".yaml"))
        .filter(|r| !used.contains(*r))
        .map(String::from)
        .collect();
    if hosts.is_empty() || !unused.is_empty() {
        files.insert(
            "hosts/docs.yaml".into(),
            format!(
                "provider: existing\naddress: 192.0.2.10\nroles: [{}]\n",
                unused.join(", ")
            ),
        );
    }
}

/// The repo of a doc's snippets in which `again` (one block's) wins.
fn build(doc: &str, snippets: &[Snippet], again: &[Snippet]) -> BTreeMap<String, String> {
    let mut layers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (p, t) in context(doc) {
        layers.entry(p.to_string()).or_default().push(t.to_string());
    }
    for s in snippets {
        layers
            .entry(s.path.clone())
            .or_default()
            .push(s.text.clone());
    }
    for s in again {
        if layers[&s.path].len() > 1 {
            layers.get_mut(&s.path).unwrap().push(s.text.clone());
        }
    }
    let mut files: BTreeMap<String, String> = layers
        .iter()
        .map(|(p, l)| (p.clone(), finish(p, l)))
        .collect();
    files
        .entry("tidekeeper.yaml".into())
        .or_insert_with(|| "fleet: docs\n".into());
    complete(&mut files);
    files
}

/// A repo's files by path, and where its snippets are (the winning one first).
type Files = (String, BTreeMap<String, String>);

/// Every repo to validate for `doc`: one per yaml block (the same repo
/// once), and the jinja blocks' templates.
fn repos(doc: &str) -> (Vec<Files>, Vec<&'static Block>) {
    let yaml_blocks: Vec<&Block> = blocks()
        .iter()
        .filter(|b| b.doc == doc && b.lang == "yaml")
        .collect();
    let jinja: Vec<&'static Block> = blocks()
        .iter()
        .filter(|b| b.doc == doc && b.lang == "jinja")
        .collect();
    let per_block: Vec<Vec<Snippet>> = yaml_blocks.iter().map(|b| declared(b)).collect();
    let mut all: Vec<Snippet> = per_block.iter().flatten().cloned().collect();
    if !jinja.is_empty() {
        let mut role = String::from("files:\n");
        for b in &jinja {
            let (s, entry) = template(b);
            all.push(s);
            role.push_str(&entry);
        }
        all.push(Snippet {
            at: "(the jinja blocks' role)".into(),
            path: "roles/docs-templates.yaml".into(),
            text: role,
        });
    }
    let mut out: Vec<Files> = Vec::new();
    for again in per_block.iter().map(Vec::as_slice).chain([&[][..]]) {
        let files = build(doc, &all, again);
        let at = |s: &[Snippet]| {
            s.iter()
                .map(|s| s.at.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let at = format!("{} (of {})", at(again), at(&all));
        if !out.iter().any(|(_, f)| *f == files) {
            out.push((at, files));
        }
    }
    (out, jinja)
}

/// The repo of `doc`'s snippets, to run the doc's commands in.
pub(super) fn doc_repo(doc: &str) -> BTreeMap<String, String> {
    repos(doc).0.remove(0).1
}

fn listing(files: &BTreeMap<String, String>) -> String {
    files
        .iter()
        .map(|(p, t)| format!("--- {p}\n{t}"))
        .collect::<Vec<_>>()
        .join("")
}

/// `tidekeeper validate` of `files`: must say valid.
fn validate(at: &str, files: &BTreeMap<String, String>) -> Repo {
    let repo = Repo::new("docs-yaml", files);
    let out = tidekeeper()
        .args(["validate", "--repo"])
        .arg(&repo.path)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(
        out.status.code() == Some(0) && said.contains("valid: fleet"),
        "the snippets at {at} do not validate\n{}\n{said}",
        listing(files)
    );
    repo
}

/// What a jinja block renders to with the stand-in facts docs/config.md
/// names: "" for text, 0 for numbers, no interfaces.
fn with_stand_ins(body: &str) -> String {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let facts = serde_json::json!({
        "arch": "", "os": "", "release": "", "codename": "", "debian_version": "",
        "memory_mb": 0, "cpus": 0, "interfaces": {},
    });
    let ctx = minijinja::Value::from(minijinja::value::Serde(
        serde_json::json!({ "facts": facts }),
    ));
    env.render_str(body, ctx)
        .unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// `show docs` prints each jinja block's file as the block renders with
/// the stand-ins, and names the facts read.
fn shown_with_stand_ins(repo: &Repo, jinja: &[&Block]) {
    let out = tidekeeper()
        .args(["show", "docs", "-o", "json", "--repo"])
        .arg(&repo.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let host: Value = serde_json::from_slice(&out.stdout).unwrap();
    for b in jinja {
        let path = format!("/etc/docs/example-{}", b.line);
        let content = host["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == path.as_str())
            .and_then(|r| r["content"].as_str())
            .unwrap_or_else(|| panic!("{}: no {path} in {host}", b.at()));
        assert_eq!(
            content.trim_end(),
            with_stand_ins(&b.body).trim_end(),
            "{}",
            b.at()
        );
    }
    // It names the facts the templates read.
    let read: BTreeSet<String> = jinja
        .iter()
        .flat_map(|b| b.body.split("facts.").skip(1))
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    let out = tidekeeper()
        .args(["show", "docs", "--repo"])
        .arg(&repo.path)
        .output()
        .unwrap();
    let said = text(&out);
    let line = format!(
        "facts read by templates: {} (unknown here",
        read.into_iter().collect::<Vec<_>>().join(", ")
    );
    assert!(said.contains(&line), "want {line:?} in\n{said}");
}

#[test]
fn yaml_snippets_validate() {
    let docs: BTreeSet<&str> = blocks()
        .iter()
        .filter(|b| b.lang == "yaml" || b.lang == "jinja")
        .map(|b| b.doc.as_str())
        .collect();
    assert!(docs.len() >= 4, "{docs:?}");
    for doc in docs {
        let (repos, jinja) = repos(doc);
        for (at, files) in &repos {
            let repo = validate(at, files);
            if !jinja.is_empty() {
                shown_with_stand_ins(&repo, &jinja);
            }
        }
    }
}

#[test]
fn a_snippet_with_a_typo_fails_validation() {
    // The same path the docs take, with a misspelt key: caught.
    let b = Block {
        doc: "docs/x.md".into(),
        line: 1,
        lang: "yaml".into(),
        body: "# roles/web.yaml\nfiels:\n  - {path: /etc/motd, content: hi}\n".into(),
        not_run: None,
    };
    let files = build("docs/x.md", &declared(&b), &[]);
    assert!(
        files["hosts/docs.yaml"].contains("roles: [web]"),
        "{files:?}"
    );
    let repo = Repo::new("docs-yaml-typo", &files);
    let out = tidekeeper()
        .args(["validate", "--repo"])
        .arg(&repo.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unknown key `fiels`"), "{}", text(&out));
    // Merging: the later snippet's keys win, mappings merge.
    let merged = finish(
        "tidekeeper.yaml",
        &[
            "apply: {require_reviewed_plan: true, x: 1}\n".into(),
            "apply: {x: 2}\n".into(),
        ],
    );
    let v: Value = serde_json::from_str(&merged).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"fleet": "docs", "apply": {"require_reviewed_plan": true, "x": 2}})
    );
}
