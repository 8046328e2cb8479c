//! Never lock yourself out: risky changes are rolled back by the host itself
//! unless a new SSH connection proves access.

use std::time::{Duration, Instant};

use crate::support::daemon::Daemon;
use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::git;
use crate::support::testbed::{Kind, Testbed};

const LOCKOUT_SSHD: &str = r#"
files:
  - path: /etc/ssh/sshd_config.d/50-lockout.conf
    content: "AllowUsers nobody\n"
    validate: sshd -t -f %s
    notify: [reload-ssh]
handlers:
  - {name: reload-ssh, reload: ssh}
"#;

/// SSH only from where the config says tidekeeper connects from, which is
/// not where it really does: the lockout check cannot tell, the rollback can.
const LOCKOUT_UFW: &str = r#"
firewall:
  incoming: deny
  rules:
    - {port: "22", from: 192.0.2.0/24, comment: the office}
    - {port: "80", comment: http}
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
fn an_sshd_change_that_locks_us_out_is_rolled_back_at_once_through_the_open_session() {
    locked_out_sshd_is_rolled_back_at_once(Kind::Full);
}

#[test]
fn on_debian_13_too_a_locked_out_sshd_is_rolled_back_at_once() {
    locked_out_sshd_is_rolled_back_at_once(Kind::Trixie);
}

#[test]
fn on_debian_13_too_the_host_reverts_by_itself_at_its_deadline() {
    reverts_by_itself_at_its_deadline(Kind::Trixie);
}

fn locked_out_sshd_is_rolled_back_at_once(kind: Kind) {
    let bed = Testbed::start_kind(1, kind);
    if kind == Kind::Trixie {
        let v = bed.ssh_ok(
            0,
            "cat /etc/debian_version; ssh -V 2>&1; systemctl --version | head -n1",
        );
        assert!(v.starts_with("13.") && v.contains("OpenSSH_10"), "{v}");
    }
    let repo = FleetRepo::minimal(&bed, &[("ssh", LOCKOUT_SSHD)]);
    // A long deadline: the host must not stay shut until the timer fires.
    let t = Instant::now();
    let out = repo.tk(&["apply", "--yes", "--rollback-after", "300s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains(
            "rolled back: access lost after change (file /etc/ssh/sshd_config.d/50-lockout.conf)"
        ) && report.contains("the previous state was restored at once"),
        "{report}"
    );
    wait_ssh_back(&bed, 0, Duration::from_secs(60));
    assert!(
        t.elapsed() < Duration::from_secs(120),
        "back long before the 300 s timer: {:?}",
        t.elapsed()
    );
    assert!(
        bed.ssh_ok(
            0,
            "systemctl list-timers --all --no-legend 'tidekeeper-rollback-*' | wc -l"
        )
        .trim()
            == "0",
        "the fallback timer is stopped once the rollback ran"
    );
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
fn a_firewall_shutting_out_where_tidekeeper_really_connects_from_is_rolled_back_and_not_retried() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("fw", LOCKOUT_UFW)]);
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  parallelism: 8\n  ssh: {from: [192.0.2.0/24]}\n",
    );
    repo.commit("tidekeeper is said to connect from the office");
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
    reverts_by_itself_at_its_deadline(Kind::Full);
}

fn reverts_by_itself_at_its_deadline(kind: Kind) {
    let bed = Testbed::start_kind(1, kind);
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
    // itself: the file goes and logins work, without tidekeeper — at its
    // deadline, not up to a minute later (systemd's default timer accuracy).
    let deadline = Instant::now() + Duration::from_secs(25);
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
fn stopping_and_disabling_ssh_is_rolled_back_and_removing_its_server_is_refused() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "ssh",
            "services:\n  - {name: ssh, state: stopped, enabled: false}\n",
        )],
    );
    let out = repo.tk(&["apply", "--yes", "--rollback-after", "300s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("rolled back: access lost after change (service ssh.service)"),
        "{}",
        text(&out)
    );
    wait_ssh_back(&bed, 0, Duration::from_secs(60));
    assert_eq!(
        bed.ssh_ok(
            0,
            "systemctl is-enabled ssh.service; systemctl is-active ssh.service"
        ),
        "enabled\nactive\n"
    );

    repo.write("roles/ssh.yaml", "packages:\n  absent: [openssh-server]\n");
    repo.commit("no ssh server");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("removing openssh-server would cut tidekeeper"),
        "{}",
        text(&out)
    );
    assert!(
        bed.ssh(0, "dpkg -s openssh-server >/dev/null")
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

const PLAINTEXT: &str = "hunter2-c0rrect-h0rse-battery";

#[test]
fn secrets_are_decrypted_for_hosts_and_never_shown_anywhere() {
    let bed = Testbed::start(1);
    let identity = crate::support::fleet::age_identity();
    let role = r#"
files:
  - path: /etc/app/db.conf
    template: db.conf.j2
  - path: /etc/app/token
    secret: db-password
  - path: /etc/app/check.conf
    template: db.conf.j2
    validate: "cat %s >&2; false"
"#;
    let repo = FleetRepo::minimal(&bed, &[("app", role)]);
    repo.write(
        "templates/db.conf.j2",
        "user = app\npassword = {{ secret(\"db-password\") }}\n",
    );
    repo.encrypt_secret(&identity, "db-password", PLAINTEXT);
    let stored = std::fs::read_to_string(repo.path.join("secrets/db-password.age")).unwrap();
    assert!(stored.contains("BEGIN AGE ENCRYPTED FILE") && !stored.contains(PLAINTEXT));
    repo.commit("a secret");

    let tk = |args: &[&str]| {
        crate::support::tidekeeper()
            .args(args)
            .arg("--repo")
            .arg(&repo.path)
            .arg("--ssh-key")
            .arg(&repo.key)
            .env("TIDEKEEPER_AGE_IDENTITY", &identity)
            .output()
            .unwrap()
    };
    let mut outputs = Vec::new();
    // Without the identity: refused, nothing applied.
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("uses secrets, but they cannot be decrypted"),
        "{}",
        text(&out)
    );
    outputs.push(text(&out));
    for args in [
        &["plan"][..],
        &["plan", "--json"][..],
        &["apply", "--yes"][..],
    ] {
        let out = tk(args);
        outputs.push(text(&out));
    }
    let apply = outputs.last().unwrap().clone();
    // The validator printed the rendered file, secret included: blanked.
    assert!(apply.contains("password = (sensitive)"), "{apply}");
    // The other files landed, decrypted, mode 0600.
    assert_eq!(bed.ssh_ok(0, "cat /etc/app/token"), PLAINTEXT);
    assert!(
        bed.ssh_ok(0, "cat /etc/app/db.conf")
            .contains(&format!("password = {PLAINTEXT}"))
    );
    assert_eq!(
        bed.ssh_ok(0, "stat -c %a /etc/app/token /etc/app/db.conf"),
        "600\n600\n"
    );

    // The daemon: logs, status branch, notes, HTTP.
    repo.write("roles/app.yaml", &role.replace("  - path: /etc/app/check.conf\n    template: db.conf.j2\n    validate: \"cat %s >&2; false\"\n", ""));
    repo.commit("drop the failing check");
    // Drift on a secret file.
    bed.ssh_ok(0, "echo changed > /etc/app/token");
    let d = Daemon::start_env(
        &repo.path,
        &repo.key,
        &["--poll", "1s", "--drift", "1s"],
        &[("TIDEKEEPER_AGE_IDENTITY", identity.as_str())],
    );
    d.wait_applied(
        &git(&repo.path, &["rev-parse", "HEAD"]),
        Duration::from_secs(30),
    );
    bed.ssh_ok(0, "echo changed again > /etc/app/token");
    let h = bed.host(0).name.clone();
    d.wait_for("drift seen", Duration::from_secs(20), |d| {
        d.status()["hosts"][&h]["state"] == "drifted"
    });
    for path in ["/", "/status", "/metrics", "/badges/fleet.svg"] {
        outputs.push(d.get(path).1);
    }
    outputs.push(d.log());
    outputs.push(git(&repo.path, &["log", "-p", "tidekeeper/status"]));
    outputs.push(git(&repo.path, &["log", "-p", "refs/notes/tidekeeper"]));
    for (i, o) in outputs.iter().enumerate() {
        assert!(!o.contains(PLAINTEXT), "output {i} leaks the secret:\n{o}");
        assert!(
            !o.contains("hunter2"),
            "output {i} leaks part of the secret"
        );
    }
}

#[test]
fn trust_on_first_use_only_when_enabled_and_the_key_is_recorded() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "app",
            "files:\n  - {path: /etc/tk-tofu, content: \"hi\\n\"}\n",
        )],
    );
    repo.write("known_hosts", "");
    repo.commit("no pinned keys");
    let out = repo.tk(&["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("is not pinned"),
        "unpinned is refused by default: {}",
        text(&out)
    );
    assert!(
        stdout(&out).contains(&format!("{} ssh-ed25519", bed.host(0).address)),
        "the line to add is shown: {}",
        text(&out)
    );

    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  ssh:\n    trust_on_first_use: true\n",
    );
    repo.commit("trust on first use");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let line = bed.host(0).known_hosts_line();
    assert!(stdout(&out).contains(&format!("host key accepted on first use (ssh.trust_on_first_use); pin it by adding this line to known_hosts:\n  {line}")), "{}", text(&out));

    // The daemon records it on the status branch.
    let d = Daemon::start(&repo.path, &repo.key, &["--poll", "1s", "--drift", "600s"]);
    d.wait_applied(
        &git(&repo.path, &["rev-parse", "HEAD"]),
        Duration::from_secs(30),
    );
    let learned = git(
        &repo.path,
        &["show", "tidekeeper/status:known_hosts.learned"],
    );
    assert!(learned.contains(&line), "{learned}");
}

#[test]
fn short_secrets_are_refused_and_secrets_never_reach_load_errors() {
    let identity = crate::support::fleet::age_identity();
    // Only with the secret decrypted does the include fail, naming it.
    let template =
        "{% if secret(\"name\") != \"(sensitive)\" %}{% include secret(\"name\") %}{% endif %}\n";
    let repo = FleetRepo::with_files(
        std::path::PathBuf::from("/nonexistent"),
        &[
            ("tidekeeper.yaml", "fleet: t\n"),
            (
                "hosts/web.yaml",
                "provider: existing\naddress: 127.0.0.1\nroles: [app]\n",
            ),
            (
                "roles/app.yaml",
                "files:\n  - {path: /etc/app.conf, template: app.conf.j2}\n",
            ),
            ("templates/app.conf.j2", template),
        ],
    );
    repo.encrypt_secret(&identity, "name", "leaked-template-name-5521");
    repo.commit("a secret as a template name");
    let plan = || {
        crate::support::tidekeeper()
            .args(["plan", "--repo"])
            .arg(&repo.path)
            .env("TIDEKEEPER_AGE_IDENTITY", &identity)
            .output()
            .unwrap()
    };
    let out = plan();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("template not found"), "the error is kept: {t}");
    assert!(!t.contains("leaked-template-name-5521"), "{t}");
    assert!(!t.contains("LEAKED-TEMPLATE-NAME-5521"), "{t}");

    repo.write("templates/app.conf.j2", "pin is set\n");
    repo.encrypt_secret(&identity, "pin", "12345");
    repo.commit("a short secret");
    let out = plan();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("secrets/pin.age decrypts to fewer than 8 characters"),
        "{t}"
    );
    assert!(!t.contains("12345"), "{t}");
}
