//! The lockout check on whole configs, loaded as `validate` loads them.

use crate::model::diag::Diagnostic;
use crate::source::ConfigTree;

/// tidekeeper connects from 198.51.100.7; host `web` has role `base`.
const FLEET: &str = "fleet: test\ndefaults:\n  ssh: {from: [198.51.100.7/32]}\n";
const HOST: &str = "provider: existing\naddress: 192.0.2.2\nroles: [base]\n";

fn load(files: &[(&str, &str)]) -> Result<crate::model::Fleet, Vec<Diagnostic>> {
    let mut t = ConfigTree::default();
    t.insert_file("tidekeeper.yaml", FLEET.as_bytes().to_vec());
    t.insert_file("hosts/web.yaml", HOST.as_bytes().to_vec());
    for (p, text) in files {
        t.insert_file(p.to_string(), text.as_bytes().to_vec());
    }
    crate::model::load(&t).map_err(|d| d.0)
}

/// The lockout errors of a config (and no other error).
fn lockouts(files: &[(&str, &str)]) -> Vec<Diagnostic> {
    match load(files) {
        Ok(_) => vec![],
        Err(diags) => {
            assert!(
                diags.iter().all(|d| d.code == "lockout"),
                "only lockout errors: {diags:?}"
            );
            diags
        }
    }
}

/// A role installing fail2ban with `jail` as /etc/fail2ban/jail.local
/// (`extra` appended to the file entry).
fn fail2ban(jail: &str, extra: &str) -> String {
    format!(
        "packages:\n  present: [fail2ban]\nfiles:\n  - path: /etc/fail2ban/jail.local\n    content: {jail:?}\n{extra}"
    )
}

#[test]
fn an_sshd_jail_that_does_not_ignore_tidekeeper_is_a_lockout() {
    let role = fail2ban(
        "[DEFAULT]\nbantime = 1h\n\n[sshd]\nenabled = true\nmaxretry = 3\n",
        "",
    );
    let errs = lockouts(&[("roles/base.yaml", &role)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let d = &errs[0];
    assert_eq!(
        (d.file.as_str(), d.line),
        ("roles/base.yaml", 4),
        "the file entry"
    );
    assert_eq!(
        d.message,
        "web: fail2ban's sshd jail (enabled in /etc/fail2ban/jail.local line 5) would ban tidekeeper, which connects from 198.51.100.7, after a few failed logins: it has no ignoreip"
    );
    let help = d.help.as_deref().unwrap();
    assert!(
        help.contains("ignoreip = 127.0.0.1/8 ::1 198.51.100.7"),
        "{help}"
    );
    assert!(help.contains("lockout_ok"), "{help}");
}

#[test]
fn an_ignoreip_covering_tidekeeper_is_fine_in_any_of_its_spellings() {
    for ignoreip in [
        "127.0.0.1/8 ::1 198.51.100.0/24",
        "127.0.0.1/8,198.51.100.7",
        "127.0.0.1/8, ::1,\\n    198.51.100.7",
    ] {
        let jail = format!("[DEFAULT]\nignoreip = {ignoreip}\n[sshd]\nenabled = true\n");
        let role = fail2ban(&jail.replace("\\n", "\n"), "");
        assert_eq!(lockouts(&[("roles/base.yaml", &role)]), [], "{ignoreip}");
    }
    // The jail's own ignoreip wins over [DEFAULT]'s.
    let jail =
        "[DEFAULT]\nignoreip = 198.51.100.7\n[sshd]\nenabled = true\nignoreip = 127.0.0.1/8\n";
    let errs = lockouts(&[("roles/base.yaml", &fail2ban(jail, ""))]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].message.ends_with("its ignoreip is \"127.0.0.1/8\""));
}

#[test]
fn debians_package_enables_the_sshd_jail_by_itself() {
    let role = "packages:\n  present: [jq, fail2ban]\n";
    let errs = lockouts(&[("roles/base.yaml", role)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].line, errs[0].column), (2, 17), "the package");
    assert!(
        errs[0].message.contains(
            "enabled by the fail2ban package's /etc/fail2ban/jail.d/defaults-debian.conf"
        ),
        "{}",
        errs[0].message
    );
    // Its file removed, and no jail enabled: nothing is banned.
    let role =
        "packages:\n  present: [fail2ban]\nabsent: [/etc/fail2ban/jail.d/defaults-debian.conf]\n";
    assert_eq!(lockouts(&[("roles/base.yaml", role)]), []);
    // Without fail2ban installed, its files ban nobody.
    let role =
        "files:\n  - path: /etc/fail2ban/jail.local\n    content: \"[sshd]\\nenabled = true\\n\"\n";
    assert_eq!(lockouts(&[("roles/base.yaml", role)]), []);
}

#[test]
fn later_files_override_earlier_ones_in_fail2bans_order() {
    // jail.local ignores tidekeeper; jail.d/*.local, read after it, does not.
    let role = format!(
        "{}  - path: /etc/fail2ban/jail.d/ssh.local\n    content: \"[sshd]\\nignoreip = 127.0.0.1/8\\n\"\n",
        fail2ban("[sshd]\nenabled = true\nignoreip = 198.51.100.7\n", "")
    );
    let errs = lockouts(&[("roles/base.yaml", &role)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    // [DEFAULT] enabling jails enables sshd too; a jail.d file disabling it wins.
    let role = fail2ban("[DEFAULT]\nenabled = true\n", "");
    let errs = lockouts(&[("roles/base.yaml", &role)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let role = fail2ban("[sshd]\nenabled = false\n", "");
    assert_eq!(lockouts(&[("roles/base.yaml", &role)]), []);
}

#[test]
fn an_acknowledged_jail_passes_and_an_empty_reason_does_not() {
    let jail = "[sshd]\nenabled = true\n";
    let role = fail2ban(jail, "    lockout_ok: \"rescue console at the provider\"\n");
    assert!(load(&[("roles/base.yaml", &role)]).is_ok());
    let role = fail2ban(jail, "    lockout_ok: \" \"\n");
    let errs = load(&[("roles/base.yaml", &role)]).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].code, errs[0].line), ("invalid-value", 6));
}

#[test]
fn with_tidekeepers_address_unstated_an_sshd_jail_could_ban_it() {
    let mut t = ConfigTree::default();
    t.insert_file("tidekeeper.yaml", b"fleet: test\n".to_vec());
    t.insert_file("hosts/web.yaml", HOST.as_bytes().to_vec());
    let role = fail2ban("[sshd]\nenabled = true\nignoreip = 127.0.0.1/8\n", "");
    t.insert_file("roles/base.yaml", role.into_bytes());
    let errs = crate::model::load(&t).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].message.contains("could ban tidekeeper after a few failed logins: tidekeeper's own address is not stated (defaults.ssh.from)"),
        "{}",
        errs[0].message
    );
}

/// A role letting SSH in only on `rule` (a flow mapping), plus `extra`.
fn ssh_only(rule: &str, extra: &str) -> String {
    format!("firewall:\n  incoming: deny\n  rules:\n    - {rule}\n    - {{port: \"443\"}}\n{extra}")
}

const TAILSCALE_KEPT_UP: &str = "packages:\n  present: [tailscale]\nservices:\n  - {name: tailscaled, enabled: true, state: running}\n";

#[test]
fn ssh_only_through_a_tunnel_nobody_keeps_up_is_a_lockout() {
    let role = ssh_only("{port: \"22\", interface: tailscale0}", "");
    let errs = lockouts(&[("roles/base.yaml", &role)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].line, errs[0].column), (4, 31), "the interface");
    assert_eq!(
        errs[0].message,
        "web: SSH (port 22) reaches it only through tailscale0 (Tailscale), and the config neither keeps tailscaled up (package tailscale, service tailscaled) nor checks it: when tailscaled stops, tidekeeper is locked out"
    );
    let help = errs[0].help.as_deref().unwrap();
    assert!(
        help.contains("a rule without `interface:`") && help.contains("lockout_ok"),
        "{help}"
    );
    // WireGuard's unit is named after the interface.
    let role = ssh_only("{port: \"22\", interface: wg0}", "");
    let errs = lockouts(&[("roles/base.yaml", &role)]);
    assert!(
        errs[0].message.contains("through wg0 (WireGuard)")
            && errs[0].message.contains("wg-quick@wg0")
    );
    // An interface that needs no daemon (a private network's) is no tunnel.
    let role = ssh_only("{port: \"22\", interface: ens10}", "");
    assert_eq!(lockouts(&[("roles/base.yaml", &role)]), []);
}

#[test]
fn a_tunnel_kept_up_checked_bypassed_or_acknowledged_is_fine() {
    let only = "{port: \"22\", interface: tailscale0}";
    // Managed: its package and a running service.
    let role = ssh_only(only, TAILSCALE_KEPT_UP);
    assert_eq!(lockouts(&[("roles/base.yaml", &role)]), []);
    // Checked: a job's health gate on its unit.
    let jobs = "jobs:\n  - name: tunnel\n    cron: \"*/5 * * * *\"\n    hosts: {names: [web]}\n    health: [{unit: tailscaled}]\n    command: {run: \"true\"}\n";
    let role = ssh_only(only, "");
    assert_eq!(
        lockouts(&[("roles/base.yaml", &role), ("schedules.yaml", jobs)]),
        []
    );
    // SSH also allowed from tidekeeper without the tunnel.
    let role = ssh_only(only, "").replace(
        "    - {port: \"443\"}",
        "    - {port: \"22\", from: 198.51.100.7}",
    );
    assert_eq!(lockouts(&[("roles/base.yaml", &role)]), []);
    // Acknowledged on the rule.
    let role = ssh_only(
        "{port: \"22\", interface: tailscale0, lockout_ok: \"console at the provider\"}",
        "",
    );
    assert_eq!(lockouts(&[("roles/base.yaml", &role)]), []);
}

#[test]
fn ssh_only_from_the_tailnet_depends_on_tailscale_too() {
    let mut t = ConfigTree::default();
    t.insert_file(
        "tidekeeper.yaml",
        b"fleet: test\ndefaults:\n  ssh: {from: [100.64.0.0/10]}\n".to_vec(),
    );
    t.insert_file(
        "hosts/web.yaml",
        b"provider: existing\naddress: 100.92.17.41\nroles: [base]\n".to_vec(),
    );
    t.insert_file(
        "roles/base.yaml",
        ssh_only("{port: \"22\", from: 100.64.0.0/10}", "").into_bytes(),
    );
    let errs = crate::model::load(&t).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .message
            .contains("only through the tailnet's addresses (100.64.0.0/10, Tailscale)"),
        "{}",
        errs[0].message
    );
    t.insert_file(
        "roles/base.yaml",
        ssh_only("{port: \"22\", from: 100.64.0.0/10}", TAILSCALE_KEPT_UP).into_bytes(),
    );
    assert!(crate::model::load(&t).is_ok());
}

#[test]
fn a_host_a_job_reboots_needs_its_tunnel_started_at_boot() {
    let only = "{port: \"22\", interface: tailscale0}";
    let jobs = "jobs:\n  - name: monthly-kernel\n    cron: \"0 3 1 * *\"\n    hosts: {names: [web]}\n    health: [{unit: tailscaled}]\n    upgrade: {reboot: if-required}\n";
    // Running, and checked, but not enabled: it does not come back.
    let running =
        "packages:\n  present: [tailscale]\nservices:\n  - {name: tailscaled, state: running}\n";
    let errs = lockouts(&[
        ("roles/base.yaml", &ssh_only(only, running)),
        ("schedules.yaml", jobs),
    ]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        (errs[0].file.as_str(), errs[0].line),
        ("roles/base.yaml", 4)
    );
    assert_eq!(
        errs[0].message,
        "web: SSH (port 22) reaches it only through tailscale0 (Tailscale), and job monthly-kernel (schedules.yaml:2:11) reboots it, but the config does not start tailscaled at boot: after the reboot tidekeeper is locked out"
    );
    assert!(errs[0].help.as_deref().unwrap().contains("`enabled: true`"));
    // Enabled at boot: fine. A job that never reboots: running is enough.
    let roles = ssh_only(only, TAILSCALE_KEPT_UP);
    assert_eq!(
        lockouts(&[("roles/base.yaml", &roles), ("schedules.yaml", jobs)]),
        []
    );
    let never = jobs.replace("if-required", "never");
    let roles = ssh_only(only, running);
    assert_eq!(
        lockouts(&[("roles/base.yaml", &roles), ("schedules.yaml", &never)]),
        []
    );
}

/// A host's warnings (its config otherwise sound).
fn warnings(files: &[(&str, &str)]) -> Vec<Diagnostic> {
    load(files).expect("no errors").warnings
}

const UFW: &str = "firewall:\n  incoming: deny\n  rules:\n    - {port: \"22\"}\n";

#[test]
fn a_router_whose_ufw_drops_forwarded_packets_is_warned_about() {
    let role = format!("{UFW}sysctl:\n  net.ipv4.ip_forward: \"1\"\n");
    let w = warnings(&[("roles/base.yaml", &role)]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        (w[0].code, w[0].line),
        ("forward-policy", 6),
        "at the sysctl"
    );
    assert_eq!(
        w[0].message,
        "web: sysctl net.ipv4.ip_forward = 1 makes it forward packets, but its ufw firewall drops forwarded packets (ufw's default routed policy is deny): the network of what it routes for breaks"
    );
    // LXD guests, and Docker told to leave iptables alone, break the same way.
    let role = format!("{UFW}packages:\n  present: [lxd]\n");
    assert_eq!(warnings(&[("roles/base.yaml", &role)])[0].line, 6);
    let role = format!(
        "{UFW}files:\n  - path: /etc/docker/daemon.json\n    content: '{{\"iptables\": false}}'\n"
    );
    let w = warnings(&[("roles/base.yaml", &role)]);
    assert!(w[0].message.contains("\"iptables\": false"), "{w:?}");
}

#[test]
fn docker_with_its_own_rules_a_stated_routed_policy_or_no_ufw_is_not_warned_about() {
    // Docker's defaults put its FORWARD rules ahead of ufw's.
    let role = format!(
        "{UFW}packages:\n  present: [docker.io]\nfiles:\n  - path: /etc/docker/daemon.json\n    content: '{{\"default-runtime\": \"runsc\"}}'\n"
    );
    assert_eq!(warnings(&[("roles/base.yaml", &role)]), []);
    for routed in ["allow", "deny"] {
        let role = format!(
            "firewall:\n  incoming: deny\n  routed: {routed}\n  rules:\n    - {{port: \"22\"}}\nsysctl:\n  net.ipv4.ip_forward: \"1\"\n"
        );
        assert_eq!(warnings(&[("roles/base.yaml", &role)]), [], "{routed}");
    }
    let role = "sysctl:\n  net.ipv4.ip_forward: \"1\"\n";
    assert_eq!(warnings(&[("roles/base.yaml", role)]), []);
}

#[test]
fn a_host_reached_at_its_tailnet_address_depends_on_tailscale() {
    let host = "provider: existing\naddress: 100.92.17.41\nroles: [base]\n";
    let load_with = |host: &str, role: &str| {
        let mut t = ConfigTree::default();
        t.insert_file("tidekeeper.yaml", FLEET.as_bytes().to_vec());
        t.insert_file("hosts/web.yaml", host.as_bytes().to_vec());
        t.insert_file("roles/base.yaml", role.as_bytes().to_vec());
        crate::model::load(&t).map_err(|d| d.0)
    };
    let errs = load_with(host, "packages:\n  present: [jq]\n").unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        (errs[0].file.as_str(), errs[0].line, errs[0].column),
        ("hosts/web.yaml", 2, 10),
        "the address"
    );
    assert_eq!(
        errs[0].message,
        "web: SSH (port 22) reaches it only through its tailnet address 100.92.17.41 (Tailscale), and the config neither keeps tailscaled up (package tailscale, service tailscaled) nor checks it: when tailscaled stops, tidekeeper is locked out"
    );
    let help = errs[0].help.as_deref().unwrap();
    assert!(
        help.contains("`address:`") && help.contains("on the host"),
        "{help}"
    );
    assert!(load_with(host, TAILSCALE_KEPT_UP).is_ok());
    let acknowledged = format!("{host}lockout_ok: \"tailscale comes with the image\"\n");
    assert!(load_with(&acknowledged, "packages:\n  present: [jq]\n").is_ok());
}
