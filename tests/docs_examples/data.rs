//! The docs' data: JSON documents, a policy, git trailers and a sudoers
//! rule, each compared with what the code emits (the same serialisers and
//! builders), or evaluated and applied by it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Repo, block, files};
use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::testbed::Testbed;
use crate::support::tidekeeper;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON: {e}\n{text}"))
}

/// The keys of an object.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn ec2_iam_policy() {
    iam_policy("ec2");
}

#[test]
fn lightsail_iam_policy() {
    iam_policy("lightsail");
}

/// The IAM policy docs/cloud.md gives for `service` allows exactly the
/// calls `crates/<service>` makes: one missing fails an apply halfway with
/// an authorization error, one too many grants what is not needed.
fn iam_policy(service: &str) {
    let b = block(
        "docs/cloud.md",
        "json",
        &format!(
            "\"{service}:{}\"",
            if service == "ec2" {
                "DescribeInstances"
            } else {
                "GetInstances"
            }
        ),
    );
    let doc = json(&b.body);
    assert_eq!(doc["Version"], "2012-10-17", "{}", b.at());
    let st = &doc["Statement"][0];
    assert_eq!(
        (st["Effect"].as_str(), st["Resource"].as_str()),
        (Some("Allow"), Some("*"))
    );
    let prefix = format!("{service}:");
    let listed: BTreeSet<String> = st["Action"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .strip_prefix(prefix.as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    // Every call the client makes (`self.inner.<operation>()`), as IAM
    // names it.
    let src: String =
        std::fs::read_to_string(super::root().join(format!("crates/{service}/src/lib.rs")))
            .unwrap()
            .split_whitespace()
            .collect();
    let called: BTreeSet<String> = src
        .split(".inner.")
        .skip(1)
        .map(|s| {
            s.split('(')
                .next()
                .unwrap()
                .split('_')
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect()
        })
        .collect();
    assert!(called.len() > 15, "{called:?}");
    assert_eq!(
        listed,
        called,
        "{}: the policy's actions are not the calls crates/{service} makes",
        b.at()
    );
}

#[test]
fn audit_trailers() {
    let b = block("docs/daemon.md", "text", "Tidekeeper-Verdict: applied");
    let note = format!(
        "tidekeeper reconcile of 0123456\n\napplied to 2 host(s)\n\n{}",
        b.body
    );
    let audit = tidekeeper::audit::Audit::parse(&note).expect("the trailers are read");
    // Written back as the daemon writes them: every line, in this order.
    assert_eq!(audit.render(), b.body, "{}", b.at());
    let released = audit.released.as_ref().unwrap();
    assert_eq!((released.by.as_str(), released.now), ("bob", false));
    assert_eq!(
        audit.reviewed.as_ref().unwrap().proposal,
        "refs/pull/9/head"
    );
}

#[test]
fn webhook_payload() {
    let b = block("docs/notify.md", "json", "\"version\": 1");
    let doc = json(&b.body);
    let mut fields = doc.clone();
    fields.as_object_mut().unwrap().remove("version");
    let event: tidekeeper::notify::Event = serde_json::from_value(fields).expect("an event");
    let fleet = crate::support::minimal()
        .file(
            "tidekeeper.yaml",
            "fleet: test\nnotify:\n  sinks:\n    hook: {type: webhook, url: {env: HOOK_URL}, secret: {env: HOOK_SECRET}}\n",
        )
        .load()
        .unwrap();
    let target = &fleet.settings.notify.sinks["hook"].target;
    let creds = BTreeMap::from([
        ("url", "https://hooks.example/x".to_string()),
        ("secret", "s3cret".to_string()),
    ]);
    let req = tidekeeper::notify::request(target, &creds, &event).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(
        serde_json::from_slice::<Value>(&req.body).unwrap(),
        doc,
        "{}",
        b.at()
    );
    let header = |k: &str| req.headers.iter().find(|h| h.0 == k).map(|h| h.1.clone());
    assert_eq!(
        header("x-tidekeeper-event").as_deref(),
        doc["kind"].as_str()
    );
    assert_eq!(
        header("x-tidekeeper-delivery").as_deref(),
        doc["id"].as_str()
    );
    let sig = header("x-tidekeeper-signature-256").unwrap();
    assert!(sig.starts_with("sha256="), "{sig}");
    assert_eq!(sig, tidekeeper::notify::sign(b"s3cret", &req.body));
}

#[test]
fn notify_status() {
    use tidekeeper::notify::deliver::{NotifyStatus, SinkStats, SinkStatus};
    let b = block("docs/notify.md", "json", "\"notifications\"");
    let doc = json(&format!("{{{}}}", b.body))["notifications"].clone();
    // The doc's values, in the status the daemon keeps, as /status
    // serialises it.
    let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    let text = |v: &Value, k: &str| v[k].as_str().map(String::from);
    let sinks = doc["sinks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, s)| {
            let status = SinkStatus {
                kind: text(s, "kind").map(|k| &*Box::leak(k.into_boxed_str())),
                waiting: num(s, "waiting") as usize,
                oldest_waiting: text(s, "oldest_waiting"),
                stats: SinkStats {
                    sent: num(s, "sent"),
                    failed_attempts: num(s, "failed_attempts"),
                    dropped: num(s, "dropped"),
                    last_error: text(s, "last_error"),
                },
            };
            (name.clone(), status)
        })
        .collect();
    let firing = doc["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let status = NotifyStatus { sinks, firing };
    assert_eq!(serde_json::to_value(&status).unwrap(), doc, "{}", b.at());
}

/// A policy that denies every plan with the whole input as its message.
const DUMP: &str = "package docs.dump\nimport rego.v1\ndeny contains json.marshal(input) if true\n";

/// The input a plan's policies get, for a local host `web-1` with a file
/// to create and a Hetzner server `web-2` resized from cpx21 to cpx31 (on
/// the emulator, its server off).
fn real_input() -> Value {
    use crate::support::cloud::{CREDENTIALS, Cloud, hetzner::Hetzner};
    let cloud = Cloud::new(0);
    let hz = Hetzner::start(cloud.clone());
    hz.add_owned_off("acme", "web-2", "cpx21");
    let tmp = crate::support::TempDir::new("docs-input-root");
    let repo = Repo::new(
        "docs-input",
        &files(&[
            (
                "tidekeeper.yaml",
                &format!(
                    "fleet: acme\ndefaults:\n  ssh: {{from: [10.0.0.2/32]}}\nproviders:\n  hetzner:\n    endpoint: {}\n    timeout: 5s\n",
                    hz.url
                ),
            ),
            (
                "hosts/web-1.yaml",
                &format!(
                    "provider: local\nroot: {}\nlabels: {{env: prod}}\nroles: [base]\n",
                    tmp.path().display()
                ),
            ),
            (
                "hosts/web-2.yaml",
                "provider: hetzner\nserver: {type: cpx31, image: debian-12, location: fsn1, ssh_keys: [ops], firewall: [{port: \"22\", from: [10.0.0.2/32]}]}\n",
            ),
            (
                "roles/base.yaml",
                "files:\n  - {path: /etc/motd, content: \"hi\\n\"}\n",
            ),
            ("policies/dump.rego", DUMP),
        ]),
    );
    let out = tidekeeper()
        .args(["plan", "-o", "json", "--repo"])
        .arg(&repo.path)
        .envs(CREDENTIALS)
        .output()
        .unwrap();
    cloud.bed.lock().unwrap().shutdown();
    let plan = json(&stdout(&out));
    let msg = plan["policy"]["denials"][0]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no dump: {}", text(&out)));
    json(msg)
}

/// The firewall resource `show -o json` prints for the doc's firewall.
fn shown_firewall(after: &Value) -> Value {
    let rule = &after["rules"][0];
    let role = format!(
        "firewall:\n  incoming: {}\n  rules:\n    - {{port: \"{}\", from: {}, comment: {}}}\n",
        after["incoming"].as_str().unwrap(),
        rule["from_port"],
        rule["from"].as_str().unwrap(),
        rule["comment"].as_str().unwrap()
    );
    let repo = Repo::new(
        "docs-input-show",
        &files(&[
            ("tidekeeper.yaml", "fleet: acme\n"),
            (
                "hosts/web-1.yaml",
                "provider: existing\naddress: 192.0.2.10\nroles: [base]\nlabels: {ssh_public: \"true\"}\n",
            ),
            ("roles/base.yaml", &role),
        ]),
    );
    let out = tidekeeper()
        .args(["show", "web-1", "-o", "json", "--repo"])
        .arg(&repo.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    json(&stdout(&out))["resources"][0].clone()
}

#[test]
fn policy_input() {
    let b = block("docs/policies.md", "json", "\"resources\"");
    let doc = json(&b.body);
    let real = real_input();
    let at = b.at();
    assert_eq!(keys(&doc), keys(&real), "{at}: the document's keys");
    let real_of = |t: &str| {
        real["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == t)
            .unwrap_or_else(|| panic!("no {t} resource in {real}"))
            .clone()
    };
    let (change, server) = (real_of("file"), real_of("server"));
    let (doc_change, doc_server) = (&doc["resources"][0], &doc["resources"][1]);
    // A host's change: the same keys (a firewall's in the doc, a file's
    // here); `after` as `show` prints the resource; the action one listed.
    assert_eq!(
        keys(doc_change),
        keys(&change),
        "{at}: a host change's keys"
    );
    let shown = shown_firewall(&doc_change["after"]);
    assert_eq!(
        keys(&doc_change["after"]),
        keys(&shown),
        "{at}: a firewall's `after`"
    );
    assert_eq!(
        keys(&doc_change["after"]["rules"][0]),
        keys(&shown["rules"][0])
    );
    let listed = |v: &Value| {
        v["action"]
            .as_str()
            .unwrap()
            .split(" | ")
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(listed(doc_change).contains(&change["action"].as_str().unwrap().to_string()));
    // A server's change: every key, before and after.
    assert_eq!(
        keys(doc_server),
        keys(&server),
        "{at}: a server change's keys"
    );
    for part in ["before", "after"] {
        assert_eq!(
            keys(&doc_server[part]),
            keys(&server[part]),
            "{at}: a server's `{part}`"
        );
    }
    assert_eq!(
        keys(&doc_server["after"]["firewall"][0]),
        keys(&server["after"]["firewall"][0])
    );
    assert!(
        listed(doc_server).contains(&server["action"].as_str().unwrap().to_string()),
        "{server}"
    );
    assert_eq!(
        doc_server["after"], server["after"],
        "{at}: the server as configured"
    );
    // Hosts and the cost: the keys, and the cost of this very resize.
    let host = real["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "web-1")
        .unwrap();
    assert_eq!(keys(&doc["hosts"][0]), keys(host), "{at}: a host's keys");
    assert_eq!(
        keys(&doc["hosts"][0]["ssh"]),
        keys(&host["ssh"]),
        "{at}: a host's ssh"
    );
    assert_eq!(doc["cost"], real["cost"], "{at}: the cost");
}

#[test]
fn budget_policy() {
    let b = block("docs/policies.md", "rego", "package tidekeeper.budget");
    for (monthly, denied) in [("5", true), ("0.05", false)] {
        let tmp = crate::support::TempDir::new("docs-budget-root");
        let repo = Repo::new(
            "docs-budget",
            &files(&[
                ("tidekeeper.yaml", "fleet: docs\n"),
                (
                    "hosts/web-1.yaml",
                    &format!(
                        "provider: local\nroot: {}\nroles: [app]\ncost: {{monthly: {monthly}, currency: USD}}\n",
                        tmp.path().display()
                    ),
                ),
                (
                    "roles/app.yaml",
                    "files:\n  - {path: /etc/motd, content: \"hi\\n\"}\n",
                ),
                ("policies/budget.rego", &b.body),
            ]),
        );
        let out = tidekeeper()
            .args(["plan", "--repo"])
            .arg(&repo.path)
            .output()
            .unwrap();
        let said = stdout(&out);
        let deny = "deny: monthly cost 5.00 USD exceeds the budget of 0.1 USD (policy tidekeeper.builtin.budget)";
        match denied {
            true => assert!(
                out.status.code() == Some(1) && said.contains(deny),
                "{}",
                text(&out)
            ),
            false => assert!(
                out.status.code() == Some(0) && said.contains("Policies: all passed."),
                "{}",
                text(&out)
            ),
        }
    }
}

#[test]
fn sudoers_rule() {
    let b = block("docs/safety.md", "text", "NOPASSWD: /bin/sh");
    let path = b.body.lines().next().unwrap().strip_prefix("# ").unwrap();
    assert!(path.starts_with("/etc/sudoers.d/"), "{path}");
    let user = b
        .body
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    let bed = Testbed::start(1);
    let role = format!(
        "users:\n  - name: {user}\n    shell: /bin/bash\n    authorized_keys: [\"{}\"]\nfiles:\n  - path: {path}\n    content: {}\n    mode: \"0440\"\n    validate: visudo -cf %s\n",
        bed.public_key.trim(),
        serde_json::to_string(&b.body).unwrap()
    );
    let repo = FleetRepo::minimal(&bed, &[("access", &role)]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Logging in as that user, through exactly that rule, tidekeeper can do
    // what root does.
    repo.write(
        "tidekeeper.yaml",
        &format!("fleet: test\ndefaults:\n  ssh:\n    user: {user}\n    sudo: true\n"),
    );
    repo.write(
        "roles/access.yaml",
        &format!("{role}  - {{path: /root/only-root-can-write-here, content: \"via sudo\\n\"}}\n"),
    );
    repo.commit("log in through sudo");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}: {}", b.at(), text(&out));
    assert_eq!(
        bed.ssh_ok(0, "stat -c %U /root/only-root-can-write-here")
            .trim(),
        "root"
    );
    assert_eq!(bed.ssh_ok(0, &format!("cat {path}")), b.body);
}
