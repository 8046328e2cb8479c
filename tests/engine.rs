//! Plan and apply on real hosts over SSH.

use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::testbed::Testbed;

/// The template's roles minus what a container cannot do: `vm.swappiness` is
/// global to the machine's kernel, not per network namespace.
fn template_fleet(bed: &Testbed) -> FleetRepo {
    let repo = FleetRepo::template(
        bed,
        &[
            "base",
            "hardened-ssh",
            "fail2ban",
            "firewall",
            "unattended-upgrades",
        ],
    );
    let base = repo
        .read("roles/base.yaml")
        .replace("  vm.swappiness: \"{{ swappiness }}\"\n", "");
    repo.write("roles/base.yaml", &base);
    repo.commit("test fleet: no kernel-global sysctl");
    repo
}

#[test]
fn cold_apply_converges_then_drift_is_shown_and_corrected() {
    let bed = Testbed::start(3);
    let repo = template_fleet(&bed);

    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let plan = stdout(&out);
    assert!(
        plan.contains("+ tk0 file /etc/motd") || plan.contains(" file /etc/motd"),
        "{plan}"
    );

    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "second plan must be empty: {}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("No changes. Hosts match the configuration."),
        "{}",
        text(&out)
    );

    // The hosts really are configured.
    for i in 0..3 {
        let sshd = bed.ssh_ok(i, "sshd -T | grep -i '^passwordauthentication'");
        assert_eq!(sshd.trim(), "passwordauthentication no");
        assert_eq!(bed.ssh_ok(i, "id -nG deploy").trim(), "deploy sudo ops");
        assert!(bed.ssh_ok(i, "ufw status").contains("Status: active"));
        assert_eq!(
            bed.ssh_ok(i, "systemctl is-active fail2ban").trim(),
            "active"
        );
        assert_eq!(bed.ssh_ok(i, "stat -c %a /etc/sudoers.d/ops").trim(), "440");
    }

    // Drift: edit a managed file by hand on one host.
    let name = bed.host(1).name.clone();
    bed.ssh_ok(1, "echo 'hand edit' >> /etc/motd");
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let plan = stdout(&out);
    assert!(plan.contains(&format!("~ {name} file /etc/motd")), "{plan}");
    assert!(
        plan.contains("-hand edit"),
        "the diff shows the hand edit being removed: {plan}"
    );
    assert!(
        plan.contains("Plan: 0 to add, 1 to change, 0 to destroy."),
        "{plan}"
    );

    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!bed.ssh_ok(1, "cat /etc/motd").contains("hand edit"));
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

const SSH_ROLE: &str = r#"
files:
  - path: /etc/ssh/sshd_config.d/50-test.conf
    content: |
      MaxAuthTries 4
    mode: "0644"
    validate: sshd -t -f %s
"#;

#[test]
fn validate_rejects_a_broken_sshd_config_and_leaves_the_live_file() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("ssh", SSH_ROLE)]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = bed.ssh_ok(0, "sha256sum /etc/ssh/sshd_config.d/50-test.conf");

    repo.write(
        "roles/ssh.yaml",
        &SSH_ROLE.replace("MaxAuthTries 4", "NoSuchOption yes"),
    );
    repo.commit("break sshd");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    let host = &bed.host(0).name;
    assert!(report.contains(host), "names the host: {report}");
    assert!(
        report.contains("/etc/ssh/sshd_config.d/50-test.conf"),
        "names the file: {report}"
    );
    assert!(
        report.contains("Bad configuration option: NoSuchOption"),
        "shows the validator's message: {report}"
    );
    assert!(
        report.contains("validation failed (sshd -t -f %s)"),
        "{report}"
    );
    assert_eq!(
        bed.ssh_ok(0, "sha256sum /etc/ssh/sshd_config.d/50-test.conf"),
        before,
        "live file untouched"
    );
    assert_eq!(
        bed.ssh_ok(
            0,
            "ls -a /etc/ssh/sshd_config.d/ | grep -c tidekeeper || true"
        )
        .trim(),
        "0",
        "no temp file left"
    );
}

const PRUNE_ROLE: &str = r#"
directories:
  - {path: /srv/app, mode: "0750"}
files:
  - {path: /srv/app/a.conf, content: "a\n"}
  - {path: /srv/app/b.conf, content: "b\n"}
  - {path: /srv/app/c.conf, content: "c\n"}
  - {path: /srv/app/d.conf, content: "d\n"}
symlinks:
  - {path: /srv/app/current, target: /srv/app/a.conf}
packages:
  present: [tree]
groups:
  - {name: app}
users:
  - {name: appuser, groups: [app], shell: /bin/sh}
"#;

#[test]
fn removed_resources_are_pruned_and_packages_only_when_absent() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", PRUNE_ROLE)]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(bed.ssh_ok(0, "stat -c %a /srv/app").trim(), "750");
    assert_eq!(
        bed.ssh_ok(0, "readlink /srv/app/current").trim(),
        "/srv/app/a.conf"
    );
    assert!(bed.ssh(0, "id appuser").status.success());
    assert!(bed.ssh(0, "command -v tree").status.success());

    // Drop one file, the user and the package from the config.
    let role = PRUNE_ROLE
        .replace("  - {path: /srv/app/b.conf, content: \"b\\n\"}\n", "")
        .replace(
            "users:\n  - {name: appuser, groups: [app], shell: /bin/sh}\n",
            "",
        )
        .replace("packages:\n  present: [tree]\n", "");
    repo.write("roles/app.yaml", &role);
    repo.commit("drop b.conf, appuser and tree");
    let out = repo.tk(&["plan"]);
    let plan = stdout(&out);
    let host = &bed.host(0).name;
    assert!(
        plan.contains(&format!("- {host} file /srv/app/b.conf")),
        "{plan}"
    );
    assert!(plan.contains(&format!("- {host} user appuser")), "{plan}");
    assert!(
        plan.contains("package tree is no longer managed; it stays installed"),
        "{plan}"
    );
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !bed.ssh(0, "test -e /srv/app/b.conf").status.success(),
        "b.conf pruned"
    );
    assert!(
        bed.ssh(0, "test -e /srv/app/a.conf").status.success(),
        "a.conf kept"
    );
    assert!(!bed.ssh(0, "id appuser").status.success(), "user pruned");
    assert!(
        bed.ssh(0, "command -v tree").status.success(),
        "package stays until marked absent"
    );

    let role = format!("{role}packages:\n  absent: [tree]\n");
    repo.write("roles/app.yaml", &role);
    repo.commit("tree absent");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !bed.ssh(0, "command -v tree").status.success(),
        "absent package removed"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_plan_deleting_too_much_needs_permission() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("app", PRUNE_ROLE)]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A bad merge empties the role.
    repo.write("roles/app.yaml", "description: oops\n");
    repo.commit("empty role");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("needs explicit permission (--allow-mass-delete)"),
        "{}",
        text(&out)
    );
    assert!(
        bed.ssh(0, "test -e /srv/app/a.conf").status.success(),
        "nothing deleted"
    );
    let out = repo.tk(&["apply", "--yes", "--allow-mass-delete"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !bed.ssh(0, "test -e /srv/app/a.conf").status.success(),
        "deleted with permission"
    );
}

#[test]
fn unreachable_host_and_wrong_host_key_are_reported_and_others_converge() {
    let bed = Testbed::start(3);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "app",
            "files:\n  - {path: /etc/tk-test, content: \"hello\\n\"}\n",
        )],
    );
    // Host 1's pinned key is replaced by another key; host 2 is cut off.
    let known = repo.read("known_hosts");
    let wrong = bed
        .public_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let h1 = &bed.host(1);
    let known = known.replace(&h1.known_hosts_line(), &format!("{} {wrong}", h1.address));
    repo.write("known_hosts", &known);
    repo.commit("wrong key for host 1");
    bed.cut_off(2);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains(&format!("{}: error: HOST KEY MISMATCH", h1.name)),
        "{report}"
    );
    assert!(
        report.contains(&format!("{}: error: cannot reach", bed.host(2).name)),
        "{report}"
    );
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tk-test"),
        "hello\n",
        "host 0 converged"
    );
    assert!(
        !bed.ssh(1, "test -e /etc/tk-test").status.success(),
        "nothing done on the host with the wrong key"
    );
}
