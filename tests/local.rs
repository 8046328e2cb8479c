//! Pull mode: `provider: local` applies to the machine tidekeeper runs on,
//! here confined to a root directory.

use std::fs;

use crate::support::fleet::{stdout, text};
use crate::support::{TempDir, git, tidekeeper};

fn repo_with(root: &std::path::Path, role: &str) -> TempDir {
    let tmp = TempDir::new("local");
    let p = tmp.path();
    fs::create_dir_all(p.join("roles")).unwrap();
    fs::create_dir_all(p.join("hosts")).unwrap();
    fs::write(p.join("tidekeeper.yaml"), "fleet: local-test\n").unwrap();
    fs::write(
        p.join("hosts/dev.yaml"),
        format!("provider: local\nroot: {}\nroles: [app]\n", root.display()),
    )
    .unwrap();
    fs::write(p.join("roles/app.yaml"), role).unwrap();
    git(p, &["init", "-q", "-b", "main"]);
    git(p, &["add", "-A"]);
    git(p, &["commit", "-q", "-m", "local"]);
    tmp
}

fn tk(repo: &std::path::Path, args: &[&str]) -> std::process::Output {
    tidekeeper()
        .args(args)
        .arg("--repo")
        .arg(repo)
        .output()
        .unwrap()
}

#[test]
fn local_host_confined_to_a_root_directory() {
    let root = TempDir::new("local-root");
    let role = r#"
directories:
  - {path: /etc/app, mode: "0750"}
files:
  - {path: /etc/app/app.conf, content: "port = 8080\n", mode: "0640"}
symlinks:
  - {path: /etc/app/current, target: app.conf}
"#;
    let repo = repo_with(root.path(), role);
    let out = tk(repo.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stdout(&out).contains("+ dev file /etc/app/app.conf"),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).contains("+port = 8080"), "{}", text(&out));
    let out = tk(repo.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // One count of changes: the plan's three items, in the progress line and the summary.
    let all = text(&out);
    assert!(all.contains("[1/1] dev: applied, 3 added ("), "{all}");
    // A line when the host starts, and the time it took.
    assert!(
        all.contains("dev: planning…") && all.contains("dev: applying…"),
        "{all}"
    );
    let line = all.lines().find(|l| l.contains("dev: applied")).unwrap();
    assert!(line.trim_end().ends_with("s)"), "{line}");
    assert!(
        all.contains("Plan: 3 to add, 0 to change, 0 to destroy."),
        "{all}"
    );
    assert!(all.contains(" ok      3 added ("), "{all}");
    assert!(
        all.contains("Apply complete: 3 added, 0 changed, 0 destroyed, 0 run."),
        "{all}"
    );
    // Off a terminal: plain lines, no spinner, no escapes.
    assert!(!all.contains('\x1b') && !all.contains('\r'), "{all:?}");
    let conf = root.path().join("etc/app/app.conf");
    assert_eq!(fs::read_to_string(&conf).unwrap(), "port = 8080\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&conf).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_eq!(
        fs::read_link(root.path().join("etc/app/current"))
            .unwrap()
            .to_str(),
        Some("app.conf")
    );
    assert!(
        root.path()
            .join("var/lib/tidekeeper/inventory.json")
            .exists()
    );
    let out = tk(repo.path(), &["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Drift on the local machine is seen too.
    fs::write(&conf, "port = 9090\n").unwrap();
    let out = tk(repo.path(), &["plan"]);
    assert!(stdout(&out).contains("-port = 9090"), "{}", text(&out));
}

#[test]
fn a_confined_local_host_refuses_what_cannot_be_confined() {
    let root = TempDir::new("local-root");
    let repo = repo_with(root.path(), "packages:\n  present: [jq]\n");
    let out = tk(repo.path(), &["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains(
            "dev: error: dev manages package jq, which cannot be confined to the local root"
        ),
        "{}",
        text(&out)
    );
}

#[test]
fn local_scripts_run_with_a_cleared_environment() {
    let root = TempDir::new("local-root");
    let role = "commands:\n  - {name: env, run: \"env > \\\"$TK_ROOT/env.txt\\\"\"}\n";
    let repo = repo_with(root.path(), role);
    let out = tidekeeper()
        .args(["apply", "--yes", "--repo"])
        .arg(repo.path())
        .env("TIDEKEEPER_WEBHOOK_SECRET", "leak-me-4417")
        .env("HCLOUD_TOKEN", "leak-me-4418")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let env = fs::read_to_string(root.path().join("env.txt")).unwrap();
    assert!(!env.contains("leak-me"), "{env}");
    assert!(env.contains("PATH="), "PATH is kept: {env}");
}

#[test]
fn an_identity_file_that_is_not_a_small_regular_file_is_refused_with_its_path() {
    let root = TempDir::new("local-root");
    let repo = repo_with(
        root.path(),
        "files:\n  - {path: /etc/x, content: \"x\\n\"}\n",
    );
    fs::write(
        repo.path().join("tidekeeper.yaml"),
        "fleet: local-test\nsecrets:\n  identity_file: /dev/zero\n",
    )
    .unwrap();
    git(repo.path(), &["commit", "-qam", "identity"]);
    let out = tidekeeper()
        .args(["plan", "--repo"])
        .arg(repo.path())
        .env_remove("TIDEKEEPER_AGE_IDENTITY")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("/dev/zero") && text(&out).contains("not a regular file"),
        "{}",
        text(&out)
    );
}

#[test]
fn backup_rotation_never_word_splits_a_root_with_a_space() {
    let tmp = TempDir::new("local-space");
    // `<tmp>/a b` is the root; `<tmp>/a` is what a word-split `rm -rf` would hit.
    let root = tmp.path().join("a b");
    let bystander = tmp.path().join("a");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&bystander).unwrap();
    fs::write(bystander.join("keep"), "mine").unwrap();
    let repo = repo_with(
        &root,
        "files:\n  - {path: /etc/app.conf, content: \"v0\\n\"}\n",
    );
    for i in 1..=12 {
        fs::write(
            repo.path().join("roles/app.yaml"),
            format!("files:\n  - {{path: /etc/app.conf, content: \"v{i}\\n\"}}\n"),
        )
        .unwrap();
        git(repo.path(), &["commit", "-qam", &format!("v{i}")]);
        let out = tk(repo.path(), &["apply", "--yes"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert_eq!(fs::read_to_string(bystander.join("keep")).unwrap(), "mine");
    let state = root.join("var/lib/tidekeeper");
    let runs = fs::read_dir(state.join("backups")).unwrap().count();
    assert_eq!(runs, tidekeeper::engine::apply::BACKUP_RUNS, "rotated");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state.join("backups")), 0o700);
    assert_eq!(mode(&state.join("step.err")), 0o600);
}

/// The plan is plain data: a host's connection waits in the caller's pool
/// from plan to apply, the apply takes it, and a plan not applied gives it
/// back when finished.
#[test]
fn connections_live_in_the_callers_pool_from_plan_to_apply() {
    use std::sync::Arc;
    use tidekeeper::{cloud::Clouds, engine, reconcile};
    let root = TempDir::new("local-pool");
    let role = "files:\n  - {path: /etc/pool.conf, content: \"x\\n\"}\n";
    let repo = repo_with(root.path(), role);
    let tree = tidekeeper::source::ConfigTree::from_git(repo.path(), "HEAD").unwrap();
    let fleet = Arc::new(tidekeeper::model::load(&tree).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = Arc::new(engine::Options::default());
    let quiet: engine::Progress = Arc::new(|_| {});
    let clouds = Clouds::from_env(&fleet);
    let plan = |pool: &engine::Pool| {
        rt.block_on(reconcile::plan(
            fleet.clone(),
            vec!["dev".into()],
            true,
            opts.clone(),
            &clouds,
            Default::default(),
            quiet.clone(),
            pool,
        ))
    };
    let pool = engine::Pool::new();
    let fp = plan(&pool);
    assert_eq!(pool.len(), 1, "planned, its connection kept");
    assert!(fp.has_changes());
    let done = rt.block_on(reconcile::apply(
        fp,
        &pool,
        opts.clone(),
        &clouds,
        quiet.clone(),
    ));
    assert!(pool.is_empty(), "the apply took it");
    assert!(done.hosts[0].error.is_none(), "{:?}", done.hosts[0].error);
    assert_eq!(
        fs::read_to_string(root.path().join("etc/pool.conf")).unwrap(),
        "x\n"
    );
    let fp = plan(&pool);
    assert!(pool.is_empty(), "nothing to apply: closed at once");
    let results = rt.block_on(reconcile::finish(fp, pool.clone()));
    assert!(!results[0].plan.as_ref().unwrap().has_changes());
}

/// On a terminal (a pseudo-terminal from util-linux `script`), plan shows a
/// spinner naming the host at work, then clears it; the lines stay.
#[test]
fn on_a_terminal_a_spinner_names_the_hosts_at_work_and_is_cleared() {
    let root = TempDir::new("local-tty");
    let role = "files:\n  - {path: /etc/tty-test, content: \"x\\n\"}\n";
    let repo = repo_with(root.path(), role);
    let bin = env!("CARGO_BIN_EXE_tidekeeper");
    let command = format!("{bin} plan --repo {} 2>&1", repo.path().display());
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .output()
        .expect("script (util-linux) runs");
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("planning dev"),
        "the spinner names the host: {all:?}"
    );
    assert!(all.contains("[0/1]"), "and counts: {all:?}");
    assert!(all.contains("[1/1] dev: planned, 1 to add ("), "{all:?}");
    // Cleared: the last spinner frame is erased (ESC [ 2K or ESC [ K), and
    // nothing of it follows the summary.
    assert!(all.contains("\x1b[2K") || all.contains("\x1b[K"), "{all:?}");
    let tail = all.rsplit("Plan: 1 to add").next().unwrap();
    assert!(!tail.contains("planning"), "{tail:?}");
}

#[test]
fn a_stated_monthly_cost_is_counted_in_the_plan_and_its_json() {
    let root = TempDir::new("local-root");
    let repo = repo_with(
        root.path(),
        "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n",
    );
    let p = repo.path();
    let host = fs::read_to_string(p.join("hosts/dev.yaml")).unwrap();
    fs::write(
        p.join("hosts/dev.yaml"),
        format!("{host}cost: {{monthly: 49.5, currency: EUR}}\n"),
    )
    .unwrap();
    git(p, &["commit", "-qam", "cost"]);
    let out = tk(p, &["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("Monthly cost: 49.50 → 49.50 EUR (+0.00)"),
        "{}",
        text(&out)
    );
    let out = tk(p, &["plan", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    assert_eq!(doc["cloud"]["cost"]["EUR"]["proposed"], 49.5, "{doc}");
    assert_eq!(doc["cloud"]["cost"]["EUR"]["prior"], 49.5, "{doc}");
}

/// `plan --json` says which layout and which commit it is; plan and apply
/// say when the work tree has edits they do not see (they read HEAD).
#[test]
fn plan_json_names_its_version_and_commit_and_uncommitted_edits_are_said() {
    let root = TempDir::new("local-root");
    let repo = repo_with(
        root.path(),
        "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n",
    );
    let p = repo.path();
    let head = String::from_utf8(
        std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(p)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let out = tk(p, &["plan", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    assert_eq!(doc["format_version"], 1, "{doc}");
    assert_eq!(doc["fleet"], "local-test", "{doc}");
    assert_eq!(doc["commit"], head.trim(), "{doc}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("uncommitted"),
        "{}",
        text(&out)
    );

    // An edit not committed: planned and applied is HEAD, and both say so.
    fs::write(
        p.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"y\\n\"}\n",
    )
    .unwrap();
    for args in [&["plan"][..], &["apply", "--yes"][..]] {
        let out = tk(p, args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(
                "warning: 1 config file with uncommitted changes (roles/app.yaml): this uses HEAD, not them; commit them first"
            ),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert_eq!(
        fs::read_to_string(root.path().join("etc/app.conf")).unwrap(),
        "x\n",
        "HEAD's content was applied"
    );
}

/// `apply -o json`: one document at the end, with the version, the commit,
/// the plan, the outcome and what each host did; it never asks, so it
/// needs --yes; a failed step is a failed host in it.
#[test]
fn apply_json_says_what_was_planned_and_what_each_host_did() {
    let root = TempDir::new("local-root");
    let repo = repo_with(
        root.path(),
        "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n",
    );
    let p = repo.path();
    let head = git(p, &["rev-parse", "HEAD"]);
    let out = tk(p, &["apply", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error");
    assert!(err.to_string().contains("does not ask"), "{err}");
    assert!(
        !root.path().join("etc/app.conf").exists(),
        "nothing applied"
    );

    let json = |args: &[&str]| {
        let out = tk(p, args);
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        (out.status.code(), doc)
    };
    let (code, doc) = json(&["apply", "--yes", "-o", "json"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["format_version"], 1, "{doc}");
    assert_eq!(doc["commit"], head.trim(), "{doc}");
    assert_eq!(doc["outcome"], "applied", "{doc}");
    assert_eq!(doc["plan"]["summary"]["add"], 1, "{doc}");
    let host = &doc["applied"]["hosts"][0];
    assert_eq!(host["host"], "dev", "{doc}");
    assert_eq!(host["status"], "applied", "{doc}");
    assert_eq!(host["done"]["add"], 1, "{doc}");
    assert_eq!(
        fs::read_to_string(root.path().join("etc/app.conf")).unwrap(),
        "x\n"
    );

    let (code, doc) = json(&["apply", "--yes", "-o", "json"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["outcome"], "nothing to do", "{doc}");
    assert!(doc.get("applied").is_none(), "{doc}");

    fs::write(
        p.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\ncommands:\n  - {name: broken, run: \"exit 3\"}\n",
    )
    .unwrap();
    git(p, &["commit", "-qam", "a command that fails"]);
    let (code, doc) = json(&["apply", "--yes", "-o", "json"]);
    assert_eq!(code, Some(1), "{doc}");
    assert_eq!(doc["outcome"], "failed", "{doc}");
    let host = &doc["applied"]["hosts"][0];
    assert_eq!(host["status"], "failed", "{doc}");
    assert!(
        host["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{doc}"
    );
}
