//! The command line, run as users run it, against real git repositories.

use crate::support::{TempDir, git, tidekeeper};

#[test]
fn init_then_validate_exits_zero() {
    let tmp = TempDir::new("init");
    let repo = tmp.path().join("fleet");
    let out = tidekeeper().arg("init").arg(&repo).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It says what is still a placeholder and which credentials are needed.
    let said = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Before the first apply:",
        "  - metal: 203.0.113.10 is a placeholder; set the address",
        "  - platform, workspace-1: Hetzner Cloud servers, created by the first apply; put an API token in HCLOUD_TOKEN",
        "  - agent: Lightsail instances in eu-central-1, created by the first apply; AWS credentials are found as the AWS CLI finds them: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), AWS_PROFILE, SSO, or an instance role",
        "  - secrets/restic.age is encrypted to a throwaway key: replace it with `tidekeeper secrets encrypt restic`",
        "tidekeeper validate --worktree",
    ] {
        assert!(said.contains(needle), "missing {needle:?} in:\n{said}");
    }
    assert_eq!(
        git(&repo, &["rev-list", "--count", "HEAD"]),
        "1",
        "init makes exactly one commit"
    );
    assert_eq!(
        git(&repo, &["status", "--porcelain"]),
        "",
        "everything is committed"
    );
    let out = tidekeeper()
        .args(["validate", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("valid: fleet \"acme\""), "{stdout}");
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let tmp = TempDir::new("init-nonempty");
    std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
    let out = tidekeeper().arg("init").arg(tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
        "mine",
        "nothing lost"
    );
}

/// A warning is said, located, and refuses nothing: validate exits 0.
#[test]
fn a_warning_is_located_on_stderr_and_in_json_and_validate_still_passes() {
    let tmp = TempDir::new("warning");
    let repo = tmp.path().join("fleet");
    std::fs::create_dir_all(repo.join("hosts")).unwrap();
    std::fs::create_dir_all(repo.join("roles")).unwrap();
    std::fs::write(repo.join("tidekeeper.yaml"), "fleet: test\n").unwrap();
    std::fs::write(
        repo.join("hosts/gw.yaml"),
        "provider: existing\naddress: 192.0.2.2\nroles: [router]\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("roles/router.yaml"),
        "firewall:\n  incoming: deny\n  rules:\n    - {port: \"22\"}\nsysctl:\n  net.ipv4.ip_forward: \"1\"\n",
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "a router"]);
    let out = tidekeeper()
        .args(["validate", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "roles/router.yaml:6:24: warning[forward-policy]: gw: sysctl net.ipv4.ip_forward = 1"
        ),
        "{stderr}"
    );
    let out = tidekeeper()
        .args(["validate", "--format", "json", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["warnings"][0]["code"], "forward-policy");
    assert_eq!(v["warnings"][0]["line"], 6);
}

#[test]
fn invalid_commit_exits_one_with_located_errors() {
    let tmp = TempDir::new("invalid");
    let repo = tmp.path().join("fleet");
    assert!(
        tidekeeper()
            .arg("init")
            .arg(&repo)
            .status()
            .unwrap()
            .success()
    );
    let host = repo.join("hosts/agent.yaml");
    let text = std::fs::read_to_string(&host)
        .unwrap()
        .replace("roles: [base,", "roles: [bsae,");
    std::fs::write(&host, text).unwrap();
    git(&repo, &["commit", "-qam", "typo"]);
    let out = tidekeeper()
        .args(["validate", "--format", "short", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hosts/agent.yaml:14:9: error[unknown-role]: unknown role \"bsae\""),
        "{stderr}"
    );
    assert!(stderr.contains("1 error in the config repo at"), "{stderr}");

    // JSON output for machines carries the same location.
    let out = tidekeeper()
        .args(["validate", "--format", "json", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["file"], "hosts/agent.yaml");
    assert_eq!(v["errors"][0]["line"], 14);
    assert_eq!(v["errors"][0]["column"], 9);

    // Human output shows the offending line.
    let out = tidekeeper()
        .args(["validate", "--repo"])
        .arg(&repo)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("roles: [bsae, hardened-ssh"),
        "snippet shown: {stderr}"
    );
    assert!(stderr.contains("did you mean \"base\"?"), "{stderr}");
}

#[test]
fn validate_reads_the_commit_not_the_work_tree() {
    let tmp = TempDir::new("worktree");
    let repo = tmp.path().join("fleet");
    assert!(
        tidekeeper()
            .arg("init")
            .arg(&repo)
            .status()
            .unwrap()
            .success()
    );
    let first = git(&repo, &["rev-parse", "HEAD"]);
    // Uncommitted breakage: HEAD is what is checked, and the warning says so…
    std::fs::write(repo.join("tidekeeper.yaml"), "fleet: x\nnot: [valid").unwrap();
    std::fs::write(repo.join("NOTES.txt"), "not config").unwrap();
    let out = tidekeeper()
        .args(["validate", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "work tree edits are not validated"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: 1 config file with uncommitted changes (tidekeeper.yaml)")
            && stderr.contains("validate --worktree"),
        "{stderr}"
    );
    // …and --worktree checks the files on disk, from a subdirectory too.
    let out = tidekeeper()
        .args(["validate", "--worktree"])
        .current_dir(repo.join("roles"))
        .env_remove("TIDEKEEPER_REPO")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tidekeeper.yaml:2"), "{stderr}");
    assert!(stderr.contains("in the work tree"), "{stderr}");
    // …until committed; and --ref still reads the older commit.
    git(&repo, &["commit", "-qam", "break"]);
    let out = tidekeeper()
        .args(["validate", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = tidekeeper()
        .args(["validate", "--ref", &first, "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_missing_repo_ref_or_host_is_an_error_exit_1_and_only_a_bad_command_line_is_2() {
    let tmp = TempDir::new("norepo");
    let out = tidekeeper()
        .args(["validate", "--repo"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open git repository"));

    let repo = tmp.path().join("fleet");
    assert!(
        tidekeeper()
            .arg("init")
            .arg(&repo)
            .status()
            .unwrap()
            .success()
    );
    let out = tidekeeper()
        .args(["validate", "--ref", "no-such-branch", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot find no-such-branch"));
    // With --detailed-exitcode, 2 means "changes": an error must never say so.
    for args in [
        &["plan", "--detailed-exitcode", "--ref", "no-such-branch"][..],
        &["plan", "--detailed-exitcode", "--host", "no-such-host"][..],
    ] {
        let out = tidekeeper()
            .args(args)
            .arg("--repo")
            .arg(&repo)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    }
    // From a subdirectory, the repo around it is found.
    let out = tidekeeper()
        .arg("validate")
        .current_dir(repo.join("hosts"))
        .env_remove("TIDEKEEPER_REPO")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let out = tidekeeper()
        .args(["validate", "--bogus-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn show_prints_a_resolved_host() {
    let tmp = TempDir::new("show");
    let repo = tmp.path().join("fleet");
    assert!(
        tidekeeper()
            .arg("init")
            .arg(&repo)
            .status()
            .unwrap()
            .success()
    );
    let out = tidekeeper()
        .args(["show", "workspace-1", "--json", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(host["name"], "workspace-1");
    assert_eq!(host["group"], "workspace");
    assert_eq!(host["provider"], "hetzner");
    let resources = host["resources"].as_array().unwrap();
    let sshd = resources
        .iter()
        .find(|r| r["path"] == "/etc/ssh/sshd_config.d/10-hardening.conf")
        .unwrap();
    assert!(
        sshd["content"]
            .as_str()
            .unwrap()
            .contains("Managed by tidekeeper (acme/workspace-1)")
    );
    assert_eq!(sshd["mode"], "0644");
    assert_eq!(sshd["validate"], "sshd -t -f %s");

    let out = tidekeeper()
        .args(["show", "platform", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("file       /etc/docker/daemon.json"),
        "{text}"
    );

    let out = tidekeeper()
        .args(["show", "nope", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("hosts are: agent, metal, platform, workspace-1")
    );
}

#[test]
fn demo_sets_up_and_validates_the_example_fleet() {
    let tmp = TempDir::new("demo");
    let dir = tmp.path().join("demo");
    let out = tidekeeper()
        .arg("demo")
        .arg(&dir)
        .arg("--no-daemon")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("valid: fleet \"acme\""), "{stdout}");
    // It reconciles this machine, confined to DIR-root: plan, apply, plan.
    assert!(
        stdout.contains("Plan: 6 to add, 0 to change, 0 to destroy, 1 to run."),
        "{stdout}"
    );
    assert!(stdout.contains("Apply complete: "), "{stdout}");
    assert!(
        stdout
            .trim_end()
            .contains("No changes. Hosts match the configuration."),
        "{stdout}"
    );
    let root = tmp.path().join("demo-root");
    let motd = std::fs::read_to_string(root.join("etc/motd")).unwrap();
    assert!(motd.contains("managed by tidekeeper"), "{motd}");
    let fleet_json = std::fs::read_to_string(root.join("etc/acme/fleet.json")).unwrap();
    assert_eq!(
        fleet_json,
        "{\"fleet\": \"acme\", \"host\": \"demo-local\", \"admin\": \"ops@acme.example\"}\n"
    );
    assert!(
        root.join("etc/acme/.first-boot").exists(),
        "the guarded command ran"
    );
    // Running it again reuses the repo and finds nothing to do.
    let out = tidekeeper()
        .arg("demo")
        .arg(&dir)
        .arg("--no-daemon")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Using the existing demo repo"));
    assert!(
        !stdout.contains("Plan: "),
        "second demo run has nothing to do: {stdout}"
    );
}

#[test]
fn demo_starts_the_daemon_which_reconciles_new_commits() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let tmp = TempDir::new("demo-daemon");
    let dir = tmp.path().join("demo");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = tmp.path().join("demo.log");
    let mut child = tidekeeper()
        .arg("demo")
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("TIDEKEEPER_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let get = |path: &str| -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let head = || git(&dir, &["rev-parse", "HEAD"]);
    wait("the first reconcile", &|| {
        // The daemon answers only once the demo repo is committed.
        let st = get("/status");
        st.contains("\"applied_commit\":\"")
            && st.contains(&format!("\"applied_commit\":\"{}\"", head()))
    });
    let role = std::fs::read_to_string(dir.join("roles/demo-local.yaml")).unwrap();
    std::fs::write(
        dir.join("roles/demo-local.yaml"),
        role.replace("Hello from the acme fleet", "Hello, daemon"),
    )
    .unwrap();
    git(&dir, &["commit", "-qam", "change the page"]);
    let page = tmp.path().join("demo-root/srv/www/index.html");
    wait("the new commit applied", &|| {
        std::fs::read_to_string(&page)
            .unwrap_or_default()
            .contains("Hello, daemon")
    });
    assert!(
        get("/").contains("demo-local"),
        "status page lists the host"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // stderr is a file here, as under journald: plain text, no colour codes.
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("INFO") && log.contains("listening"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "ANSI escapes in a log that is not a terminal:\n{log:?}"
    );
}

#[test]
fn quiet_and_verbose_and_json_logs_work_on_every_command() {
    let tmp = TempDir::new("log-flags");
    let repo = tmp.path().join("fleet");
    assert!(
        tidekeeper()
            .arg("init")
            .arg(&repo)
            .status()
            .unwrap()
            .success()
    );
    // The flags go before or after the command, on any command.
    for args in [
        &["-q", "validate"][..],
        &["validate", "-vv"][..],
        &["--log-format", "json", "validate"][..],
        &["schedule", "list", "-v", "--log-format", "json"][..],
    ] {
        let out = tidekeeper()
            .args(args)
            .arg("--repo")
            .arg(&repo)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
    let out = tidekeeper()
        .args(["-q", "-v", "validate"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "-q and -v contradict each other"
    );
}

#[test]
fn schedule_list_shows_next_runs_in_each_jobs_zone() {
    let tmp = TempDir::new("schedule-list");
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
    let out = tidekeeper()
        .args(["schedule", "list", "--next", "2", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "nightly-backup (backup, cron \"30 1 * * *\" Europe/Berlin), window daily 00:00-06:00 UTC"
        ),
        "{text}"
    );
    assert!(
        text.contains("monthly-kernel-upgrade (upgrade, cron \"0 3 * * SUN#1\" UTC)"),
        "{text}"
    );
    // Every "next" of the monthly job is a Sunday between the 1st and the 7th.
    let monthly = text.split("monthly-kernel-upgrade").nth(1).unwrap();
    let nexts: Vec<&str> = monthly
        .lines()
        .filter(|l| l.trim_start().starts_with("next: "))
        .take(2)
        .collect();
    assert_eq!(nexts.len(), 2, "{text}");
    for n in nexts {
        assert!(n.contains("next: Sun "), "{n}");
        let day: u32 = n.split('-').nth(2).unwrap()[..2].parse().unwrap();
        assert!((1..=7).contains(&day), "{n}");
        assert!(n.contains("03:00 UTC"), "{n}");
    }
}

#[test]
fn completions_and_manual_pages_cover_every_command() {
    // The registration each shell sources calls tidekeeper back.
    for shell in ["bash", "zsh", "fish"] {
        let out = tidekeeper().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("COMPLETE=") || text.contains("COMPLETE \""),
            "{shell}: {text}"
        );
        assert!(text.contains("tidekeeper"), "{shell}: {text}");
    }
    let tmp = TempDir::new("complete-cmds");
    let words = complete(tmp.path(), &["tidekeeper", ""]);
    for sub in ["validate", "plan", "apply", "notify", "schedule"] {
        assert!(words.contains(&sub.to_string()), "{words:?}");
    }
    let words = complete(tmp.path(), &["tidekeeper", "plan", "--det"]);
    assert_eq!(words, ["--detailed-exitcode"]);
    let out = tidekeeper().arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH tidekeeper"),
        "{page}"
    );
    assert!(page.contains("validate"), "{page}");
    let tmp = TempDir::new("man");
    let out = tidekeeper()
        .args(["man", "--out-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let plan = std::fs::read_to_string(tmp.path().join("tidekeeper-plan.1")).unwrap();
    assert!(plan.contains("detailed\\-exitcode"), "{plan}");
    assert!(tmp.path().join("tidekeeper.1").exists());
    // Issue 39: nested subcommands get pages of their own; hidden ones none.
    let rekey = std::fs::read_to_string(tmp.path().join("tidekeeper-secrets-rekey.1")).unwrap();
    assert!(rekey.contains("recipients"), "{rekey}");
    assert!(tmp.path().join("tidekeeper-schedule-list.1").exists());
    let log = std::fs::read_to_string(tmp.path().join("tidekeeper-log.1")).unwrap();
    assert!(log.contains("audit trail"), "{log}");
    assert!(!tmp.path().join("tidekeeper-proposal-worker.1").exists());
    // `man | head -1`: see the test of closed pipes below.
}

/// A host setting no kind knows is a located error of `validate` (and of
/// every command that loads the config), not a surprise at plan time.
#[test]
fn a_misspelt_setting_is_a_located_validate_error() {
    let tmp = TempDir::new("setting");
    let repo = tmp.path().join("fleet");
    assert!(
        tidekeeper()
            .arg("init")
            .arg(&repo)
            .status()
            .unwrap()
            .success()
    );
    let role = repo.join("roles/base.yaml");
    let mut text = std::fs::read_to_string(&role).unwrap();
    let line = text.lines().count() + 2;
    text.push_str("settings:\n  timezon: Europe/Berlin\n");
    std::fs::write(&role, text).unwrap();
    git(&repo, &["commit", "-qam", "typo"]);
    for cmd in ["validate", "plan"] {
        let out = tidekeeper()
            .args([cmd, "--repo"])
            .arg(&repo)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("roles/base.yaml:{line}:"))
                && stderr.contains("unknown-setting")
                && stderr.contains("tidekeeper has no setting \"timezon\"")
                && stderr.contains("did you mean \"timezone\"?"),
            "{cmd}: {stderr}"
        );
    }
}

/// `tidekeeper log` reads the notes ref the fleet names, newest first along
/// first parents: the audit trailers of a note, the first line of a note
/// written before notes carried them, and commits never reconciled.
#[test]
fn log_shows_the_audit_trail_from_the_notes_as_a_table_and_as_json() {
    let tmp = TempDir::new("log");
    let repo = tmp.path().join("fleet");
    let out = tidekeeper().arg("init").arg(&repo).output().unwrap();
    assert!(out.status.success());
    let yaml = std::fs::read_to_string(repo.join("tidekeeper.yaml"))
        .unwrap()
        .replace(
            "  branch: tidekeeper/status",
            "  branch: tidekeeper/status\n  notes_ref: refs/notes/audit",
        );
    std::fs::write(repo.join("tidekeeper.yaml"), yaml).unwrap();
    git(&repo, &["commit", "-qam", "notes in refs/notes/audit"]);
    let old = git(&repo, &["rev-parse", "HEAD"]);
    git(
        &repo,
        &["commit", "-q", "--allow-empty", "-m", "never reconciled"],
    );
    let skipped = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "released"]);
    let released = git(&repo, &["rev-parse", "HEAD"]);
    let log = |args: &[&str]| {
        let out = tidekeeper()
            .arg("log")
            .arg("--repo")
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // No notes fetched yet: the command that brings them.
    git(
        &repo,
        &[
            "remote",
            "add",
            "origin",
            "https://git.example/acme/fleet.git",
        ],
    );
    let (code, _, err) = log(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no notes ref refs/notes/audit")
            && err.contains("fetch origin refs/notes/audit:refs/notes/audit"),
        "{err}"
    );
    let note = |commit: &str, text: &str| {
        git(
            &repo,
            &[
                "notes",
                "--ref",
                "refs/notes/audit",
                "add",
                "-m",
                text,
                commit,
            ],
        );
    };
    note(
        &old,
        "tidekeeper reconcile of an old commit\n\napplied to 1 host(s)",
    );
    note(
        &released,
        "tidekeeper reconcile of it\n\napplied to 1 host(s)\n\n\
         Tidekeeper-Verdict: applied\n\
         Tidekeeper-At: 2026-12-07T02:00:00Z\n\
         Tidekeeper-Commit: x\n\
         Approved-By: carol\n\
         Reviewed-Plan: refs/pull/9/head 0123456789abcdef0123\n\
         Released-By: bob at 2026-12-07T01:00:00Z, at once\n\
         Tidekeeper-Summary: applied to 1 host(s)",
    );
    let (code, table, err) = log(&["-n", "3"]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows[0].starts_with("COMMIT") && rows[0].contains("RELEASED BY"),
        "{table}"
    );
    assert!(rows[1].starts_with(&released[..12]), "{table}");
    for cell in [
        "2026-12-07T02:00:00Z",
        "applied",
        "carol",
        "refs/pull/9/head 0123456789ab",
        "bob at 2026-12-07T01:00:00Z",
    ] {
        assert!(rows[1].contains(cell), "{cell} missing in\n{table}");
    }
    assert!(
        rows[2].starts_with(&skipped[..12]) && rows[2].contains("not reconciled"),
        "{table}"
    );
    assert!(
        rows[3].starts_with(&old[..12])
            && rows[3].ends_with("tidekeeper reconcile of an old commit"),
        "{table}"
    );
    let (code, json, err) = log(&["-n", "2", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["format_version"], 1);
    assert_eq!(doc["notes_ref"], "refs/notes/audit");
    let commits = doc["commits"].as_array().unwrap();
    assert_eq!(commits.len(), 2, "-n 2: {json}");
    assert_eq!(commits[0]["commit"], released.as_str());
    assert_eq!(commits[0]["verdict"], "applied");
    assert_eq!(commits[0]["approved_by"], serde_json::json!(["carol"]));
    assert_eq!(commits[0]["released"]["by"], "bob");
    assert_eq!(commits[0]["released"]["at"], "2026-12-07T01:00:00Z");
    assert_eq!(commits[0]["reviewed_plan"]["proposal"], "refs/pull/9/head");
    assert_eq!(commits[0]["merged_by"], serde_json::Value::Null);
    assert_eq!(commits[1]["commit"], skipped.as_str());
    assert_eq!(commits[1]["reconciled"], false);
    assert_eq!(commits[1]["verdict"], serde_json::Value::Null);
    let (_, json, _) = log(&["--json", "--since", "2999-01-01T00:00:00Z"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["commits"], serde_json::json!([]), "nothing that recent");
    let (code, _, err) = log(&["--ref", "no-such-branch"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot find no-such-branch"), "{err}");
}

/// What the shell is offered for the last word of `line`, in `dir`
/// (fish's protocol: one candidate per line, a tab before its help).
fn complete(dir: &std::path::Path, line: &[&str]) -> Vec<String> {
    let out = tidekeeper()
        .env("COMPLETE", "fish")
        .env_remove("TIDEKEEPER_REPO")
        .current_dir(dir)
        .arg("--")
        .args(line)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn completion_offers_the_hosts_labels_and_jobs_of_the_repo_at_hand() {
    let tmp = TempDir::new("complete");
    let repo = labelled_fleet(tmp.path());
    assert_eq!(
        complete(&repo, &["tidekeeper", "plan", "--host", "web"]),
        ["web-1", "web-2"]
    );
    assert_eq!(
        complete(&repo, &["tidekeeper", "apply", "--host", ""]),
        ["db-1", "web-1", "web-2"]
    );
    assert_eq!(
        complete(&repo, &["tidekeeper", "plan", "-l", "env=p"]),
        ["env=prod"]
    );
    assert_eq!(
        complete(&repo, &["tidekeeper", "schedule", "run", "t"]),
        ["tidy"]
    );
    assert_eq!(complete(&repo, &["tidekeeper", "show", "db"]), ["db-1"]);
    // From a subdirectory of the repo too.
    assert_eq!(
        complete(&repo.join("hosts"), &["tidekeeper", "plan", "--host", "db"]),
        ["db-1"]
    );
    // Outside any repo: nothing offered, and nothing printed into the shell.
    let elsewhere = TempDir::new("complete-none");
    assert!(complete(elsewhere.path(), &["tidekeeper", "plan", "--host", ""]).is_empty());
    // A repo that does not load completes nothing either.
    std::fs::write(repo.join("hosts/web-1.yaml"), "provider: [\n").unwrap();
    git(&repo, &["commit", "-qam", "broken"]);
    assert!(complete(&repo, &["tidekeeper", "plan", "--host", ""]).is_empty());
}

/// Three `provider: local` hosts with labels, each confined to a directory
/// under `dir`, committed; the repo.
fn labelled_fleet(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = dir.join("fleet");
    std::fs::create_dir_all(repo.join("hosts")).unwrap();
    std::fs::create_dir_all(repo.join("roles")).unwrap();
    std::fs::write(repo.join("tidekeeper.yaml"), "fleet: lab\n").unwrap();
    for (name, env) in [("web-1", "prod"), ("web-2", "staging"), ("db-1", "prod")] {
        let root = dir.join(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            repo.join(format!("hosts/{name}.yaml")),
            format!(
                "provider: local\nroot: {}\nlabels: {{env: {env}}}\nroles: [app]\n",
                root.display()
            ),
        )
        .unwrap();
    }
    std::fs::write(
        repo.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"x\\n\"}\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("schedules.yaml"),
        "jobs:\n  - {name: tidy, cron: \"0 0 1 1 *\", hosts: {names: [db-1]}, command: {run: \"true\"}}\n",
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "a lab"]);
    repo
}

/// Which hosts a plan's text names (`+ HOST file …` lines).
fn planned_hosts(out: &std::process::Output) -> Vec<String> {
    let mut hosts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("+ "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

#[test]
fn hosts_are_chosen_by_name_glob_and_label_and_a_selection_of_nothing_is_an_error() {
    let tmp = TempDir::new("select");
    let repo = labelled_fleet(tmp.path());
    let tk = |args: &[&str]| {
        tidekeeper()
            .args(args)
            .arg("--repo")
            .arg(&repo)
            .output()
            .unwrap()
    };
    for (args, want) in [
        (&["plan"][..], &["db-1", "web-1", "web-2"][..]),
        (&["plan", "--host", "web-*"][..], &["web-1", "web-2"][..]),
        (&["plan", "-l", "env=prod"][..], &["db-1", "web-1"][..]),
        (
            &["plan", "--host", "web-*", "-l", "env=prod"][..],
            &["web-1"][..],
        ),
        (
            &[
                "plan", "-l", "env=prod", "--host", "db-1", "--host", "web-2",
            ][..],
            &["db-1"][..],
        ),
    ] {
        let out = tk(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert_eq!(planned_hosts(&out), want, "{args:?}: {out:?}");
    }
    // Matching nothing: exit 1, naming what matched nothing and what was meant.
    for (args, said) in [
        (
            &["plan", "--host", "webb-1"][..],
            "no host is named \"webb-1\" in fleet \"lab\"",
        ),
        (&["plan", "--host", "webb-1"][..], "did you mean \"web-1\"?"),
        (
            &["plan", "--host", "app-*"][..],
            "no host matches \"app-*\"",
        ),
        (&["plan", "-l", "env=prd"][..], "did you mean env=prod?"),
        (&["plan", "-l", "evn=prod"][..], "did you mean env=prod?"),
        (&["plan", "-l", "env"][..], "write KEY=VALUE"),
        (
            &["plan", "--host", "db-*", "-l", "env=staging"][..],
            "matches --host db-* -l env=staging together",
        ),
        (
            &["apply", "--yes", "--host", "webb-1"][..],
            "did you mean \"web-1\"?",
        ),
        (
            &["schedule", "run", "tidy", "--host", "db1"][..],
            "did you mean \"db-1\"?",
        ),
        (
            &["schedule", "run", "tidy", "--host", "web-*"][..],
            "job \"tidy\" runs on db-1: none of them is chosen by --host web-*",
        ),
        (
            &["restore", "nightly", "--host", "db1"][..],
            "did you mean \"db-1\"?",
        ),
        (
            &["restore", "nightly", "-l", "env=prod"][..],
            "-l env=prod chooses 2 hosts (db-1, web-1)",
        ),
    ] {
        let out = tk(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: want {said:?} in {stderr}");
    }
    // Nothing was applied by the refused apply.
    assert!(!tmp.path().join("web-1/etc/app.conf").exists());
}

/// `import` into a fleet whose tidekeeper.yaml configures the provider but
/// has no host of it yet (the first server of a fleet, as docs/cloud.md
/// imports it) names what is missing, the credentials, rather than saying
/// the provider is not configured.
#[test]
fn import_without_credentials_names_them_for_a_configured_provider() {
    let tmp = TempDir::new("import-creds");
    let repo = tmp.path().join("fleet");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("tidekeeper.yaml"),
        "fleet: test\nproviders:\n  hetzner: {}\n  lightsail: {region: eu-central-1}\n  ec2: {region: eu-central-1}\n",
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "providers, no hosts yet"]);
    for (provider, said) in [
        (
            "hetzner",
            "hetzner: no credentials: set the environment variable HCLOUD_TOKEN",
        ),
        ("lightsail", "lightsail: no AWS credentials"),
        ("ec2", "ec2: no AWS credentials"),
    ] {
        let out = tidekeeper()
            .args(["import", provider, "old-box", "--as", "box", "--repo"])
            .arg(&repo)
            .env_remove("HCLOUD_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{provider}: {stderr}");
        assert!(
            stderr.contains(said),
            "{provider}: want {said:?} in {stderr}"
        );
        assert!(!repo.join("hosts/box.yaml").exists());
    }
}

/// `tidekeeper run --host NAME` with a name the fleet does not have refuses
/// to start (a daemon managing nothing would say nothing).
#[test]
fn run_refuses_a_host_the_fleet_does_not_have() {
    let tmp = TempDir::new("run-select");
    let repo = labelled_fleet(tmp.path());
    let out = tidekeeper()
        .args([
            "run",
            "--no-watch",
            "--listen",
            "127.0.0.1:0",
            "--host",
            "web-01",
            "--repo",
        ])
        .arg(&repo)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no host is named \"web-01\" in fleet \"lab\"")
            && stderr.contains("did you mean \"web-1\"?"),
        "{stderr}"
    );
}

/// `-o text|json|markdown` on every command that prints a result, the older
/// `--json`/`--format` still working; JSON carries `format_version` and the
/// commit, and on a bad config the errors, as objects on stdout.
#[test]
fn one_output_flag_prints_versioned_json_with_the_commit_and_errors_as_objects() {
    let tmp = TempDir::new("output");
    let repo = labelled_fleet(tmp.path());
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let tk = |args: &[&str]| {
        tidekeeper()
            .args(args)
            .arg("--repo")
            .arg(&repo)
            .output()
            .unwrap()
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let out = tk(args);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    for args in [
        &["plan", "-o", "json"][..],
        &["plan", "--json"][..],
        &["validate", "-o", "json"][..],
        &["validate", "--format", "json"][..],
        &["show", "web-1", "-o", "json"][..],
        &["show", "web-1", "--json"][..],
        &["schedule", "run", "tidy", "-o", "json"][..],
        &["schedule", "run", "tidy", "--json"][..],
        &["schedule", "list", "-o", "json"][..],
    ] {
        let v = json(args);
        assert_eq!(v["format_version"], 1, "{args:?}: {v}");
        assert_eq!(v["commit"], head.as_str(), "{args:?}: {v}");
    }
    let out = tk(&["plan", "-o", "markdown"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("web-1"),
        "{out:?}"
    );
    // A word -o does not know: the old `plan -o FILE` is pointed to --out.
    let out = tk(&["plan", "-o", "web.plan"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--out web.plan"),
        "{out:?}"
    );
    let out = tk(&["validate", "-o", "markdown"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-o takes text or json here"));
    // A bad config: every error an object on stdout, located, and exit 1.
    std::fs::write(
        repo.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, contnt: \"x\\n\"}\n",
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "a typo"]);
    let bad = git(&repo, &["rev-parse", "HEAD"]);
    for args in [
        &["plan", "-o", "json"][..],
        &["apply", "--yes", "--host", "web-1"][..],
        &["validate", "-o", "json"][..],
        &["show", "web-1", "-o", "json"][..],
        &["schedule", "run", "tidy", "-o", "json"][..],
    ] {
        let out = tk(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        if !args.contains(&"json") {
            assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"));
        assert_eq!(v["format_version"], 1, "{args:?}: {v}");
        assert_eq!(v["commit"], bad.as_str(), "{args:?}: {v}");
        let e = &v["errors"][0];
        assert_eq!(e["file"], "roles/app.yaml", "{v}");
        assert_eq!(
            (e["line"].as_u64(), e["column"].as_u64()),
            (Some(2), Some(27)),
            "{v}"
        );
        assert_eq!(e["code"], "unknown-key", "{v}");
        assert!(e["message"].as_str().unwrap().contains("contnt"), "{v}");
        assert!(e["help"].as_str().unwrap().contains("content"), "{v}");
    }
    // Any other error under -o json is an object on stdout too.
    git(&repo, &["revert", "--no-edit", "HEAD"]);
    let out = tk(&["plan", "-o", "json", "--host", "webb-1"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format_version"], 1, "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("webb-1"),
        "{v}"
    );
    assert_eq!(v["errors"][0]["help"], "did you mean \"web-1\"?", "{v}");
}

/// `-q`: no progress lines; plan and apply say that the work tree has
/// uncommitted edits (they use the commit), as validate does.
#[test]
fn quiet_prints_no_progress_and_plan_and_apply_warn_of_uncommitted_edits() {
    let tmp = TempDir::new("quiet");
    let repo = labelled_fleet(tmp.path());
    let tk = |args: &[&str]| {
        tidekeeper()
            .args(args)
            .arg("--repo")
            .arg(&repo)
            .output()
            .unwrap()
    };
    let out = tk(&["plan", "--host", "web-1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[1/1] web-1: planned"), "{stderr}");
    for args in [
        &["-q", "plan"][..],
        &["apply", "-q", "--yes", "--host", "web-1"][..],
    ] {
        let out = tk(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        tmp.path().join("web-1/etc/app.conf").exists(),
        "-q still applies"
    );
    std::fs::write(
        repo.join("roles/app.yaml"),
        "files:\n  - {path: /etc/app.conf, content: \"y\\n\"}\n",
    )
    .unwrap();
    for args in [
        &["plan", "--host", "web-1"][..],
        &["apply", "--yes", "--host", "web-1"][..],
        &["validate"][..],
    ] {
        let out = tk(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            stderr.contains("warning: 1 config file with uncommitted changes (roles/app.yaml)"),
            "{args:?}: {stderr}"
        );
    }
    // The commit was applied, not the edit.
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("web-1/etc/app.conf")).unwrap(),
        "x\n"
    );
}

/// One typo is one located error with "did you mean", not a cascade of
/// false errors from the files checked against a fleet file that did not
/// load; an unclosed `[` is reported on its own line.
#[test]
fn a_typo_is_one_located_error_and_an_unclosed_bracket_is_found_on_its_line() {
    let tmp = TempDir::new("typo");
    let repo = tmp.path().join("fleet");
    assert!(
        tidekeeper()
            .arg("init")
            .arg(&repo)
            .status()
            .unwrap()
            .success()
    );
    let fleet = std::fs::read_to_string(repo.join("tidekeeper.yaml")).unwrap();
    let line = fleet.lines().position(|l| l.starts_with("drift:")).unwrap() + 1;
    let typo: String = fleet
        .lines()
        .map(|l| {
            if l.starts_with("drift:") {
                "drift: corect"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(repo.join("tidekeeper.yaml"), typo + "\n").unwrap();
    let out = tidekeeper()
        .args(["validate", "--worktree", "-o", "json", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v:#}");
    assert_eq!(errors[0]["file"], "tidekeeper.yaml");
    assert_eq!(errors[0]["line"], line as u64);
    assert!(
        errors[0]["help"]
            .as_str()
            .unwrap()
            .contains("did you mean `correct`?"),
        "{v:#}"
    );
    std::fs::write(repo.join("tidekeeper.yaml"), fleet).unwrap();

    let host = repo.join("hosts/agent.yaml");
    let text = std::fs::read_to_string(&host).unwrap();
    let roles = text
        .lines()
        .position(|l| l.starts_with("roles: ["))
        .unwrap();
    let broken: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == roles {
                l.replace(']', "")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(roles + 1 < broken.len(), "a key follows roles:");
    std::fs::write(&host, broken.join("\n") + "\n").unwrap();
    let out = tidekeeper()
        .args(["validate", "--worktree", "--format", "short", "--repo"])
        .arg(&repo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "hosts/agent.yaml:{}:8: error[yaml]: unclosed bracket '['",
            roles + 1
        )),
        "{stderr}"
    );
}

/// Eighty `provider: local` hosts (each in a directory under `dir`) with
/// three roles, one of them a file of 300 lines, committed: enough for
/// `validate`, `plan` and `show` to say more than a pipe of 4 KiB holds.
fn talkative_fleet(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = dir.join("fleet");
    std::fs::create_dir_all(repo.join("hosts")).unwrap();
    std::fs::create_dir_all(repo.join("roles")).unwrap();
    std::fs::write(repo.join("tidekeeper.yaml"), "fleet: chatty\n").unwrap();
    for i in 1..=80 {
        let root = dir.join(format!("host-{i:02}"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            repo.join(format!("hosts/host-{i:02}.yaml")),
            format!(
                "provider: local\nroot: {}\nroles: [app, monitoring-agent, log-forwarder]\n",
                root.display()
            ),
        )
        .unwrap();
    }
    let lines: String = (1..=300).map(|n| format!("setting_{n} = {n}\\n")).collect();
    std::fs::write(
        repo.join("roles/app.yaml"),
        format!("files:\n  - {{path: /etc/app.conf, content: \"{lines}\"}}\n"),
    )
    .unwrap();
    for role in ["monitoring-agent", "log-forwarder"] {
        std::fs::write(
            repo.join(format!("roles/{role}.yaml")),
            format!("files:\n  - {{path: /etc/{role}.conf, content: \"on\\n\"}}\n"),
        )
        .unwrap();
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "a chatty fleet"]);
    repo
}

/// `tidekeeper ARGS | head -1`, without its race: stdout is a pipe of one
/// page (4 KiB) whose reader takes `lines` lines (byte by byte, nothing
/// more) and closes it, while the command still has more to write than the
/// pipe holds. Returns the lines read, how the command ended, its stderr.
fn through_a_pipe_closed_after(
    lines: usize,
    args: &[&str],
) -> (String, std::process::ExitStatus, String) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (mut reader, writer) = std::io::pipe().unwrap();
    // SAFETY: fcntl on a pipe this function owns.
    let size = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        size >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    let mut cmd = tidekeeper();
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    drop(cmd); // the writer's copy here: the child holds the only one
    let mut read = Vec::new();
    let mut byte = [0u8];
    while read.iter().filter(|b| **b == b'\n').count() < lines
        && reader.read(&mut byte).unwrap() == 1
    {
        read.push(byte[0]);
    }
    drop(reader);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (String::from_utf8(read).unwrap(), out.status, stderr)
}

/// Every command's output cut by a closed pipe (`validate | head -1`) ends
/// it as a closed pipe ends `cat`: by SIGPIPE (status 141 in a shell),
/// silently — no panic, no backtrace, no error — after its first line.
#[test]
fn a_reader_that_closes_the_pipe_ends_any_command_quietly_by_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = TempDir::new("pipe");
    let repo = talkative_fleet(tmp.path());
    let repo = repo.to_str().unwrap();
    let cases: [(usize, &[&str], &str); 7] = [
        (1, &["validate", "--repo", repo], "valid: fleet \"chatty\""),
        (
            1,
            &["plan", "--host", "host-01", "--repo", repo],
            "host-01 (local)",
        ),
        (1, &["show", "host-01", "--json", "--repo", repo], "{"),
        (1, &["schema"], "{"),
        // Too short to outlast a pipe: closed before they write.
        (0, &["show", "host-01", "--repo", repo], ""),
        (0, &["completions", "bash"], ""),
        (0, &["man"], ""),
    ];
    for (lines, args, first) in cases {
        let (read, status, stderr) = through_a_pipe_closed_after(lines, args);
        assert!(read.starts_with(first), "{args:?} began with: {read:?}");
        assert_eq!(read.lines().count(), lines, "{args:?}: {read:?}");
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: ended by the closed pipe, as `cat` is ({status}); stderr:\n{stderr}"
        );
        for noise in ["panicked", "backtrace", "Broken pipe", "error"] {
            assert!(!stderr.contains(noise), "{args:?}: {noise:?} in:\n{stderr}");
        }
    }
}
