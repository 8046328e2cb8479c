//! Policy-as-code on real plans.

use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::git;
use crate::support::testbed::Testbed;
use crate::support::{TempDir, tidekeeper};

pub const OPEN_SSH: &str =
    "firewall:\n  incoming: deny\n  rules:\n    - {port: \"22\", comment: ssh}\n";

#[test]
fn the_builtin_pack_denies_world_open_ssh_and_apply_refuses() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("fw", OPEN_SSH)]);
    let out = repo.tk(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let h = &bed.host(0).name;
    assert!(
        stdout(&out).contains(&format!(
            "deny: {h} firewall ufw opens port 22 to the whole internet"
        )),
        "{}",
        text(&out)
    );
    let out = repo.tk(&["plan", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["policy"]["deny"].as_array().unwrap().len(), 1, "{v}");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout(&out).contains("The policies deny this plan; nothing was applied."));
    assert!(
        !bed.ssh_ok(0, "command -v ufw || true").contains("ufw"),
        "nothing applied"
    );

    // A repo policy can warn; labelling the host public satisfies the pack.
    repo.write(
        "policies/notice.rego",
        "package tidekeeper.policies.notice\nimport rego.v1\nwarn contains msg if {\n  some r in input.resources\n  r.type == \"firewall\"\n  msg := sprintf(\"%s changes the firewall\", [r.address])\n}\n",
    );
    let host_file = format!("hosts/{h}.yaml");
    let text_h = repo.read(&host_file);
    repo.write(
        &host_file,
        &format!("{text_h}labels:\n  ssh_public: \"true\"\n"),
    );
    repo.commit("public on purpose");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("warn: {h} firewall ufw changes the firewall")),
        "{}",
        text(&out)
    );
}

#[test]
fn the_daemon_refuses_a_denied_commit_like_an_invalid_one() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "app",
            "files:\n  - {path: /etc/tk-pol, content: \"one\\n\"}\n",
        )],
    );
    let d = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "600s"]);
    d.wait_applied(
        &git(&repo.path, &["rev-parse", "HEAD"]),
        Duration::from_secs(30),
    );
    repo.write("roles/fw.yaml", OPEN_SSH);
    let hf = format!("hosts/{}.yaml", bed.host(0).name);
    let t = repo.read(&hf).replace("roles: [app]", "roles: [app, fw]");
    repo.write(&hf, &t);
    repo.commit("open ssh to the world");
    let bad = git(&repo.path, &["rev-parse", "HEAD"]);
    d.wait_for("the denial reported", Duration::from_secs(20), |d| {
        d.status()["invalid"]["commit"].as_str() == Some(bad.as_str())
    });
    let errors = d.status()["invalid"]["errors"].to_string();
    assert!(
        errors.contains("policy denies:") && errors.contains("opens port 22"),
        "{errors}"
    );
    d.wait_noted(&bad, Duration::from_secs(20));
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", &bad]);
    assert!(note.contains("the policies deny"), "{note}");
    assert_eq!(
        tidekeeper::audit::Audit::parse(&note).map(|a| a.verdict),
        Some(tidekeeper::audit::Verdict::Rejected),
        "{note}"
    );
    assert!(
        !bed.ssh_ok(0, "command -v ufw || true").contains("ufw"),
        "nothing applied"
    );
}

#[test]
fn policy_test_runs_the_repos_rego_tests() {
    let tmp = TempDir::new("policy-test");
    let repo = tmp.path().join("fleet");
    assert!(
        tidekeeper()
            .arg("init")
            .arg(&repo)
            .output()
            .unwrap()
            .status
            .success()
    );
    std::fs::write(
        repo.join("policies/budget_test.rego"),
        "package tidekeeper.policies.budget_test\nimport rego.v1\nimport data.tidekeeper.policies.budget\n\
         test_over_budget_is_denied if {\n  count(budget.deny) == 1 with input as {\"cost\": {\"proposed\": 250, \"delta\": 0, \"currency\": \"EUR\"}}\n}\n\
         test_within_budget_passes if {\n  count(budget.deny) == 0 with input as {\"cost\": {\"proposed\": 100, \"delta\": 0, \"currency\": \"EUR\"}}\n}\n\
         test_wrong_on_purpose if {\n  count(budget.deny) == 1 with input as {\"cost\": {\"proposed\": 1, \"delta\": 0, \"currency\": \"EUR\"}}\n}\n",
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "policy tests"]);
    let out = tidekeeper()
        .args(["policy", "test", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(
        s.contains("PASS data.tidekeeper.policies.budget_test.test_over_budget_is_denied"),
        "{s}"
    );
    assert!(
        s.contains("PASS data.tidekeeper.policies.budget_test.test_within_budget_passes"),
        "{s}"
    );
    assert!(
        s.contains("FAIL data.tidekeeper.policies.budget_test.test_wrong_on_purpose"),
        "{s}"
    );
    assert!(s.contains("2 passed, 1 failed"), "{s}");

    // A broken file fails, and every other file's tests still run.
    std::fs::write(
        repo.join("policies/aaa_broken.rego"),
        "package broken\nimport rego.v1\ndeny contains msg if {\n",
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "a broken policy"]);
    let out = tidekeeper()
        .args(["policy", "test", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let s = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(s.contains("FAIL policies/aaa_broken.rego"), "{s}");
    assert!(
        s.contains("PASS data.tidekeeper.policies.budget_test.test_over_budget_is_denied"),
        "{s}"
    );
    assert!(s.contains("2 passed, 2 failed"), "{s}");
}

#[test]
fn pull_requests_are_planned_read_only_and_noted() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "app",
            "files:\n  - {path: /etc/tk-pr, content: \"one\\n\"}\n",
        )],
    );
    let server = repo.path.with_extension("git");
    git(
        repo.path.parent().unwrap(),
        &[
            "clone",
            "-q",
            "--bare",
            repo.path.to_str().unwrap(),
            server.to_str().unwrap(),
        ],
    );
    let url = format!("file://{}", server.display());
    let d = Daemon::start(
        std::path::Path::new(&url),
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
    );
    let main = git(&repo.path, &["rev-parse", "HEAD"]);
    d.wait_applied(&main, Duration::from_secs(30));

    // PR 7 changes the file; PR 8 opens SSH to the world.
    git(&repo.path, &["checkout", "-q", "-b", "pr7"]);
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-pr, content: \"two\\n\"}\n",
    );
    repo.commit("pr 7");
    let pr7 = git(&repo.path, &["rev-parse", "HEAD"]);
    git(
        &repo.path,
        &[
            "push",
            "-q",
            server.to_str().unwrap(),
            "HEAD:refs/pull/7/head",
        ],
    );
    git(&repo.path, &["checkout", "-q", "main"]);
    git(&repo.path, &["checkout", "-q", "-b", "pr8"]);
    repo.write("roles/fw.yaml", OPEN_SSH);
    let hf = format!("hosts/{}.yaml", bed.host(0).name);
    let t = repo.read(&hf).replace("roles: [app]", "roles: [app, fw]");
    repo.write(&hf, &t);
    repo.commit("pr 8");
    let pr8 = git(&repo.path, &["rev-parse", "HEAD"]);
    git(
        &repo.path,
        &[
            "push",
            "-q",
            server.to_str().unwrap(),
            "HEAD:refs/pull/8/head",
        ],
    );

    let note = |sha: &str| {
        std::process::Command::new("git")
            .args([
                "--git-dir",
                server.to_str().unwrap(),
                "notes",
                "--ref=tidekeeper",
                "show",
                sha,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    d.wait_for("both PRs planned", Duration::from_secs(30), |_| {
        !note(&pr7).is_empty() && !note(&pr8).is_empty()
    });
    let n7 = note(&pr7);
    assert!(
        n7.contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{n7}"
    );
    assert!(
        crate::support::diff_line(&n7, "+", "two") && crate::support::diff_line(&n7, "-", "one"),
        "the diff: {n7}"
    );
    assert!(n7.contains("Policies: all passed."), "{n7}");
    assert!(
        n7.contains("\"ref\": \"refs/pull/7/head\""),
        "the JSON plan: {n7}"
    );
    let n8 = note(&pr8);
    assert!(
        n8.contains(":x: **deny**") && n8.contains("opens port 22 to the whole internet"),
        "{n8}"
    );
    // Read-only: the host still has main's content, and no ufw.
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-pr"), "one\n");
    assert!(!bed.ssh_ok(0, "command -v ufw || true").contains("ufw"));
}
