//! Plan and apply on real hosts over SSH.

use crate::support::fleet::{FleetRepo, stdout, text};
use crate::support::testbed::{Kind, Testbed};

/// The template's roles minus what a container cannot do: `vm.swappiness` is
/// global to the machine's kernel, not per network namespace. An emulated
/// arm64 host gets no firewall: its iptables speaks nftables over netlink,
/// which qemu-user does not translate ("Protocol not supported").
fn template_fleet(bed: &Testbed, kind: Kind) -> FleetRepo {
    let mut roles = vec![
        "base",
        "hardened-ssh",
        "fail2ban",
        "firewall",
        "unattended-upgrades",
    ];
    if kind == Kind::Arm64 {
        roles.retain(|r| *r != "firewall");
    }
    let repo = FleetRepo::template(bed, &roles);
    let base = repo
        .read("roles/base.yaml")
        .replace("  vm.swappiness: \"{{ swappiness }}\"\n", "");
    repo.write("roles/base.yaml", &base);
    repo.commit("test fleet: no kernel-global sysctl");
    repo
}

#[test]
fn cold_apply_converges_then_drift_is_shown_and_corrected() {
    cold_apply_converges(Kind::Full, 3);
}

/// Debian 13: OpenSSH 10, systemd 257, apt 3, and ufw on nftables.
#[test]
fn on_debian_13_too_cold_apply_converges_then_drift_is_shown_and_corrected() {
    cold_apply_converges(Kind::Trixie, 2);
}

/// arm64 (Hetzner CAX, Graviton): the same roles on an arm64 Debian, whose
/// programs (systemd, sshd, apt, ufw, fail2ban) run under qemu-user-static.
#[test]
fn on_arm64_too_cold_apply_converges_then_drift_is_shown_and_corrected() {
    cold_apply_converges(Kind::Arm64, 2);
}

fn cold_apply_converges(kind: Kind, hosts: usize) {
    let bed = Testbed::start_kind(hosts, kind);
    if kind == Kind::Trixie {
        let v = bed.ssh_ok(0, "cat /etc/debian_version; apt-get --version | head -n1");
        assert!(v.starts_with("13.") && v.contains("apt 3."), "{v}");
    }
    let arch = bed.ssh_ok(0, "uname -m; dpkg --print-architecture");
    let expected = if kind == Kind::Arm64 {
        "aarch64\narm64\n"
    } else {
        "x86_64\namd64\n"
    };
    assert_eq!(
        arch, expected,
        "the host runs the architecture it stands for"
    );
    let repo = template_fleet(&bed, kind);

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
    for i in 0..hosts {
        let sshd = bed.ssh_ok(i, "sshd -T | grep -i '^passwordauthentication'");
        assert_eq!(sshd.trim(), "passwordauthentication no");
        assert_eq!(bed.ssh_ok(i, "id -nG deploy").trim(), "deploy sudo ops");
        if kind != Kind::Arm64 {
            assert!(bed.ssh_ok(i, "ufw status").contains("Status: active"));
        }
        if kind == Kind::Trixie {
            // ufw's rules live in nftables there (iptables-nft).
            let fw = bed.ssh_ok(i, "iptables -V; iptables -S ufw-user-input");
            assert!(fw.contains("(nf_tables)"), "{fw}");
            assert!(fw.contains("--dport 22"), "{fw}");
        }
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

    // Templates and `when:` would see the host's own architecture.
    let out = repo.tk(&["show", &name, "--facts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let uname = arch.lines().next().unwrap_or_default();
    assert!(
        stdout(&out).contains(&format!("  arch: {uname}\n")),
        "{}",
        text(&out)
    );
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

/// A role with `n` files whose content carries `version`.
fn many_files(n: usize, version: &str) -> String {
    let mut s = String::from("files:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - {{path: /srv/many/f{i:03}.conf, mode: \"0644\", content: \"{version} {i} {}\\n\"}}\n",
            "x".repeat(2000)
        ));
    }
    s
}

#[test]
fn a_plan_of_changed_files_only_hashes_what_moved_and_a_full_plan_hashes_everything() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("many", &many_files(40, "v1"))]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let quick = ["plan", "--detailed-exitcode", "--changed-files-only"];
    let out = repo.tk(&quick);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.ssh_ok(0, "wc -l < /var/lib/tidekeeper/filestat").trim(),
        "40",
        "every file that hashed as it should is in the stat cache"
    );
    // Every file was as wanted: the record of settled files vouches for the
    // cache, and the quick plans from here send no file's path.
    assert_eq!(
        bed.ssh_ok(0, "wc -w < /var/lib/tidekeeper/filestat.settled")
            .trim(),
        "2"
    );
    let name = bed.host(0).name.clone();
    // A hand edit moves the file's stat: found.
    bed.ssh_ok(0, "echo edited >> /srv/many/f007.conf");
    let out = repo.tk(&quick);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("~ {name} file /srv/many/f007.conf")),
        "{}",
        text(&out)
    );
    assert!(stdout(&out).contains("+edited") || stdout(&out).contains("-edited"));
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Change a file by `how`, and make the stat cache (and the record of
    // settled files) vouch for it as it now is.
    let change_vouched = |path: &str, how: &str| {
        let line = bed.ssh_ok(
            0,
            &format!("grep -P '\t{path}$' /var/lib/tidekeeper/filestat"),
        );
        let sha = line.split(' ').next().unwrap().to_string();
        bed.ssh_ok(0, &format!("{how} {path}"));
        crate::daemon::vouch_on_host(&bed, 0, path, &sha);
    };
    // What the stat cache vouches for is not hashed; a full plan finds it.
    change_vouched("/srv/many/f003.conf", "echo swapped >");
    let out = repo.tk(&quick);
    assert_eq!(out.status.code(), Some(0), "not hashed: {}", text(&out));
    // Nor statted for its mode: only the record of settled files stands in
    // for a file's stat (a probe that statted every file would see this).
    change_vouched("/srv/many/f004.conf", "chmod 600");
    let out = repo.tk(&quick);
    assert_eq!(out.status.code(), Some(0), "not statted: {}", text(&out));
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    for f in ["f003", "f004"] {
        assert!(
            stdout(&out).contains(&format!("~ {name} file /srv/many/{f}.conf")),
            "{}",
            text(&out)
        );
    }
}

/// Beyond its open limit the pool closes a host's connection after the plan
/// and opens a new one for the apply, with the host key seen at plan time.
#[test]
fn beyond_its_open_limit_the_pool_connects_again_for_each_apply() {
    use std::sync::Arc;
    use tidekeeper::{cloud::Clouds, engine, reconcile};
    let bed = Testbed::start_light(3);
    let repo = FleetRepo::minimal(
        &bed,
        &[("f", "files:\n  - {path: /etc/tk-pool, content: \"x\\n\"}\n")],
    );
    let tree = tidekeeper::source::ConfigTree::from_git(&repo.path, "HEAD").unwrap();
    let fleet = Arc::new(tidekeeper::model::load(&tree).unwrap());
    let names: Vec<String> = fleet.hosts.iter().map(|h| h.name.clone()).collect();
    let opts = Arc::new(engine::Options {
        ssh_key: Some(repo.key.to_str().unwrap().to_string()),
        ..Default::default()
    });
    let quiet: engine::Progress = Arc::new(|_| {});
    let clouds = Clouds::from_env(&fleet);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let logins = || -> usize {
        bed.hosts
            .iter()
            .map(|h| h.log().matches("Accepted publickey").count())
            .sum()
    };
    let pool = engine::Pool::with_open_limit(1);
    let fp = rt.block_on(reconcile::plan(
        fleet.clone(),
        names,
        true,
        opts.clone(),
        &clouds,
        Default::default(),
        quiet.clone(),
        &pool,
    ));
    assert_eq!(pool.len(), 3, "every planned host waits for its apply");
    assert_eq!(pool.open(), 1, "but only one connection stays open");
    let before = logins();
    let done = rt.block_on(reconcile::apply(fp, &pool, opts, &clouds, quiet));
    for h in &done.hosts {
        assert!(h.error.is_none(), "{}: {:?}", h.host, h.error);
    }
    assert_eq!(
        logins() - before,
        2,
        "the two parked hosts were reached again"
    );
    for i in 0..3 {
        assert_eq!(bed.ssh_ok(i, "cat /etc/tk-pool"), "x\n");
    }
}

#[test]
fn sigkill_mid_apply_leaves_every_file_wholly_old_or_new() {
    sigkill_mid_apply(Kind::Full);
}

#[test]
fn on_debian_13_too_sigkill_mid_apply_leaves_every_file_wholly_old_or_new() {
    sigkill_mid_apply(Kind::Trixie);
}

fn sigkill_mid_apply(kind: Kind) {
    use std::collections::HashSet;
    let bed = Testbed::start_kind(1, kind);
    let n = 300;
    let repo = FleetRepo::minimal(&bed, &[("many", &many_files(n, "v1"))]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    repo.write("roles/many.yaml", &many_files(n, "v2"));
    repo.commit("v2");

    let sha = |s: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let allowed: HashSet<String> = (0..n)
        .flat_map(|i| {
            let x = "x".repeat(2000);
            [sha(&format!("v1 {i} {x}\n")), sha(&format!("v2 {i} {x}\n"))]
        })
        .collect();

    let mut killed_midway = false;
    for _attempt in 0..5 {
        let mut child = crate::support::tidekeeper()
            .args(["apply", "--yes", "--repo"])
            .arg(&repo.path)
            .arg("--ssh-key")
            .arg(&repo.key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill as soon as some, but not all, files are new.
        let mut new = 0;
        for _ in 0..400 {
            new = bed
                .ssh_ok(0, "grep -l '^v2' /srv/many/*.conf 2>/dev/null | wc -l")
                .trim()
                .parse::<usize>()
                .unwrap();
            if new > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The host's side of the apply holds the host's lock until it is
        // gone (its SSH session closed): after that, nothing moves.
        bed.ssh_ok(0, "flock -w 60 /var/lib/tidekeeper/lock true");
        let sums = bed.ssh_ok(0, "sha256sum /srv/many/*.conf");
        let mut files = 0;
        for line in sums.lines() {
            let hash = line.split_whitespace().next().unwrap();
            assert!(
                allowed.contains(hash),
                "a file is neither wholly old nor wholly new: {line}"
            );
            files += 1;
        }
        assert_eq!(files, n, "no file lost");
        let now_new: usize = bed
            .ssh_ok(0, "grep -l '^v2' /srv/many/*.conf | wc -l")
            .trim()
            .parse()
            .unwrap();
        if new > 0 && now_new < n {
            killed_midway = true;
            break;
        }
        // Too late this time: put v1 back and try again.
        repo.write("roles/many.yaml", &many_files(n, "v1"));
        repo.commit("v1 again");
        assert_eq!(repo.tk(&["apply", "--yes"]).status.code(), Some(0));
        repo.write("roles/many.yaml", &many_files(n, "v2"));
        repo.commit("v2 again");
    }
    assert!(
        killed_midway,
        "could not kill tidekeeper in the middle of the apply"
    );

    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the next apply completes: {}",
        text(&out)
    );
    assert_eq!(
        bed.ssh_ok(0, "grep -l '^v2' /srv/many/*.conf | wc -l")
            .trim(),
        n.to_string()
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

const SERVICE_ROLE: &str = r#"
files:
  - path: /etc/systemd/system/tk-demo.service
    content: |
      [Unit]
      Description=tidekeeper test service
      [Service]
      ExecStartPre=/bin/sh -c 'echo start >> /var/log/tk-demo.starts'
      ExecStart=/bin/sleep infinity
      [Install]
      WantedBy=multi-user.target
  - path: /etc/tk-demo/a.conf
    content: "a VERSION\n"
    notify: [restart-demo]
  - path: /etc/tk-demo/b.conf
    content: "b VERSION\n"
    notify: [restart-demo]
services:
  - {name: tk-demo, enabled: true, state: running}
commands:
  - name: after
    run: "COMMAND"
handlers:
  - {name: restart-demo, restart: tk-demo}
"#;

fn service_role(version: &str, command: &str) -> String {
    SERVICE_ROLE
        .replace("VERSION", version)
        .replace("COMMAND", command)
}

#[test]
fn handlers_run_once_and_a_restart_owed_by_a_failed_run_is_done_next_time() {
    handlers_run_once(Kind::Full);
}

#[test]
fn on_debian_13_too_handlers_run_once_and_an_owed_restart_is_done_next_time() {
    handlers_run_once(Kind::Trixie);
}

fn handlers_run_once(kind: Kind) {
    let bed = Testbed::start_kind(1, kind);
    let repo = FleetRepo::minimal(&bed, &[("svc", &service_role("1", "true"))]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.ssh_ok(0, "systemctl is-active tk-demo").trim(),
        "active"
    );
    let starts = || {
        bed.ssh_ok(0, "wc -l < /var/log/tk-demo.starts")
            .trim()
            .to_string()
    };
    assert_eq!(
        starts(),
        "1",
        "started once (the restart handler ran on a fresh start)"
    );

    // Both files change (two notifications), then a later step fails.
    repo.write(
        "roles/svc.yaml",
        &service_role("2", "echo boom >&2; exit 3"),
    );
    repo.commit("v2 and a failing command");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains("command after: boom"),
        "the failing step and its stderr: {report}"
    );
    assert_eq!(
        starts(),
        "1",
        "no restart yet: the run stopped before its handlers"
    );

    let out = repo.tk(&["plan"]);
    assert!(
        stdout(&out).contains("handler restart-demo: systemctl restart tk-demo.service  (owed by an earlier run that did not finish)"),
        "{}",
        text(&out)
    );
    repo.write("roles/svc.yaml", &service_role("2", "true"));
    repo.commit("fix the command");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(starts(), "2", "the owed restart ran, once");
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn command_guards_decide_whether_a_command_runs() {
    let bed = Testbed::start(1);
    let role = r#"
commands:
  - name: once
    run: "date >> /var/log/once.log"
  - name: creates
    run: "touch /var/lib/marker; echo x >> /var/log/creates.log"
    creates: /var/lib/marker
  - name: unless
    run: "echo x >> /var/log/unless.log"
    unless: "test -f /etc/hostname"
  - name: onlyif
    run: "echo x >> /var/log/onlyif.log"
    onlyif: "test -f /etc/no-such-file"
"#;
    let repo = FleetRepo::minimal(&bed, &[("cmds", role)]);
    for _ in 0..2 {
        let out = repo.tk(&["apply", "--yes"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let count = |f: &str| {
        bed.ssh_ok(0, &format!("cat {f} 2>/dev/null | wc -l"))
            .trim()
            .to_string()
    };
    assert_eq!(
        count("/var/log/once.log"),
        "1",
        "unguarded command runs once, not on every apply"
    );
    assert_eq!(count("/var/log/creates.log"), "1");
    assert_eq!(count("/var/log/unless.log"), "0");
    assert_eq!(count("/var/log/onlyif.log"), "0");
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Changing the command makes it run again.
    repo.write(
        "roles/cmds.yaml",
        &role.replace(
            "date >> /var/log/once.log",
            "date >> /var/log/once.log; true",
        ),
    );
    repo.commit("change once");
    let out = repo.tk(&["plan"]);
    assert!(
        stdout(&out).contains("command once  its command changed"),
        "{}",
        text(&out)
    );
    assert_eq!(repo.tk(&["apply", "--yes"]).status.code(), Some(0));
    assert_eq!(count("/var/log/once.log"), "2");
}

#[test]
fn a_host_locked_by_another_run_is_not_applied() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "app",
            "files:\n  - {path: /etc/tk-test, content: \"hello\\n\"}\n",
        )],
    );
    bed.ssh_ok(
        0,
        "mkdir -p /var/lib/tidekeeper; nohup flock /var/lib/tidekeeper/lock sleep 60 >/dev/null 2>&1 & sleep 0.2",
    );
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("another tidekeeper run holds this host's lock"),
        "{}",
        text(&out)
    );
    assert!(!bed.ssh(0, "test -e /etc/tk-test").status.success());
    bed.ssh_ok(0, "pkill -x flock; pkill -x sleep; true");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_non_root_login_user_works_through_sudo() {
    let bed = Testbed::start(1);
    let key = bed.public_key.trim().to_string();
    let role = format!(
        r#"
groups:
  - {{name: ops}}
users:
  - name: deploy
    groups: [ops]
    shell: /bin/bash
    authorized_keys: ["{key}"]
files:
  - path: /etc/sudoers.d/ops
    content: "%ops ALL=(ALL) NOPASSWD: ALL\n"
    mode: "0440"
    validate: visudo -cf %s
"#
    );
    let repo = FleetRepo::minimal(&bed, &[("access", &role)]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The user's own files have the user's login group, as ssh-copy-id leaves them.
    assert_eq!(
        bed.ssh_ok(
            0,
            "stat -c '%U %G %a' /home/deploy/.ssh /home/deploy/.ssh/authorized_keys"
        ),
        "deploy deploy 700\ndeploy deploy 600\n"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "no drift from the group: {}",
        text(&out)
    );

    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  ssh:\n    user: deploy\n    sudo: true\n",
    );
    repo.write(
        "roles/access.yaml",
        &format!("{role}  - {{path: /root/only-root-can-write-here, content: \"via sudo\\n\"}}\n"),
    );
    repo.commit("log in as deploy");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.ssh_ok(0, "cat /root/only-root-can-write-here"),
        "via sudo\n"
    );
    assert_eq!(
        bed.ssh_ok(0, "stat -c %U /root/only-root-can-write-here")
            .trim(),
        "root"
    );
}

#[test]
fn keys_from_an_ssh_agent_are_used_when_no_key_file_is_given() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "app",
            "files:\n  - {path: /etc/tk-agent, content: \"agent\\n\"}\n",
        )],
    );
    let tmp = crate::support::TempDir::new("agent");
    let sock = tmp.path().join("agent.sock");
    let out = std::process::Command::new("ssh-agent")
        .arg("-a")
        .arg(&sock)
        .output()
        .unwrap();
    let text_out = String::from_utf8_lossy(&out.stdout).to_string();
    let pid: i32 = text_out
        .split("SSH_AGENT_PID=")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .expect("ssh-agent prints its pid");
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0, libc::SIGTERM) };
        }
    }
    let _agent = Kill(pid);
    let add = std::process::Command::new("ssh-add")
        .arg(&bed.key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let run = |sock: Option<&std::path::Path>| {
        let mut cmd = crate::support::tidekeeper();
        cmd.args(["apply", "--yes", "--repo"])
            .arg(&repo.path)
            .env_remove("TIDEKEEPER_SSH_KEY");
        match sock {
            Some(s) => cmd.env("SSH_AUTH_SOCK", s),
            None => cmd.env_remove("SSH_AUTH_SOCK"),
        };
        cmd.output().unwrap()
    };
    let out = run(None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("no key file configured (defaults.ssh.key) and no ssh-agent"),
        "{}",
        text(&out)
    );
    let out = run(Some(&sock));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-agent"), "agent\n");
}

#[test]
fn rolling_apply_stops_after_a_failed_canary() {
    let bed = Testbed::start(3);
    let role = "files:\n  - {path: /etc/tk-roll, content: \"rolled\\n\"}\ncommands:\n  - {name: check, run: \"[ ! -e /etc/tk-fail ]\"}\n";
    let repo = FleetRepo::minimal(&bed, &[("app", role)]);
    bed.ssh_ok(0, "touch /etc/tk-fail");
    let out = repo.tk(&["apply", "--yes", "--rolling", "--parallel", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = stdout(&out);
    assert!(
        report.contains("not applied: an earlier host failed (rolling)"),
        "{report}"
    );
    for i in 1..3 {
        assert!(
            !bed.ssh(i, "test -e /etc/tk-roll").status.success(),
            "host {i} untouched after the canary failed"
        );
    }
    bed.ssh_ok(0, "rm /etc/tk-fail");
    let out = repo.tk(&["apply", "--yes", "--rolling", "--parallel", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for i in 0..3 {
        assert_eq!(bed.ssh_ok(i, "cat /etc/tk-roll"), "rolled\n");
    }
}

/// Regression: a user named like a group the same config manages failed
/// with "useradd: group … exists" (found by the agent-server example).
#[test]
fn a_user_named_like_a_managed_group_gets_it_as_primary_group() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "svc",
            "groups:\n  - name: outpost\nusers:\n  - {name: outpost, groups: [outpost], home: /srv/outpost}\n",
        )],
    );
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(bed.ssh_ok(0, "id -gn outpost").trim(), "outpost");
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Regression: a service its package starts on install, whose config file
/// is written by the same apply, kept running with the packaged config (the
/// restart handler was dropped because the plan saw the service stopped).
#[test]
fn a_service_started_by_its_package_install_runs_with_the_managed_config() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(
        &bed,
        &[(
            "web",
            "packages:\n  present: [nginx-light, curl]\nfiles:\n  - path: /etc/nginx/sites-enabled/default\n    \
             content: \"server { listen 8081; location / { return 200 'managed'; } }\\n\"\n    notify: [restart-nginx]\n\
             services:\n  - {name: nginx, enabled: true, state: running}\nhandlers:\n  - {name: restart-nginx, restart: nginx}\n",
        )],
    );
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(bed.ssh_ok(0, "curl -fsS http://127.0.0.1:8081/"), "managed");
}

/// Timers live in systemd: units written, the timer enabled and started
/// with the cron schedule's meaning, the command run exactly as written,
/// a new schedule taken up, and everything gone when the config drops it.
/// Cron entries are files in /etc/cron.d with `%` escaped.
#[test]
fn timers_and_cron_entries_are_written_run_rescheduled_and_pruned() {
    let bed = Testbed::start(1);
    let role = r#"
timers:
  - name: stamp
    cron: "30 3 1,15 * sun"
    run: 'echo "a \"b\" $(echo sub) 50%" > /var/tmp/stamp.out; echo ''x'' >> /var/tmp/stamp.out'
    timeout: 1m
cron:
  - name: rotate
    schedule: "15 4 * * 1-5"
    run: "date +%F > /tmp/rotated"
"#;
    let repo = FleetRepo::minimal(&bed, &[("sched", role)]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.ssh_ok(
            0,
            "systemctl is-enabled stamp.timer; systemctl is-active stamp.timer"
        ),
        "enabled\nactive\n"
    );
    let calendar = |bed: &Testbed| bed.ssh_ok(0, "systemctl show -p TimersCalendar stamp.timer");
    let shown = calendar(&bed);
    assert!(
        shown.contains("OnCalendar=*-*-01,15 03:30:00")
            && shown.contains("OnCalendar=Sun *-*-* 03:30:00"),
        "{shown}"
    );
    // The command runs as written: quotes, `$(…)` and `%` reach sh intact.
    bed.ssh_ok(0, "systemctl start stamp.service");
    assert_eq!(
        bed.ssh_ok(0, "cat /var/tmp/stamp.out"),
        "a \"b\" sub 50%\nx\n"
    );
    assert_eq!(
        bed.ssh_ok(
            0,
            "stat -c '%a %U' /etc/cron.d/rotate; tail -1 /etc/cron.d/rotate"
        ),
        "644 root\n15 4 * * 1-5 root date +\\%F > /tmp/rotated\n"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing left to do: {}",
        text(&out)
    );

    // A new schedule is in force after the apply.
    repo.write(
        "roles/sched.yaml",
        &role.replace("30 3 1,15 * sun", "0 5 * * *"),
    );
    repo.commit("reschedule");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = calendar(&bed);
    assert!(
        shown.contains("OnCalendar=*-*-* 05:00:00") && !shown.contains("03:30"),
        "{shown}"
    );

    // Dropped from the config: the timer stops and its files go.
    repo.write("roles/sched.yaml", "packages:\n  present: []\n");
    repo.commit("no schedules");
    let out = repo.tk(&["apply", "--yes", "--allow-mass-delete"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        bed.ssh_ok(
            0,
            "systemctl show -p LoadState -p ActiveState --value stamp.timer; \
             cd /etc/systemd/system && ls stamp.timer stamp.service timers.target.wants/stamp.timer /etc/cron.d/rotate 2>&1 \
             | grep -c 'No such file'"
        ),
        "not-found\ninactive\n4\n",
        "the timer is stopped and disabled while its unit file exists, then the files go"
    );
}

/// A mount goes into fstab and is mounted before the files that live on
/// it; new options remount it in place (its files stay); `unmounted` keeps
/// the entry, `absent` removes it.
#[test]
fn mounts_are_written_to_fstab_mounted_remounted_unmounted_and_removed() {
    let bed = Testbed::start(1);
    let role = |options: &str, state: &str, with_file: bool| {
        let mut r = format!(
            "mounts:\n  - {{path: /srv/scratch, device: tmpfs, fstype: tmpfs, options: \"{options}\", state: {state}}}\n"
        );
        if with_file {
            r.push_str("files:\n  - {path: /srv/scratch/hello, content: \"hi\\n\"}\n");
        }
        r
    };
    let repo = FleetRepo::minimal(&bed, &[("disk", &role("size=8m", "mounted", true))]);
    let apply = |repo: &FleetRepo| {
        let out = repo.tk(&["apply", "--yes", "--allow-mass-delete"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    };
    apply(&repo);
    let fstab = |bed: &Testbed| {
        bed.ssh_ok(
            0,
            "grep -c ' /srv/scratch ' /etc/fstab; grep ' /srv/scratch ' /etc/fstab || true",
        )
    };
    assert_eq!(fstab(&bed), "1\ntmpfs /srv/scratch tmpfs size=8m 0 0\n");
    assert_eq!(
        bed.ssh_ok(0, "findmnt -rn -M /srv/scratch -o FSTYPE,OPTIONS | grep -o '^tmpfs .*size=8192k' | cut -d' ' -f1; cat /srv/scratch/hello"),
        "tmpfs\nhi\n",
        "mounted, and the file written onto it"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing left to do: {}",
        text(&out)
    );

    repo.write("roles/disk.yaml", &role("size=16m", "mounted", true));
    repo.commit("bigger");
    apply(&repo);
    assert_eq!(fstab(&bed), "1\ntmpfs /srv/scratch tmpfs size=16m 0 0\n");
    assert_eq!(
        bed.ssh_ok(
            0,
            "findmnt -rn -M /srv/scratch -o OPTIONS | grep -c size=16384k; cat /srv/scratch/hello"
        ),
        "1\nhi\n",
        "remounted in place: a tmpfs unmounted and mounted again would have lost the file"
    );

    repo.write("roles/disk.yaml", &role("size=16m", "unmounted", false));
    repo.commit("unmount");
    apply(&repo);
    assert_eq!(fstab(&bed), "1\ntmpfs /srv/scratch tmpfs size=16m 0 0\n");
    assert!(!bed.ssh(0, "findmnt -M /srv/scratch").status.success());

    repo.write("roles/disk.yaml", &role("size=16m", "absent", false));
    repo.commit("gone");
    apply(&repo);
    assert_eq!(fstab(&bed), "0\n");
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Publish version `v` of the package `tk-hello` in a flat APT repository
/// at /srv/repo on test host `i` (dpkg-deb and a Packages index by hand,
/// compressed: APT reads an uncompressed index of a `file:` source in
/// place, so only a compressed one shows whether the lists were updated).
fn publish_package(bed: &Testbed, i: usize, v: &str) {
    bed.ssh_ok(
        i,
        &format!(
            "set -e; d=/srv/repo/build-{v}; mkdir -p $d/DEBIAN /srv/repo; \
             printf 'Package: tk-hello\\nVersion: {v}\\nArchitecture: all\\nMaintainer: t <t@example.org>\\nDescription: test\\n' > $d/DEBIAN/control; \
             dpkg-deb -Zgzip --build $d /srv/repo/tk-hello_{v}_all.deb >/dev/null; rm -rf $d; \
             f=tk-hello_{v}_all.deb; \
             printf 'Package: tk-hello\\nVersion: {v}\\nArchitecture: all\\nMaintainer: t <t@example.org>\\nFilename: ./%s\\nSize: %s\\nSHA256: %s\\nDescription: test\\n\\n' \
               $f $(stat -c %s /srv/repo/$f) $(sha256sum /srv/repo/$f | cut -d' ' -f1) >> /srv/repo/index; \
             gzip -9n < /srv/repo/index > /srv/repo/Packages.gz"
        ),
    );
}

/// A repository added in the same run as a package from it: the source is
/// written and the lists updated before the install. `apt-get update` runs
/// only when APT's sources change, not on every apply.
#[test]
fn an_apt_repository_is_in_place_before_its_packages_and_lists_update_only_when_it_changes() {
    let bed = Testbed::start(1);
    publish_package(&bed, 0, "1.0");
    let role = |extra: &str| {
        format!(
            "apt_repositories:\n  - {{name: local, uris: [\"file:/srv/repo\"], suites: [\"./\"], trusted: true{extra}}}\n\
             packages:\n  latest: [tk-hello]\n"
        )
    };
    let repo = FleetRepo::minimal(&bed, &[("apt", &role(""))]);
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let version = |bed: &Testbed| bed.ssh_ok(0, "dpkg-query -W -f '${Version}' tk-hello");
    assert_eq!(version(&bed), "1.0");
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/apt/sources.list.d/local.sources"),
        "# Managed by tidekeeper.\nTypes: deb\nURIs: file:/srv/repo\nSuites: ./\nTrusted: yes\n"
    );

    // A new version in the repository, sources unchanged: lists are not
    // updated, so nothing is planned.
    publish_package(&bed, 0, "2.0");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        version(&bed),
        "1.0",
        "no apt-get update without a source change"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The source changes: lists are updated in that run (its plan was made
    // from the old lists), and the next run brings the newer version in.
    repo.write("roles/apt.yaml", &role(", architectures: [all, amd64]"));
    repo.commit("architectures");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(version(&bed), "2.0");
}

/// A host setting through the kinds' registry alone: the time zone is
/// shown from what the host has to what the config wants, set (the
/// /etc/localtime link and /etc/timezone), then clean; a hand edit is put
/// right; a zone the host does not have fails its step and says why; a
/// setting no kind owns blocks the plan.
#[test]
fn the_timezone_setting_is_planned_before_to_after_applied_and_kept() {
    let bed = Testbed::start(1);
    let role = "settings:\n  timezone: Europe/Berlin\n";
    let repo = FleetRepo::minimal(&bed, &[("tz", role)]);
    let was = bed.ssh_ok(0, "readlink /etc/localtime");
    let was = was.trim().trim_start_matches("/usr/share/zoneinfo/");
    let out = repo.tk(&["plan"]);
    assert!(
        stdout(&out).contains("setting timezone") && stdout(&out).contains(was),
        "before: {was}\n{}",
        text(&out)
    );
    assert!(stdout(&out).contains("Europe/Berlin"), "{}", text(&out));
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let zone = || {
        (
            bed.ssh_ok(0, "readlink /etc/localtime").trim().to_string(),
            bed.ssh_ok(0, "cat /etc/timezone").trim().to_string(),
        )
    };
    assert_eq!(
        zone(),
        (
            "/usr/share/zoneinfo/Europe/Berlin".to_string(),
            "Europe/Berlin".to_string()
        )
    );
    assert_eq!(
        bed.ssh_ok(0, "env -u TZ date -d 2026-01-15T12:00Z +%Z")
            .trim(),
        "CET"
    );
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Set back by hand: seen, and put right.
    bed.ssh_ok(0, "ln -sf /usr/share/zoneinfo/Etc/UTC /etc/localtime");
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stdout(&out).contains("Etc/UTC"), "{}", text(&out));
    assert_eq!(repo.tk(&["apply", "--yes"]).status.code(), Some(0));
    assert_eq!(zone().1, "Europe/Berlin");
    assert_eq!(zone().0, "/usr/share/zoneinfo/Europe/Berlin");

    // A zone the host has no file for: the step fails, nothing changes.
    repo.write("roles/tz.yaml", "settings:\n  timezone: Mars/Olympus\n");
    repo.commit("no such zone");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no time zone Mars/Olympus"),
        "{}",
        text(&out)
    );
    assert_eq!(zone().0, "/usr/share/zoneinfo/Europe/Berlin");

    // A setting no kind owns: refused before anything is planned, at its
    // line, with what there is.
    repo.write("roles/tz.yaml", "settings:\n  timezon: Europe/Berlin\n");
    repo.commit("typo");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("roles/tz.yaml:2:")
            && text(&out).contains("tidekeeper has no setting \"timezon\"")
            && text(&out).contains("did you mean \"timezone\"?"),
        "{}",
        text(&out)
    );
    assert_eq!(zone().0, "/usr/share/zoneinfo/Europe/Berlin");
}

/// Rules on an interface and the routed (forward) policy on a real ufw:
/// applied as written and read back the same, so the next plan is empty.
#[test]
fn rules_on_an_interface_and_the_routed_policy_converge_on_a_real_ufw() {
    let bed = Testbed::start(1);
    let role = "packages:\n  present: [ufw]\nfirewall:\n  incoming: deny\n  routed: allow\n  rules:\n    - {port: \"22\", from: 10.213.0.0/16}\n    - {port: \"51820\", proto: udp, interface: wg0}\n    - {port: \"9100\", from: 10.213.0.0/16, interface: eth1}\n";
    let repo = FleetRepo::minimal(&bed, &[("fw", role)]);
    repo.write(
        "tidekeeper.yaml",
        "fleet: test\ndefaults:\n  ssh: {from: [10.213.0.0/16]}\n",
    );
    repo.commit("tidekeeper connects from the test network");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let added = bed.ssh_ok(0, "ufw show added");
    assert!(
        added.contains("ufw allow in on wg0 to any port 51820 proto udp"),
        "{added}"
    );
    assert!(
        added.contains("ufw allow in on eth1 from 10.213.0.0/16 to any port 9100 proto tcp"),
        "{added}"
    );
    let forward = bed.ssh_ok(0, "grep ^DEFAULT_FORWARD_POLICY= /etc/default/ufw");
    assert_eq!(forward.trim(), "DEFAULT_FORWARD_POLICY=\"ACCEPT\"");
    let out = repo.tk(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "read back as written: {}",
        text(&out)
    );
}

const FACTS_ROLE: &str = r#"
files:
  - path: /etc/tidekeeper-facts.conf
    template: facts.conf.j2
  - path: /etc/tk-has-cpus
    content: "yes\n"
    when: facts.cpus >= 1 and facts.arch != ""
  - path: /etc/tk-sparc-only
    content: "sparc\n"
    when: facts.arch == "sparc64"
"#;

/// Templates read what the host is, as the probe found it: not stand-ins.
#[test]
fn a_template_renders_the_hosts_real_architecture_and_cpu_count() {
    let bed = Testbed::start(1);
    let repo = FleetRepo::minimal(&bed, &[("facts", FACTS_ROLE)]);
    repo.write(
        "templates/facts.conf.j2",
        "arch={{ facts.arch }}\ncpus={{ facts.cpus }}\ncodename={{ facts.codename }}\n\
         memory_known={{ facts.memory_mb > 0 }}\n\
         {% if facts.arch == 'x86_64' %}x86{% else %}other{% endif %}\n",
    );
    repo.commit("a template reads facts");
    let out = repo.tk(&["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let arch = bed.ssh_ok(0, "uname -m").trim().to_string();
    let cpus = bed.ssh_ok(0, "nproc").trim().to_string();
    let codename = bed
        .ssh_ok(0, ". /etc/os-release; echo $VERSION_CODENAME")
        .trim()
        .to_string();
    let family = if arch == "x86_64" { "x86" } else { "other" };
    assert_eq!(
        bed.ssh_ok(0, "cat /etc/tidekeeper-facts.conf"),
        format!("arch={arch}\ncpus={cpus}\ncodename={codename}\nmemory_known=True\n{family}\n")
    );
    assert!(!codename.is_empty() && cpus.parse::<u32>().unwrap() > 0);
    // `when:` sees the same facts: a file for hosts with CPUs, none for SPARC.
    assert_eq!(bed.ssh_ok(0, "cat /etc/tk-has-cpus"), "yes\n");
    assert_eq!(
        bed.ssh_ok(0, "test -e /etc/tk-sparc-only && echo there || echo absent"),
        "absent\n"
    );

    // Planned again with the same facts: nothing to do; the plan shows them.
    let out = repo.tk(&["plan", "--json", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let facts = &plan["hosts"][0]["plan"]["facts"];
    assert_eq!(facts["arch"], arch.as_str(), "{plan}");
    assert_eq!(facts["cpus"].to_string(), cpus, "{plan}");
    let eth = bed.ssh_ok(0, "ip -o -4 addr show scope global | awk '{print $4}'");
    let first = eth.lines().next().unwrap_or_default();
    let addresses = facts["interfaces"].to_string();
    assert!(addresses.contains(first), "{first} in {addresses}");

    // `show HOST` says which facts are read; with --facts it asks the host.
    let out = repo.tk(&["show", &bed.host(0).name, "--facts"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    assert!(shown.contains(&format!("  arch: {arch}\n")), "{shown}");
    assert!(shown.contains(&format!("  cpus: {cpus}\n")), "{shown}");
    assert!(
        shown.contains(&format!("  codename: {codename}\n")),
        "{shown}"
    );
    let out = repo.tk(&["show", &bed.host(0).name]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("facts read by templates: arch, codename, cpus, memory_mb "),
        "{}",
        text(&out)
    );
}
