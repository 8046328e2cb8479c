//! `tidekeeper run` end to end: real git, real hosts, the daemon as a process.

use std::time::{Duration, Instant};

use crate::controller::sign;
use crate::support::daemon::Daemon;
use crate::support::fleet::{FleetRepo, text};
use crate::support::git;
use crate::support::testbed::Testbed;

const ROLE: &str = "files:\n  - {path: /etc/tk-daemon, content: \"VERSION\\n\"}\n";

fn head(repo: &FleetRepo) -> String {
    git(&repo.path, &["rev-parse", "HEAD"])
}

fn role(v: &str) -> String {
    ROLE.replace("VERSION", v)
}

/// A daemon polling every second that takes actions with `token`.
fn daemon_with_token(repo: &FleetRepo, token: &str) -> Daemon {
    Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &[("TIDEKEEPER_API_TOKEN", token)],
    )
}

/// `tidekeeper ARGS --daemon <d>` with `token`.
fn tk_at(d: &Daemon, token: &str, args: &[&str]) -> std::process::Output {
    crate::support::tidekeeper()
        .args(args)
        .args(["--daemon", &format!("127.0.0.1:{}", d.port)])
        .env("TIDEKEEPER_API_TOKEN", token)
        .output()
        .unwrap()
}

#[test]
fn commits_are_applied_and_reported_back_invalid_ones_are_not() {
    let bed = Testbed::start(2);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    let d = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "60s"]);
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    for i in 0..2 {
        assert_eq!(bed.ssh_ok(i, "cat /etc/tk-daemon"), "one\n");
    }

    // Status branch, badges, note.
    let h0 = &bed.host(0).name;
    let host_json = git(
        &repo.path,
        &["show", &format!("tidekeeper/status:status/hosts/{h0}.json")],
    );
    let v: serde_json::Value = serde_json::from_str(&host_json).unwrap();
    assert_eq!(v["state"], "synced");
    assert_eq!(v["applied_commit"].as_str(), Some(head(&repo).as_str()));
    let badge = git(&repo.path, &["show", "tidekeeper/status:badges/fleet.svg"]);
    assert!(
        badge.contains("synced") && badge.starts_with("<svg"),
        "{badge}"
    );
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", "HEAD"]);
    assert!(note.contains("applied to 2 host(s)"), "{note}");
    assert!(
        note.contains(&format!("{h0} ")) && note.contains("synced"),
        "{note}"
    );
    let (code, metrics) = d.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!(
            "tidekeeper_reconciles_total{{host=\"{h0}\",result=\"synced\"}} 1"
        )),
        "{metrics}"
    );
    // Prometheus asks for OpenMetrics and gets it; anyone else the classic text.
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (code, om) = d.request("GET", "/metrics", &[("Accept", accept)], b"");
    assert_eq!(code, 200);
    assert!(
        om.contains("# TYPE tidekeeper_reconciles counter") && om.contains("# EOF"),
        "{om}"
    );
    assert!(
        metrics.contains("# TYPE tidekeeper_reconciles_total counter")
            && !metrics.contains("# EOF"),
        "{metrics}"
    );
    // Applied to every host: the sync time is set.
    assert!(
        !metrics.contains("tidekeeper_last_successful_sync_timestamp_seconds 0"),
        "{metrics}"
    );
    assert!(d.get("/").1.contains("<h1>test"), "status page");
    assert_eq!(d.get("/readyz").0, 200);

    // A new commit is picked up (file watch or poll) and applied.
    repo.write("roles/app.yaml", &role("two"));
    repo.commit("two");
    d.wait_applied(&head(&repo), Duration::from_secs(20));
    assert_eq!(bed.ssh_ok(1, "cat /etc/tk-daemon"), "two\n");

    // An invalid commit: reported with file:line, nothing applied.
    repo.write(
        "roles/app.yaml",
        "files:\n  - {path: /etc/tk-daemon, content: \"three\\n\", mdoe: \"0644\"}\n",
    );
    repo.commit("typo");
    let bad = head(&repo);
    d.wait_for(
        "the invalid commit reported",
        Duration::from_secs(20),
        |d| d.status()["invalid"]["commit"].as_str() == Some(bad.as_str()),
    );
    let st = d.status();
    assert_eq!(st["state"], "invalid config");
    let errors = st["invalid"]["errors"].to_string();
    assert!(errors.contains("roles/app.yaml:2:"), "{errors}");
    assert!(errors.contains("mdoe"), "{errors}");
    d.wait_noted(&bad, Duration::from_secs(20));
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", &bad]);
    assert!(
        note.contains("invalid config") && note.contains("roles/app.yaml:2:"),
        "{note}"
    );
    let audit = tidekeeper::audit::Audit::parse(&note).expect("an audit trail");
    assert_eq!(
        audit.verdict,
        tidekeeper::audit::Verdict::Rejected,
        "{note}"
    );
    assert_eq!(audit.commit, bad);
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-daemon"),
        "two\n",
        "nothing applied"
    );

    // The next valid commit is applied.
    repo.write("roles/app.yaml", &role("four"));
    repo.commit("fixed");
    d.wait_applied(&head(&repo), Duration::from_secs(20));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "four\n");
    assert!(d.status()["invalid"].is_null());
}

#[test]
fn drift_is_reported_or_corrected() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    let d = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "1s"]);
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    let h = bed.host(0).name.clone();
    bed.ssh_ok(0, "echo hand > /etc/tk-daemon");
    d.wait_for("drift reported", Duration::from_secs(20), |d| {
        d.status()["hosts"][&h]["state"] == "drifted"
    });
    let st = d.status();
    assert_eq!(st["hosts"][&h]["drift"][0], "~ file /etc/tk-daemon");
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-daemon"),
        "hand\n",
        "drift: report leaves it"
    );
    let host_json = || {
        git(
            &repo.path,
            &["show", &format!("tidekeeper/status:status/hosts/{h}.json")],
        )
    };
    d.wait_for(
        "drift on the status branch",
        Duration::from_secs(30),
        |_| host_json().contains("drifted"),
    );

    repo.write("tidekeeper.yaml", "fleet: test\ndrift: correct\n");
    repo.commit("correct drift");
    d.wait_applied(&head(&repo), Duration::from_secs(20));
    bed.ssh_ok(0, "echo hand again > /etc/tk-daemon");
    d.wait_for("drift corrected", Duration::from_secs(20), |_| {
        bed.ssh_ok(0, "cat /etc/tk-daemon") == "one\n"
    });
}

/// On the host, make the stat cache vouch for `path` as it is now, with
/// `sha` (what a file hashing as it should would have recorded).
pub(crate) fn vouch_on_host(bed: &Testbed, i: usize, path: &str, sha: &str) {
    bed.ssh_ok(i, &vouch(path, sha));
}

/// The shell that makes the stat cache vouch for `path` (its line added
/// when a check since dropped it), and the record of settled files vouch
/// for the cache as it now is, when there is one.
fn vouch(path: &str, sha: &str) -> String {
    format!(
        "c=/var/lib/tidekeeper/filestat; s=$(stat -c '%s %i %.9Y %.9Z' {path}); \
         awk -v p={path} -v l=\"{sha} $s\" 'BEGIN {{ FS = \"\\t\" }} $2 == p {{ print l \"\\t\" p; n = 1; next }} {{ print }} \
         END {{ if (!n) print l \"\\t\" p }}' $c > $c.t && mv $c.t $c && \
         if [ -f $c.settled ]; then read -r d _ < $c.settled; h=$(sha256sum < $c | cut -c1-64); printf '%s %s\\n' $d $h > $c.settled; fi"
    )
}

#[test]
fn drift_checks_between_full_checks_hash_only_the_files_whose_stat_moved() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    let d = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "1s"]);
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    let h = bed.host(0).name.clone();
    let history = d.state.path().join("state").join("history.json");
    let drift_checks = || -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&history).unwrap_or_default())
                .unwrap_or_default();
        v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["apply"] == false)
            .count()
    };
    // The first drift check hashes every file and records what it saw.
    d.wait_for("a first drift check", Duration::from_secs(20), |_| {
        drift_checks() >= 1
    });
    let cached = bed.ssh_ok(0, "cut -f2 /var/lib/tidekeeper/filestat");
    assert_eq!(cached, "/etc/tk-daemon\n");
    // A change the stat cache vouches for is not hashed by the next ones…
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(b"one\n")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    // The edit and the vouching are one command, but a drift check (one a
    // second) can still fall between them and see the edit; then the next
    // attempt vouches again. A check that hashed a vouched file would fail
    // every attempt.
    let mut states = Vec::new();
    for n in 1..=2 {
        bed.ssh_ok(
            0,
            &format!(
                "echo two{n} > /etc/tk-daemon && {}",
                vouch("/etc/tk-daemon", &sha)
            ),
        );
        let checks = drift_checks();
        d.wait_for("two more drift checks", Duration::from_secs(20), |_| {
            drift_checks() >= checks + 2
        });
        states.push(d.status()["hosts"][&h]["state"].clone());
        if states.last().unwrap() == "synced" {
            break;
        }
    }
    assert_eq!(states.last().unwrap(), "synced", "not hashed: {states:?}");
    // …while a change that moves the stat is.
    bed.ssh_ok(0, "echo three > /etc/tk-daemon");
    d.wait_for("drift reported", Duration::from_secs(20), |d| {
        d.status()["hosts"][&h]["state"] == "drifted"
    });
}

#[test]
fn webhooks_must_be_signed_and_trigger_at_once() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    // Long poll and no file watch: only the webhook can make it look again.
    let d = Daemon::start(
        &repo.path,
        &repo.key,
        &[
            "--poll",
            "600s",
            "--drift",
            "600s",
            "--no-watch",
            "--webhook-secret",
            "s3cret",
            "--log-format",
            "json",
        ],
    );
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    repo.write("roles/app.yaml", &role("two"));
    repo.commit("two");
    let body = br#"{"ref":"refs/heads/main"}"#;
    let (code, _) = d.request("POST", "/hooks/git", &[], body);
    assert_eq!(code, 401, "unsigned");
    let (code, _) = d.request(
        "POST",
        "/hooks/git",
        &[(
            "X-Hub-Signature-256",
            &format!("sha256={}", sign("wrong", body)),
        )],
        body,
    );
    assert_eq!(code, 401, "wrong secret");
    // Anyone can send these: they change no state, only count in /metrics.
    let st = d.status();
    assert_eq!(st["state"], "synced", "{st}");
    assert!(st["stale"].as_array().unwrap().is_empty(), "{st}");
    assert!(
        d.get("/metrics")
            .1
            .contains("tidekeeper_webhooks_total{outcome=\"rejected\"} 2")
    );
    assert!(
        d.log().contains("webhook rejected"),
        "logged for the operator"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-daemon"),
        "one\n",
        "rejected webhooks trigger nothing"
    );

    let t = Instant::now();
    let (code, _) = d.request(
        "POST",
        "/hooks/git",
        &[("X-Gitea-Signature", &sign("s3cret", body))],
        body,
    );
    assert_eq!(code, 202);
    d.wait_applied(&head(&repo), Duration::from_secs(60));
    let took = t.elapsed();
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "two\n");
    // Well before the next poll (600 s): the webhook made it look.
    assert!(took < Duration::from_secs(60), "{took:?}");
    // --log-format json: every log line is a JSON object; reconciles carry the commit.
    let log = d.log();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    assert!(log.contains("\"commit\":"), "{log}");
}

/// 300 files: an apply long enough to interrupt.
fn many(version: &str) -> String {
    let mut s = String::from("files:\n");
    for i in 0..300 {
        s.push_str(&format!(
            "  - {{path: /srv/many/f{i:03}, content: \"{version} {i} {}\\n\"}}\n",
            "y".repeat(1500)
        ));
    }
    s
}

#[test]
fn sigterm_mid_apply_then_restart_finishes_and_never_reapplies() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("many", &many("v1"))]);
    let mut d = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "600s"]);
    // SIGTERM as soon as the first files land.
    d.wait_for("the apply to start", Duration::from_secs(30), |_| {
        bed.ssh(0, "ls /srv/many 2>/dev/null | grep -q .")
            .status
            .success()
    });
    let (code, took) = d.terminate();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM; log:\n{}", d.log());
    // The daemon gives the apply up to 9 s to stop, then exits.
    assert!(took < Duration::from_secs(20), "{took:?}");
    // Every file present is whole.
    let sums = bed.ssh_ok(
        0,
        "cat /srv/many/* 2>/dev/null | awk '{print length($0)}' | sort -u",
    );
    for len in sums.lines() {
        assert!(
            len.parse::<usize>().unwrap() > 1500,
            "a truncated file: {sums}"
        );
    }

    let state = std::mem::replace(&mut d.state, crate::support::TempDir::new("unused"));
    drop(d);
    let d = Daemon::start_with_state(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        state,
    );
    d.wait_applied(&head(&repo), Duration::from_secs(60));
    assert_eq!(bed.ssh_ok(0, "ls /srv/many | wc -l").trim(), "300");
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", "HEAD"]);
    assert!(note.contains("applied to 1 host(s)"), "{note}");

    // A third start on an already applied commit does nothing to the hosts.
    let mut d = d;
    assert_eq!(d.terminate().0, Some(0));
    let state = std::mem::replace(&mut d.state, crate::support::TempDir::new("unused"));
    drop(d);
    let fresh = crate::support::TempDir::new("fresh-state");
    drop(state);
    // Even with a fresh state directory: the status branch says it was applied.
    let d = Daemon::start_with_state(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        fresh,
    );
    d.wait_for("the first fetch", Duration::from_secs(30), |d| {
        d.get("/readyz").0 == 200
    });
    // The commit is judged: applied already, so no reconcile.
    d.wait_for(
        "the commit judged already applied",
        Duration::from_secs(30),
        |d| d.log().contains("already applied"),
    );
    let metrics = d.get("/metrics").1;
    assert!(
        !metrics.contains("tidekeeper_reconciles_total{"),
        "no reconcile after restart: {metrics}\n{}",
        d.log()
    );
    assert_eq!(
        d.status()["applied_commit"].as_str(),
        Some(head(&repo).as_str())
    );
}

#[test]
fn an_unreachable_remote_is_survived_and_reported_as_stale() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    let d = Daemon::start(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s", "--no-watch"],
    );
    let applied = head(&repo);
    d.wait_applied(&applied, Duration::from_secs(30));
    // Moving the repo under a push in flight would let libgit2 recreate the
    // old path: wait for the note too (the status push is waited for above).
    d.wait_noted(&applied, Duration::from_secs(30));
    let moved = repo.path.with_extension("away");
    std::fs::rename(&repo.path, &moved).unwrap();
    d.wait_for("staleness reported", Duration::from_secs(30), |d| {
        d.status()["stale"]
            .to_string()
            .contains("no successful fetch")
    });
    assert_eq!(d.status()["state"], "stale");
    let metrics = d.get("/metrics").1;
    assert!(metrics.contains("tidekeeper_stale 1"), "{metrics}");
    assert!(
        !metrics.contains("tidekeeper_git_fetch_failures_total 0"),
        "{metrics}"
    );
    assert_eq!(d.get("/healthz").0, 200, "keeps serving");
    std::fs::rename(&moved, &repo.path).unwrap();
    repo.write("roles/app.yaml", &role("two"));
    repo.commit("two");
    d.wait_applied(&head(&repo), Duration::from_secs(60));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "two\n");
    assert_eq!(d.status()["state"], "synced");
}

#[test]
fn a_failed_commit_is_quarantined_until_a_newer_commit_or_retry() {
    let bed = Testbed::start(1);
    let role_fail = "files:\n  - {path: /etc/tk-daemon, content: \"one\\n\"}\ncommands:\n  - {name: gate, run: \"test -e /etc/tk-allow\"}\n";
    let repo = FleetRepo::minimal(&bed, &[("app", role_fail)]);
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &[("TIDEKEEPER_API_TOKEN", "tok-4711")],
    );
    let c = head(&repo);
    d.wait_for("quarantine", Duration::from_secs(30), |d| {
        d.status()["quarantined"]["commit"].as_str() == Some(c.as_str())
    });
    let st = d.status();
    assert!(
        st["quarantined"]["reason"]
            .as_str()
            .unwrap()
            .contains("command gate"),
        "{st}"
    );
    assert_eq!(st["state"], "failed");
    std::thread::sleep(Duration::from_secs(3));
    let runs = |d: &Daemon| d.get("/metrics").1.matches("result=\"failed\"} 1").count();
    assert_eq!(
        runs(&d),
        1,
        "not retried by itself:\n{}",
        d.get("/metrics").1
    );

    bed.ssh_ok(0, "touch /etc/tk-allow");
    // Retrying is an action: anyone who can reach the port is not enough.
    assert_eq!(d.request("POST", "/retry", &[], b"").0, 401);
    assert_eq!(
        d.request(
            "POST",
            "/retry",
            &[("Authorization", "Bearer tok-4712")],
            b""
        )
        .0,
        401
    );
    let refused = crate::support::tidekeeper()
        .args(["retry", "--daemon", &format!("127.0.0.1:{}", d.port)])
        .env_remove("TIDEKEEPER_API_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        d.status()["quarantined"]["commit"].as_str(),
        Some(c.as_str()),
        "an unauthenticated retry changes nothing"
    );
    let out = crate::support::tidekeeper()
        .args(["retry", "--daemon", &format!("127.0.0.1:{}", d.port)])
        .env("TIDEKEEPER_API_TOKEN", "tok-4711")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_applied(&c, Duration::from_secs(20));
    assert!(d.status()["quarantined"].is_null());
}

#[test]
fn two_daemons_never_interleave_and_keep_each_others_status() {
    let bed = Testbed::start(2);
    let repo = FleetRepo::minimal(&bed, &[("many", &many("v1"))]);
    let a = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "600s"]);
    let b = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "600s"]);
    let c = head(&repo);
    a.wait_applied(&c, Duration::from_secs(60));
    b.wait_applied(&c, Duration::from_secs(60));
    repo.write("roles/many.yaml", &many("v2"));
    repo.commit("v2");
    let c = head(&repo);
    a.wait_applied(&c, Duration::from_secs(60));
    b.wait_applied(&c, Duration::from_secs(60));
    for i in 0..2 {
        assert_eq!(
            bed.ssh_ok(i, "grep -l '^v2' /srv/many/* | wc -l").trim(),
            "300"
        );
    }
    // Both daemons' status commits are in the branch's history: each
    // reconcile pushed one, none was overwritten.
    let log = git(&repo.path, &["log", "--format=%s", "tidekeeper/status"]);
    let commits = log.lines().count();
    assert!(commits >= 4, "status commits of both daemons kept:\n{log}");
    let a_log = a.log();
    let b_log = b.log();
    assert!(
        !a_log.contains("status push failed") && !b_log.contains("status push failed"),
        "{a_log}\n{b_log}"
    );
}

#[test]
fn a_bare_remote_gets_status_and_notes_pushed_with_a_lease() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    // The "server": a bare repository the team pushes to.
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
    let a = Daemon::start(
        std::path::Path::new(&url),
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
    );
    let b = Daemon::start(
        std::path::Path::new(&url),
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
    );
    let c = head(&repo);
    a.wait_applied(&c, Duration::from_secs(30));
    b.wait_applied(&c, Duration::from_secs(30));
    let host_json = git(
        &server,
        &[
            "show",
            &format!("tidekeeper/status:status/hosts/{}.json", bed.host(0).name),
        ],
    );
    assert!(host_json.contains("\"synced\""), "{host_json}");
    let note = git(&server, &["notes", "--ref=tidekeeper", "show", &c]);
    assert!(note.contains("applied to 1 host(s)"), "{note}");
    // A push from the team is picked up.
    repo.write("roles/app.yaml", &role("two"));
    repo.commit("two");
    git(
        &repo.path,
        &["push", "-q", server.to_str().unwrap(), "main"],
    );
    let c = head(&repo);
    a.wait_applied(&c, Duration::from_secs(30));
    b.wait_applied(&c, Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "two\n");
    let log = git(&server, &["log", "--format=%s", "tidekeeper/status"]);
    assert!(log.lines().count() >= 3, "{log}");
    assert!(
        !a.log().contains("status push failed") && !b.log().contains("status push failed"),
        "{}\n{}",
        a.log(),
        b.log()
    );
}

/// Regression: the file watch reacted to the daemon's own reads of the ref
/// it fetches, so every fetch triggered the next (a busy loop while idle).
#[test]
fn the_file_watch_wakes_on_commits_only() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    let d = Daemon::start(
        &repo.path,
        &repo.key,
        &["--poll", "600s", "--drift", "600s"],
    );
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    let fetches = |d: &Daemon| -> u64 {
        let m = d.get("/metrics").1;
        m.lines()
            .find_map(|l| l.strip_prefix("tidekeeper_git_fetches_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let before = fetches(&d);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(fetches(&d), before, "no fetches while nothing happens");
    repo.write("roles/app.yaml", &role("two"));
    repo.commit("two");
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    assert!(
        fetches(&d) <= before + 3,
        "one commit, a few fetches: {}",
        fetches(&d)
    );
}

#[test]
fn an_ssh_remote_with_a_pinned_host_key() {
    let bed = Testbed::start(2);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    // Host 0 is also the git server.
    bed.ssh_ok(
        0,
        "apt-get install -y -qq git >/dev/null && git init -q --bare /srv/fleet.git",
    );
    let server = bed.host(0);
    let url = format!("ssh://root@{}/srv/fleet.git", server.address);
    let ssh_cmd = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile={}",
        bed.key.display(),
        bed.known_hosts.display()
    );
    let push = std::process::Command::new("git")
        .args(["push", "-q", &url, "main"])
        .current_dir(&repo.path)
        .env("GIT_SSH_COMMAND", &ssh_cmd)
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let tmp = crate::support::TempDir::new("git-known-hosts");
    let pinned = tmp.path().join("pinned");
    std::fs::write(&pinned, format!("{}\n", server.known_hosts_line())).unwrap();
    let wrong = tmp.path().join("wrong");
    let other = bed.host(1).host_key.clone();
    std::fs::write(&wrong, format!("{} {other}\n", server.address)).unwrap();

    // A key that does not match the pin: refused, reported as stale.
    let d = Daemon::start(
        std::path::Path::new(&url),
        &repo.key,
        &[
            "--poll",
            "1s",
            "--drift",
            "600s",
            "--git-known-hosts",
            wrong.to_str().unwrap(),
        ],
    );
    d.wait_for("the mismatch reported", Duration::from_secs(20), |d| {
        d.status()["stale"]
            .to_string()
            .contains("HOST KEY MISMATCH for the git server")
    });
    assert_eq!(d.get("/readyz").0, 503);
    drop(d);

    let d = Daemon::start(
        std::path::Path::new(&url),
        &repo.key,
        &[
            "--poll",
            "1s",
            "--drift",
            "600s",
            "--git-known-hosts",
            pinned.to_str().unwrap(),
        ],
    );
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(1, "cat /etc/tk-daemon"), "one\n");
    let status = bed.ssh_ok(
        0,
        &format!(
            "git --git-dir /srv/fleet.git show tidekeeper/status:status/hosts/{}.json",
            bed.host(1).name
        ),
    );
    assert!(
        status.contains("\"synced\""),
        "status pushed over ssh: {status}"
    );
    let note = bed.ssh_ok(
        0,
        "git --git-dir /srv/fleet.git notes --ref=tidekeeper show main",
    );
    assert!(note.contains("applied to 2 host(s)"), "{note}");
}

#[test]
fn an_https_remote_with_a_token() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    let tmp = crate::support::TempDir::new("https");
    let root = tmp.path().join("git");
    std::fs::create_dir_all(&root).unwrap();
    let bare = root.join("fleet.git");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            repo.path.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    git(&bare, &["config", "http.receivepack", "true"]);
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port_file = tmp.path().join("port");
    let mut server = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/git_https_server.py"
        ))
        .args([&cert, &key, &root])
        .arg("t0ken")
        .arg(&port_file)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !port_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the https git server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _server = Kill(std::mem::replace(
        &mut server,
        std::process::Command::new("true").spawn().unwrap(),
    ));
    let port = std::fs::read_to_string(&port_file).unwrap();
    let url = format!("https://127.0.0.1:{port}/fleet.git");

    let start = |token: &str| {
        let mut cmd = crate::support::tidekeeper();
        let state = tmp.path().join(format!("state-{token}"));
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        cmd.args(["run", "--repo", &url, "--poll", "1s", "--drift", "600s"])
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", &format!("127.0.0.1:{p}")])
            .arg("--ssh-key")
            .arg(&repo.key)
            .env("SSL_CERT_FILE", &cert)
            .env("TIDEKEEPER_GIT_TOKEN", token)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        (Kill(cmd.spawn().unwrap()), p)
    };
    let get = |port: u16| -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let _ = write!(
            s,
            "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let wait = |port: u16, what: &str, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = get(port);
            if st.contains(needle) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {st}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    {
        let (_d, port) = start("wrong");
        wait(port, "a refused token", "no successful fetch");
    }
    let (_d, port) = start("t0ken");
    let c = head(&repo);
    wait(
        port,
        "the commit applied",
        &format!("\"applied_commit\":\"{c}\""),
    );
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "one\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let show = std::process::Command::new("git")
            .args([
                "--git-dir",
                bare.to_str().unwrap(),
                "show",
                &format!("tidekeeper/status:status/hosts/{}.json", bed.host(0).name),
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&show.stdout).contains("\"synced\"") {
            break;
        }
        assert!(Instant::now() < deadline, "status not pushed over https");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_status_push_that_fails_is_sent_again_with_its_note_on_the_next_poll() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    // Someone else's git holds the status branch's lock file.
    let lock = repo.path.join(".git/refs/heads/tidekeeper/status.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, "").unwrap();
    let d = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "600s"]);
    let c = head(&repo);
    d.wait_for("the failed push reported", Duration::from_secs(30), |d| {
        d.status()["stale"]
            .to_string()
            .contains("status push failed")
    });
    let st = d.status();
    assert_eq!(st["applied_commit"].as_str(), Some(c.as_str()), "{st}");
    assert!(st["written_back"].is_null(), "nothing was written: {st}");

    // The lock goes away; nothing else happens in the repo.
    std::fs::remove_file(&lock).unwrap();
    d.wait_applied(&c, Duration::from_secs(30));
    d.wait_noted(&c, Duration::from_secs(30));
    assert!(d.status()["stale"].as_array().unwrap().is_empty());
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", &c]);
    assert!(note.contains("applied to 1 host(s)"), "{note}");
    let fleet = git(&repo.path, &["show", "tidekeeper/status:status/fleet.json"]);
    assert!(fleet.contains(&c), "{fleet}");
}

#[test]
fn status_branch_and_notes_ref_come_from_tidekeeper_yaml() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\nstatus:\n  branch: ops/fleet-status\n  notes_ref: refs/notes/ops\n",
    );
    repo.commit("status refs");
    let d = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "600s"]);
    let c = head(&repo);
    d.wait_applied(&c, Duration::from_secs(30));
    d.wait_noted(&c, Duration::from_secs(30));
    let status = git(&repo.path, &["show", "ops/fleet-status:status/fleet.json"]);
    assert!(status.contains(&c), "{status}");
    let note = git(&repo.path, &["notes", "--ref=ops", "show", &c]);
    assert!(note.contains("applied"), "{note}");
    let branches = git(&repo.path, &["branch", "--list", "tidekeeper/status"]);
    assert!(
        branches.is_empty(),
        "nothing on the default branch: {branches}"
    );
}

#[test]
fn an_unreachable_host_is_retried_with_backoff_not_quarantined_and_catches_up() {
    let bed = Testbed::start(2);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    let d = Daemon::start(
        &repo.path,
        &repo.key,
        &["--poll", "600s", "--drift", "600s", "--no-watch"],
    );
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    bed.cut_off(1);
    repo.write("roles/app.yaml", &role("two"));
    repo.commit("two");
    let c = head(&repo);
    d.request("POST", "/hooks/git", &[], b"{}");
    let h1 = bed.host(1).name.clone();
    d.wait_for("the reachable host applied", Duration::from_secs(60), |d| {
        d.status()["hosts"][&h1]["state"] == "unreachable"
    });
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "two\n");
    let st = d.status();
    assert!(
        st["quarantined"].is_null(),
        "an unreachable host quarantines nothing: {st}"
    );
    assert_eq!(st["hosts"][&h1]["error_kind"], "unreachable", "{st}");
    assert!(
        d.get("/metrics")
            .1
            .contains("tidekeeper_host_errors_total{kind=\"unreachable\"}"),
    );
    bed.reconnect(1);
    // No webhook, a 600 s poll: only the backoff brings the commit to it.
    d.wait_applied(&c, Duration::from_secs(120));
    assert_eq!(bed.ssh_ok(1, "cat /etc/tk-daemon"), "two\n");
}

#[test]
fn suspend_stops_applies_and_jobs_while_planning_and_resume_goes_on() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    let host = bed.host(0).name.clone();
    repo.write(
        "schedules.yaml",
        &format!("jobs:\n  - name: tidy\n    cron: \"0 0 1 1 *\"\n    hosts: {{names: [{host}]}}\n    timeout: 1h\n    command:\n      run: touch /etc/tk-tidied\n"),
    );
    repo.commit("a job");
    // Far from the job's 1 January whatever today's date is (issue 33).
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        &[
            ("TIDEKEEPER_API_TOKEN", "tok-susp-1"),
            ("TIDEKEEPER_NOW", "2026-06-15T12:00:00Z"),
        ],
    );
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    let cli = |args: &[&str]| tk_at(&d, "tok-susp-1", args);
    // Not without the token.
    assert_eq!(d.request("POST", "/suspend", &[], b"{}").0, 401);
    let out = cli(&["suspend", "--reason", "incident 42", "--by", "alice"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.status()["suspended"]["by"], "alice");
    assert_eq!(d.status()["state"], "suspended");

    repo.write("roles/app.yaml", &role("two"));
    repo.commit("two");
    let c2 = head(&repo);
    d.wait_noted(&c2, Duration::from_secs(30));
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", &c2]);
    assert!(
        note.contains("suspended by alice (incident 42): planned, nothing applied"),
        "{note}"
    );
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-daemon"),
        "one\n",
        "nothing applied"
    );
    let on_branch = git(&repo.path, &["show", "tidekeeper/status:status/fleet.json"]);
    assert!(
        on_branch.contains("incident 42"),
        "recorded with who and why: {on_branch}"
    );
    // No job runs either.
    let (code, _) = d.request(
        "POST",
        "/jobs/tidy/run",
        &[("Authorization", "Bearer tok-susp-1")],
        b"",
    );
    assert_eq!(code, 202);
    d.wait_for("the job refused", Duration::from_secs(30), |d| {
        d.status()["schedules"]["tidy"]["last_run"]["not_started"]
            .as_str()
            .is_some_and(|s| s.contains("suspended by alice"))
    });
    assert!(!bed.ssh(0, "test -e /etc/tk-tidied").status.success());

    let out = cli(&["resume"]);
    assert!(out.status.success(), "{}", text(&out));
    d.wait_applied(&c2, Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "two\n");

    // Committed, so reviewed: only a commit lifts it.
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  parallelism: 8\nsuspend: true\n",
    );
    repo.write("roles/app.yaml", &role("three"));
    repo.commit("suspend");
    let c3 = head(&repo);
    d.wait_noted(&c3, Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "two\n");
    let out = cli(&["resume"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("commit `suspend: false`"),
        "{}",
        text(&out)
    );
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  parallelism: 8\n",
    );
    repo.commit("resume");
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "three\n");
    assert!(d.status()["suspended"].is_null());
}

#[test]
fn a_merge_whose_plan_is_not_the_reviewed_one_is_held_until_retried() {
    let bed = Testbed::start(1);
    let two_files = |v: &str| {
        format!(
            "{}  - {{path: /etc/tk-other, content: \"other\\n\"}}\n",
            role(v)
        )
    };
    let repo = FleetRepo::minimal(&bed, &[("app", &two_files("one"))]);
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  parallelism: 8\napply:\n  require_reviewed_plan: true\n",
    );
    repo.commit("reviewed plans only");
    let d = daemon_with_token(&repo, "tok-rev-1");
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    let open = |n: u64, v: &str| {
        let branch = format!("pr-{n}");
        git(&repo.path, &["checkout", "-q", "-b", &branch]);
        repo.write("roles/app.yaml", &two_files(v));
        repo.commit(&format!("pr {n}"));
        let sha = head(&repo);
        git(
            &repo.path,
            &["update-ref", &format!("refs/pull/{n}/head"), &sha],
        );
        git(&repo.path, &["checkout", "-q", "main"]);
        // Proposal notes are pushed on their own, not with the status.
        d.wait_for("the proposal noted", Duration::from_secs(30), |_| {
            note_of(&repo, &sha).is_some_and(|n| n.contains("Plan digest: `"))
        });
        branch
    };
    let merge = |branch: &str| {
        git(
            &repo.path,
            &["merge", "-q", "--no-ff", "-m", "merge", branch],
        );
        let c = head(&repo);
        d.request("POST", "/hooks/git", &[], b"{}");
        c
    };

    // Reviewed: one file changes. Then a host drifts before the merge.
    let pr1 = open(1, "two");
    bed.ssh_ok(0, "echo edited > /etc/tk-other");
    let m1 = merge(&pr1);
    d.wait_for("the merge held", Duration::from_secs(30), |d| {
        d.status()["quarantined"]["commit"].as_str() == Some(m1.as_str())
    });
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-daemon"),
        "one\n",
        "nothing applied"
    );
    d.wait_noted(&m1, Duration::from_secs(30));
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", &m1]);
    assert!(
        note.contains("the plan differs from the one reviewed on refs/pull/1/head")
            && note.contains("now also:")
            && note.contains("/etc/tk-other"),
        "{note}"
    );
    // Looked at, accepted: retry applies it as it plans now.
    let out = tk_at(&d, "tok-rev-1", &["retry"]);
    assert!(out.status.success(), "{}", text(&out));
    d.wait_applied(&m1, Duration::from_secs(30));
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-daemon /etc/tk-other"),
        "two\nother\n"
    );

    // Nothing changed since review: applied, and the note says it matched.
    let pr2 = open(2, "three");
    let m2 = merge(&pr2);
    d.wait_applied(&m2, Duration::from_secs(30));
    d.wait_noted(&m2, Duration::from_secs(30));
    let note = git(&repo.path, &["notes", "--ref=tidekeeper", "show", &m2]);
    assert!(
        note.contains("the plan is the one reviewed on refs/pull/2/head"),
        "{note}"
    );
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "three\n");
}

#[test]
fn with_reviewed_plans_required_only_a_reviewed_tree_or_a_released_commit_is_applied() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  parallelism: 8\napply:\n  require_reviewed_plan: true\n",
    );
    repo.commit("reviewed plans only");
    let d = daemon_with_token(&repo, "tok-held-1");
    // The fleet's first commit is its start, not a change to review.
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    let note = |c: &str| git(&repo.path, &["notes", "--ref=tidekeeper", "show", c]);
    let held = |d: &Daemon, c: &str| d.status()["held"]["commit"].as_str() == Some(c);

    // A direct push: held, not quarantined, nothing applied; the note says why.
    repo.write("roles/app.yaml", &role("two"));
    repo.commit("pushed directly");
    let pushed = head(&repo);
    d.request("POST", "/hooks/git", &[], b"{}");
    d.wait_for("the push held", Duration::from_secs(30), |d| {
        held(d, &pushed)
    });
    let st = d.status();
    assert!(st["quarantined"].is_null(), "{st}");
    assert!(
        st["held"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no reviewed plan of this tree")),
        "{st}"
    );
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-daemon"),
        "one\n",
        "nothing applied"
    );
    d.wait_noted(&pushed, Duration::from_secs(30));
    let n = note(&pushed);
    assert!(
        n.contains("held") && n.contains("no reviewed plan of this tree"),
        "{n}"
    );
    let audit = tidekeeper::audit::Audit::parse(&n).expect("an audit trail");
    assert_eq!(audit.verdict, tidekeeper::audit::Verdict::Held, "{n}");
    assert_eq!(audit.released, None, "{n}");
    let page = d.request("GET", "/", &[], b"").1;
    assert!(page.contains("Held commit"), "{page}");

    // Only the held commit can be released, and only with the token.
    let out = tk_at(&d, "tok-held-1", &["release", "0000000", "--by", "alice"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("is not held"), "{}", text(&out));
    let out = tk_at(&d, "wrong", &["release", &pushed[..12], "--by", "alice"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "one\n");
    // Released: applied once as it plans now; the note says who.
    let out = tk_at(
        &d,
        "tok-held-1",
        &["release", &pushed[..12], "--by", "alice"],
    );
    assert!(out.status.success(), "{}", text(&out));
    d.wait_applied(&pushed, Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "two\n");
    assert!(d.status()["held"].is_null(), "{}", d.status());
    d.wait_noted(&pushed, Duration::from_secs(30));
    let n = note(&pushed);
    assert!(n.contains("released by alice at "), "{n}");
    let audit = tidekeeper::audit::Audit::parse(&n).expect("an audit trail");
    assert_eq!(audit.verdict, tidekeeper::audit::Verdict::Applied, "{n}");
    assert_eq!(audit.released.map(|r| r.by), Some("alice".into()), "{n}");

    let open = |n: u64, v: &str| {
        let branch = format!("pr-{n}");
        git(&repo.path, &["checkout", "-q", "-b", &branch]);
        repo.write("roles/app.yaml", &role(v));
        repo.commit(&format!("pr {n}"));
        let sha = head(&repo);
        git(
            &repo.path,
            &["update-ref", &format!("refs/pull/{n}/head"), &sha],
        );
        git(&repo.path, &["checkout", "-q", "main"]);
        d.wait_for("the proposal noted", Duration::from_secs(30), |_| {
            note_of(&repo, &sha).is_some_and(|n| n.contains("Plan digest: `"))
        });
        branch
    };

    // A squash merge of a reviewed PR: a new commit of the reviewed tree.
    let pr1 = open(1, "three");
    git(&repo.path, &["merge", "-q", "--squash", &pr1]);
    git(&repo.path, &["commit", "-q", "-m", "squashed pr 1"]);
    let squashed = head(&repo);
    d.request("POST", "/hooks/git", &[], b"{}");
    d.wait_applied(&squashed, Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "three\n");
    d.wait_noted(&squashed, Duration::from_secs(30));
    let n = note(&squashed);
    assert!(
        n.contains("the plan is the one reviewed on refs/pull/1/head"),
        "{n}"
    );

    // A rebase merge of a reviewed PR: its commits again on the branch, new
    // shas, the reviewed tree.
    let pr4 = open(4, "five");
    // -x writes the source into the message: a pick within the same second as
    // the original is still a new commit (as a forge's rebase merge always is).
    git(&repo.path, &["cherry-pick", "-x", "--allow-empty", &pr4]);
    let rebased = head(&repo);
    assert_ne!(rebased, git(&repo.path, &["rev-parse", &pr4]));
    d.request("POST", "/hooks/git", &[], b"{}");
    d.wait_applied(&rebased, Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "five\n");
    d.wait_noted(&rebased, Duration::from_secs(30));
    assert!(
        note(&rebased).contains("the plan is the one reviewed on refs/pull/4/head"),
        "{}",
        note(&rebased)
    );

    // A PR reviewed before the branch moved on: its merge is a tree no one
    // reviewed, held like a direct push.
    let pr2 = open(2, "four");
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  parallelism: 8\napply:\n  require_reviewed_plan: true\n# moved on\n",
    );
    repo.commit("the branch moves on");
    let moved = head(&repo);
    d.request("POST", "/hooks/git", &[], b"{}");
    d.wait_for("the move held", Duration::from_secs(30), |d| {
        held(d, &moved)
    });
    git(
        &repo.path,
        &["merge", "-q", "--no-ff", "-m", "merge pr 2", &pr2],
    );
    let merged = head(&repo);
    d.request("POST", "/hooks/git", &[], b"{}");
    d.wait_for("the stale merge held", Duration::from_secs(30), |d| {
        held(d, &merged)
    });
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "five\n");
    let st = d.status();
    assert!(st["quarantined"].is_null(), "{st}");
    // Its tree planned as a proposal of its own is no approval by itself
    // (anyone who can push can open one): still held.
    git(&repo.path, &["update-ref", "refs/pull/3/head", &merged]);
    d.request("POST", "/hooks/git", &[], b"{}");
    d.wait_for("the proposal planned", Duration::from_secs(30), |d| {
        d.log()
            .lines()
            .any(|l| l.contains("refs/pull/3/head") && l.contains("proposal planned"))
    });
    d.request("POST", "/hooks/git", &[], b"{}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(held(&d, &merged), "{}", d.status());
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "five\n");

    // A push turning the setting off is judged by the applied commit's
    // setting too: held, and still after a restart.
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  parallelism: 8\n",
    );
    repo.commit("no more reviews");
    let off = head(&repo);
    d.request("POST", "/hooks/git", &[], b"{}");
    d.wait_for("the switch held", Duration::from_secs(30), |d| {
        held(d, &off)
    });
    let state = d.stop_keep_state();
    let d = Daemon::start_full(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s"],
        state,
        &[("TIDEKEEPER_API_TOKEN", "tok-held-1")],
    );
    d.wait_fetches(3, Duration::from_secs(30));
    assert!(held(&d, &off), "{}", d.status());
    assert_eq!(
        d.status()["applied_commit"].as_str(),
        Some(rebased.as_str())
    );
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "five\n");
}

/// The tidekeeper note on `commit`, if there is one yet.
fn note_of(repo: &FleetRepo, commit: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["notes", "--ref=tidekeeper", "show", commit])
        .current_dir(&repo.path)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_rollout_stops_after_a_failed_canary_and_leaves_the_other_hosts_untouched() {
    let bed = Testbed::start(3);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    let canary = bed.host(0).name.clone();
    repo.write(
        "tidekeeper.yaml",
        &format!(
            "fleet: test\ndefaults:\n  parallelism: 8\nrollout:\n  canary: [{canary}]\n  batch: 50%\n  pause: 1s\n  health:\n    - command: \"test ! -e /etc/tk-unhealthy\"\n"
        ),
    );
    repo.commit("rollout");
    let d = daemon_with_token(&repo, "tok-roll-1");
    d.wait_applied(&head(&repo), Duration::from_secs(60));
    let r = &d.status()["rollout"];
    assert_eq!(
        (r["stages"].as_u64(), r["state"].as_str()),
        (Some(3), Some("done")),
        "{r}"
    );

    bed.ssh_ok(0, "touch /etc/tk-unhealthy");
    repo.write("roles/app.yaml", &role("two"));
    repo.commit("two");
    let c = head(&repo);
    d.wait_for("the rollout stopped", Duration::from_secs(60), |d| {
        d.status()["quarantined"]["commit"].as_str() == Some(c.as_str())
    });
    let st = d.status();
    assert_eq!(
        st["rollout"]["state"],
        format!("stopped: {canary} is unhealthy"),
        "{st}"
    );
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-daemon"),
        "two\n",
        "the canary got it"
    );
    for i in 1..3 {
        assert_eq!(
            bed.ssh_ok(i, "cat /etc/tk-daemon"),
            "one\n",
            "host {i} untouched"
        );
        let h = &st["hosts"][&bed.host(i).name];
        assert_eq!(h["state"], "pending", "{h}");
        assert_eq!(h["error_kind"], "rollout_stopped", "{h}");
    }
    assert_eq!(st["hosts"][&canary]["error_kind"], "unhealthy", "{st}");
    // Fixed, retried: the rest follows, batch by batch.
    bed.ssh_ok(0, "rm /etc/tk-unhealthy");
    let out = tk_at(&d, "tok-roll-1", &["retry"]);
    assert!(out.status.success(), "{}", text(&out));
    d.wait_applied(&c, Duration::from_secs(60));
    for i in 0..3 {
        assert_eq!(bed.ssh_ok(i, "cat /etc/tk-daemon"), "two\n");
    }
    assert_eq!(d.status()["rollout"]["state"], "done");
}

#[test]
fn a_merge_that_brings_in_a_template_input_changed_after_review_is_held_naming_the_file() {
    let bed = Testbed::start(1);
    let app = |v: &str| {
        format!(
            "files:\n  - {{path: /etc/tk-motd, template: motd.j2}}\n  - {{path: /etc/tk-daemon, content: \"{v}\\n\"}}\n"
        )
    };
    let repo = FleetRepo::minimal(&bed, &[("app", &app("one"))]);
    repo.write("templates/motd.j2", "run by {{ team }}\n");
    let config = |team: &str| {
        format!(
            "fleet: test\ndefaults:\n  vars: {{team: {team}}}\napply:\n  require_reviewed_plan: true\n"
        )
    };
    repo.write("tidekeeper.yaml", &config("ops"));
    repo.commit("reviewed plans only");
    let d = daemon_with_token(&repo, "tok-stale");
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-motd"), "run by ops\n");

    // PR 1 changes one file; its plan is reviewed.
    git(&repo.path, &["checkout", "-q", "-b", "pr-1"]);
    repo.write("roles/app.yaml", &app("two"));
    repo.commit("pr 1");
    let pr = head(&repo);
    git(&repo.path, &["update-ref", "refs/pull/1/head", &pr]);
    git(&repo.path, &["checkout", "-q", "main"]);
    d.wait_for("the proposal noted", Duration::from_secs(30), |_| {
        note_of(&repo, &pr).is_some_and(|n| n.contains("Plan digest: `"))
    });
    // Then the branch moves on: the template's input changes (held, as a
    // direct push), and PR 1 is merged on top without being planned again.
    repo.write("tidekeeper.yaml", &config("platform"));
    repo.commit("the team changes");
    let moved = head(&repo);
    d.request("POST", "/hooks/git", &[], b"{}");
    d.wait_for("the push held", Duration::from_secs(30), |d| {
        d.status()["held"]["commit"].as_str() == Some(moved.as_str())
    });
    git(
        &repo.path,
        &["merge", "-q", "--no-ff", "-m", "merge pr 1", "pr-1"],
    );
    let merged = head(&repo);
    d.request("POST", "/hooks/git", &[], b"{}");
    d.wait_for("the stale merge held", Duration::from_secs(30), |d| {
        d.status()["held"]["commit"].as_str() == Some(merged.as_str())
    });
    d.wait_noted(&merged, Duration::from_secs(30));
    let n = note_of(&repo, &merged).unwrap();
    assert!(
        n.contains("it merges refs/pull/1/head, planned before the branch moved on"),
        "{n}"
    );
    let named: Vec<&str> = n.lines().filter(|l| l.contains("now also:")).collect();
    assert!(
        named.len() == 1 && named[0].contains("file /etc/tk-motd content"),
        "only the file whose input moved is new: {n}"
    );
    let st = d.status();
    assert!(st["quarantined"].is_null(), "waits for a review: {st}");
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-motd /etc/tk-daemon"),
        "run by ops\none\n"
    );
}

#[test]
fn reconcile_applies_the_head_now_and_status_shows_the_fleet_like_flux_get() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", &role("one"))]);
    // Polls far apart and no file watch: only `reconcile` makes it look.
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "600s", "--drift", "600s", "--no-watch"],
        &[("TIDEKEEPER_API_TOKEN", "tok-rec")],
    );
    d.wait_applied(&head(&repo), Duration::from_secs(30));
    repo.write("roles/app.yaml", &role("two"));
    repo.commit("two");
    let two = head(&repo);
    let out = tk_at(&d, "wrong", &["reconcile"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("TIDEKEEPER_API_TOKEN"),
        "{}",
        text(&out)
    );
    let out = tk_at(&d, "tok-rec", &["reconcile", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("applied {} to 1 host(s)", &two[..12])),
        "{}",
        text(&out)
    );
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-daemon"), "two\n");

    let out = tk_at(&d, "", &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        summary.contains(&format!("applied  {}  (in sync)", &two[..12])),
        "{summary}"
    );
    let host = bed.host(0).name.clone();
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with(&host) && l.contains(&two[..12])),
        "a row per host: {summary}"
    );
    let out = tk_at(&d, "", &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["applied_commit"], two.as_str());

    // A commit that cannot be applied: --wait says why and exits 1.
    repo.write(
        "roles/app.yaml",
        "files: [ {path: relative, content: x} ]\n",
    );
    repo.commit("broken");
    let out = tk_at(&d, "tok-rec", &["reconcile", "--wait", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not applied: invalid config"),
        "{}",
        text(&out)
    );
    let out = tk_at(&d, "", &["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("invalid  "),
        "{}",
        text(&out)
    );
}
