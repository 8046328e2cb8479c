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
