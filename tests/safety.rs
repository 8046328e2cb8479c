//! Never lock yourself out: risky changes are rolled back by the host itself
//! unless a new SSH connection proves access.

use std::time::{Duration, Instant};

use crate::support::daemon::Daemon;
use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::git;
use crate::support::testbed::Testbed;

const LOCKOUT_SSHD: &str = r#"
files:
  - path: /etc/ssh/sshd_config.d/50-lockout.conf
    content: "AllowUsers nobody\n"
    validate: sshd -t -f %s
    notify: [reload-ssh]
handlers:
  - {name: reload-ssh, reload: ssh}
"#;

const LOCKOUT_UFW: &str = r#"
firewall:
  incoming: deny
  rules:
    - {port: "80", comment: http only}
"#;

fn wait_ssh_back(bed: &Testbed, i: usize, within: Duration) -> Duration {
    let t = Instant::now();
    while !bed.ssh(i, "true").status.success() {
        assert!(
            t.elapsed() < within,
            "SSH did not come back within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    t.elapsed()
}

#[test]
fn an_sshd_change_that_locks_us_out_is_rolled_back_by_the_host() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("ssh", LOCKOUT_SSHD)]);
    let out = repo.tk(&["apply", "--yes", "--rollback-after", "12s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains(
            "rolled back: access lost after change (file /etc/ssh/sshd_config.d/50-lockout.conf)"
        ),
        "{report}"
    );
    wait_ssh_back(&bed, 0, Duration::from_secs(30));
    assert!(
        !bed.ssh(0, "test -e /etc/ssh/sshd_config.d/50-lockout.conf")
            .status
            .success(),
        "the file is gone again"
    );
    assert!(
        bed.ssh(0, "ls /var/lib/tidekeeper/rolled-back/ | grep -q .")
            .status
            .success()
    );
}

#[test]
fn a_default_deny_without_an_ssh_rule_is_rolled_back_and_the_commit_not_retried() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("fw", LOCKOUT_UFW)]);
    let d = Daemon::start(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "600s", "--rollback-after", "12s"],
    );
    let c = git(&repo.path, &["rev-parse", "HEAD"]);
    d.wait_for("the quarantine", Duration::from_secs(60), |d| {
        d.status()["quarantined"]["commit"].as_str() == Some(c.as_str())
    });
    let reason = d.status()["quarantined"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("rolled back: access lost after change (firewall ufw)"),
        "{reason}"
    );
    wait_ssh_back(&bed, 0, Duration::from_secs(30));
    assert!(
        bed.ssh_ok(0, "ufw status").contains("Status: inactive"),
        "ufw back to its previous state"
    );
    // Not retried: after a few polls, still one failed reconcile.
    std::thread::sleep(Duration::from_secs(3));
    let metrics = d.get("/metrics").1;
    assert_eq!(
        metrics.matches("result=\"failed\"} 1").count(),
        1,
        "{metrics}"
    );
    assert!(bed.ssh(0, "true").status.success());
}

#[test]
fn killing_tidekeeper_after_a_risky_apply_still_reverts() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("ssh", LOCKOUT_SSHD)]);
    let mut child = crate::support::tidekeeper()
        .args(["apply", "--yes", "--rollback-after", "10s", "--repo"])
        .arg(&repo.path)
        .arg("--ssh-key")
        .arg(&repo.key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as the risky file is in place (before any proof).
    let t = Instant::now();
    loop {
        if bed
            .ssh(0, "test -e /etc/ssh/sshd_config.d/50-lockout.conf")
            .status
            .success()
        {
            break;
        }
        if child.try_wait().unwrap().is_some() || t.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().unwrap();
    // Whether or not the reload ran before the kill, the host reverts by
    // itself: the file goes and logins work, without tidekeeper.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let out = bed.ssh(
            0,
            "test -e /etc/ssh/sshd_config.d/50-lockout.conf && echo present || echo gone",
        );
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "gone" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the host did not revert by itself"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        bed.ssh(0, "ls /var/lib/tidekeeper/rolled-back/ | grep -q .")
            .status
            .success()
    );
}

#[test]
fn a_safe_change_to_sshd_is_confirmed_and_kept() {
    let bed = Testbed::start(1);
    let role = "files:\n  - path: /etc/ssh/sshd_config.d/50-ok.conf\n    content: \"MaxAuthTries 4\\n\"\n    validate: sshd -t -f %s\n    notify: [reload-ssh]\nhandlers:\n  - {name: reload-ssh, reload: ssh}\n";
    let repo = FleetRepo::minimal(&bed, &[("ssh", role)]);
    let out = repo.tk(&["apply", "--yes", "--rollback-after", "8s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        bed.ssh_ok(0, "sshd -T | grep -i maxauthtries").trim(),
        "maxauthtries 4",
        "kept after the deadline"
    );
    assert!(
        !bed.ssh(
            0,
            "systemctl list-timers --all | grep -q tidekeeper-rollback"
        )
        .status
        .success(),
        "disarmed"
    );
}

#[test]
fn planted_symlinks_are_refused() {
    let bed = Testbed::start(1);
    let role = "files:\n  - {path: /etc/app/app.conf, content: \"x = 1\\n\"}\n  - {path: /home/deploy/app/settings, content: \"y = 2\\n\"}\n";
    let repo = FleetRepo::minimal(&bed, &[("app", role)]);
    // A symlink at a managed path, pointing at /etc/shadow.
    bed.ssh_ok(
        0,
        "mkdir -p /etc/app && ln -s /etc/shadow /etc/app/app.conf",
    );
    // A symlink owned by an ordinary user above a managed path.
    bed.ssh_ok(
        0,
        "useradd -m deploy && su deploy -c 'ln -s /etc /home/deploy/app'",
    );
    let shadow = bed.ssh_ok(0, "sha256sum /etc/shadow");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains("/etc/app/app.conf is a symlink on the host"),
        "{report}"
    );
    assert!(
        report.contains("/home/deploy/app is a symlink owned by deploy, not root"),
        "{report}"
    );
    assert_eq!(
        bed.ssh_ok(0, "sha256sum /etc/shadow"),
        shadow,
        "/etc/shadow untouched"
    );
    assert!(
        !bed.ssh(0, "test -e /etc/settings").status.success(),
        "nothing written through the planted link"
    );
    assert_eq!(
        bed.ssh_ok(0, "readlink /etc/app/app.conf").trim(),
        "/etc/shadow"
    );
}
